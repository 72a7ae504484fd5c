"""Model builders: ``mlp(sizes)`` -> Sequential of Linear layers with an activation between them."""
import numbers

from .init import generator
from .layers import Linear, Sequential
from .registry import ACTIVATIONS

__all__ = ["ACTIVATIONS", "mlp"]


def mlp(sizes, activation="relu", bias=True, init="auto", seed=0, dtype="float32"):
    """A multi-layer perceptron ``Linear -> act -> ... -> Linear`` producing logits.

    Parameters
    ----------
    sizes : sequence of int
        ``[in_features, hidden..., out_features]``; ``[784, 10]`` is the linear softmax classifier.
    activation : str
        A name in ``portablenn.registry.ACTIVATIONS``: "relu", "sigmoid", "tanh" or one registered.
    bias : bool
    init : str or callable
        A name in ``portablenn.init.INITS``, or "auto": the activation's own (He for ReLU, Xavier for
        sigmoid/tanh: its ``auto_init``).
    seed : int
        Seed of the host NumPy Generator that draws every weight, layer by layer.
    dtype : {"float32", "float64"}

    Returns
    -------
    Sequential, on the CPU (``model.to(device)`` moves it).
    """
    sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else sizes
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise ValueError(f"sizes must be a list of at least two positive integers "
                         f"[in_features, ..., classes], got {sizes!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if init == "auto":
        init = ACTIVATIONS[activation].auto_init
    rng = generator(seed)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(Linear(fan_in, fan_out, bias=bias, init=init, rng=rng, dtype=dtype))
    model = Sequential(layers)
    model.config = {"sizes": [int(s) for s in sizes], "activation": activation, "bias": bool(bias)}
    return model
