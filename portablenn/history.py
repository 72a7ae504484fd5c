"""What training reports: the History of epochs, and the read of the device's metric rows that fills it."""
import time

import numpy as np

__all__ = ["DivergenceError", "History", "read_metrics", "fields", "L2", "METRIC", "VAL_LOSS", "VAL_METRIC", "LOSSES"]


class History:
    """Per-epoch records ``{"epoch", "loss", <metrics>, "val_loss", "val_<metrics>", "seconds"}``.

    The metrics are the loss's ``metric_names``: ``error`` (the misclassified fraction) for
    classification, ``rmse`` and ``r2`` for regression. ``history["loss"]`` is the list of one field
    over the epochs, as Keras' ``History.history``. ``loss`` and the training metrics are over the
    epoch's minibatches as they were trained (the running average Keras reports); ``val_*`` are
    measured on the validation set after the epoch;
    ``seconds`` is wall-clock time up to the next epoch's start, the last epoch of each metrics read
    up to the read itself (which waits for the device), so GPU time is never under-counted.
    """

    def __init__(self):
        self.records = []

    def __getitem__(self, key):
        return [r[key] for r in self.records]

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __repr__(self):
        return f"History({len(self)} epochs{', last ' + repr(self.records[-1]) if self.records else ''})"

    def first_best(self, field, mode="min"):
        """The first record whose ``field`` is the run's best (smallest for ``mode="min"``, largest for
        ``"max"``; NaN never is), or None without one: ``first_best("error")["epoch"]`` is the epoch at
        which training accuracy first reached its maximum (with full-batch training, the step)."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        values = [r[field] for r in self.records if r[field] == r[field]]
        if not values:
            return None
        best = min(values) if mode == "min" else max(values)
        return next(r for r in self.records if r[field] == best)


# An epoch's metrics row, all sums (the host divides): the L2 term at the epoch's end (the same on every
# rank), then what data-parallel ranks add up: the loss's metric sum (wrong predictions, squared errors),
# the validation loss and metric sums, and the loss sum of every step (which also says where a diverging
# loss first went bad).
L2, METRIC, VAL_LOSS, VAL_METRIC, LOSSES = 0, 1, 2, 3, 4


def fields(loss, validation):
    """The History fields a fit with ``loss`` records (besides ``epoch`` and ``seconds``), e.g.
    ``["loss", "error", "val_loss", "val_error"]``; the ``val_`` ones only with ``validation``."""
    names = ["loss", *loss.metric_names]
    return names + [f"val_{name}" for name in names] if validation else names


class DivergenceError(ArithmeticError):
    """The training loss became NaN or infinite; ``epoch`` and ``step`` say where (1-based)."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


def read_metrics(dev, block, pending, history, callback, optimizer, loss, data, val):
    """Read the pending epochs' metric rows in one device->host transfer, check them, and record them.

    ``data`` and ``val`` (or None) are the training and validation ``DeviceData``: their rows and the
    target statistics the loss's metrics need (``loss.metrics``). Vectorised over the rows: with
    full-batch training every step is an epoch, and a Python pass per row would cost as much as a
    training step.
    """
    values = dev.to_numpy(block[:len(pending), :]).astype(np.float64)  # waits for the device
    # an epoch lasts until the next began, the last until now (after the sync): the block's total is exact
    starts = [began for _, began in pending]
    seconds = np.diff(starts + [time.perf_counter()]).tolist()
    losses, n = values[:, LOSSES:], data.n
    columns = {"loss": losses.sum(axis=1) / n, **loss.metrics(values[:, METRIC], n, data.outputs, data.statistics),
               "seconds": seconds}
    if val is not None:
        columns["val_loss"] = values[:, VAL_LOSS] / val.n + values[:, L2]
        columns.update((f"val_{key}", value) for key, value in
                       loss.metrics(values[:, VAL_METRIC], val.n, val.outputs, val.statistics).items())
    columns = {key: np.asarray(value, dtype=np.float64).tolist() if key != "seconds" else value
               for key, value in columns.items()}
    finite = np.isfinite(losses).all(axis=1)
    good = len(pending) if finite.all() else int(np.argmin(finite))
    for i in range(good):
        record = {"epoch": pending[i][0], **{key: column[i] for key, column in columns.items()}}
        history.records.append(record)
        if callback is not None:
            callback(record)
    if good < len(pending):
        epoch, row = pending[good][0], losses[good]
        step = int(np.argmin(np.isfinite(row))) + 1
        pending.clear()
        raise DivergenceError(f"the training loss became {row[step - 1]} at epoch {epoch}, step {step} of "
                              f"{row.shape[0]}: the learning rate ({optimizer.lr:g}) is probably too high",
                              epoch, step)
    pending.clear()
