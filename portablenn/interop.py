"""PyTorch interop: convert a portablenn Sequential to ``torch.nn.Sequential`` and back (torch imported lazily)."""
import re

import numpy as np

from .backend import _host
from .layers import Linear, Sequential
from .models import NORMS, mlp_layer_configs
from .registry import ACTIVATIONS, LAYERS

__all__ = ["to_torch", "from_torch"]

_KEY = re.compile(r"(\d+)\.(weight|bias)")


def to_torch(model):
    """A ``torch.nn.Sequential`` computing the same function as ``model``.

    Parameters
    ----------
    model : Sequential
        Of layers whose class names a ``torch_class`` (Linear, ReLU, Sigmoid, Tanh and any layer
        registered with one), on any device.

    Returns
    -------
    torch.nn.Sequential
        On the CPU, in the model's dtype, with the same layer indices (so the same state-dict
        keys); every ``nn.Linear`` weight is the transpose ``(out_features, in_features)`` of
        portablenn's ``(in_features, out_features)``. Buffers that the torch module has too are copied
        (BatchNorm1d's running statistics and ``num_batches_tracked``; not Dropout's draw counter: torch
        draws its masks from its own generator). Each module is in its layer's mode (train or eval).

    Raises
    ------
    ImportError
        When PyTorch is not installed.
    TypeError
        For a layer that has no PyTorch counterpart here.
    """
    import torch

    if not isinstance(model, Sequential):
        raise TypeError(f"to_torch needs a portablenn Sequential, got {type(model).__name__}")
    dtype = getattr(torch, model.dtype)
    modules = []
    for i, layer in enumerate(model.layers):
        if layer.torch_class is None or not hasattr(torch.nn, layer.torch_class):
            raise TypeError(f"layer {i} ({type(layer).__name__}) has no PyTorch counterpart in to_torch")
        module = getattr(torch.nn, layer.torch_class)(**layer.torch_config()).to(dtype)
        torch_buffers = dict(module.named_buffers())
        with torch.no_grad():
            for name, value in layer.params.items():
                host = np.ascontiguousarray(layer.torch_layout(name, _host(value)))
                getattr(module, name).copy_(torch.from_numpy(host))
            for name, value in layer.buffers.items():
                if name in torch_buffers:
                    torch_buffers[name].copy_(torch.from_numpy(np.require(_host(value), requirements="C")))
        modules.append(module.train(layer.training))
    sequential = torch.nn.Sequential(*modules)
    sequential.training = model.training  # the container's flag; each module has its layer's mode
    return sequential


def from_torch(module_or_state_dict, activation=None):
    """A portablenn Sequential computing the same function as a PyTorch MLP.

    Parameters
    ----------
    module_or_state_dict : torch.nn.Sequential or dict
        A Sequential of ``nn.Linear``, ``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh`` (and of the modules
        that registered layers name as their ``torch_class``); or an MLP's state
        dict (``{"0.weight": (out, in), "0.bias": (out,), "2.weight": ...}``, tensors or NumPy
        arrays), in which the Linear layers must sit at indices 0, 2, 4, ... with one activation
        between consecutive ones.
    activation : str, optional
        A name in ``portablenn.registry.ACTIVATIONS`` ("relu", "sigmoid", "tanh", ...).
        The activation between Linear layers: required with a state dict of more than one Linear
        layer, not allowed with a module (whose layers say it).

    Returns
    -------
    Sequential
        On the CPU, float64 if the weights are float64 and float32 otherwise; weights transposed
        to ``(in_features, out_features)``; buffers (BatchNorm1d's running statistics) copied, those
        torch lacks (Dropout's draw counter) at their start, and a module's train/eval mode kept.
        Models of one activation and uniform bias get the ``config`` that ``portablenn.mlp`` sets.

    Raises
    ------
    TypeError
        For a module other than a Sequential of the layers above.
    ValueError
        For a state dict that is not such an MLP, or a bad ``activation``.
    """
    if isinstance(module_or_state_dict, dict):
        configs, state = _from_state_dict(module_or_state_dict, activation)
    else:
        if activation is not None:
            raise ValueError("activation is read from the module's layers; pass it only with a state dict")
        configs, state = _from_module(module_or_state_dict)
    weights = [value for key, value in state.items() if key.endswith(".weight")]
    dtype = "float64" if weights[0].dtype == np.float64 else "float32"
    model = Sequential.from_config({"layers": configs}, dtype=dtype)
    full = model.state_dict()  # buffers that torch lacks keep their initial values
    full.update({key: model.layers[int(key.split(".")[0])].torch_layout(key.split(".", 1)[1], value)
                 for key, value in state.items()})
    model.load_state_dict(full)
    if not isinstance(module_or_state_dict, dict):
        model.train(module_or_state_dict.training)
    config = _mlp_config(model)
    if config is not None:
        model.config = config
    return model


