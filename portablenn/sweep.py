"""Hyperparameter sweeps and seed ensembles trained as one stacked model (``portablenn.stack.Stacked``).

``fit_stack`` is ``portablenn.fit`` for M members at once: one forward, one backward and one update per
minibatch do every member's work, with per-member learning rate, L2, momentum and weight decay held as
``(M, 1, 1)`` device arrays. Member ``i`` trains exactly as ``fit`` trains ``stacked.member(i)`` alone with
its own settings, from the same initial weights and minibatch order (the rounding of a batched GEMM aside).
Per-member losses and metrics stay on the device and are read once per ``log_every`` epochs; a member
whose loss turns NaN or infinite is stopped there (its History ends, ``diverged`` says where), the others
train on. ``sweep`` builds the members of a grid (``grid``), one stack per architecture, in chunks when
the device's memory is short, and returns a ``SweepResult``.
"""
import copy
import itertools
import math
import numbers
import time

import numpy as np

from . import backend
from .data import DeviceData
from .history import History
from .losses import SoftmaxCrossEntropy, get_loss
from .models import mlp
from .optim import SGD, Adam, AdamW, Optimizer
from .pure_step import PureStep
from .registry import OPTIMIZERS
from .early_stopping import EarlyStopping
from .stack import Stacked, StackedLinear
from .train import check_clip_norm, check_coupled, check_monitors, check_readers, place
from .validation import InputError, available_memory, check_epochs, format_bytes, training_memory

__all__ = ["StackedOptimizer", "StackHistory", "SweepResult", "fit_stack", "evaluate_stack", "predict_stack",
           "predict_proba_stack", "stack_mlp", "grid", "sweep", "stack_memory", "largest_stack", "memory_limit",
           "SETTINGS"]

# what may differ between members, in the order names and tables show them
SETTINGS = ("hidden", "lr", "l2", "momentum", "weight_decay", "dropout", "seed")
_EVAL_ROWS = 8192  # rows times members per evaluation forward pass, to bound activation memory


# -- building -----------------------------------------------------------------------------------------
def stack_mlp(sizes, seeds, *, activation="relu", bias=True, init="auto", dtype="float32", dropout=0.0, norm=None):
    """A ``Stacked`` of ``mlp(sizes, seed=seeds[i], dropout=dropout[i], ...)`` for each member ``i``: each
    initialised on the host by its own seed, as ``mlp`` does. ``dropout`` is one probability or one per member;
    ``norm`` (``mlp``'s: "layer" or "batch") is every member's."""
    seeds = list(seeds)
    drops = _listed(dropout, len(seeds), "dropout", _probability)
    return Stacked([mlp(sizes, activation=activation, bias=bias, init=init, seed=int(s), dtype=dtype, dropout=d,
                        norm=norm) for s, d in zip(seeds, drops)])


def _listed(value, members, name, check):
    """``value`` (a number or a sequence of ``members`` numbers) as a list of ``members`` checked floats."""
    if isinstance(value, (str, bytes)) or np.ndim(value) > 1:
        raise InputError(f"{name} must be a number or a sequence of numbers, got {value!r}")
    values = [value] * members if np.ndim(value) == 0 else list(value)
    if len(values) != members:
        raise InputError(f"{name} has {len(values)} values for {members} members: give one value, or one per member")
    return [check(v, name) for v in values]


def _number(v, name, low=0.0, high=math.inf, low_open=False, high_open=True):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (low < v if low_open else low <= v) \
            or not (v < high if high_open else v <= high):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise InputError(f"{name} must be a number in {bounds}, got {v!r}")
    return float(v)


def _probability(v, name):
    return _number(v, name, 0.0, 1.0)


def _rate(v, name):
    return _number(v, name, 0.0, math.inf, low_open=True)


def _strength(v, name):
    return _number(v, name, 0.0, math.inf)


