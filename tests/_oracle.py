"""An independent reference of what ``fit`` trains, written from the formulas in plain NumPy.

Nothing here calls portablenn: the forward pass, the gradients of softmax cross-entropy through the
network (by the chain rule, layer by layer) and the optimizers are written out again from their
definitions, so a bug shared by every portablenn backend (the fast NumPy path inherits most of the
generic Array API kernels) still shows. The optimizers follow PyTorch's documented algorithms:

* ``torch.optim.SGD`` (https://pytorch.org/docs/stable/generated/torch.optim.SGD.html), dampening 0::

      g = grad + weight_decay * p
      b = g                      (first step)      b = momentum * b + g      (later steps)
      g = g + momentum * b       (nesterov)        g = b                     (otherwise)
      p = p - lr * g

* ``torch.optim.Adam`` (https://pytorch.org/docs/stable/generated/torch.optim.Adam.html)::

      g = grad + weight_decay * p
      m = beta1 * m + (1 - beta1) * g              v = beta2 * v + (1 - beta2) * g ** 2
      p = p - lr * (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps)

with ``weight_decay`` applied to weight matrices only (portablenn's ``l2``: "adds l2 * W to the
gradient of every weight matrix, not biases"). Everything runs in the dtype asked for (float64 by
default), arrays of that dtype and Python floats, so float32 references round like float32 code.
"""
import numpy as np

__all__ = ["architecture", "mlp_architecture", "loss_and_grads", "probabilities", "penalty", "metrics", "SGD",
           "Adam", "make", "train", "shuffled_orders"]

_GELU_C, _GELU_A = np.sqrt(2.0 / np.pi), 0.044715


def _gelu_slope(z, out):
    t = np.tanh(_GELU_C * (z + _GELU_A * z ** 3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t ** 2) * _GELU_C * (1.0 + 3.0 * _GELU_A * z ** 2)


# name -> (forward, derivative from (input, output)), from the formulas (PyTorch's documented definitions)
_ACT = {
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, out: (z > 0).astype(out.dtype)),
    "tanh": (np.tanh, lambda z, out: 1.0 - out * out),
    "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda z, out: out * (1.0 - out)),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.01 * z), lambda z, out: np.where(z > 0, 1.0, 0.01)),
    "gelu": (lambda z: 0.5 * z * (1.0 + np.tanh(_GELU_C * (z + _GELU_A * z ** 3))), _gelu_slope),
    "identity": (lambda z: z, lambda z, out: np.ones_like(z)),
}
_LAYER_NAMES = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyReLU": "leaky_relu", "GELU": "gelu",
                "Identity": "identity"}


def architecture(model):
    """A portablenn ``Sequential`` as a list: the index of each Linear layer, the name of each activation."""
    return [i if type(layer).__name__ == "Linear" else _LAYER_NAMES[type(layer).__name__]
            for i, layer in enumerate(model.layers)]


def mlp_architecture(linears, activation):
    """``Linear -> act -> ... -> Linear`` with ``linears`` Linear layers: ``[0, act, 2, act, 4]``."""
    arch = []
    for j in range(linears):
        if j:
            arch.append(activation)
        arch.append(len(arch))
    return arch


def _cast(params, dtype):
    return {k: np.array(v, dtype=dtype, copy=True) for k, v in params.items()}


def _forward(params, arch, X):
    a, cache = X, []
    for item in arch:
        if isinstance(item, int):
            cache.append((item, a))
            a = a @ params[f"{item}.weight"]
            if f"{item}.bias" in params:
                a = a + params[f"{item}.bias"]
        else:
            z, a = a, _ACT[item][0](a)
            cache.append((item, (z, a)))
    return a, cache


