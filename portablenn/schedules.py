"""Learning-rate schedules: a host multiplier of the optimizer's lr for every step, computed from the step count.

A schedule is set on an optimizer (``optimizer.schedule``; ``fit(schedule=...)`` does it), which then uses
``lr * schedule.factor(step)`` at step ``step`` (1-based, ``optimizer.steps``). The factor is a Python float
computed on the host from the step counter: no device work and no host sync per step, and a resumed run,
whose optimizer step count is restored, continues the schedule exactly. ``fit`` calls ``start`` once with
the epoch's step count; a schedule that follows a metric (``reads_metrics``) is given every epoch's History
record (``end_epoch``), which ``fit`` reads anyway once per epoch, and keeps what it learns in ``state_dict``.

=====================  ==================================================================================
``StepDecay``          ``torch.optim.lr_scheduler.StepLR`` stepped per epoch
``CosineWarmup``       linear warmup, then ``CosineAnnealingLR`` over the remaining steps
``ReduceOnPlateau``    ``torch.optim.lr_scheduler.ReduceLROnPlateau``
``InverseScaling``     scikit-learn's MLP ``learning_rate="invscaling"``
``Adaptive``           scikit-learn's MLP ``learning_rate="adaptive"`` (its exact rule, stop included)
=====================  ==================================================================================
"""
import math
import operator

from .registry import SCHEDULES, Configurable, register_schedule

__all__ = ["Schedule", "StepDecay", "CosineWarmup", "ReduceOnPlateau", "InverseScaling", "Adaptive", "SCHEDULES"]


def _number(name, value, low=-math.inf, high=math.inf, low_open=False, high_open=False):
    """``value`` as a float in the interval; one ValueError naming ``name`` otherwise."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return value


def _integer(name, value, low=0):
    """``value`` as a Python int >= ``low`` (NumPy integers too, not bools or floats); ValueError otherwise."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return number


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class Schedule(Configurable):
    """Base class: ``factor(step)``, the multiplier of the optimizer's base lr at 1-based step ``step``.

    ``fit`` calls ``start(steps_per_epoch, epochs, rows)`` before training; a schedule with
    ``reads_metrics`` gets ``end_epoch(record)`` after every epoch (the History record, read on the host).
    ``state_dict()`` is what changes while training (JSON-able), for checkpoints; the step count itself is
    the optimizer's. ``base_lr`` is the optimizer's lr, set when the schedule is set on an optimizer (for
    rules with an absolute ``min_lr``). ``stop_training`` turns True when the rule says training should end
    (scikit-learn's adaptive rule does), for the loop to act on.
    """

    reads_metrics = False
    config_keys = ()

    base_lr = None
    stop_training = False
    steps_per_epoch = fit_epochs = rows = None

    def start(self, steps_per_epoch, epochs, rows):
        """Called by ``fit`` before its first epoch: minibatches per epoch, the epoch fit trains up to (the
        whole run's length, as ``fit(epochs=...)``; kept as ``fit_epochs``) and the training rows. Keeps the
        learned state: a second ``fit`` continues the schedule, as the optimizer's step count continues."""
        self.steps_per_epoch = _integer("steps_per_epoch", steps_per_epoch, 1)
        self.fit_epochs = _integer("epochs", epochs, 1)
        self.rows = _integer("rows", rows, 1)
        return self

    def epoch(self, step):
        """The 0-based epoch of 1-based step ``step``."""
        if self.steps_per_epoch is None:
            raise RuntimeError(f"{type(self).__name__} has not been started: call start(steps_per_epoch, epochs, "
                               "rows) first (fit does)")
        return (_integer("step", step, 1) - 1) // self.steps_per_epoch

    def factor(self, step):
        """Multiplier (a Python float) of the base lr at 1-based step ``step``."""
        raise NotImplementedError

    def end_epoch(self, record):
        """After an epoch's History record is read (schedules with ``reads_metrics``)."""

    def state_dict(self):
        """What changes while training, as a JSON-able dict (empty: the step count says it all)."""
        return {}

    def load_state_dict(self, state):
        """Restore ``state_dict()``'s output; ValueError naming the first problem (a checkpoint is untrusted)."""
        self._check_state(state, {})
        return self

    def _check_state(self, state, keys):
        """``state``, a dict with exactly the keys of ``keys`` (``{key: check(name, value) -> value}``), checked."""
        name = type(self).__name__
        if not isinstance(state, dict):
            raise ValueError(f"{name} state must be a dict, got {type(state).__name__}")
        if set(state) != set(keys):
            raise ValueError(f"{name} state must have the keys {sorted(keys)}, got {sorted(map(str, state))}")
        return {key: check(f"{name} state {key}", state[key]) for key, check in keys.items()}