# -- the update rule, per member ------------------------------------------------------------------------
class StackedOptimizer:
    """An optimizer's update rule over a ``Stacked`` model, with per-member hyperparameters.

    Parameters
    ----------
    template : Optimizer
        ``SGD``, ``Adam`` or ``AdamW``: its class, and the settings every member shares (``nesterov``,
        ``beta1``, ``beta2``, ``eps``); its ``lr``, ``momentum`` and ``weight_decay`` are the defaults.
    members : int
    lr, momentum, weight_decay, l2 : float or sequence of ``members`` floats, optional
        Per member. ``momentum`` is SGD's, ``weight_decay`` AdamW's decoupled decay; ``l2`` the coupled L2
        strength on weight matrices (``fit``'s ``l2``).

    On the device each becomes an ``(M, 1, 1)`` array, broadcast against the parameters (``(M, in, out)``,
    ``(M, 1, out)``). SGD is written here (its momentum may differ per member), with the formulas of
    ``SGD.update``; Adam and AdamW run their own functional ``update`` with per-member step sizes. Where
    the backend is mutable, SGD updates in place (same operations, same rounding).
    """

    def __init__(self, template, members, *, lr=None, momentum=None, weight_decay=None, l2=0.0):
        if not isinstance(template, Optimizer) or type(template) not in (SGD, Adam, AdamW):
            raise InputError(f"a stack trains with SGD, Adam or AdamW, not {type(template).__name__}")
        self.template, self.members, self.steps = template, int(members), 0
        self.schedules = None  # one per member (set_schedule), each a copy of the schedule fit_stack was given
        self.lr = _listed(template.lr if lr is None else lr, members, "lr", _rate)
        self.l2 = _listed(l2, members, "l2", _strength)
        sgd = type(template) is SGD
        if not sgd and momentum is not None and any(_listed(momentum, members, "momentum", _strength)):
            raise InputError(f"momentum is SGD's; {type(template).__name__} has none")
        if type(template) is not AdamW and weight_decay is not None and any(
                _listed(weight_decay, members, "weight_decay", _strength)):
            raise InputError(f"weight_decay is AdamW's decoupled decay; {type(template).__name__} has none "
                             "(use l2 for an L2 term)")
        self.momentum = _listed(getattr(template, "momentum", 0.0) if momentum is None else momentum, members,
                                "momentum", lambda v, n: _number(v, n, 0.0, 1.0))
        if sgd and template.nesterov and not all(self.momentum):
            raise InputError("nesterov momentum needs momentum > 0 for every member")
        self.weight_decay = _listed(getattr(template, "weight_decay", 0.0) if weight_decay is None else weight_decay,
                                    members, "weight_decay", _strength)
        self.state, self.model, self._arrays = {}, None, None
        self._stopped = {}  # member -> (its step count, its state's slices) at its early stop: member() gives them

    @property
    def slots(self):
        if type(self.template) is SGD:
            return 1 if any(self.momentum) else 0
        return self.template.slots

    def bind(self, model):
        """Attach to the stacked ``model`` (on its device): the hyperparameters become device arrays."""
        if model.members != self.members:
            raise InputError(f"the optimizer has {self.members} members' settings, the stack {model.members} members")
        if self.model is not model:
            self.state, self.steps, self._stopped = {}, 0, {}
        elif getattr(self, "_device", model.device) != model.device:  # the state follows the stack (Optimizer.bind)
            old = self._device
            self.state = {key: tuple(model.device.asarray(old.to_numpy(b), dtype=model.dtype) for b in buffers)
                          for key, buffers in self.state.items()}
        self._device = model.device
        self.model, dev = model, model.device
        shape = (self.members, 1, 1)
        host = {"lr": self.lr, "l2": self.l2, "momentum": self.momentum,
                "factor": [1.0] * self.members}  # AdamW's 1 - lr * weight_decay is computed per step below
        self._arrays = {key: dev.asarray(np.asarray(values, dtype=np.float64).reshape(shape), dtype=model.dtype)
                        for key, values in host.items()}
        self._arrays["weight_decay"] = dev.asarray(np.asarray(self.weight_decay).reshape(shape), dtype=model.dtype)
        self._live = np.ones(self.members, dtype=bool)
        self._set_keep()
        self._decays = [(key, layer, name, name in layer.decayed) for key, layer, name in model.named_parameters()]
        self._rule = copy.copy(self.template)  # Adam's rule with lr 1: hyper() gives the per-lr step factor
        self._rule.lr, self._rule.state, self._rule.model, self._rule._schedule = 1.0, {}, None, None
        self._factors = None
        return self

    def set_schedule(self, schedule, steps_per_epoch, epochs, rows):
        """Give every member its own copy of ``schedule`` (its base lr the member's; ``start``-ed as ``fit``
        starts one), or none. The schedules already set are kept when ``schedule`` is one of them (a later
        ``fit_stack`` continues them, as ``fit`` continues an optimizer's)."""
        if schedule is None:
            self.schedules = None
        elif self.schedules is None or (schedule is not getattr(self, "_schedule_source", None)
                                        and all(s is not schedule for s in self.schedules)):
            self._schedule_source = schedule
            self.schedules = [copy.deepcopy(schedule) for _ in range(self.members)]
            for sched, lr in zip(self.schedules, self.lr):
                sched.base_lr = lr
        if self.schedules is not None:
            for sched in self.schedules:
                sched.start(steps_per_epoch, epochs, rows)
        self._factors = None

    def _step_lr(self, step):
        """Step ``step``'s learning rates ``(M, 1, 1)``: each member's lr times its schedule's factor for the step
        (host floats; the product on the device, moved there only when the factors differ between members
        and changed since the last step: a metric-reading schedule's, after a read). Sets the decay ``keep``."""
        a = self._arrays
        if self.schedules is None:
            return a["lr"]
        factors = [sched.factor(step) for sched in self.schedules]
        if factors != self._factors:
            if all(f == factors[0] for f in factors):  # a step-based schedule: one host scalar
                lr = a["lr"] * factors[0]
            else:
                lr = a["lr"] * self.model.device.asarray(np.asarray(factors).reshape(-1, 1, 1), dtype=self.model.dtype)
            self._factors, self._lr = factors, lr
            self._keep = [1.0 - rate * f * l2 if live else 1.0
                          for rate, f, l2, live in zip(self.lr, factors, self.l2, self._live)]
            a["keep"] = 1.0 - lr * a["l2"]
        return self._lr

    def _set_keep(self):
        """The weights' decay factors ``1 - lr l2`` of the fused step, on the host and the device (0 lr: stopped)."""
        self._keep = [1.0 - lr * l2 if live else 1.0 for lr, l2, live in zip(self.lr, self.l2, self._live)]
        self._arrays["keep"] = self.model.device.asarray(np.asarray(self._keep).reshape(-1, 1, 1),
                                                         dtype=self.model.dtype)

    def buffers(self, key, param, device=None):
        """The optimizer state of parameter ``key`` (made at first use: zeros like ``param``)."""
        if key not in self.state:
            # zeros laid out in memory as the parameter (a side-by-side weight keeps its layout through the rule)
            self.state[key] = tuple(self.model.xp.zeros_like(param) for _ in range(self.slots))
        return self.state[key]

    def hyper(self, step):
        """What step ``step`` needs that changes from step to step, for ``step(hyper)``: the learning rates
        ``(M, 1, 1)`` on the device and, for Adam, its bias corrections (host floats, for lr 1). Computed
        outside a compiled step and passed into it (``portablenn.pure_step``), so nothing is baked in."""
        lr = self._step_lr(step)
        return (lr,) if type(self.template) is SGD else (lr, *self._rule.hyper(step)[:2])

    def step(self, hyper=None):
        """Update every parameter of the bound stack from its ``grads`` (``hyper``: this step's, else computed)."""
        self.steps += 1
        model, a = self.model, self._arrays
        xp, mutable = model.xp, model.device.backend.mutable
        l2 = any(self.l2)
        hyper = self.hyper(self.steps) if hyper is None else hyper
        lr = hyper[0]
        if type(self.template) is SGD:
            for key, layer, name, decays in self._decays:
                p, g, state = layer.params[name], layer.grads[name], self.buffers(key, layer.params[name])
                if mutable:
                    layer.params[name], new_state = self._sgd_(xp, p, g, state, decays and l2, lr)
                else:
                    layer.params[name], new_state = self._sgd(xp, p, g, state, decays and l2, lr)
                self.state[key] = new_state
            return
        step_factor, eps_hat = hyper[1:3]  # Adam's bias corrections, for lr 1
        hyper = (lr * step_factor, eps_hat)
        if type(self.template) is AdamW:
            hyper = hyper + (1.0 - lr * a["weight_decay"],)
            self._rule.weight_decay = 1.0 if any(self.weight_decay) else 0.0  # members at 0 shrink by 1: a no-op
        for key, layer, name, decays in self._decays:
            p, g = layer.params[name], layer.grads[name]
            if decays and l2:  # the coupled L2 term, as the rule adds it (before AdamW's shrink)
                g = g + a["l2"] * p
            layer.params[name], self.state[key] = self._rule.update(xp, p, g, self.buffers(key, p), 0.0, hyper,
                                                                    decays)
        if mutable:  # the rule made new arrays: NumPy's layouts again (a joined bias, a side-by-side weight)
            model.lay_out()

    @property
    def fuses_sgd(self):
        """Whether a step may fold plain SGD into the backward GEMMs, as ``portablenn.step`` does for one model:
        SGD without momentum, on kernels that offer the fusion (NumPy's), arrays that change in place, and no
        parameters but the Linear layers' (the fused step updates those only)."""
        model = self.model
        return (type(self.template) is SGD and not any(self.momentum) and model is not None
                and model.device.backend.mutable and model.device.kernels.fuses_sgd
                and all(isinstance(layer, StackedLinear) or not layer.params for layer in model.layers))

    def backward_and_sgd(self, grad):
        """Backward with plain SGD inside (``fuses_sgd``): each Linear layer's update without a weight gradient.

        ``grad`` (M, batch, out) becomes ``lr * grad`` per member; then every member's weight takes
        ``W = (1 - lr l2) W - x.T @ g`` as one GEMM into its slice (``kernels.matmul_update_``, the fusion one
        model's step uses) where a slice is large enough to pay for a call per member, and as two batched
        passes where it is not; the bias ``b -= sum(g)``.
        """
        self.steps += 1
        model, a = self.model, self._arrays
        layers, kernels, xp = model.layers, model.device.kernels, model.xp
        grad = grad * self._step_lr(self.steps)
        # a GEMM call per member where the kernels say from what size one pays (NumPy's CPU BLAS); elsewhere (a
        # GPU's, where every call is a launch) the batched passes: a few launches whatever the members
        least = getattr(kernels, "blas_update_min", None)
        for j in range(len(layers) - 1, -1, -1):
            layer = layers[j]
            if "weight" not in layer.params:
                grad = model.layer_backward(j, grad, j > 0)
                continue
            weight, x = layer.params["weight"], layer._x
            grad_input = layer.input_gradient(grad) if j > 0 else None  # before the update
            joint = layer.joint() if x.ndim == 2 else None
            if joint is not None:  # the bias the weight's last row (StackedLinear.joint): one GEMM for both
                if any(self.l2):
                    weight *= a["keep"]  # the weight rows of the joint array only: the bias is not decayed
                joint -= xp.matmul(layer._xa.T, grad)
                grad = grad_input
                continue
            wide = layer.side_by_side(weight) if x.ndim == 2 else None
            if wide is not None:  # the weights side by side (in, M * out): every member's update as one GEMM
                rows = layer.rows_side_by_side(grad)
                if "bias" in layer.params:
                    bias = xp.reshape(layer.params["bias"], (1, -1))  # a view of (M, 1, out)
                    bias -= xp.sum(rows, axis=0)  # down the columns: no BLAS GEMV (threads) for a vector
                beta = self._keep[0]
                if any(k != beta for k in self._keep):  # the decays differ: each member's as a lazy scale
                    if min(self._keep) > 0:
                        rows = layer.decay_lazily(xp.reshape(a["keep"], (-1, 1)), self._keep, rows)
                    else:  # lr l2 >= 1 somewhere (a weight that flips sign): no scale for that, one pass
                        layer.materialize()  # W, not V, takes the decay (a scale held since earlier steps)
                        weight *= a["keep"]
                    beta = 1.0
                kernels.matmul_update_(wide, x.T, rows, -1.0, beta)
                grad = grad_input
                continue
            if least is not None and weight[0].size >= least:
                for i in range(self.members):
                    kernels.matmul_update_(weight[i], x.T if x.ndim == 2 else x[i].T, grad[i], -1.0, self._keep[i])
            else:
                if any(self.l2):
                    weight *= a["keep"]
                weight -= xp.matmul(x.T if x.ndim == 2 else xp.matrix_transpose(x), grad)
            if "bias" in layer.params:
                layer.params["bias"] -= xp.matmul(layer._ones(grad.shape[1], grad.dtype), grad)
            grad = grad_input

    def _sgd(self, xp, p, g, state, decay, lr):
        """``SGD.update`` with per-member ``lr`` (the step's), ``l2`` and ``momentum``: new arrays."""
        a = self._arrays
        if decay:
            g = g + a["l2"] * p
        if not state:
            return p - lr * g, state
        velocity = a["momentum"] * state[0] + lr * g  # momentum 0: exactly lr * g, plain SGD's step
        return p - ((lr * g + a["momentum"] * velocity) if self.template.nesterov else velocity), (velocity,)

    def _sgd_(self, xp, p, g, state, decay, lr):
        """The same in place (the gradient is the step's own array: it may be overwritten)."""
        a = self._arrays
        if decay:
            g += a["l2"] * p
        g *= lr
        if not state:
            p -= g
            return p, state
        (velocity,) = state
        velocity *= a["momentum"]
        velocity += g
        if self.template.nesterov:
            p -= g + a["momentum"] * velocity
        else:
            p -= velocity
        return p, state

    def freeze(self, active, zero=None):
        """Stop the members where the ``(M,)`` host bool ``active`` is False: their optimizer state and learning
        rate become zeros, so their parameters no longer change; where ``zero`` (default: every stopped member)
        the parameters too (a diverged member's NaNs would otherwise keep flowing)."""
        model, xp = self.model, self.model.xp
        mask = model.device.asarray(np.asarray(active).reshape(-1, 1, 1))
        zero = ~np.asarray(active, dtype=bool) if zero is None else np.asarray(zero, dtype=bool)
        kept = model.device.asarray((~zero).reshape(-1, 1, 1))
        for key, layer, name, _ in self._decays:
            layer.params[name] = xp.where(kept, layer.params[name], 0.0)
        for i in np.flatnonzero(self._live & ~np.asarray(active, dtype=bool) & ~zero):  # stopped, not diverged
            self._stopped[int(i)] = (self.steps, {key: tuple(xp.asarray(b[int(i), ...], copy=True) for b in buffers)
                                                  for key, buffers in self.state.items()})
        self.state = {key: tuple(xp.where(mask, b, 0.0) for b in buffers) for key, buffers in self.state.items()}
        self._arrays["lr"] = xp.where(mask, self._arrays["lr"], 0.0)
        self._live = self._live & np.asarray(active, dtype=bool)
        self._set_keep()
        self._factors = None
        model.lay_out()  # the new weight arrays side by side again, where the kernels use that layout

    def member(self, i):
        """Member ``i``'s ordinary optimizer (its class, settings, step count and a copy of its state, keyed
        as ``fit``'s), as ``portablenn.checkpoint.save(model, optimizer=...)`` writes it."""
        template = self.template
        if type(template) is SGD:
            opt = SGD(self.lr[i], momentum=self.momentum[i], nesterov=template.nesterov)
        elif type(template) is AdamW:
            opt = AdamW(self.lr[i], template.beta1, template.beta2, template.eps, weight_decay=self.weight_decay[i])
        else:
            opt = Adam(self.lr[i], template.beta1, template.beta2, template.eps)
        steps, held = self._stopped.get(i, (self.steps, None))
        opt.steps, opt.l2 = steps, self.l2[i]
        if self.schedules is not None:
            opt.schedule = copy.deepcopy(self.schedules[i])
        if self.model is not None and opt.slots:
            dev = self.model.device
            for key, layer, name, _ in self._decays:
                if key in self.state:
                    buffers = held[key] if held is not None else tuple(b[i, ...] for b in self.state[key])
                    opt.state[self.model.member_key(i, key)] = tuple(
                        dev.to_numpy(b).reshape(layer.member_shape(name)).copy() for b in buffers)
        return opt


