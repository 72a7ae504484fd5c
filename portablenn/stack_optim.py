"""The update rule over a stack (``portablenn.stack.Stacked``), with per-member hyperparameters.

``StackedOptimizer`` holds each member's learning rate, L2 strength, momentum and weight decay as ``(M, 1, 1)``
device arrays and updates every member with the formulas of ``SGD.update`` (or Adam's and AdamW's own
``update``); ``backward_and_sgd`` is the fused SGD step of NumPy's kernels. Also here: the per-member checks
of those settings, gradient clipping per member and each member's L2 term.
"""
import copy
import math
import numbers

import numpy as np

from .optim import SGD, Adam, AdamW, Optimizer
from .stack import StackedLinear
from .validation import InputError

__all__ = ["StackedOptimizer"]


# -- per-member settings --------------------------------------------------------------------------------
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


# -- per-member clipping and L2 term ------------------------------------------------------------
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
