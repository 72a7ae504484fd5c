"""Early stopping: end training when a monitored figure stops improving, and keep the best epoch's weights."""
import math

import numpy as np

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

    ``state_dict(model)`` and ``load_state_dict(state, tensors)`` carry it across a checkpoint: a fit
    resumed with ``initial_epoch`` stops, and restores, exactly where the uninterrupted one does.

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
        self._wait, self._weights, self._loaded = 0, None, None

    def start(self, model, validation):
        """Called by ``fit`` before the first epoch (which has checked that it records ``monitor``); applies
        the state `load_state_dict` gave, once (a later fit starts afresh)."""
        self.best, self.best_epoch, self.stopped_epoch, self._wait, self._weights = self._sign * math.inf, None, None, 0, None
        loaded, self._loaded = getattr(self, "_loaded", None), None
        if loaded is None:
            return
        state, tensors = loaded
        if state["best"] is not None:
            self.best = state["best"]
        self.best_epoch, self.stopped_epoch, self._wait = state["best_epoch"], state["stopped_epoch"], state["wait"]
        if tensors is not None:
            dev, stores = model.device, _stores(model)
            keys = [key for key, _, _ in stores]
            if set(tensors) != set(keys):
                first = sorted(set(tensors) ^ set(keys))[0]
                raise InputError(f"EarlyStopping best weights do not match the model: {first!r} is "
                                 f"{'missing' if first in keys else 'not a parameter or buffer of the model'}")
            weights = []
            for key, store, name in stores:
                value = dev.asarray(tensors[key], dtype=store[name].dtype)  # host or any library's array
                if tuple(value.shape) != tuple(store[name].shape):
                    raise InputError(f"EarlyStopping best weight {key!r} has shape {tuple(value.shape)}, the model's "
                                     f"has {tuple(store[name].shape)}")
                weights.append((store, name, dev.xp.asarray(value, copy=True)))  # never the caller's own array
            self._weights = weights

    def state_dict(self, model):
        """``(state, tensors)``: the JSON-able ``{"best", "best_epoch", "wait", "stopped_epoch"}`` and the best
        epoch's weights as host NumPy copies by state-dict key (parameters, then buffers): the device copies
        during ``fit``, the model's own once ``fit`` has put them back; empty before any epoch improved or
        without ``restore_best``."""
        state = {"best": float(self.best) if self.best is not None else None, "best_epoch": self.best_epoch,
                 "wait": int(getattr(self, "_wait", 0)), "stopped_epoch": self.stopped_epoch}
        if self.best_epoch is None or not self.restore_best:
            return state, {}
        weights, stores = getattr(self, "_weights", None), _stores(model)
        if weights is None:  # fit ended and restored them: they are the model's
            weights = [(store, name, store[name]) for _, store, name in stores]
        return state, {key: np.array(model.device.to_numpy(value), copy=True)
                       for (key, _, _), (_, _, value) in zip(stores, weights)}

    def load_state_dict(self, state, tensors=None):
        """Start the next ``fit`` from ``state_dict``'s output (once; the fit after starts afresh). ``tensors``
        (the best weights by state-dict key) are needed with ``restore_best`` once an epoch has improved, and
        checked against the model when the fit starts. Returns self.

        Raises
        ------
        InputError
            Naming the first entry that is missing, unexpected or not what it must be.
        """
        keys = ("best", "best_epoch", "wait", "stopped_epoch")
        if not isinstance(state, dict) or set(state) != set(keys):
            raise InputError(f"EarlyStopping state must be a dict with the keys {', '.join(keys)}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        best = state["best"]
        if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best)):
            raise InputError(f"EarlyStopping state best must be a number or None, got {best!r}")
        for key, low in (("best_epoch", 1), ("stopped_epoch", 1), ("wait", 0)):
            value = state[key]
            if (value is not None or key == "wait") and (isinstance(value, bool) or not isinstance(value, int)
                                                         or value < low):
                raise InputError(f"EarlyStopping state {key} must be an integer >= {low}"
                                 + (" or None" if key != "wait" else "") + f", got {value!r}")
        if (state["best_epoch"] is None) != (best is None or math.isinf(best)):
            raise InputError(f"EarlyStopping state best {best!r} does not go with best_epoch {state['best_epoch']!r} "
                             "(a finite best has the epoch it was reached at; none or an infinite one, no epoch)")
        if tensors is not None and (not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors)):
            raise InputError("EarlyStopping tensors must be a dict of arrays by state-dict key")
        if state["best_epoch"] is None:
            if tensors:
                raise InputError("EarlyStopping state has no best epoch but tensors were given")
            tensors = None
        elif not self.restore_best:
            tensors = None  # nothing to restore
        elif tensors is None:
            raise InputError(f"EarlyStopping(restore_best=True) needs the best weights (tensors) of epoch "
                             f"{state['best_epoch']} to resume")
        self._loaded = (dict(state), tensors)
        return self

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


def _stores(model):
    """``(key, store, name)`` of every parameter, then every buffer: the order `update` keeps them in."""
    return ([(key, layer.params, name) for key, layer, name in model.named_parameters()]
            + [(key, layer.buffers, name) for key, layer, name in model.named_buffers()])