# -- the loss, per member -------------------------------------------------------------------------------
def _stacked_loss(loss, members, per_member_targets, kernels=None):
    """``value_and_grad(xp, outputs (M, batch, out), targets, scale) -> (grad, loss sums (M,), metric sums (M,))``.

    Softmax cross-entropy over the member axis directly (its formula in ``SoftmaxCrossEntropy.value_and_grad``;
    the twin ``kernels.stacked_softmax_xent`` where ``kernels`` offer one: NumPy's); any other loss member by
    member through its own ``value_and_grad``.
    """
    if type(loss) is SoftmaxCrossEntropy:
        weighted = loss.class_weight is not None

        def softmax_xent(xp, logits, targets, scale):
            labels, target = targets  # (batch,) and (batch, classes), or each with the member axis first
            fast = getattr(kernels, "stacked_softmax_xent", None) if kernels is not None else None
            if fast is not None and not weighted:  # NumPy's twin of what follows
                return fast(logits, labels, target, scale)
            top, predicted = _row_max(xp, logits)
            shifted = logits - top
            exp = xp.exp(shifted)
            # the row sums as one batched GEMV (as NumPy's fused twin sums them): reductions along a short
            # last axis are an order of magnitude slower in NumPy
            total = xp.expand_dims(xp.matmul(exp, xp.ones_like(exp[0, 0, :])), axis=-1)
            if not weighted:  # the target rows sum to 1
                grad = (exp / total - target) * scale
                loss_sums = xp.sum(xp.log(total), axis=(1, 2)) - xp.sum(shifted * target, axis=(1, 2))
            else:  # each row w * t sums to its weight w
                weight = xp.sum(target, axis=-1, keepdims=True)
                grad = (exp / total * weight - target) * scale
                loss_sums = xp.sum(weight * xp.log(total), axis=(1, 2)) - xp.sum(shifted * target, axis=(1, 2))
            wrong = xp.sum(xp.astype(predicted != labels, logits.dtype), axis=1)
            return grad, loss_sums, wrong
        return softmax_xent

    def each(xp, outputs, targets, scale):
        parts = [loss.value_and_grad(xp, outputs[i, ...], tuple(t[i, ...] for t in targets)
                                     if per_member_targets else targets, scale) for i in range(members)]
        return tuple(xp.stack([part[k] for part in parts]) for k in range(3))
    return each


def _row_max(xp, logits):
    """``(max, argmax)`` of each row of ``(M, batch, classes)`` logits: ``(M, batch, 1)`` and ``(M, batch)``, the
    first index of the largest. Two reductions: two launches on a GPU, where a pass per class would be two per
    class (NumPy's kernels have their own, class-major ``stacked_softmax_xent``)."""
    return xp.max(logits, axis=-1, keepdims=True), xp.argmax(logits, axis=-1)


