"""The self-test an accelerator's fast kernels pass before they are trusted (``kernels="auto"``).

A user's GPU, driver or CuPy version can trip a fused kernel that no test here has run: NVRTC may
refuse its source, cuBLAS may return an error status, or a kernel may compute something else. So
the first time a device's fast kernels are asked for, each of them runs on tiny seeded inputs next
to its generic Array API twin (``portablenn.kernels.Kernels`` or, for the fused loss, the loss's own
``value_and_grad``: the definitions) on the same device,
and then a small MLP trains a few steps with each optimizer on both. ``check`` names the first
kernel that raised or whose results differ beyond the dtype's tolerance; ``backend`` then warns once
and uses the generic kernels. It runs once per device, outside any training loop.
"""
import numpy as np

from .losses import SoftmaxCrossEntropy

__all__ = ["check", "describe"]

# relative to the largest expected value; fast and generic differ by operation order only
_RTOL = {"float32": 1e-4, "float64": 1e-10}
_RTOL_TF32 = 1e-2  # float32 GEMMs on TF32 tensor cores (10-bit mantissa) where the twins may differ in that


def describe(exc):
    """``"TypeName: first line of the message"``, at most 200 characters."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def check(dev, fast, generic):
    """None if ``fast`` computes what ``generic`` computes on ``dev``, else one line naming the kernel and why.

    Parameters
    ----------
    dev : Device
        Where both run (its ``kernels`` are not touched: this decides them).
    fast, generic : Kernels
        The backend's twin and the generic kernels, both for ``dev.xp``.
    """
    with np.errstate(all="ignore"):  # a broken kernel's overflow is reported as such, not as NumPy's warning
        return _check(dev, fast, generic)


def _check(dev, fast, generic):
    dtypes = [d for d in ("float32", "float64") if dev.supports(d)]
    for dtype in dtypes:
        rtol = _RTOL_TF32 if dtype == "float32" and getattr(fast, "tf32", False) else _RTOL[dtype]
        for name, case in _CASES:
            problem = _compare(name, lambda k: case(k, _Inputs(dev, dtype)), fast, generic, dtype, rtol, dev)
            if problem:
                return problem
    for dtype in dtypes:
        rtol = _RTOL_TF32 if dtype == "float32" and getattr(fast, "tf32", False) else _RTOL[dtype]
        twins = [_bound(dev, kernels) for kernels in (fast, generic)]
        for name, optimizer in _optimizers():
            problem = _compare(f"training a small MLP with {name}", lambda d: _train(d, dtype, optimizer()),
                               *twins, dtype, rtol, dev)
            if problem:
                return problem
    return None


def _compare(name, run, fast, generic, dtype, rtol, dev):
    try:
        got = [dev.to_numpy(a) for a in run(fast)]
    except Exception as exc:
        return f"{name} raised {describe(exc)} in {dtype}"
    expected = [dev.to_numpy(a) for a in run(generic)]
    for i, (g, e) in enumerate(zip(got, expected)):
        g, e = np.asarray(g, dtype=np.float64), np.asarray(e, dtype=np.float64)
        if g.shape != e.shape:
            return f"{name} gave shape {g.shape} instead of {e.shape} (output {i}) in {dtype}"
        if not np.isfinite(g).all():
            return f"{name} gave non-finite values (output {i}) in {dtype}"
        scale = max(float(np.max(np.abs(e))) if e.size else 0.0, np.finfo(dtype).tiny)
        off = float(np.max(np.abs(g - e))) / scale if e.size else 0.0
        if not off <= rtol:
            return f"{name} is off by {off:.1e} relative to the generic kernel (output {i}, tolerance {rtol:g}) in {dtype}"
    return None


class _Inputs:
    """Seeded host arrays moved to the device: each run of a case gets the same fresh inputs."""

    def __init__(self, dev, dtype):
        self.dev, self.dtype, self.rng = dev, dtype, np.random.default_rng(20261130)

    def normal(self, *shape, scale=1.0):
        return self.dev.asarray((scale * self.rng.standard_normal(shape)).astype(self.dtype), dtype=self.dtype)

    def value(self, x):
        return self.dev.asarray(np.asarray(x, dtype=self.dtype), dtype=self.dtype)

    def zeros(self, *shape):
        return self.dev.zeros(shape, self.dtype)

    def index(self, x):
        return self.dev.asarray(np.asarray(x), dtype=self.dev.index_dtype)

    def labels(self, n, classes):
        """``(labels, onehot)`` of ``n`` random labels below ``classes``."""
        host = self.rng.integers(0, classes, n)
        return self.index(host), self.dev.asarray(np.eye(classes, dtype=self.dtype)[host], dtype=self.dtype)


# -- one case per kernel: each returns the arrays it produced or updated in place -----------------------
def _matmul(k, a):
    x, w, g = a.normal(7, 5), a.normal(5, 3), a.normal(7, 3)
    return k.matmul(x, w), k.matmul(x[2:6, :], w), k.matmul(g, w.T), k.matmul(x.T, g)


def _linear(k, a):
    x, w, b = a.normal(7, 5), a.normal(5, 3), a.normal(3)
    return k.linear(x, w, b), k.linear(x, w, None)


def _weight_update(k, a):
    c, d, x, g = a.normal(5, 3), a.normal(5, 3), a.normal(7, 5), a.normal(7, 3)
    k.matmul_update_(c, x.T, g, -0.5, 0.9)  # plain SGD with weight decay, as in backward
    k.matmul_update_(d, x[1:6, :].T, g[1:6, :], -1.0)  # a minibatch view
    return c, d


def _relu(k, a):
    x, upstream = a.normal(6, 4), a.normal(6, 4)
    out = k.relu(x)
    return out, k.relu_backward(upstream, out)


def _softmax_xent(classes):
    def case(k, a):
        logits = a.normal(9, classes, scale=5.0)
        labels, onehot = a.labels(9, classes)
        loss = SoftmaxCrossEntropy()  # the generic kernels fuse nothing: the loss's own code is the twin
        return (k.fused_loss(loss) or loss.value_and_grad)(k.xp, logits, (labels, onehot), 0.25)
    return case


def _stacked_softmax_xent(classes):
    def case(k, a):
        logits = a.normal(3, 9, classes, scale=5.0)
        shared = a.labels(9, classes)
        own = [a.labels(9, classes) for _ in range(3)]
        loss = SoftmaxCrossEntropy()
        value = k.fused_loss(loss, stacked=True) or loss.value_and_grad  # a stack's twin, or the definition
        each = (k.xp.stack([labels for labels, _ in own]), k.xp.stack([onehot for _, onehot in own]))
        return value(k.xp, logits, shared, 0.25) + value(k.xp, logits, each, 0.25)
    return case


def _sgd(k, a):
    p, q, r, g = a.normal(4, 3), a.normal(4, 3), a.normal(4, 3), a.normal(4, 3)
    k.sgd_(p, g, 0.5, 0.0)
    k.sgd_(q, g, 0.5, 0.01)
    k.sgd_(r, g, 1.0, 0.0)  # the bias update of SGD folded into the GEMMs
    return p, q, r


def _momentum(k, a):
    out = []
    for nesterov in (False, True):
        p, v, g = a.normal(4, 3), a.normal(4, 3), a.normal(4, 3)
        for _ in range(2):
            k.momentum_(p, v, g, 0.5, 0.9, 0.01, nesterov)
        out += [p, v]
    return out


def _adam(k, a):
    p, m, v, g = a.normal(4, 3), a.normal(4, 3), a.normal(4, 3, scale=0.0), a.normal(4, 3)
    for _ in range(2):
        k.adam_(p, m, v, g, 0.9, 0.999, 1e-2, 1e-8, 0.1)
    return p, m, v


def _minibatch(k, a):
    X = a.normal(12, 4)
    y, onehot = a.labels(12, 3)
    order, start, offsets = a.index(a.rng.permutation(12)), a.index(4), a.index(np.arange(3))
    return k.minibatch(X, y, onehot, None, start, offsets) + k.minibatch(X, y, onehot, order, start, offsets)


def _record_step(k, a):
    losses, wrong, start, starts = a.zeros(4), a.zeros(), a.index(3), a.index(np.arange(4) * 3)
    for loss in (1.5, 2.5):
        k.record_step(losses, wrong, start, starts, a.value(loss), a.value(2.0), 3)
    return losses, wrong, start


_CASES = [("matmul", _matmul), ("linear", _linear), ("weight update (matmul_update_)", _weight_update),
          ("sum_rows", lambda k, a: (k.sum_rows(a.normal(7, 3)),)), ("relu", _relu),
          ("softmax_xent", _softmax_xent(3)), ("softmax_xent over 300 classes", _softmax_xent(300)),
          ("stacked_softmax_xent", _stacked_softmax_xent(3)),
          ("stacked_softmax_xent over 300 classes", _stacked_softmax_xent(300)),
          ("sq_sum", lambda k, a: (k.sq_sum(a.normal(5, 3)),)), ("sgd_", _sgd), ("momentum_", _momentum),
          ("adam_", _adam), ("minibatch", _minibatch), ("record_step", _record_step)]


# -- a few training steps through fit, with the kernels in the order and shapes fit gives them -----------
def _optimizers():
    from .optim import SGD, Adam

    return [("SGD", lambda: SGD(0.5)), ("SGD momentum", lambda: SGD(0.1, momentum=0.9, nesterov=True)),
            ("Adam", lambda: Adam(0.01))]


def _bound(dev, kernels):
    """A throwaway Device like ``dev`` whose kernels are ``kernels`` (no self-test of its own)."""
    from .backend import Device

    twin = Device(dev.name, dev.xp, dev.native, dev.kind, kernels="fast")
    twin.kernels = kernels
    return twin


def _train(dev, dtype, optimizer):
    from .models import mlp
    from .train import fit

    rng = np.random.default_rng(7)
    X = rng.standard_normal((24, 4)).astype(dtype)
    y = rng.integers(0, 3, 24)
    model = mlp([4, 8, 3], dtype=dtype, seed=3)
    fit(model, X, y, optimizer=optimizer, epochs=2, batch_size=8, l2=1e-3, device=dev, validation=(X[:8], y[:8]))
    return [p for layer in model.layers for p in layer.params.values()]