def _mlp_config(model):
    """The ``mlp`` arguments (seed 0) that build exactly ``model``'s layers, or None where none do."""
    layers = model.layers
    if not layers or type(layers[0]) is not Linear:
        return None
    act = next((ACTIVATIONS.name_of(layer) for layer in layers if ACTIVATIONS.name_of(layer)), "relu")
    drop = next((layer.p for layer in layers if LAYERS.name_of(layer) == "Dropout"), 0.0)
    norm = next((key for layer in layers for key, make in NORMS.items()
                 if make(1)["type"] == LAYERS.name_of(layer)), None)
    config = {"sizes": [model.in_features] + [l.out_features for l in model.linears], "activation": act,
              "bias": "bias" in layers[0].params}
    try:
        built = mlp_layer_configs(config["sizes"], act, config["bias"], drop, norm, seed=0)
    except ValueError:
        return None
    if built != model.to_config()["layers"]:
        return None
    if drop:
        config.update(dropout=drop, seed=0)
    if norm is not None:
        config["norm"] = norm
    return config


def _from_module(module):
    """``(layer configs, host state dict)`` of a torch Sequential."""
    import torch

    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"from_torch needs a torch.nn.Sequential or a state dict, got {type(module).__name__}")
    by_torch = {cls.torch_class: (name, cls) for name, cls in LAYERS.items() if cls.torch_class}
    configs = []
    for i, child in enumerate(module):
        found = by_torch.get(type(child).__name__) if type(child).__module__.startswith("torch.nn") else None
        if found is None:
            raise TypeError(f"layer {i} ({type(child).__name__}) is not {_known(by_torch)}")
        name, cls = found
        try:
            configs.append({"type": name, **cls.config_from_torch(child)})
        except ValueError as exc:
            raise TypeError(f"layer {i} ({type(child).__name__}) cannot be converted: {exc}") from None
    draws = [c for c in configs if hasattr(LAYERS.get(c["type"]), "seed_for")]  # torch has no mask seeds: as mlp's
    for k, config in enumerate(draws):
        config["seed"] = LAYERS.get(config["type"]).seed_for(0, k)
    if not any(LAYERS.get(c["type"]) is Linear for c in configs):
        raise TypeError("the torch Sequential has no Linear layer")
    integers = {f"{i}.{name}" for i, c in enumerate(configs) for name in LAYERS.get(c["type"]).integer_buffers}
    return configs, _host_state(module.state_dict(), integers)


def _known(by_torch):
    names = sorted(by_torch, key=lambda n: (n != "Linear", n))
    return ", ".join(names[:-1]) + " or " + names[-1]


def _from_state_dict(state, activation):
    """``(layer configs, host state dict)`` of an MLP state dict with Linear layers at 0, 2, 4, ..."""
    state = _host_state(state)
    bad = [key for key in state if not _KEY.fullmatch(key)]
    if bad:
        raise ValueError(f"unexpected state dict keys {bad}; expected '<index>.weight' and '<index>.bias'")
    indices = sorted({int(_KEY.fullmatch(key).group(1)) for key in state})
    if indices != list(range(0, 2 * len(indices), 2)):
        raise ValueError(f"Linear layers must sit at indices 0, 2, 4, ..., got {indices}")
    for i in indices:
        weight, bias = state.get(f"{i}.weight"), state.get(f"{i}.bias")
        if weight is None or weight.ndim != 2:
            raise ValueError(f"layer {i} needs a 2-D '{i}.weight' of shape (out_features, in_features)")
        if bias is not None and bias.shape != weight.shape[:1]:
            raise ValueError(f"'{i}.bias' has shape {bias.shape}, expected {weight.shape[:1]}")
        if i and state[f"{i - 2}.weight"].shape[0] != weight.shape[1]:
            raise ValueError(f"layer {i} takes {weight.shape[1]} features but layer {i - 2} gives "
                             f"{state[f'{i - 2}.weight'].shape[0]}")
    if len(indices) > 1 and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} for a state dict of "
                         f"{len(indices)} Linear layers, got {activation!r}")
    if len(indices) == 1 and activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    act = LAYERS.to_config(ACTIVATIONS.get(activation)()) if len(indices) > 1 else None  # as mlp builds it
    linears = [{"type": "Linear", "in_features": int(state[f"{i}.weight"].shape[1]),
                "out_features": int(state[f"{i}.weight"].shape[0]), "bias": f"{i}.bias" in state} for i in indices]
    configs = [linears[0]]
    for linear in linears[1:]:
        configs += [act, linear]
    return configs, state


def _host_state(state, integers=()):
    """Host NumPy copies of a state dict's float values (and integer ones for the keys ``integers``); other
    dtypes are refused."""
    out = {}
    for key, value in state.items():
        array = np.asarray(_host(value))
        if key in integers and array.dtype.kind in "iu":
            out[key] = array
            continue
        if array.dtype not in (np.float32, np.float64):
            raise ValueError(f"state dict entry {key!r} has dtype {array.dtype}; convert the model to "
                             "float32 or float64 first")
        out[key] = array
    return out