def _clip(model, clip_norm):
    """Each member's gradients times ``min(1, clip_norm / (norm + 1e-6))``, ``norm`` the member's global 2-norm
    (``Step._clip``'s rule per member): on the device."""
    xp, total = model.xp, None
    for _, layer, name in model.named_parameters():
        term = _member_sq_sum(model, layer.grads[name])
        total = term if total is None else total + term
    factor = xp.reshape(xp.minimum(clip_norm / (xp.sqrt(total) + 1e-6), 1.0), (-1, 1, 1))
    for _, layer, name in model.named_parameters():
        layer.grads[name] = layer.grads[name] * factor


def _member_sq_sum(model, w):
    """``(M, ...)`` -> ``(M,)``: each member's sum of squares (NumPy's ``sq_sum_members``: one pass, no copy)."""
    fast = getattr(model.device.kernels, "sq_sum_members", None)
    if fast is not None:
        return fast(w)
    flat = model.xp.reshape(w, (w.shape[0], 1, -1))  # each member's sum of squares as one batched dot
    return model.xp.reshape(model.xp.matmul(flat, model.xp.matrix_transpose(flat)), (-1,))


class _Stops:
    """Early stopping and metric-reading schedules, member by member, for ``fit_stack``.

    ``on_record(i, record)`` (the records' callback) feeds member ``i``'s schedule and its own EarlyStopping's
    counters; ``read(active)`` after a read keeps device copies of the improved members' weights (with
    ``restore_best``), stops the members whose rule says so (``active`` False) and returns whether any stopped;
    ``settle()`` before a read puts the stopped members' weights back as they were at their stop (a BatchNorm's
    running statistics move with every training forward); ``finish()`` puts back the best weights (or, without
    ``restore_best``, a stopped member's of its stop) and hands the stack each such member's own counts of the
    shared counters (``Stacked._member_buffers``)."""

    def __init__(self, stacked, opt, early_stopping, history, callback):
        self.stacked, self.opt, self.history, self.callback = stacked, opt, history, callback
        self.template = early_stopping
        self.rules = None if early_stopping is None else [
            EarlyStopping(early_stopping.monitor, early_stopping.patience, early_stopping.min_delta,
                          restore_best=False, mode=early_stopping.mode) for _ in range(stacked.members)]
        for rule in self.rules or ():
            rule.start(None, None)
        self.improved, self.stopping, self.best, self.held = set(), {}, None, None
        self._best_members, self.best_counts, self.held_counts = set(), {}, {}  # the counters: see _counts
        stacked._member_buffers = {}

    def on_record(self, i, record):
        schedules = self.opt.schedules
        if schedules is not None and schedules[i].reads_metrics:
            schedules[i].end_epoch(record)
            if schedules[i].stop_training:
                self.stopping.setdefault(i, f"{type(schedules[i]).__name__} ended its training")
        if self.rules is not None:
            rule = self.rules[i]
            before = rule.best_epoch
            if rule.update(record, None):
                self.stopping.setdefault(i, f"early stopping: {rule.monitor} did not improve for {rule.patience} "
                                            "epochs")
            if rule.best_epoch != before:
                self.improved.add(i)
        if self.callback is not None:
            self.callback(i, record)

    def _stores(self):
        """``(store, name)`` of every per-member array (parameters and buffers with the member axis first)."""
        M = self.stacked.members
        out = []
        for layer in self.stacked.layers:
            for store in (layer.params, layer.buffers):
                out += [(store, name) for name in store if store[name].ndim >= 1 and store[name].shape[0] == M]
        return out

    def _mask(self, members, ndim):
        flags = np.zeros(self.stacked.members, dtype=bool)
        flags[list(members)] = True
        return self.stacked.device.asarray(flags.reshape((-1,) + (1,) * (ndim - 1)))

    def _keep(self, snapshot, members):
        """``snapshot`` (a list of arrays, or None) with ``members``' current values."""
        xp, stores = self.stacked.xp, self._stores()
        if snapshot is None:
            return [xp.asarray(store[name], copy=True) for store, name in stores]
        return [xp.where(self._mask(members, store[name].ndim), store[name], old)
                for (store, name), old in zip(stores, snapshot)]

    def _counts(self):
        """``{stacked layer index: {name: device copy}}`` of the shared 0-d buffers (Dropout's mask counter,
        BatchNorm's num_batches_tracked): copies on the device, no read."""
        xp = self.stacked.xp
        return {j: {name: xp.asarray(value, copy=True) for name, value in layer.buffers.items() if value.ndim == 0}
                for j, layer in enumerate(self.stacked.layers) if any(v.ndim == 0 for v in layer.buffers.values())}

    def _put(self, snapshot, members):
        """``members``' values of ``snapshot`` (``_keep``'s) back into the stack."""
        if snapshot is None or not members:
            return
        xp = self.stacked.xp
        for (store, name), value in zip(self._stores(), snapshot):
            store[name] = xp.where(self._mask(members, value.ndim), value, store[name])
        self.stacked.lay_out()  # new arrays: NumPy's layouts again

    def read(self, active):
        if self.improved and self.template is not None and self.template.restore_best:
            counts = self._counts()
            self.best_counts.update({i: counts for i in self.improved})
            self.best = self._keep(self.best, self.improved)
            self._best_members |= self.improved
        self.improved = set()
        stopping = {i: why for i, why in self.stopping.items() if active[i] and i not in self.history.diverged}
        self.stopping = {}
        if not stopping:
            return False
        self.held = self._keep(self.held, stopping)
        counts = self._counts()
        self.held_counts.update({i: counts for i in stopping})
        for i, why in stopping.items():
            active[i] = False
            rule = self.rules[i] if self.rules is not None else None
            self.history.stopped[i] = {"epoch": self.history.histories[i].records[-1]["epoch"], "reason": why,
                                       "best_epoch": getattr(rule, "best_epoch", None), "best": getattr(rule, "best", None)}
        return True

    def settle(self):
        """Put the stopped members' parameters and buffers back as they were at their stop, before a read shows
        them (a BatchNorm's running statistics move with every training forward, a stopped member's too)."""
        self._put(self.held, set(self.history.stopped))

    def finish(self):
        """The best weights back (``restore_best``; the diverged members' stay zero), or the stopped members'."""
        restore = self._best_members - set(self.history.diverged) if self.best else set()
        stopped = set(self.history.stopped) - restore
        self._put(self.held, stopped)
        self._put(self.best, restore)
        self.stacked._member_buffers = {**{i: self.held_counts[i] for i in stopped},
                                        **{i: self.best_counts[i] for i in restore}}


def _penalty(model, l2_array):
    """``0.5 l2 sum(W ** 2)`` per member, ``(M,)``: the L2 term of each member's loss."""
    xp, total = model.xp, None
    for _, layer, name in model.named_parameters():
        if name in layer.decayed:
            term = _member_sq_sum(model, layer.params[name])
            scale = layer.sq_sum_scale() if isinstance(layer, StackedLinear) else None
            if scale is not None:  # the weight held as scale * V (StackedLinear.decay_lazily)
                term = term * scale
            total = term if total is None else total + term
    return 0.5 * xp.reshape(l2_array, (-1,)) * total


# -- training -------------------------------------------------------------------------------------------
class StackHistory:
    """What ``fit_stack`` returns: one ``History`` per member, and the members that diverged.

    Attributes
    ----------
    histories : list of History
        Member ``i``'s epochs, as ``fit`` would record them (a diverged member's end before its bad epoch).
    diverged : dict of int -> dict
        ``{i: {"epoch", "step", "loss", "message"}}`` for every member whose loss became NaN or infinite.
    stopped : dict of int -> dict
        ``{i: {"epoch", "best_epoch", "best", "reason"}}`` for every member that early stopping (or a schedule
        that ends training) stopped before the last epoch.
    early_stopping : list of EarlyStopping or None
        With early stopping, member ``i``'s rule and its counters (``best``, ``best_epoch``, ``stopped_epoch``;
        ``state_dict`` for a checkpoint).
    optimizer : StackedOptimizer
    names : list of str
    """

    def __init__(self, names, optimizer):
        self.names, self.optimizer = list(names), optimizer
        self.histories = [History() for _ in names]
        self.diverged, self.stopped = {}, {}
        self.early_stopping = None  # each member's EarlyStopping counters (best, best_epoch, ...), with early stopping

    def __getitem__(self, i):
        return self.histories[i]

    def __len__(self):
        return len(self.histories)

    def __repr__(self):
        return f"StackHistory({len(self)} members, {len(self.diverged)} diverged)"


