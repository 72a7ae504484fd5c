"""Early stopping: end training when a monitored figure stops improving, and keep the best epoch's weights."""
import math

from .validation import InputError

__all__ = ["EarlyStopping"]

_MONITORS = ("val_loss", "val_error", "loss", "error")


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs in a row
    (Keras's ``EarlyStopping``); with ``restore_best`` the model ends with the weights of its best epoch.

    ``fit(..., early_stopping=EarlyStopping(...))`` reads the epoch's figures once per epoch, as it does
    anyway with ``log_every=1`` (which it then requires): no extra host sync. The best weights are kept as
    a copy on the device. After ``fit``: ``best_epoch``, ``best`` (the monitored value there) and
    ``stopped_epoch`` (None if training ran to the end).

    Parameters
    ----------
    monitor : {"val_loss", "val_error", "loss", "error"}
        A History field, lower is better; the ``val_`` ones need ``validation=``.
    patience : int
        Epochs without improvement before stopping (>= 1).
    min_delta : float
        An improvement is a decrease by more than this (>= 0).
    restore_best : bool
        Put back the best epoch's weights at the end (also when training ran to the end).
    """

    def __init__(self, monitor="val_loss", patience=10, min_delta=0.0, restore_best=True):
        if monitor not in _MONITORS:
            raise InputError(f"EarlyStopping monitor must be one of {', '.join(_MONITORS)}, got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise InputError(f"EarlyStopping patience must be a positive integer, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0 <= min_delta < math.inf:
            raise InputError(f"EarlyStopping min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.restore_best = bool(restore_best)
        self.best = self.best_epoch = self.stopped_epoch = None

    def start(self, model, validation):
        """Called by ``fit`` before the first epoch."""
        if self.monitor.startswith("val_") and not validation:
            raise InputError(f"EarlyStopping(monitor={self.monitor!r}) needs validation data (validation=...)")
        self.best, self.best_epoch, self.stopped_epoch, self._wait, self._weights = math.inf, None, None, 0, None

    def update(self, record, model):
        """After an epoch's record is read: whether to stop now. Keeps a device copy of the best weights."""
        value = record[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self._wait = value, record["epoch"], 0
            if self.restore_best:
                xp = model.device.xp
                self._weights = [(layer, name, xp.asarray(layer.params[name], copy=True))
                                 for _, layer, name in model.named_parameters()]
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = record["epoch"]
            return True
        return False

    def finish(self, model):
        """Called by ``fit`` when training ends: the best epoch's weights back into the model."""
        if self.restore_best and self._weights is not None:
            for layer, name, weights in self._weights:
                layer.params[name] = weights
        self._weights = None

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"restore_best={self.restore_best})")
