"""Optimizers as update rules over (parameter, gradient, state): SGD (momentum, Nesterov) and Adam.

Each rule is written twice, side by side: ``update`` returns new arrays (for immutable backends) and
``update_`` changes the parameter and its state in place through the device's kernels (whose fast
twins fuse it). ``hyper(step)`` gives the host scalars of a step (Adam's bias correction), so the rule
itself never reads the step counter; with a learning-rate schedule set (``optimizer.schedule``, a
``portablenn.schedules.Schedule``) the lr of step ``t`` is ``lr_at(t) = lr * schedule.factor(t)``, a host
float too. The gradients a rule receives are true gradients of the loss;
``decay`` is the L2 strength for a weight matrix (0 for a bias): ``grad + decay * param``; ``decays``
says whether the parameter takes decoupled weight decay (AdamW): weight matrices do, biases do not.
"""
from .registry import OPTIMIZERS, Configurable, register_optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS"]


class Optimizer(Configurable):
    """Base class: hyper-parameters, per-parameter state (``state[key]``: a tuple of ``slots`` buffers) and
    the count of steps taken. ``fit`` binds it to a model; ``step()`` updates from ``layer.grads``."""

    slots = 0  # state buffers per parameter, shaped like it
    constant_hyper = True  # hyper(step) is the same at every step when no schedule is set
    _schedule = None

    def __init__(self, lr):
        lr = float(lr)
        if not lr > 0 or lr == float("inf"):
            raise ValueError(f"learning rate must be a positive finite number, got {lr}")
        self.lr = lr
        self.state = {}
        self.steps = 0
        self.model = None
        self.l2 = 0.0
        self._schedule = None

    @property
    def schedule(self):
        """The learning-rate schedule (``portablenn.schedules.Schedule``) or None (a constant lr); setting
        one tells it the base lr (``schedule.base_lr``)."""
        return self._schedule

    @schedule.setter
    def schedule(self, schedule):
        if schedule is not None:
            if not callable(getattr(schedule, "factor", None)):
                raise ValueError(f"a schedule must be a portablenn.schedules.Schedule, not {type(schedule).__name__}")
            schedule.base_lr = self.lr
        self._schedule = schedule

    @property
    def replayable(self):
        """Whether every step does the same work with the same scalars, so that a recorded step (a CUDA
        graph, which bakes them in) may replay it: not with a schedule, nor with Adam's bias correction."""
        return self.constant_hyper and self._schedule is None

    def lr_at(self, step):
        """The learning rate of step ``step`` (1-based): ``lr``, times ``schedule.factor(step)`` if one is set."""
        return self.lr if self._schedule is None else self.lr * self._schedule.factor(step)

    # -- the rule --------------------------------------------------------------------------------------
    def hyper(self, step):
        """Host scalars for step number ``step`` (1-based), passed to ``update``/``update_``."""
        return (self.lr_at(step),)

    def update(self, xp, param, grad, state, decay, hyper, decays=True):
        """Functional form: ``(new_param, new_state)``."""
        raise NotImplementedError

    def update_(self, kernels, param, grad, state, decay, hyper, decays=True):
        """In-place form: changes ``param`` and the buffers of ``state``."""
        raise NotImplementedError

    # -- binding and the parameters' state -------------------------------------------------------------
    def bind(self, model, l2=0.0):
        """Attach to ``model`` with L2 strength ``l2``; existing state follows the model to its device."""
        if self.model is not model:  # a new model starts afresh
            self.state, self.steps = {}, 0
        self.model, self.l2 = model, float(l2)
        self._params = model.named_parameters()
        if getattr(self, "_device", model.device) != model.device:
            old = self._device
            self.state = {key: tuple(model.device.asarray(old.to_numpy(b)) for b in buffers)
                          for key, buffers in self.state.items()}
        self._device = model.device
        return self

    def buffers(self, key, param, device):
        """The state of parameter ``key``, created as zeros like ``param`` on first use."""
        if key not in self.state:
            self.state[key] = tuple(device.zeros(param.shape, param.dtype) for _ in range(self.slots))
        return self.state[key]

    def step(self):
        """Update every bound parameter in place from ``layer.grads`` (true gradients), L2 on weights."""
        self.steps += 1
        hyper = self.hyper(self.steps)
        for key, layer, name in self._params:
            p = layer.params[name]
            self.update_(layer.kernels, p, layer.grads[name], self.buffers(key, p, layer.device),
                         self.l2 if name in layer.decayed else 0.0, hyper, decays=name in layer.decayed)

    config_keys = ("lr",)  # the registry's config protocol (Configurable)

    def __getstate__(self):  # a pickled or copied optimizer leaves behind what fit keeps for its next call
        state = dict(self.__dict__)
        state.pop("_pure_step", None)
        return state