def fit_stack(stacked, X, y, *, optimizer=None, lr=None, l2=0.0, momentum=None, weight_decay=None, loss=None,
              epochs=1, batch_size=100, shuffle=True, seed=0, member_seeds=None, device=None, validation=None,
              log_every=1, callback=None, names=None, on_read=None, schedule=None, early_stopping=None,
              clip_norm=None):
    """Train every member of ``stacked`` in place, each as ``fit`` would train it alone.

    Parameters
    ----------
    stacked : Stacked
        M members (``stack_mlp``, or ``Stacked([...])`` of models made otherwise).
    X : array of shape (n_samples, in_features)
    y : array of shape (n_samples,) or (n_samples, outputs)
        The targets ``loss`` takes, as ``fit``'s.
    optimizer : Optimizer or StackedOptimizer, optional
        ``SGD(...)`` (default ``SGD(0.1)``), ``Adam(...)`` or ``AdamW(...)``: the rule and the settings every
        member shares; or a ``StackedOptimizer`` already made (then ``lr``, ``l2``, ``momentum`` and
        ``weight_decay`` must be left out).
    lr, l2, momentum, weight_decay : float or sequence of M floats, optional
        Per member (see ``StackedOptimizer``); ``l2`` as ``fit``'s, default 0.
    loss, epochs, batch_size, shuffle, validation, log_every, device
        As ``fit``'s.
    seed : int
        The shuffling seed: every member trains on the same minibatches, permuted by ``(seed, epoch)`` as
        ``fit(seed=seed)`` permutes them; each minibatch is read once for all.
    member_seeds : sequence of M ints, optional
        Each member shuffles by its own seed instead (``fit(seed=member_seeds[i])``'s order).
    callback : callable(i, record) -> None, optional
        Called with member ``i``'s every epoch record, in order, when the metrics are read.
    names : sequence of M str, optional
        What ``diverged`` messages call the members (default "member 0", ...).
    on_read : callable(epoch, history) -> None, optional
        Called after each read of the metrics (every ``log_every`` epochs and after the last), with the
        last epoch read and the ``StackHistory`` so far.
    schedule : portablenn.schedules.Schedule, optional
        As ``fit``'s, for every member on its own: each gets a copy, its base lr the member's (a schedule
        that reads the metrics reads the member's; one that ends training, as scikit-learn's adaptive rule
        does, stops that member). Default: the optimizer's ``schedule``, if it has one.
    early_stopping : portablenn.EarlyStopping, optional
        As ``fit``'s, for every member on its own: a member that stops is frozen (its weights no longer
        change) and, with ``restore_best``, every member ends with its best epoch's weights
        (``StackHistory.stopped``). A Dropout layer's mask counter and a BatchNorm's ``num_batches_tracked`` are
        the stack's, shared, and keep counting; ``stacked.member(i)`` gives a stopped or restored member its own
        counts back (those of its stop or best epoch), with its optimizer state and step count
        (``StackedOptimizer.member``).
    clip_norm : float, optional
        As ``fit``'s: each member's gradients scaled to at most this global 2-norm, the member's own.

    Returns
    -------
    StackHistory
    """
    epochs = check_epochs(epochs)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise InputError(f"log_every must be a positive integer, got {log_every!r}")
    check_clip_norm(clip_norm)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise InputError(f"early_stopping must be a portablenn.EarlyStopping, not {type(early_stopping).__name__}")
    if not isinstance(stacked, Stacked):
        raise InputError(f"fit_stack trains a portablenn.stack.Stacked, not {type(stacked).__name__}")
    M = stacked.members
    names = [f"member {i}" for i in range(M)] if names is None else [str(n) for n in names]
    if len(names) != M:
        raise InputError(f"names has {len(names)} entries for {M} members")
    if isinstance(optimizer, StackedOptimizer):
        if any(v is not None for v in (lr, momentum, weight_decay)) or l2:
            raise InputError("a StackedOptimizer carries its own lr, l2, momentum and weight_decay: pass them to it")
        opt = optimizer
    else:
        opt = StackedOptimizer(SGD(0.1) if optimizer is None else optimizer, M, lr=lr, momentum=momentum,
                               weight_decay=weight_decay, l2=l2)
    if member_seeds is not None:
        member_seeds = list(member_seeds)
        if len(member_seeds) != M or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0
                                             for s in member_seeds):
            raise InputError(f"member_seeds must be {M} non-negative integers, got {member_seeds!r}")
    if schedule is None:
        schedule = opt.template.schedule
    check_readers(early_stopping, schedule, log_every)
    loss = get_loss(loss)
    check_monitors(loss, validation is not None, early_stopping, schedule)
    dev, data, val, batch = place(stacked, X, y, validation, loss, device, batch_size)
    check_coupled(stacked.layers, batch, data.n)
    opt.bind(stacked)
    opt.set_schedule(schedule, len(range(0, data.n, batch)), epochs, data.n)
    dev.backend.reserve_heap(dev)  # a stack's temporaries are M times one model's: NumPy keeps freed heap
    shuffled = bool(shuffle) and batch < data.n
    own_orders = shuffled and member_seeds is not None
    value = _stacked_loss(loss, M, own_orders, dev.kernels)
    value_eval = _stacked_loss(loss, M, False, dev.kernels)
    l2_on = any(opt.l2)
    fused = opt.fuses_sgd and clip_norm is None
    starts = range(0, data.n, batch)
    history = StackHistory(names, opt)
    active = np.ones(M, dtype=bool)
    stops = _Stops(stacked, opt, early_stopping, history, callback)
    history.early_stopping = stops.rules
    xp = dev.xp
    pending, rows, was_training = [], [], stacked.training
    train_step = _StackStep(stacked, opt, value, clip_norm, fused)
    static = None  # arrays that cannot change in place (JAX): every minibatch through one compiled pure function
    if not dev.backend.mutable and not own_orders:
        static = PureStep(dev, data, batch, len(starts), train_step, stacked, opt, stacked.dtype, members=M)
    with dev.activate():
        zeros = dev.zeros((M,), stacked.dtype)
        try:
            stacked.train()
            for epoch in range(1, epochs + 1):
                began = time.perf_counter()
                order = orders = None
                if own_orders:
                    orders = dev.asarray(np.stack([np.random.default_rng([s, epoch]).permutation(data.n)
                                                   for s in member_seeds]), dtype=dev.index_dtype)
                elif shuffled:
                    order = dev.asarray(np.random.default_rng([seed, epoch]).permutation(data.n), dtype=dev.index_dtype)
                step_losses, metric = [], zeros
                if static is not None:
                    static.start_epoch(order)
                for index, start in enumerate(starts):
                    stop = min(start + batch, data.n)
                    if static is not None:
                        static.run(index, start, stop)
                        continue
                    if orders is None:
                        xb, targets = data.rows(start, stop, order)
                    else:
                        xb, targets = _member_rows(xp, data, orders, start, stop)
                    loss_sums, metric_sums = train_step(xb, targets, stop - start)
                    step_losses.append(loss_sums)
                    metric = metric + metric_sums
                if static is not None:
                    step_losses, metric = static.finish_epoch()  # (M, steps), (M,)
                else:
                    step_losses = xp.stack(step_losses, axis=1)
                columns = [zeros, metric, zeros, zeros]
                if val is not None:
                    stacked.eval()
                    columns[2], columns[3] = _totals(stacked, val, value_eval)
                    stacked.train()
                    if l2_on:
                        columns[0] = _penalty(stacked, opt._arrays["l2"])
                rows.append(xp.concat([xp.stack(columns, axis=1), step_losses], axis=1))
                pending.append((epoch, began))
                if epoch % log_every == 0 or epoch == epochs:
                    stacked.materialize()  # the members' own weights, for callbacks and freezing
                    stops.settle()
                    newly = _read(dev, rows, pending, history, active, stops.on_record, loss, data, val)
                    rows, pending = [], []
                    if stops.read(active) or newly:
                        opt.freeze(active, zero=[i in history.diverged for i in range(M)])
                    if on_read is not None:
                        on_read(epoch, history)
                    if not active.any():
                        break
            stacked.materialize()
            stops.finish()
        finally:
            stacked.materialize()
            stacked.train(was_training)
            if static is not None:
                static.close()
    return history