def _xent(logits, y):
    """Per-row ``-log softmax(logits)[label]`` and ``softmax(logits)``."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1)
    return np.log(total) - z[np.arange(len(y)), y], e / total[:, None]


def loss_and_grads(params, arch, X, y, weight=None):
    """Mean softmax cross-entropy of ``(X, y)``, number of wrong arg-maxes, and the gradient of the
    mean loss with respect to every parameter (keys as the state dict's), by backpropagation. With
    ``weight`` (one per row) the mean is of each row's loss times its weight, still over the rows."""
    logits, cache = _forward(params, arch, X)
    rows, p = _xent(logits, y)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    if weight is not None:
        rows, p, onehot = rows * weight, p * weight[:, None], onehot * weight[:, None]
    delta = (p - onehot) / len(y)  # d mean-loss / d logits
    grads = {}
    for item, saved in reversed(cache):
        if isinstance(item, int):  # saved = the layer's input
            W = params[f"{item}.weight"]
            grads[f"{item}.weight"] = saved.T @ delta
            if f"{item}.bias" in params:
                grads[f"{item}.bias"] = delta.sum(axis=0)
            delta = delta @ W.T
        else:  # saved = the activation's input and output
            delta = delta * _ACT[item][1](*saved)
    wrong = int(np.sum(np.argmax(logits, axis=1) != y))
    return float(np.mean(rows)), wrong, grads


def probabilities(params, arch, X):
    """Softmax of the network's outputs for the rows of ``X``."""
    return _xent(_forward(params, arch, X)[0], np.zeros(len(X), dtype=int))[1]


def penalty(params, l2):
    """``0.5 * l2 * sum(W ** 2)`` over weight matrices."""
    return 0.5 * l2 * sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for k, v in params.items()
                          if k.endswith(".weight"))


def metrics(params, arch, X, y, l2=0.0, dtype="float64"):
    """``(mean loss + L2 term, error rate)`` of the parameters on ``(X, y)``."""
    params = _cast(params, dtype)
    loss, wrong, _ = loss_and_grads(params, arch, np.asarray(X, dtype), np.asarray(y))
    return loss + penalty(params, l2), wrong / len(y)


class SGD:
    """``torch.optim.SGD`` (see the module docstring) on dicts of arrays; weight decay on ``*.weight`` only."""

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.buffers, self.t = {}, 0

    def step(self, params, grads):
        self.t += 1
        for key in params:
            g = grads[key]
            if key.endswith(".weight") and self.weight_decay:
                g = g + self.weight_decay * params[key]
            if self.momentum:
                b = g if key not in self.buffers else self.momentum * self.buffers[key] + g
                self.buffers[key] = b
                g = g + self.momentum * b if self.nesterov else b
            params[key] = params[key] - self.lr * g


class Adam:
    """``torch.optim.Adam`` (see the module docstring) on dicts of arrays; weight decay on ``*.weight`` only."""

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, beta1, beta2, eps, weight_decay
        self.m, self.v, self.t = {}, {}, 0

    def step(self, params, grads):
        self.t += 1
        for key in params:
            g = grads[key]
            if key.endswith(".weight") and self.weight_decay:
                g = g + self.weight_decay * params[key]
            m = self.beta1 * self.m.get(key, 0.0 * g) + (1.0 - self.beta1) * g
            v = self.beta2 * self.v.get(key, 0.0 * g) + (1.0 - self.beta2) * (g * g)
            self.m[key], self.v[key] = m, v
            m_hat = m / (1.0 - self.beta1 ** self.t)
            v_hat = v / (1.0 - self.beta2 ** self.t)
            params[key] = params[key] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    """``torch.optim.AdamW`` on dicts of arrays: ``p *= 1 - lr * weight_decay`` (weights only), then Adam's step
    with the gradient (which carries a coupled ``l2 * p`` from the parameter before it shrank, if any)."""

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, l2=0.0):
        super().__init__(lr, beta1, beta2, eps, 0.0)
        self.decoupled, self.l2 = weight_decay, l2

    def step(self, params, grads):
        grads = dict(grads)
        for key in params:
            if key.endswith(".weight"):
                if self.l2:
                    grads[key] = grads[key] + self.l2 * params[key]
                params[key] = params[key] * (1.0 - self.lr * self.decoupled)
        super().step(params, grads)


