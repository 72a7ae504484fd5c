"""Host-side initialisers: seeded NumPy draws, sent to the device afterwards so every backend starts alike."""
import numpy as np

__all__ = ["INITS", "generator", "host_copy", "initial_weight", "linear_params"]


def he(rng, fan_in, fan_out):
    """He et al. (2015) normal: std ``sqrt(2 / fan_in)``, for ReLU networks."""
    return rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)


def xavier(rng, fan_in, fan_out):
    """Glorot & Bengio (2010) uniform on ``+-sqrt(6 / (fan_in + fan_out))``, for sigmoid/tanh."""
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, (fan_in, fan_out))


def xavier_normal(rng, fan_in, fan_out):
    """Glorot normal: std ``sqrt(2 / (fan_in + fan_out))``."""
    return rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / (fan_in + fan_out))


def small(rng, fan_in, fan_out):
    """The CS231n case study's ``0.01 * randn``."""
    return 0.01 * rng.standard_normal((fan_in, fan_out))


def cmu(rng, fan_in, fan_out):
    """CMU 10-714 hw0's ``randn(fan_in, fan_out) / sqrt(fan_out)``."""
    return rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_out)


def zeros(rng, fan_in, fan_out):
    """All zeros (fine for a linear softmax classifier, useless for hidden layers)."""
    return np.zeros((fan_in, fan_out))


INITS = {"he": he, "xavier": xavier, "glorot": xavier, "xavier_normal": xavier_normal,
         "small": small, "cmu": cmu, "zeros": zeros}


def initial_weight(init, rng, fan_in, fan_out):
    """A float64 host array of shape ``(fan_in, fan_out)`` drawn by the initialiser named ``init``."""
    if callable(init):
        w = np.asarray(init(rng, fan_in, fan_out), dtype=np.float64)
    elif init in INITS:
        w = INITS[init](rng, fan_in, fan_out)
    else:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(sorted(INITS))} or a callable")
    if w.shape != (fan_in, fan_out):
        raise ValueError(f"init {init!r} returned shape {w.shape}, expected {(fan_in, fan_out)}")
    return w


def linear_params(fan_in, fan_out, bias, init, rng, dtype):
    """Host arrays ``{"weight": (fan_in, fan_out), "bias": (fan_out,) zeros}`` for a Linear layer.

    ``rng`` is a NumPy Generator shared across layers (as ``mlp`` does) or a seed (None means 0).
    """
    rng = rng if isinstance(rng, np.random.Generator) else generator(rng or 0)
    params = {"weight": initial_weight(init, rng, fan_in, fan_out).astype(dtype)}
    if bias:
        params["bias"] = np.zeros(fan_out, dtype=dtype)
    return params


def host_copy(value, dtype):
    """A C-ordered host copy of ``value`` in ``dtype``: parameters loaded from elsewhere (a transposed PyTorch
    weight stays column-major otherwise, which changes GEMM rounding) start as those drawn here do."""
    return np.array(value, dtype=dtype, order="C")


def generator(seed):
    """The host random source every initialiser draws from: ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed)