class _StackStep:
    """One minibatch of a stack's training, ``(xb, targets, rows, hyper) -> (loss sums (M,), metric sums (M,))``:
    forward, each member's loss (and L2 term), backward, clipping and the update; the body of ``fit_stack``'s
    loop, which ``PureStep`` compiles where arrays cannot change in place (JAX)."""

    def __init__(self, stacked, opt, value, clip_norm, fused):
        self.stacked, self.opt, self.value, self.clip_norm, self.fused = stacked, opt, value, clip_norm, fused
        self.l2_on = any(opt.l2)

    def __call__(self, xb, targets, rows, hyper=None):
        stacked, opt = self.stacked, self.opt
        grad, loss_sums, metric_sums = self.value(stacked.xp, stacked.forward(xb), targets, 1.0 / rows)
        if self.l2_on:
            loss_sums = loss_sums + rows * _penalty(stacked, opt._arrays["l2"])
        if self.fused:
            opt.backward_and_sgd(grad)
        else:
            stacked.backward(grad)
            if self.clip_norm is not None:
                _clip(stacked, self.clip_norm)
            opt.step(hyper)
        return loss_sums, metric_sums


def _member_rows(xp, data, orders, start, stop):
    """Each member's own minibatch: rows ``orders[i, start:stop]``; ``(M, batch, in)`` and the targets likewise."""
    idx = orders[:, start:stop]
    shape = tuple(idx.shape)
    flat = xp.reshape(idx, (-1,))
    xb = xp.reshape(xp.take(data.X, flat, axis=0), shape + tuple(data.X.shape[1:]))
    targets = tuple(xp.reshape(xp.take(t, flat, axis=0), shape + tuple(t.shape[1:])) for t in data.targets)
    return xb, targets