def make(kind, kwargs, l2=0.0):
    """The reference of ``pn.SGD(**kwargs)`` (kind "sgd"), ``pn.Adam(**kwargs)`` ("adam") or ``pn.AdamW`` ("adamw")
    with ``l2``."""
    if kind == "adamw":
        return AdamW(kwargs.get("lr", 1e-3), kwargs.get("beta1", 0.9), kwargs.get("beta2", 0.999),
                     kwargs.get("eps", 1e-8), kwargs.get("weight_decay", 0.01), l2)
    if kind == "sgd":
        return SGD(kwargs["lr"], kwargs.get("momentum", 0.0), kwargs.get("nesterov", False), l2)
    return Adam(kwargs.get("lr", 1e-3), kwargs.get("beta1", 0.9), kwargs.get("beta2", 0.999),
                kwargs.get("eps", 1e-8), l2)


def shuffled_orders(n, seed, epochs, initial_epoch=0):
    """The row order of each epoch of a shuffled ``fit``: "a new permutation each epoch, drawn from
    (seed, epoch)", i.e. ``numpy.random.default_rng([seed, epoch]).permutation(n)``, epochs 1-based."""
    return [np.random.default_rng([seed, epoch]).permutation(n) for epoch in range(initial_epoch + 1, epochs + 1)]


class Result:
    """``params`` at the end, ``steps`` (the parameters after every step), per-epoch ``loss``/``error``
    (running means over the minibatches as trained, the L2 term included, as ``History``) and, with
    validation data, ``val_loss``/``val_error`` after each epoch."""

    def __init__(self):
        self.steps, self.loss, self.error, self.val_loss, self.val_error = [], [], [], [], []


def clip(grads, max_norm):
    """``torch.nn.utils.clip_grad_norm_``: every gradient times ``min(1, max_norm / (norm + 1e-6))``, where
    ``norm`` is the 2-norm of all gradients together (before weight decay, which the optimizer adds)."""
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    factor = min(1.0, max_norm / (norm + 1e-6))
    return {k: g * factor for k, g in grads.items()}


def train(initial, arch, X, y, optimizer, *, epochs, batch=None, l2=0.0, orders=None, validation=None,
          dtype="float64", clip_norm=None, sample_weight=None):
    """Minibatch training of ``initial`` (a state dict) on softmax cross-entropy plus ``0.5 l2 sum(W^2)``.

    ``batch`` None is full batch; the last minibatch of an epoch holds the remaining rows and its
    gradient is the mean over those rows. ``orders[e]`` is the row order of epoch ``e`` (default: in
    order). ``optimizer`` is an ``SGD`` or ``Adam`` here, its ``weight_decay`` the same ``l2``. With
    ``clip_norm`` every step's gradients are clipped to that global 2-norm first (``clip``). With
    ``sample_weight`` each row's loss counts times its weight, the weights first scaled to average 1 over
    the rows (``fit``'s documented rule); the minibatch mean is still over its rows.
    """
    params = _cast(initial, dtype)
    X, y = np.asarray(X, dtype), np.asarray(y)
    n = len(y)
    weight = None
    if sample_weight is not None:
        weight = np.asarray(sample_weight, np.float64)
        weight = (weight * (n / weight.sum())).astype(dtype)
    batch = batch or n
    out = Result()
    for epoch in range(epochs):
        order = np.arange(n) if orders is None else orders[epoch]
        loss_sum, wrong = 0.0, 0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            loss, step_wrong, grads = loss_and_grads(params, arch, X[rows], y[rows],
                                                     None if weight is None else weight[rows])
            if clip_norm is not None:
                grads = clip(grads, clip_norm)
            loss_sum += (loss + penalty(params, l2)) * len(rows)
            wrong += step_wrong
            optimizer.step(params, grads)
            out.steps.append({k: v.copy() for k, v in params.items()})
        out.loss.append(loss_sum / n)
        out.error.append(wrong / n)
        if validation is not None:
            val_loss, val_error = metrics(params, arch, *validation, l2=l2, dtype=dtype)
            out.val_loss.append(val_loss)
            out.val_error.append(val_error)
    out.params = params
    return out
