"""Model builders: ``mlp(sizes)`` -> Sequential of Linear layers with an activation between them (and, optionally,
a normalization layer and Dropout)."""
import numbers

from .init import generator
from .layers import Linear, Sequential
from .registry import ACTIVATIONS, LAYERS

__all__ = ["ACTIVATIONS", "NORMS", "mlp", "mlp_layer_configs"]

# mlp(norm=...) -> the config of the registered layer it adds after a hidden Linear of n units (PyTorch's defaults)
NORMS = {"layer": lambda n: {"type": "LayerNorm", "normalized_shape": n, "eps": 1e-5},
         "batch": lambda n: {"type": "BatchNorm1d", "num_features": n, "eps": 1e-5, "momentum": 0.1}}


def mlp(sizes, activation="relu", bias=True, init="auto", seed=0, dtype="float32", dropout=0.0, norm=None):
    """A multi-layer perceptron ``Linear -> act -> ... -> Linear`` producing logits.

    Every hidden layer is ``Linear -> norm -> activation -> Dropout`` (the normalization and the Dropout
    where asked for); the output Linear has neither.

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
        Seed of the host NumPy Generator that draws every weight, layer by layer; each Dropout layer's
        mask seed is derived from it (``Dropout.seed_for(seed, k)`` for the k-th, from 0).
    dtype : {"float32", "float64"}
    dropout : float
        Probability in [0, 1) of zeroing each hidden unit in training (``Dropout``); 0 adds no layer.
    norm : {None, "layer", "batch"}
        ``LayerNorm`` or ``BatchNorm1d`` after each hidden Linear, before the activation.

    Returns
    -------
    Sequential, on the CPU (``model.to(device)`` moves it). Its ``config`` holds these arguments
    (``dropout`` and ``seed`` only with dropout, ``norm`` only with a norm).
    """
    configs = mlp_layer_configs(sizes, activation, bias, dropout, norm, seed)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if init == "auto":
        init = ACTIVATIONS[activation].auto_init
    rng = generator(seed)
    layers = []
    for config in configs:
        if config["type"] == "Linear":  # weights drawn in turn from one generator
            layers.append(Linear(config["in_features"], config["out_features"], bias=bias, init=init, rng=rng,
                                 dtype=dtype))
        else:
            layers.append(LAYERS.from_config(config, dtype=dtype))
    model = Sequential(layers)
    model.config = {"sizes": [int(s) for s in sizes], "activation": activation, "bias": bool(bias)}
    if dropout:
        model.config.update(dropout=float(dropout), seed=int(seed))
    if norm is not None:
        model.config["norm"] = norm
    return model


def mlp_layer_configs(sizes, activation="relu", bias=True, dropout=0.0, norm=None, seed=0):
    """The registry configs (``{"type": ..., ...}``) of the layers ``mlp`` builds, without building them
    (checkpoints read the parameter shapes from them); ValueError naming a bad argument."""
    sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else sizes
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise ValueError(f"sizes must be a list of at least two positive integers "
                         f"[in_features, ..., classes], got {sizes!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be None, 'layer' or 'batch', got {norm!r}")
    if dropout and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    act = LAYERS.to_config(ACTIVATIONS[activation]())
    configs, drops = [], 0
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:  # the hidden block's tail: norm -> activation -> dropout
            if norm is not None:
                configs.append(NORMS[norm](int(fan_in)))
            configs.append(dict(act))
            if dropout:
                seed_for = LAYERS.get("Dropout").seed_for  # the registry: models may not import portablenn.dropout
                configs.append({"type": "Dropout", "p": float(dropout), "seed": seed_for(int(seed), drops)})
                drops += 1
        configs.append({"type": "Linear", "in_features": int(fan_in), "out_features": int(fan_out), "bias": bool(bias)})
    return configs