def _totals(stacked, data, value):
    """Each member's summed loss (no L2) and metric on device data: two ``(M,)`` arrays."""
    chunk = max(256, _EVAL_ROWS // stacked.members)
    loss_sums = metric = None
    for start in range(0, data.n, chunk):
        xb, targets = data.rows(start, min(start + chunk, data.n))
        _, step_loss, step_metric = value(stacked.xp, stacked.forward(xb), targets, 1.0)
        loss_sums = step_loss if loss_sums is None else loss_sums + step_loss
        metric = step_metric if metric is None else metric + step_metric
    return loss_sums, metric


def _read(dev, rows, pending, history, active, callback, loss, data, val):
    """Read the pending epochs' rows (one transfer), record each active member's, stop the ones that
    diverged; returns whether any did."""
    values = dev.to_numpy(dev.xp.stack(rows, axis=0)).astype(np.float64)  # (epochs, M, 4 + steps)
    seconds = np.diff([began for _, began in pending] + [time.perf_counter()]).tolist()
    newly = False
    for i in np.flatnonzero(active):
        member = values[:, i, :]
        losses = member[:, 4:]
        columns = {"loss": losses.sum(axis=1) / data.n,
                   **loss.metrics(member[:, 1], data.n, data.outputs, data.statistics)}
        if val is not None:
            columns["val_loss"] = member[:, 2] / val.n + member[:, 0]
            columns.update((f"val_{key}", v) for key, v in
                           loss.metrics(member[:, 3], val.n, val.outputs, val.statistics).items())
        finite = np.isfinite(losses).all(axis=1)
        good = len(pending) if finite.all() else int(np.argmin(finite))
        for k in range(good):
            record = {"epoch": pending[k][0], **{key: float(np.asarray(c)[k]) for key, c in columns.items()},
                      "seconds": seconds[k]}
            history.histories[i].records.append(record)
            if callback is not None:
                callback(int(i), record)
        if good < len(pending):
            epoch, row = pending[good][0], losses[good]
            step = int(np.argmin(np.isfinite(row))) + 1
            history.diverged[int(i)] = {
                "epoch": epoch, "step": step, "loss": float(row[step - 1]),
                "message": f"{history.names[i]}: the training loss became {row[step - 1]} at epoch {epoch}, step "
                           f"{step} of {row.shape[0]}: its learning rate ({history.optimizer.lr[i]:g}) is probably "
                           f"too high"}
            active[i] = False
            newly = True
    return newly


# -- using a trained stack --------------------------------------------------------------------------------
def _forward_all(stacked, X, head):
    """``head(xp, outputs (M, rows, out))`` over ``X`` in eval mode, chunked; a host array, members first."""
    from .validation import check_features

    dev = stacked.device
    n = check_features(X, stacked.in_features, dtype=stacked.dtype)
    chunk = max(256, _EVAL_ROWS // stacked.members)
    was_training = stacked.training
    stacked.eval()
    try:
        with dev.activate():
            Xd = dev.asarray(X, dtype=stacked.dtype)
            parts = [head(dev.xp, stacked.forward(Xd[s:min(s + chunk, n), :])) for s in range(0, n, chunk)]
            return dev.to_numpy(dev.xp.concat(parts, axis=1))
    finally:
        stacked.train(was_training)


def predict_proba_stack(stacked, X, *, loss=None, average=False):
    """Each member's probabilities ``(M, n_samples, classes)`` (softmax for softmax cross-entropy, the
    default; sigmoids for binary cross-entropy), or with ``average`` the ensemble's: their mean over the
    members, ``(n_samples, classes)``."""
    loss = get_loss(loss)
    probabilities = _forward_all(stacked, X, lambda xp, out: xp.stack([loss.probabilities(xp, out[i, ...])
                                                                       for i in range(out.shape[0])]))
    return probabilities.mean(axis=0) if average else probabilities


def predict_stack(stacked, X, *, loss=None, average=False):
    """Each member's predictions ``(M, n_samples)`` (class indices, int64, for softmax cross-entropy), or with
    ``average`` the ensemble's: the class of the largest averaged probability (softmax), 0/1 of the averaged
    sigmoids (binary cross-entropy), the mean output (regression)."""
    loss = get_loss(loss)
    if average:
        if loss.task == "regression":
            return _forward_all(stacked, X, lambda xp, out: out).mean(axis=0)
        p = predict_proba_stack(stacked, X, loss=loss, average=True)
        return (p >= 0.5).astype(np.int64) if loss.task == "multilabel" else np.argmax(p, axis=1).astype(np.int64)
    out = _forward_all(stacked, X, lambda xp, o: xp.stack([loss.predict(xp, o[i, ...]) for i in range(o.shape[0])]))
    return out.astype(np.int64) if out.dtype.kind in "biu" else out


def evaluate_stack(stacked, X, y, *, loss=None, l2=0.0):
    """Each member's mean loss (plus its L2 term: ``l2`` one strength or one per member) and metrics, in eval
    mode: a list of M dicts ``{"loss": ..., "error": ...}`` as ``evaluate(..., return_dict=True)``'s."""
    loss, M, dev = get_loss(loss), stacked.members, stacked.device
    l2s = _listed(l2, M, "l2", _strength)
    was_training = stacked.training
    stacked.eval()
    try:
        with dev.activate():
            data = DeviceData(dev, X, y, stacked, loss)
            loss_sums, metric = _totals(stacked, data, _stacked_loss(loss, M, False))
            l2_array = dev.asarray(np.asarray(l2s).reshape(-1, 1, 1), dtype=stacked.dtype)
            mean = loss_sums / data.n + (_penalty(stacked, l2_array) if any(l2s) else 0.0)
            values = dev.to_numpy(dev.xp.stack([mean, metric], axis=1)).astype(np.float64)
    finally:
        stacked.train(was_training)
    metrics = loss.metrics(values[:, 1], data.n, data.outputs, data.statistics)
    return [{"loss": float(values[i, 0]), **{k: float(np.asarray(v)[i]) for k, v in metrics.items()}}
            for i in range(M)]


# -- memory -----------------------------------------------------------------------------------------------
def stack_memory(sizes, members, itemsize, rows, batch_rows, optimizer_buffers=0, bias=True, own_rows=False,
                 norm=False):
    """Estimated bytes to train a stack of ``members`` ``mlp(sizes)``: ``(total, per member, shared)``.

    One member costs what ``validation.training_memory`` counts for one model, less the data (shared by
    the stack), with the activations of a minibatch or of an evaluation chunk; with ``own_rows`` (each member
    shuffling by its own seed) its minibatch of inputs too.
    """
    sizes = [int(s) for s in sizes]
    eval_rows = max(256, _EVAL_ROWS // max(1, members))
    one, _ = training_memory(sizes, itemsize, rows, batch_rows, optimizer_buffers, bias, eval_rows, norm)
    shared = rows * (sizes[0] + sizes[-1]) * itemsize
    per_member = one - shared + (batch_rows * sizes[0] * itemsize if own_rows else 0)
    return shared + members * per_member, per_member, shared


def memory_limit(device):
    """``(bytes, description)`` a stack on ``device`` may use: the GPU's free memory (CuPy), else the host's
    (``validation.available_memory``); ``(None, None)`` where unknown."""
    info = getattr(getattr(device, "native", None), "mem_info", None)  # cupy.cuda.Device
    if device.kind != "cpu" and info is not None:
        return int(info[0]), f"the free memory of {device.name}"
    return available_memory()


def largest_stack(sizes, itemsize, rows, batch_rows, optimizer_buffers=0, bias=True, own_rows=False, limit=None,
                  norm=False):
    """The most members of ``mlp(sizes)`` a stack may hold within ``limit`` bytes (None: no limit known)."""
    if limit is None:
        return None
    _, per_member, shared = stack_memory(sizes, 1, itemsize, rows, batch_rows, optimizer_buffers, bias, own_rows,
                                         norm)
    return max(0, int((limit - shared) // per_member))


# -- sweeps -----------------------------------------------------------------------------------------------
def grid(**values):
    """Every combination of the given settings (each a value or a list of values): a list of dicts, the
    settings in ``SETTINGS`` order, the last one varying fastest; e.g. ``grid(lr=[0.1, 1.0], seed=[0, 1])``."""
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise InputError(f"unknown sweep settings {unknown}; expected some of {', '.join(SETTINGS)}")
    keys = [k for k in SETTINGS if k in values]
    lists = []
    for k in keys:
        v = values[k]
        many = isinstance(v, (list, tuple)) and not (k == "hidden" and all(isinstance(h, numbers.Integral) for h in v))
        lists.append(list(v) if many else [v])
        if not lists[-1]:
            raise InputError(f"{k} has no values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*lists)]


def _name(settings, varying):
    parts = []
    for key in SETTINGS:
        if key in varying and key in settings:
            v = settings[key]
            parts.append(f"{key}={'x'.join(map(str, v)) if key == 'hidden' else format(v, 'g')}")
    return " ".join(parts)


class SweepResult:
    """The members of a sweep, their histories and trained stacks.

    Attributes
    ----------
    members : list of dict
        Each member's settings (``SETTINGS``: ``hidden`` a tuple; ``lr``, ``l2``, ... floats; ``seed`` an int).
    names : list of str
        ``"lr=0.1 l2=0.001"``: the settings that vary over the sweep.
    histories : list of History
    diverged : dict of int -> dict
        As ``StackHistory.diverged``, by member index in the sweep.
    stopped : dict of int -> dict
        As ``StackHistory.stopped``, by member index in the sweep.
    early_stopping : dict of int -> EarlyStopping
        With early stopping, each member's rule and counters (``StackHistory.early_stopping``).
    restored : dict of int -> int
        The epoch whose weights early stopping put back, by member (``restore_best``): ``final`` reads it.
    groups : list of (indices, Stacked, StackedOptimizer)
        The stacks trained: one per architecture (and chunk), the members' indices in the sweep.
    notes : list of str
        What the sweep did that a reader should know (groups, chunks).
    """

    def __init__(self, members, names):
        self.members, self.names = members, names
        self.histories, self.diverged, self.groups, self.notes = [History() for _ in members], {}, [], []
        self.stopped, self.early_stopping, self.restored = {}, {}, {}

    def __len__(self):
        return len(self.members)

    def _where(self, i):
        for indices, stacked, opt in self.groups:
            if i in indices:
                return indices.index(i), stacked, opt
        raise IndexError(f"member {i} was not trained")

    def model(self, i, device=None):
        """Member ``i`` as an ordinary ``Sequential``."""
        k, stacked, _ = self._where(i)
        return stacked.member(k, device)

    def optimizer(self, i):
        """Member ``i``'s ordinary optimizer, with its state (``StackedOptimizer.member``)."""
        k, _, opt = self._where(i)
        return opt.member(k)

    def final(self, i, field):
        """``field`` of the epoch whose weights member ``i`` ends with: the last recorded, or the best one that
        early stopping restored (``restored``); NaN where it diverged or recorded none."""
        if i in self.diverged or not self.histories[i].records:
            return math.nan
        records = self.histories[i].records
        if i in self.restored:
            records = [r for r in records if r["epoch"] == self.restored[i]] or records
        return records[-1].get(field, math.nan)

    def ranking(self, field):
        """Member indices from the best final ``field`` to the worst (``r2`` upwards, the others downwards), ties
        broken by the final loss of the same split; diverged members last."""
        sign = -1.0 if field.removeprefix("val_") == "r2" else 1.0
        tie = "val_loss" if field.startswith("val_") else "loss"

        def key(i):
            value, loss = self.final(i, field), self.final(i, tie)
            return (math.isnan(value), sign * value if not math.isnan(value) else 0.0,
                    loss if not math.isnan(loss) else math.inf, i)
        return sorted(range(len(self)), key=key)

    def spread(self, field):
        """``[(settings without seed, [member indices], mean, std), ...]`` of the final ``field`` over the seeds
        of each setting (std with ``ddof=0``; NaN where a member diverged), for settings run with several seeds."""
        groups = {}
        for i, m in enumerate(self.members):
            key = tuple((k, m[k]) for k in SETTINGS if k in m and k != "seed")
            groups.setdefault(key, []).append(i)
        out = []
        for key, indices in groups.items():
            if len(indices) > 1:
                values = np.array([self.final(i, field) for i in indices])
                out.append((dict(key), indices, float(values.mean()), float(values.std())))
        return out


def sweep(X, y, members, *, outputs=None, activation="relu", bias=True, init="auto", dtype="float32", optimizer="sgd",
          nesterov=False, loss=None, epochs=1, batch_size=100, shuffle=True, seed=0, shuffle_per_member=False,
          device=None, validation=None, log_every=1, callback=None, chunk=False, on_group=None, on_read=None,
          schedule=None, early_stopping=None, clip_norm=None, norm=None):
    """Train every member of ``members`` (``grid(...)``'s dicts), one stack per architecture.

    Parameters
    ----------
    X, y : the training data, as ``fit``'s
    members : list of dict
        Each with any of ``SETTINGS``: ``hidden`` (hidden widths, default ``(100,)``), ``lr`` (default 0.1),
        ``l2``, ``momentum``, ``weight_decay`` (AdamW), ``dropout`` (default 0) and ``seed`` (the initial
        weights, default 0).
    outputs : int, optional
        The model's outputs; default the classes (largest label + 1, over ``y`` and the validation labels)
        for softmax cross-entropy, the target columns otherwise.
    activation, bias, init, dtype, norm : as ``mlp``'s, shared by every member
    optimizer : {"sgd", "adam", "adamw"}
    nesterov : bool
        SGD's Nesterov momentum, for every member.
    seed : int
        The shuffling seed all members share; with ``shuffle_per_member`` each member shuffles by its own ``seed``.
    chunk : bool
        Where the device's memory cannot hold a whole stack, train it in chunks of as many members as fit
        (said in ``notes``); otherwise refuse (InputError naming the most members that would fit).
    callback : callable(i, record), optional
        Member ``i`` of the sweep, each epoch record.
    on_group : callable(indices, stacked), optional
        Called before each stack trains (the command line prints it).
    on_read : callable(epoch, indices, StackHistory), optional
        Called after each read of a stack's metrics (``fit_stack``'s ``on_read``), with its members' indices.
    schedule, early_stopping, clip_norm : optional
        As ``fit_stack``'s: each member has its own schedule and early stopping.

    Returns
    -------
    SweepResult
    """
    if not members:
        raise InputError("a sweep needs at least one member")
    loss = get_loss(loss)
    members = [_settings(m, k) for k, m in enumerate(members)]
    varying = {k for k in SETTINGS if len({repr(m.get(k)) for m in members}) > 1}
    names = [_name(m, varying) or f"member {i}" for i, m in enumerate(members)]
    result = SweepResult(members, names)
    if optimizer not in OPTIMIZERS or OPTIMIZERS[optimizer] not in (SGD, Adam, AdamW):
        raise InputError(f"a sweep trains with sgd, adam or adamw, not {optimizer!r}")
    n_in = int(np.shape(X)[1]) if len(np.shape(X)) == 2 else None
    if outputs is None:
        if loss.task == "classification":
            labels = [np.asarray(y)] + ([np.asarray(validation[1])] if validation else [])
            outputs = int(max(int(np.max(lab)) for lab in labels)) + 1
        else:
            outputs = 1 if np.ndim(y) == 1 else int(np.shape(y)[1])
    dev = backend.device("cpu") if device is None else backend.device(device)
    rows = int(np.shape(X)[0])
    batch = rows if batch_size is None else min(int(batch_size), rows)
    groups = {}
    for i, m in enumerate(members):
        groups.setdefault(tuple(m["hidden"]), []).append(i)
    if len(groups) > 1:
        result.notes.append(f"{len(groups)} architectures ({', '.join('x'.join(map(str, h)) for h in groups)}): "
                            f"one stack each, trained one after another")
    template_cls = OPTIMIZERS[optimizer]
    buffers = {SGD: 1 if any(m["momentum"] for m in members) else 0, Adam: 2, AdamW: 2}[template_cls]
    itemsize = np.dtype(dtype).itemsize
    limit, source = memory_limit(dev)
    for hidden, indices in groups.items():
        sizes = [n_in, *hidden, outputs]
        need, _, _ = stack_memory(sizes, len(indices), itemsize, rows, batch, buffers, bias, shuffle_per_member,
                                  bool(norm))
        size = len(indices)
        if limit is not None and need > limit:
            most = largest_stack(sizes, itemsize, rows, batch, buffers, bias, shuffle_per_member, limit, bool(norm))
            if not chunk or most < 1:
                raise InputError(f"a stack of {len(indices)} members {sizes} needs {format_bytes(need)}, more than "
                                 f"{source} ({format_bytes(limit)}); at most {most} members would fit: sweep fewer "
                                 f"settings, or train in chunks" + (" (--chunk)" if most else ""))
            size = most
            result.notes.append(f"{'x'.join(map(str, hidden))}: {len(indices)} members need {format_bytes(need)}, "
                                f"more than {source} ({format_bytes(limit)}): trained in chunks of {most}")
        for c in range(0, len(indices), size):
            part = indices[c:c + size]
            ms = [members[i] for i in part]
            stacked = stack_mlp(sizes, [m["seed"] for m in ms], activation=activation, bias=bias, init=init,
                                dtype=dtype, dropout=[m["dropout"] for m in ms], norm=norm)
            extra = {"nesterov": True} if nesterov else {}
            if template_cls is SGD:
                template = SGD(ms[0]["lr"], momentum=max(m["momentum"] for m in ms) or 0.0, **extra)
            else:
                template = template_cls(ms[0]["lr"])
            opt = StackedOptimizer(template, len(ms), lr=[m["lr"] for m in ms], l2=[m["l2"] for m in ms],
                                   momentum=[m["momentum"] for m in ms] if template_cls is SGD else None,
                                   weight_decay=[m["weight_decay"] for m in ms] if template_cls is AdamW else None)
            if on_group is not None:
                on_group(part, stacked)
            forward = None if callback is None else (lambda k, record, part=part: callback(part[k], record))
            history = fit_stack(stacked, X, y, optimizer=opt, loss=loss, epochs=epochs, batch_size=batch_size,
                                shuffle=shuffle, seed=seed,
                                member_seeds=[m["seed"] for m in ms] if shuffle_per_member else None,
                                device=dev, validation=validation, log_every=log_every, callback=forward,
                                names=[names[i] for i in part], schedule=schedule, early_stopping=early_stopping,
                                clip_norm=clip_norm,
                                on_read=None if on_read is None else (lambda e, h, part=part: on_read(e, part, h)))
            for k, i in enumerate(part):
                result.histories[i] = history.histories[k]
                if k in history.diverged:
                    result.diverged[i] = history.diverged[k]
                if k in history.stopped:
                    result.stopped[i] = history.stopped[k]
                if history.early_stopping is not None:
                    result.early_stopping[i] = rule = history.early_stopping[k]
                    if early_stopping.restore_best and rule.best_epoch is not None and k not in history.diverged:
                        result.restored[i] = rule.best_epoch
            result.groups.append((part, stacked, opt))
    return result


_DEFAULTS = {"hidden": (100,), "lr": 0.1, "l2": 0.0, "momentum": 0.0, "weight_decay": 0.0, "dropout": 0.0, "seed": 0}


def _settings(member, k):
    """One member's settings, every key of ``SETTINGS`` filled and checked; InputError naming member ``k``."""
    if not isinstance(member, dict):
        raise InputError(f"member {k} must be a dict of settings, not {type(member).__name__}")
    unknown = sorted(set(member) - set(SETTINGS))
    if unknown:
        raise InputError(f"member {k} has unknown settings {unknown}; expected some of {', '.join(SETTINGS)}")
    m = {**_DEFAULTS, **member}
    hidden = m["hidden"]
    hidden = (hidden,) if isinstance(hidden, numbers.Integral) else tuple(hidden)
    if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise InputError(f"member {k}: hidden must be positive integer widths, got {m['hidden']!r}")
    seed = m["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"member {k}: seed must be a non-negative integer, got {seed!r}")
    return {"hidden": tuple(int(h) for h in hidden), "lr": _rate(m["lr"], f"member {k}: lr"),
            "l2": _strength(m["l2"], f"member {k}: l2"),
            "momentum": _number(m["momentum"], f"member {k}: momentum", 0.0, 1.0),
            "weight_decay": _strength(m["weight_decay"], f"member {k}: weight_decay"),
            "dropout": _probability(m["dropout"], f"member {k}: dropout"), "seed": int(seed)}
