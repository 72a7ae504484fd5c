"""What training reports: the History of epochs, and the read of the device's metric rows that fills it."""
import time

import numpy as np

__all__ = ["DivergenceError", "History", "read_metrics", "L2", "WRONG", "VAL_LOSS", "VAL_WRONG", "LOSSES"]


class History:
    """Per-epoch records ``{"epoch", "loss", "error", "val_loss", "val_error", "seconds"}``.

    ``history["loss"]`` is the list of one field over the epochs, as Keras' ``History.history``.
    ``loss``/``error`` are means over the epoch's minibatches as they were trained (the running
    average Keras reports); ``val_*`` are measured on the validation set after the epoch;
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


# An epoch's metrics row, all sums (the host divides): the L2 term at the epoch's end (the same on every
# rank), then what data-parallel ranks add up: wrong predictions, validation loss and wrong predictions,
# and the loss sum of every step (which also says where a diverging loss first went bad).
L2, WRONG, VAL_LOSS, VAL_WRONG, LOSSES = 0, 1, 2, 3, 4


class DivergenceError(ArithmeticError):
    """The training loss became NaN or infinite; ``epoch`` and ``step`` say where (1-based)."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


def read_metrics(dev, block, pending, history, callback, optimizer, n, val_n):
    """Read the pending epochs' metric rows in one device->host transfer, check them, and record them.

    Vectorised over the rows: with full-batch training every step is an epoch, and a Python pass per
    row would cost as much as a training step.
    """
    values = dev.to_numpy(block[:len(pending), :]).astype(np.float64)  # waits for the device
    # an epoch lasts until the next began, the last until now (after the sync): the block's total is exact
    starts = [began for _, began in pending]
    seconds = np.diff(starts + [time.perf_counter()]).tolist()
    losses = values[:, LOSSES:]
    columns = {"loss": (losses.sum(axis=1) / n).tolist(), "error": (values[:, WRONG] / n).tolist(), "seconds": seconds}
    if val_n is not None:
        columns.update(val_loss=(values[:, VAL_LOSS] / val_n + values[:, L2]).tolist(),
                       val_error=(values[:, VAL_WRONG] / val_n).tolist())
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