@register_schedule(name="step")
class StepDecay(Schedule):
    """``lr * gamma ** (epoch // step_size)``, epoch 0-based (``torch.optim.lr_scheduler.StepLR`` stepped once
    per epoch; torch multiplies the lr by gamma at each drop, this raises gamma to the power: the same to
    rounding).

    Parameters
    ----------
    step_size : int
        Epochs between drops (>= 1).
    gamma : float
        The factor of each drop, in (0, 1].
    """

    config_keys = ("step_size", "gamma")

    def __init__(self, step_size, gamma=0.1):
        self.step_size = _integer("StepDecay step_size", step_size, 1)
        self.gamma = _number("StepDecay gamma", gamma, 0.0, 1.0, low_open=True)

    def factor(self, step):
        return self.gamma ** (self.epoch(step) // self.step_size)


@register_schedule(name="cosine")
class CosineWarmup(Schedule):
    """Linear warmup over ``warmup`` epochs, then a cosine from 1 down to ``min_factor`` over the rest of
    ``epochs`` epochs, step by step.

    With ``W`` warmup steps (``warmup * steps_per_epoch`` rounded half up, at least 1 when ``warmup > 0``)
    and ``T`` steps in all (``epochs * steps_per_epoch``), step ``s`` (1-based) has the factor

    * ``s / W`` for ``s <= W`` (never zero: the first step already moves), then
    * ``min_factor + (1 - min_factor) (1 + cos(pi t / (T - W))) / 2`` with ``t = s - 1 - W``, i.e.
      ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T - W, eta_min=min_factor * lr)`` stepped per step
      after ``LinearLR(start_factor=1/W, total_iters=W - 1)`` (``SequentialLR``);
    * ``min_factor`` from ``t = T - W`` on (training past ``epochs``; torch's cosine would climb again).

    Parameters
    ----------
    warmup : float
        Warmup length in epochs (fractions allowed), >= 0 and at most ``epochs``.
    min_factor : float
        The factor the cosine ends at, in [0, 1].
    epochs : int, optional
        The schedule's length in epochs; default ``fit``'s ``epochs`` (the epoch it trains up to).
    """

    config_keys = ("warmup", "min_factor", "epochs")

    def __init__(self, warmup=0, min_factor=0.0, epochs=None):
        self.warmup = _number("CosineWarmup warmup", warmup, 0.0)
        self.min_factor = _number("CosineWarmup min_factor", min_factor, 0.0, 1.0)
        self.epochs = None if epochs is None else _integer("CosineWarmup epochs", epochs, 1)
        if self.epochs is not None and self.warmup > self.epochs:
            raise ValueError(f"CosineWarmup warmup ({self.warmup:g} epochs) is longer than its {self.epochs} epochs")

    def start(self, steps_per_epoch, epochs, rows):
        super().start(steps_per_epoch, epochs, rows)
        length, steps_per_epoch = self.epochs or self.fit_epochs, self.steps_per_epoch
        if self.warmup > length:
            raise ValueError(f"CosineWarmup warmup ({self.warmup:g} epochs) is longer than the {length} epochs "
                             "it runs for")
        self._total = length * steps_per_epoch
        # rounded half up (as the validation split rounds), at least one step when there is a warmup at all
        warmup_steps = max(1, math.floor(self.warmup * steps_per_epoch + 0.5)) if self.warmup else 0
        self._warmup_steps = min(warmup_steps, self._total)
        return self

    def factor(self, step):
        self.epoch(step)  # checks step and that start was called
        warm = self._warmup_steps
        if step <= warm:
            return step / warm
        decay = self._total - warm
        t = step - 1 - warm
        if t >= decay:
            return self.min_factor
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t / decay))


