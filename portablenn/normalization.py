"""Normalization layers: LayerNorm (over each row's features) and BatchNorm1d (over the batch), as PyTorch's."""
import math
import numbers

from .layers import Module
from .registry import register_layer

__all__ = ["LayerNorm", "BatchNorm1d"]


def _check_features(cls, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= 2**31 - 1:
        raise ValueError(f"{cls.__name__} {name} must be a positive integer, got {value!r}")


def _check_eps(cls, eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
        raise ValueError(f"{cls.__name__} eps must be a positive finite number, got {eps!r}")


def _check_dtype(cls, dtype):
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{cls.__name__} dtype must be 'float32' or 'float64', got {dtype!r}")


class _Norm(Module):
    """Shared: a learned per-feature scale ``weight`` (ones) and shift ``bias`` (zeros), named as PyTorch's.
    Neither takes L2 nor weight decay (``decayed`` stays empty)."""

    _features = None  # the config key holding the number of features

    def _affine(self, n, dtype):
        _check_dtype(type(self), dtype)
        xp = self.xp
        self.params["weight"] = xp.ones((n,), dtype=getattr(xp, dtype))
        self.params["bias"] = xp.zeros((n,), dtype=getattr(xp, dtype))

    @property
    def in_features(self):
        return getattr(self, self._features)

    out_features = in_features  # (batch, n) -> (batch, n): Sequential checks that sizes chain through it

    @classmethod
    def from_config(cls, config, dtype="float32"):
        cls.check_config(config)
        return cls(**config, dtype=dtype)

    @classmethod
    def parameter_shapes(cls, config):
        n = config[cls._features]
        return {"weight": (n,), "bias": (n,)}

    def _normalise(self, xc, var):
        """``xhat = xc / sqrt(var + eps)`` (kept for backward), scaled and shifted."""
        self._inv = 1.0 / self.xp.sqrt(var + self.eps)
        self._xhat = xc * self._inv
        return self._xhat * self.params["weight"] + self.params["bias"]

    def _normalised_backward(self, g, axis):
        """``d loss / dx`` where ``xhat`` was normalised by its own mean and variance over ``axis``, from
        ``g = d loss / d xhat``: ``inv (g - mean(g) - xhat mean(g xhat))``."""
        xp, xhat = self.xp, self._xhat
        return self._inv * (g - xp.mean(g, axis=axis, keepdims=True)
                            - xhat * xp.mean(g * xhat, axis=axis, keepdims=True))

    def _affine_backward(self, grad_output):
        """Fill the weight and bias gradients; returns ``d loss / d xhat``."""
        xp = self.xp
        self.grads["weight"] = xp.sum(grad_output * self._xhat, axis=0)
        self.grads["bias"] = xp.sum(grad_output, axis=0)
        return grad_output * self.params["weight"]


@register_layer
class LayerNorm(_Norm):
    """Normalise each row over its features, then scale and shift (PyTorch's ``nn.LayerNorm(n)``):
    ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias``, mean and biased variance over the last axis.
    The same in train and eval mode.

    Parameters
    ----------
    normalized_shape : int
        The number of features ``n`` of the ``(batch, n)`` input.
    eps : float
    dtype : {"float32", "float64"}
    """

    config_keys = ("normalized_shape", "eps")
    torch_class = "LayerNorm"
    _features = "normalized_shape"

    def __init__(self, normalized_shape, eps=1e-5, *, dtype="float32"):
        super().__init__()
        self.check_config({"normalized_shape": normalized_shape, "eps": eps})
        self.normalized_shape, self.eps = int(normalized_shape), float(eps)
        self._affine(self.normalized_shape, dtype)

    def forward(self, x):  # (batch, n) -> (batch, n)
        xp = self.xp
        xc = x - xp.mean(x, axis=-1, keepdims=True)
        return self._normalise(xc, xp.mean(xc * xc, axis=-1, keepdims=True))  # statistics (batch, 1)

    def backward(self, grad_output, input_grad=True):
        g = self._affine_backward(grad_output)  # d loss / d xhat; means over each row
        return self._normalised_backward(g, -1) if input_grad else None

    def __repr__(self):
        return f"LayerNorm({self.normalized_shape}, eps={self.eps})"

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        _check_features(cls, "normalized_shape", config["normalized_shape"])
        _check_eps(cls, config["eps"])

    @classmethod
    def config_from_torch(cls, module):
        shape = tuple(module.normalized_shape)
        if len(shape) != 1 or not module.elementwise_affine or getattr(module, "bias", None) is None:
            raise ValueError(f"only LayerNorm over one axis with a learned weight and bias converts, got {module!r}")
        return {"normalized_shape": int(shape[0]), "eps": float(module.eps)}


@register_layer
class BatchNorm1d(_Norm):
    """Normalise each feature over the batch, then scale and shift (PyTorch's ``nn.BatchNorm1d(n)``).

    Train mode: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the batch's mean and biased
    variance over the rows, and the buffers ``running_mean`` and ``running_var`` move towards the batch's
    mean and unbiased variance, ``running = (1 - momentum) running + momentum batch`` (on the device,
    every training forward), ``num_batches_tracked`` (int64) counting the updates. Eval mode: the running
    statistics in place of the batch's. A training batch needs at least 2 rows (as in PyTorch).

    ``couples_rows``: a row's output depends on the other rows of its batch, so data-parallel training
    (each worker normalising its own slice) would not be the one-process computation.

    Parameters
    ----------
    num_features : int
        ``n`` of the ``(batch, n)`` input.
    eps : float
    momentum : float
        In [0, 1] (PyTorch's ``momentum=None``, a cumulative average, is not supported).
    dtype : {"float32", "float64"}
    """

    config_keys = ("num_features", "eps", "momentum")
    torch_class = "BatchNorm1d"
    integer_buffers = ("num_batches_tracked",)
    couples_rows = True
    _features = "num_features"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, dtype="float32"):
        super().__init__()
        self.check_config({"num_features": num_features, "eps": eps, "momentum": momentum})
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self._affine(self.num_features, dtype)
        xp, n = self.xp, self.num_features
        self.buffers["running_mean"] = xp.zeros((n,), dtype=getattr(xp, dtype))
        self.buffers["running_var"] = xp.ones((n,), dtype=getattr(xp, dtype))
        self.buffers["num_batches_tracked"] = xp.zeros((), dtype=xp.int64)

    def forward(self, x):  # (batch, n) -> (batch, n)
        xp, rows = self.xp, x.shape[0]
        self._batch_stats = self.training
        if self.training:
            if rows < 2:
                raise ValueError(f"BatchNorm1d needs at least 2 rows per batch in train mode, got {rows} "
                                 f"(the variance of one row is undefined): use a larger batch, or eval mode")
            mean = xp.mean(x, axis=0)
            xc = x - mean
            var = xp.mean(xc * xc, axis=0)  # biased: what normalises
            m, b = self.momentum, self.buffers
            self._set_buffer("running_mean", (1.0 - m) * b["running_mean"] + m * mean)
            self._set_buffer("running_var", (1.0 - m) * b["running_var"] + (m * rows / (rows - 1)) * var)  # unbiased
            self._set_buffer("num_batches_tracked", b["num_batches_tracked"] + 1)
        else:
            xc, var = x - self.buffers["running_mean"], self.buffers["running_var"]
        return self._normalise(xc, var)  # statistics (n,)

    def backward(self, grad_output, input_grad=True):
        # batch statistics: means over the rows; running statistics are constants: dx = inv g
        g = self._affine_backward(grad_output)  # d loss / d xhat
        if not input_grad:
            return None
        return self._normalised_backward(g, 0) if self._batch_stats else g * self._inv

    def __repr__(self):
        return f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum})"

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        _check_features(cls, "num_features", config["num_features"])
        _check_eps(cls, config["eps"])
        m = config["momentum"]
        if isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0 <= m <= 1:
            raise ValueError(f"BatchNorm1d momentum must be a number in [0, 1], got {m!r}")

    @classmethod
    def buffer_shapes(cls, config):
        n = config["num_features"]
        return {"running_mean": (n,), "running_var": (n,), "num_batches_tracked": ()}

    @classmethod
    def config_from_torch(cls, module):
        if (not module.affine or getattr(module, "bias", None) is None or not module.track_running_stats
                or module.momentum is None):
            raise ValueError(f"only BatchNorm1d with a learned weight and bias, track_running_stats=True and a "
                             f"numeric momentum converts, got {module!r}")
        return {"num_features": int(module.num_features), "eps": float(module.eps), "momentum": float(module.momentum)}
