"""Early stopping: end training when a monitored figure stops improving, and keep the best epoch's weights."""
import math

from .validation import InputError

__all__ = ["EarlyStopping"]

_HIGHER_IS_BETTER = ("r2",)  # the History fields (and their val_ twins) that improve upwards


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs in a row
    (Keras's ``EarlyStopping``); with ``restore_best`` the model ends with the weights of its best epoch.

    ``fit(..., early_stopping=EarlyStopping(...))`` reads the epoch's figures once per epoch, as it does
    anyway with ``log_every=1`` (which it then requires): no extra host sync. The best weights are kept as
    a copy on the device. After ``fit``: ``best_epoch``, ``best`` (the monitored value there) and
    ``stopped_epoch`` (None if training ran to the end).

    Parameters
    ----------
    monitor : str
        A History field the fit records: ``"val_loss"``, ``"loss"``, the loss's metrics (``"error"``;
        ``"rmse"``, ``"r2"``) and their ``val_`` twins, which need validation data (``fit`` checks).
    mode : {"auto", "min", "max"}
        Whether lower or higher is better; ``"auto"``: higher for ``r2``, lower for the rest.
    patience : int
        Epochs without improvement before stopping (>= 1).
    min_delta : float
        An improvement is a decrease by more than this (>= 0).
    restore_best : bool
        Put back the best epoch's weights at the end (also when training ran to the end).
    """

    def __init__(self, monitor="val_loss", patience=10, min_delta=0.0, restore_best=True, mode="auto"):
        if not isinstance(monitor, str) or not monitor or monitor in ("epoch", "seconds"):
            raise InputError(f"EarlyStopping monitor must name a History field such as 'val_loss', got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise InputError(f"EarlyStopping mode must be 'auto', 'min' or 'max', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise InputError(f"EarlyStopping patience must be a positive integer, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0 <= min_delta < math.inf:
            raise InputError(f"EarlyStopping min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, float(min_delta), mode
        higher = mode == "max" or mode == "auto" and monitor.removeprefix("val_") in _HIGHER_IS_BETTER
        self._sign = -1.0 if higher else 1.0  # compares sign * value, lower is better
        self.restore_best = bool(restore_best)
        self.best = self.best_epoch = self.stopped_epoch = None

    def start(self, model, validation):
        """Called by ``fit`` before the first epoch (which has checked that it records ``monitor``)."""
        self.best, self.best_epoch, self.stopped_epoch, self._wait, self._weights = self._sign * math.inf, None, None, 0, None

    def update(self, record, model):
        """After an epoch's record is read: whether to stop now. Keeps a device copy of the best weights."""
        value = record[self.monitor]
        if self._sign * value < self._sign * self.best - self.min_delta:
            self.best, self.best_epoch, self._wait = value, record["epoch"], 0
            if self.restore_best:  # the parameters and the buffers (normalization statistics, dropout counters)
                xp = model.device.xp
                self._weights = [(store, name, xp.asarray(store[name], copy=True)) for store, name in
                                 [(layer.params, name) for _, layer, name in model.named_parameters()]
                                 + [(layer.buffers, name) for _, layer, name in model.named_buffers()]]
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = record["epoch"]
            return True
        return False

    def finish(self, model):
        """Called by ``fit`` when training ends: the best epoch's weights back into the model."""
        if self.restore_best and self._weights is not None:
            for store, name, value in self._weights:
                store[name] = value
        self._weights = None

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"restore_best={self.restore_best}, mode={self.mode!r})")