@register_schedule(name="plateau")
class ReduceOnPlateau(Schedule):
    """Multiply the lr by ``factor`` when ``record[monitor]`` has not improved for ``patience`` epochs
    (``torch.optim.lr_scheduler.ReduceLROnPlateau``, rule for rule).

    After each epoch: the value improves on the best when it is below ``best * (1 - threshold)`` ("rel") or
    ``best - threshold`` ("abs") (mode "min"; "max": above ``best * (1 + threshold)`` or
    ``best + threshold``); an improvement becomes the best and zeroes the count of bad epochs, anything
    else adds one. During a cooldown the count stays zero. When the count exceeds ``patience``, the lr
    becomes ``max(lr * factor, min_lr)`` (if that lowers it by more than ``eps``), a cooldown of
    ``cooldown`` epochs starts and the count restarts. The new lr holds from the next epoch's first step.
    ``fit`` needs ``log_every=1`` for it (the record is read once per epoch, as always then).

    Parameters
    ----------
    monitor : str
        A History field: "val_loss", "loss", "val_error", "val_r2", ... (``val_`` ones need validation data).
    factor : float
        In (0, 1); kept as the attribute ``reduce_factor`` (``factor(step)`` is every schedule's method).
    patience : int
        Bad epochs tolerated (>= 0) before a reduction.
    threshold : float
        Least significant change (>= 0), relative or absolute by ``threshold_mode``.
    threshold_mode : {"rel", "abs"}
    cooldown : int
        Epochs after a reduction during which bad epochs are not counted.
    min_lr : float
        Floor of the lr (absolute, >= 0); the lr is the optimizer's, ``base_lr`` times ``scale``.
    mode : {"min", "max"}
        Whether lower (losses, errors) or higher (R^2) is better.
    eps : float
        A reduction smaller than this is skipped (torch's ``eps``).

    Attributes
    ----------
    scale : float
        The current factor of the base lr. ``best``, ``num_bad_epochs``, ``cooldown_counter``: as torch's.
    """

    reads_metrics = True
    config_keys = ("monitor", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "mode",
                   "eps")

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel", cooldown=0,
                 min_lr=0.0, mode="min", eps=1e-8):
        self.monitor = _monitor("ReduceOnPlateau", monitor)
        self.reduce_factor = _number("ReduceOnPlateau factor", factor, 0.0, 1.0, low_open=True, high_open=True)
        self.patience = _integer("ReduceOnPlateau patience", patience)
        self.threshold = _number("ReduceOnPlateau threshold", threshold, 0.0)
        self.threshold_mode = _choice("ReduceOnPlateau threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = _integer("ReduceOnPlateau cooldown", cooldown)
        self.min_lr = _number("ReduceOnPlateau min_lr", min_lr, 0.0)
        self.mode = _choice("ReduceOnPlateau mode", mode, ("min", "max"))
        self.eps = _number("ReduceOnPlateau eps", eps, 0.0)
        self.scale, self.best, self.num_bad_epochs, self.cooldown_counter = 1.0, None, 0, 0

    def to_config(self):
        return {key: self.reduce_factor if key == "factor" else getattr(self, key) for key in self.config_keys}

    def factor(self, step):
        self.epoch(step)
        return self.scale

    def _improves(self, value):
        if self.mode == "min":
            best = math.inf if self.best is None else self.best  # torch starts from an infinite best
            bar = best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold
            return value < bar
        best = -math.inf if self.best is None else self.best
        bar = best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold
        return value > bar

    def end_epoch(self, record):
        value = _monitored(self, record)
        if self._improves(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            base = _base_lr(self)
            old = base * self.scale
            new = max(old * self.reduce_factor, self.min_lr)
            if old - new > self.eps:
                self.scale = new / base
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def state_dict(self):
        return {"scale": self.scale, "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state):
        checked = self._check_state(state, {"scale": _scale, "best": _best, "num_bad_epochs": _integer,
                                            "cooldown_counter": _integer})
        self.scale, self.best = checked["scale"], checked["best"]
        self.num_bad_epochs, self.cooldown_counter = checked["num_bad_epochs"], checked["cooldown_counter"]
        return self


@register_schedule(name="invscaling")
class InverseScaling(Schedule):
    """scikit-learn's MLP ``learning_rate="invscaling"``: epoch ``e`` (0-based) trains with
    ``lr / (e * rows + 1) ** power_t``, ``e * rows`` the samples seen before it (scikit-learn sets
    ``learning_rate_init / (t_ + 1) ** power_t`` at each epoch's end, ``t_`` the samples seen so far).

    Here the factor ``1 / (e * rows + 1) ** power_t`` multiplies the lr: the same to rounding. ``rows`` is
    ``fit``'s training rows (after a ``validation_fraction`` split, as scikit-learn's ``t_``).

    Parameters
    ----------
    power_t : float
        The exponent, >= 0.
    """

    config_keys = ("power_t",)

    def __init__(self, power_t=0.5):
        self.power_t = _number("InverseScaling power_t", power_t, 0.0)

    def factor(self, step):
        return 1.0 / (self.epoch(step) * self.rows + 1) ** self.power_t


@register_schedule(name="adaptive")
class Adaptive(Schedule):
    """scikit-learn's MLP ``learning_rate="adaptive"``, its exact rule: the lr stays while ``record[monitor]``
    keeps improving by ``tol``; after more than ``n_iter_no_change`` epochs in a row that do not, the lr is
    divided by 5, or, if it is already at most 1e-6, ``stop_training`` turns True (scikit-learn stops).

    After each epoch (mode "min", scikit-learn's training loss): the count of epochs without improvement
    grows when ``value > best - tol`` and restarts otherwise; then ``best = min(best, value)`` (any decrease
    becomes the best, also one smaller than ``tol``). Mode "max" (scikit-learn's validation score with
    ``early_stopping``): the count grows when ``value < best + tol``; ``best = max(best, value)``. When the
    count exceeds ``n_iter_no_change``: divide (and restart the count) or stop.

    ``ReduceOnPlateau(monitor, factor=0.2, patience=n_iter_no_change, threshold=tol, threshold_mode="abs")``
    comes close but differs: torch's rule moves the best only on an improvement by more than the threshold,
    and it clamps at ``min_lr`` where scikit-learn stops training.

    Parameters
    ----------
    monitor : str
        A History field: "loss" (scikit-learn's default), or a validation score with ``mode="max"``.
    tol : float
        >= 0.
    n_iter_no_change : int
        >= 1.
    mode : {"min", "max"}

    Attributes
    ----------
    scale : float
        ``5 ** -reductions``: the factor of the base lr. ``best``, ``count`` and ``stop_training`` as above.
    """

    reads_metrics = True
    config_keys = ("monitor", "tol", "n_iter_no_change", "mode")
    divisor, min_lr = 5.0, 1e-6  # scikit-learn's SGDOptimizer.trigger_stopping

    def __init__(self, monitor="loss", tol=1e-4, n_iter_no_change=10, mode="min"):
        self.monitor = _monitor("Adaptive", monitor)
        self.tol = _number("Adaptive tol", tol, 0.0)
        self.n_iter_no_change = _integer("Adaptive n_iter_no_change", n_iter_no_change, 1)
        self.mode = _choice("Adaptive mode", mode, ("min", "max"))
        self.scale, self.best, self.count, self.stop_training = 1.0, None, 0, False

    def factor(self, step):
        self.epoch(step)
        return self.scale

    def end_epoch(self, record):
        value = _monitored(self, record)
        sign = 1.0 if self.mode == "min" else -1.0  # "max" is "min" of the negated value, exactly
        best = math.inf if self.best is None else sign * self.best
        if sign * value > best - self.tol:
            self.count += 1
        else:
            self.count = 0
        if sign * value < best:
            self.best = value
        if self.count > self.n_iter_no_change:
            if _base_lr(self) * self.scale <= self.min_lr:
                self.stop_training = True
            else:
                self.scale /= self.divisor
                self.count = 0

    def state_dict(self):
        return {"scale": self.scale, "best": self.best, "count": self.count, "stop_training": self.stop_training}

    def load_state_dict(self, state):
        checked = self._check_state(state, {"scale": _scale, "best": _best, "count": _integer,
                                            "stop_training": _flag})
        self.scale, self.best, self.count = checked["scale"], checked["best"], checked["count"]
        self.stop_training = checked["stop_training"]
        return self


def _monitor(kind, monitor):
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"{kind} monitor must be the name of a History field, got {monitor!r}")
    return monitor


def _monitored(schedule, record):
    """``record[schedule.monitor]`` as a float; ValueError naming the fields the record has."""
    value = record.get(schedule.monitor) if isinstance(record, dict) else None
    if value is None:
        fields = ", ".join(k for k in record if k not in ("epoch", "seconds")) if isinstance(record, dict) else ""
        hint = " (pass validation data)" if schedule.monitor.startswith("val_") else ""
        raise ValueError(f"{type(schedule).__name__} monitors {schedule.monitor!r}, which the epoch's record "
                         f"does not have{hint}; it has {fields or 'nothing'}")
    return float(value)


def _base_lr(schedule):
    if schedule.base_lr is None:
        raise RuntimeError(f"{type(schedule).__name__} needs the optimizer's lr: set it as optimizer.schedule "
                           "(fit does)")
    return schedule.base_lr


def _scale(name, value):
    return _number(name, value, 0.0, 1.0, low_open=True)


def _best(name, value):
    """None (no epoch yet) or a number; infinities allowed (an infinite metric may be the best), NaN not."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    return float(value)


def _flag(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value
