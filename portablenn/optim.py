"""Optimizers: SGD (momentum, Nesterov) and Adam, updating a model's parameters in place on its device."""

__all__ = ["Optimizer", "SGD", "Adam", "OPTIMIZERS"]


class Optimizer:
    """Base class. ``fit`` binds it to a model, folds ``grad_scale`` into the loss gradient, then calls ``step``.

    ``grad_scale`` lets SGD multiply the learning rate into the small ``(batch, classes)`` gradient
    once instead of into every weight gradient; ``step`` knows the gradients carry it. An optimizer
    whose ``in_backward`` is True updates each Linear layer during ``model.backward(...,
    optimizer=opt)`` through ``update_linear`` instead (no weight gradient is materialised).
    ``l2`` (set by ``bind``) adds ``l2 * W`` to the gradient of every weight matrix, not biases.
    """

    grad_scale = 1.0
    in_backward = False
    replayable = True  # the same operations every step: a recorded step (CUDA graph) may replay it

    def __init__(self, lr):
        lr = float(lr)
        if not lr > 0 or lr == float("inf"):
            raise ValueError(f"learning rate must be a positive finite number, got {lr}")
        self.lr = lr
        self.state = {}
        self.steps = 0
        self.model = None
        self.l2 = 0.0

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

    def _buffers(self, key, layer, name, count):
        if key not in self.state:
            p = layer.params[name]
            self.state[key] = tuple(layer.device.zeros(p.shape, p.dtype) for _ in range(count))
        return self.state[key]

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items()
                         if not k.startswith("_") and k not in ("state", "steps", "model", "l2"))
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, as ``torch.optim.SGD``.

    Without momentum it updates inside backward (``in_backward``): one GEMM per weight matrix.
    """

    def __init__(self, lr, momentum=0.0, nesterov=False):
        super().__init__(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and not self.momentum:
            raise ValueError("nesterov momentum needs momentum > 0")

    @property
    def grad_scale(self):
        return self.lr

    @property
    def in_backward(self):
        return not self.momentum

    def step(self):
        """Update every parameter in place from ``layer.grads`` (which already hold the factor lr)."""
        self.steps += 1
        for key, layer, name in self._params:
            decay = self.lr * self.l2 if name == "weight" else 0.0
            p, g, k = layer.params[name], layer.grads[name], layer.kernels
            if self.momentum:
                (velocity,) = self._buffers(key, layer, name, 1)
                k.momentum_(p, velocity, g, self.momentum, decay, self.nesterov)
            else:
                k.sgd_(p, g, decay)

    def update_linear(self, layer, x, grad_output):
        """Plain SGD inside backward: ``W = W (1 - lr l2) - x.T @ grad_output``, ``b -= sum(grad_output)``."""
        k, weight = layer.kernels, layer.params["weight"]
        k.matmul_update_(weight, x.T, grad_output, -1.0, 1.0 - self.lr * self.l2)  # the decay as GEMM's beta
        if "bias" in layer.params:
            k.sgd_(layer.params["bias"], k.sum_rows(grad_output), 0.0)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's defaults and L2 added to the gradient (``torch.optim.Adam``)."""

    replayable = False  # the bias-corrected step size is computed on the host every step

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0 and self.eps > 0):
            raise ValueError("Adam needs 0 <= beta1, beta2 < 1 and eps > 0")

    def step(self):
        """Update every parameter in place from ``layer.grads``."""
        self.steps += 1
        l2 = self.l2
        correction1 = 1.0 - self.beta1 ** self.steps
        root2 = (1.0 - self.beta2 ** self.steps) ** 0.5
        step_size, eps_hat = self.lr * root2 / correction1, self.eps * root2
        for key, layer, name in self._params:
            m, v = self._buffers(key, layer, name, 2)
            layer.kernels.adam_(layer.params[name], m, v, layer.grads[name], self.beta1, self.beta2,
                                step_size, eps_hat, l2 if name == "weight" else 0.0)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