@register_optimizer(name="sgd")
class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, as ``torch.optim.SGD`` for a
    constant learning rate; the velocity buffer holds ``lr * v`` (what checkpoints have always stored).

    With a schedule, ``lr_t`` changes from step to step and this is Keras's (and scikit-learn's) SGD, not
    torch's: ``velocity = momentum * velocity + lr_t * g``, then ``param -= velocity`` or, Nesterov,
    ``param -= lr_t * g + momentum * velocity``. (Torch keeps ``b = momentum * b + g`` and takes
    ``param -= lr_t * b``: past gradients move at the current lr there, at their own lr here.)"""

    config_keys = ("lr", "momentum", "nesterov")

    def __init__(self, lr, momentum=0.0, nesterov=False):
        super().__init__(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and not self.momentum:
            raise ValueError("nesterov momentum needs momentum > 0")

    @property
    def slots(self):
        return 1 if self.momentum else 0

    def update(self, xp, param, grad, state, decay, hyper, decays=True):
        (lr,) = hyper
        if decay:
            grad = grad + decay * param
        if not self.momentum:
            return param - lr * grad, state
        (velocity,) = state
        velocity = self.momentum * velocity + lr * grad
        return param - ((lr * grad + self.momentum * velocity) if self.nesterov else velocity), (velocity,)

    def update_(self, kernels, param, grad, state, decay, hyper, decays=True):
        (lr,) = hyper
        if self.momentum:
            kernels.momentum_(param, state[0], grad, lr, self.momentum, decay, self.nesterov)
        else:
            kernels.sgd_(param, grad, lr, decay)


@register_optimizer(name="adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's defaults and L2 added to the gradient (``torch.optim.Adam``)."""

    slots = 2  # first and second moments
    constant_hyper = False  # the bias-corrected step size is computed on the host every step
    config_keys = ("lr", "beta1", "beta2", "eps")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0 and self.eps > 0):
            raise ValueError("Adam needs 0 <= beta1, beta2 < 1 and eps > 0")

    def hyper(self, step):
        """``(step_size, eps_hat)``: the bias corrections folded into the step size (of the step's lr,
        ``lr_at(step)``) and epsilon."""
        correction1 = 1.0 - self.beta1 ** step
        root2 = (1.0 - self.beta2 ** step) ** 0.5
        return self.lr_at(step) * root2 / correction1, self.eps * root2

    def update(self, xp, param, grad, state, decay, hyper, decays=True):
        step_size, eps_hat = hyper[0], hyper[1]  # AdamW appends its decay factor
        if decay:
            grad = grad + decay * param
        m, v = state
        m = self.beta1 * m + (1.0 - self.beta1) * grad
        v = self.beta2 * v + (1.0 - self.beta2) * (grad * grad)
        return param - step_size * (m / (xp.sqrt(v) + eps_hat)), (m, v)

    def update_(self, kernels, param, grad, state, decay, hyper, decays=True):
        step_size, eps_hat = hyper[0], hyper[1]
        m, v = state
        kernels.adam_(param, m, v, grad, self.beta1, self.beta2, step_size, eps_hat, decay)


@register_optimizer(name="adamw")
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019; ``torch.optim.AdamW``): each step first
    shrinks a decaying parameter, ``param *= 1 - lr_t * weight_decay`` (``lr_t`` the step's scheduled lr, as
    torch), then takes Adam's step. Weight matrices decay; biases do not (PyTorch decays every parameter
    unless told otherwise). ``fit(l2=...)`` still adds
    a coupled L2 term to the gradient if asked; AdamW's own decay is ``weight_decay``."""

    config_keys = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(lr, beta1, beta2, eps)
        self.weight_decay = float(weight_decay)
        if not 0.0 <= self.weight_decay < float("inf"):
            raise ValueError(f"AdamW needs a finite weight_decay >= 0, got {weight_decay}")

    def hyper(self, step):
        """Adam's ``(step_size, eps_hat)`` and the decoupled decay's factor ``1 - lr_t * weight_decay``."""
        return (*super().hyper(step), 1.0 - self.lr_at(step) * self.weight_decay)

    # a coupled L2 term (fit's l2) joins the gradient from the parameter before it shrinks, as autograd's would
    def update(self, xp, param, grad, state, decay, hyper, decays=True):
        if decays and self.weight_decay:
            grad, decay, param = (grad + decay * param if decay else grad), 0.0, param * hyper[2]
        return super().update(xp, param, grad, state, decay, hyper)

    def update_(self, kernels, param, grad, state, decay, hyper, decays=True):
        if decays and self.weight_decay:
            if decay:
                grad, decay = grad + decay * param, 0.0
            kernels.scale_(param, hyper[2])
        super().update_(kernels, param, grad, state, decay, hyper)
