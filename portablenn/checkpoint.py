"""Safetensors checkpoints: model weights, optimizer state and metadata, written atomically, never pickled."""
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from . import backend
from ._fileio import fsync_directory
from .layers import Linear, ReLU, Sequential, Sigmoid, Tanh
from .models import mlp

__all__ = ["FORMAT_VERSION", "Checkpoint", "CheckpointError", "save", "load", "load_into", "load_checkpoint",
           "restore_optimizer"]

FORMAT_VERSION = 1  # bump when a reader of this version could misread what a newer writer produces

_RESERVED = ("format_version", "architecture", "dtype", "portablenn_version", "optimizer", "sha256")
_OPTIM, _EXTRA = "optim.", "extra."
_ACTIVATIONS = {"ReLU": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read, or does not fit the model; the message says why."""


@dataclasses.dataclass
class Checkpoint:
    """The host-side content of a checkpoint file, for resume logic.

    Attributes
    ----------
    state_dict : dict of str -> numpy.ndarray
        Model parameters keyed ``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...
    metadata : dict of str -> str
        Every metadata entry as stored (strings; values that were not strings are JSON-encoded).
    optimizer_state : dict of str -> tuple of numpy.ndarray
        Optimizer buffers per parameter key (SGD momentum: ``(velocity,)``; Adam: ``(m, v)``); empty
        when no optimizer was saved or it had no state yet.
    optimizer_config : dict or None
        ``{"class": "SGD", "lr": ..., "momentum": ..., "steps": ..., ...}``, None without optimizer.
    extra : dict of str -> numpy.ndarray
        The arrays passed as ``extra`` to `save`.
    """

    state_dict: dict
    metadata: dict
    optimizer_state: dict
    optimizer_config: dict
    extra: dict

    @property
    def architecture(self):
        """The decoded ``architecture`` entry: ``mlp`` keyword arguments (dict) or layer descriptions (list)."""
        return json.loads(self.metadata["architecture"])

    @property
    def dtype(self):
        return self.metadata["dtype"]


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("checkpoints need safetensors: pip install 'portablenn[cli]'") from None
    return safetensors


def _architecture(model):
    """``model.config`` (the ``mlp`` arguments) or, without one, a list describing every layer."""
    config = getattr(model, "config", None)
    if config is not None:
        return dict(config)
    layers = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            layers.append({"type": "Linear", "in_features": layer.in_features, "out_features": layer.out_features,
                           "bias": "bias" in layer.params})
        elif type(layer) in _ACTIVATIONS.values():
            layers.append({"type": type(layer).__name__})
        else:
            raise CheckpointError(f"cannot describe layer {layer!r} in a checkpoint; only Linear, ReLU, Sigmoid "
                                  "and Tanh layers can be saved")
    return layers


def _optimizer_config(optimizer):
    """Class name, hyper-parameters (public scalar attributes), l2 and step count of ``optimizer``."""
    config = {"class": type(optimizer).__name__}
    for key, value in vars(optimizer).items():
        if not key.startswith("_") and key not in ("state", "steps", "model") and isinstance(value, (bool, int, float)):
            config[key] = value
    config["steps"] = int(optimizer.steps)
    return config


def _host_tensor(value, name):
    try:
        array = np.ascontiguousarray(backend._host(value))
    except Exception as exc:
        raise CheckpointError(f"cannot store {name} in a checkpoint: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise CheckpointError(f"cannot store {name} in a checkpoint: dtype {array.dtype} is not a number or bool")
    return array


def save(model, path, *, optimizer=None, extra=None, metadata=None):
    """Write ``model`` (and optionally its optimizer) to a safetensors file, atomically.

    The file holds the parameters as host arrays keyed ``"0.weight"``, ``"0.bias"``, ...; optimizer
    buffers as ``"optim.<key>.<i>"``; ``extra`` arrays as ``"extra.<name>"``. Its metadata holds
    ``format_version``, ``architecture`` (JSON), ``dtype``, ``portablenn_version``, ``optimizer``
    (JSON, when given), every entry of ``metadata`` and ``sha256``, a checksum over all the other
    metadata and every tensor that `load_checkpoint` verifies. The data goes to a temporary file in the
    same directory, is flushed and fsynced, then renamed over ``path``: a crash leaves either the
    old file or the new one, never a partial file.

    Parameters
    ----------
    model : Sequential
        On any device; its parameters are copied to the host.
    path : str or os.PathLike
    optimizer : Optimizer, optional
        Saves its class, hyper-parameters, step count and state buffers (shapes as the parameters).
    extra : dict of str -> array, optional
        Further numeric arrays, e.g. an RNG state.
    metadata : dict of str -> object, optional
        Extra metadata (dataset, epoch, ...); values that are not strings are stored as JSON.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    CheckpointError
        A reserved or non-string metadata key, a value that is not JSON-serialisable, an array that
        cannot be stored, or an OS error while writing (the old file, if any, is left untouched).
    """
    from . import __version__

    st = _safetensors()
    path = Path(path)
    tensors = {key: _host_tensor(value, f"parameter {key}") for key, value in model.state_dict().items()}
    meta = {"format_version": str(FORMAT_VERSION), "architecture": json.dumps(_architecture(model)),
            "dtype": str(model.dtype), "portablenn_version": __version__}
    if optimizer is not None:
        keys = {key for key, _, _ in model.named_parameters()}
        for key, buffers in optimizer.state.items():
            if key not in keys:
                raise CheckpointError(f"optimizer state entry {key!r} is not a parameter of the model; "
                                      "save the optimizer together with the model it trains")
            for i, buffer in enumerate(buffers):
                tensors[f"{_OPTIM}{key}.{i}"] = _host_tensor(buffer, f"optimizer state {key}[{i}]")
        meta["optimizer"] = json.dumps(_optimizer_config(optimizer))
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"extra array names must be non-empty strings, got {name!r}")
        tensors[_EXTRA + name] = _host_tensor(value, f"extra array {name!r}")
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise CheckpointError(f"metadata keys must be strings, got {key!r}")
        if key in _RESERVED or key == "__metadata__":
            raise CheckpointError(f"metadata key {key!r} is reserved by portablenn; choose another name")
        try:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"metadata {key!r} is neither a string nor JSON-serialisable: {exc}") from None
    meta["sha256"] = _digest(tensors, meta)
    data = st.numpy.save(tensors, metadata=meta)
    _atomic_write(path, data)
    return path


def _digest(tensors, meta):
    """SHA-256 over every metadata entry but itself and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key in sorted(meta):
        if key != "sha256":
            h.update(json.dumps([key, meta[key]]).encode() + b"\n")
    for key in sorted(tensors):
        array = tensors[key]
        h.update(json.dumps([key, array.dtype.name, list(array.shape)]).encode() + b"\n")
        h.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _atomic_write(path, data):
    """Write ``data`` to ``path`` through a fsynced temporary file in the same directory and a rename."""
    directory = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        mode = _file_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # mkstemp creates 0600; give the file the mode open() would
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    fsync_directory(directory)


def _file_mode(path):
    """The permission bits of the file being replaced, else those a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def load_checkpoint(path):
    """Read a checkpoint file into host arrays and decoded metadata.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        The file is missing, is not a (complete) safetensors file, is not a portablenn checkpoint,
        was written by a newer format version, or fails its checksum (corrupted or altered).
    """
    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists()
                              else f"checkpoint {path} is not a regular file")
    try:
        with st.safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {key: np.array(fh.get_tensor(key), copy=True) for key in fh.keys()}
    except st.SafetensorError as exc:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint (truncated or corrupted?): "
                              f"{exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # the Rust reader can raise others on malformed headers
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint: {type(exc).__name__}: "
                              f"{exc}") from None
    version = meta.get("format_version")
    if version is None or "architecture" not in meta or "dtype" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a portablenn checkpoint "
                              "(its metadata lacks format_version, architecture or dtype)")
    if not version.isdigit():
        raise CheckpointError(f"{path} has an unreadable format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer portablenn (format {version}); upgrade portablenn "
                              f"to read it (this version reads format {FORMAT_VERSION} and older)")
    if meta.get("sha256") != _digest(tensors, meta):
        raise CheckpointError(f"{path} is corrupted: its content does not match the SHA-256 checksum saved with it"
                              if "sha256" in meta else f"{path} has no checksum (sha256) in its metadata; it was not "
                              "written by portablenn.checkpoint.save or was altered")
    try:
        architecture = json.loads(meta["architecture"])
        optimizer_config = json.loads(meta["optimizer"]) if "optimizer" in meta else None
    except ValueError as exc:
        raise CheckpointError(f"{path} has corrupted metadata (invalid JSON): {exc}") from None
    if not isinstance(architecture, (dict, list)):
        raise CheckpointError(f"{path} has corrupted metadata: architecture is {type(architecture).__name__}")
    state, optim, extra = {}, {}, {}
    for key, value in sorted(tensors.items(), key=lambda item: _natural(item[0])):
        if key.startswith(_EXTRA):
            extra[key[len(_EXTRA):]] = value
        elif key.startswith(_OPTIM):
            param, _, index = key[len(_OPTIM):].rpartition(".")
            if not index.isdigit():
                raise CheckpointError(f"{path} has a malformed optimizer tensor name {key!r}")
            optim.setdefault(param, {})[int(index)] = value
        else:
            state[key] = value
    optimizer_state = {}
    for param, buffers in optim.items():
        if sorted(buffers) != list(range(len(buffers))):
            raise CheckpointError(f"{path} lacks some optimizer buffers of {param!r} (has {sorted(buffers)})")
        optimizer_state[param] = tuple(buffers[i] for i in range(len(buffers)))
    return Checkpoint(state, meta, optimizer_state, optimizer_config, extra)


def _natural(key):
    """The model's order, "2.weight" before "2.bias" before "10.weight" (safetensors sorts names as text)."""
    rank = {"weight": 0, "bias": 1}
    return [(0, int(part), "") if part.isdigit() else (1, rank.get(part, 2), part) for part in key.split(".")]


def _build(architecture, dtype, path):
    """A fresh model of the saved architecture (weights to be overwritten)."""
    try:
        if isinstance(architecture, dict):
            return mlp(**architecture, dtype=dtype)
        layers = []
        for spec in architecture:
            kind = spec["type"]
            if kind == "Linear":
                layers.append(Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], init="zeros",
                                     dtype=dtype))
            else:
                layers.append(_ACTIVATIONS[kind]())
        return Sequential(layers)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an architecture this portablenn cannot build ({type(exc).__name__}: "
                              f"{exc})") from None


def load(path, device=None):
    """Rebuild the model saved in ``path`` and load its weights.

    Parameters
    ----------
    path : str or os.PathLike
    device : str or Device, optional
        Move the model there (default: the CPU).

    Returns
    -------
    Sequential
        With ``config`` set when it was built by ``mlp``.

    Raises
    ------
    CheckpointError
        See `load_checkpoint`; also when the weights do not fit the saved architecture.
    DeviceError
        ``device`` cannot be used here or lacks the checkpoint's dtype.
    """
    ckpt = load_checkpoint(path)
    if ckpt.dtype not in ("float32", "float64"):
        raise CheckpointError(f"{path} has unsupported dtype {ckpt.dtype!r}; expected float32 or float64")
    model = _build(ckpt.architecture, ckpt.dtype, path)
    _load_state(model, ckpt.state_dict, path)
    return model.to(device) if device is not None else model


def load_into(model, path):
    """Load the weights saved in ``path`` into an existing ``model`` (on its device, in its dtype).

    Parameters
    ----------
    model : Sequential
    path : str or os.PathLike

    Returns
    -------
    Checkpoint
        What was read, for the optimizer state and metadata.

    Raises
    ------
    CheckpointError
        See `load_checkpoint`; or the model has different parameter names or shapes (the message
        names the first mismatch).
    """
    ckpt = load_checkpoint(path)
    _load_state(model, ckpt.state_dict, path)
    return ckpt


def _load_state(model, state, path):
    expected = {key: tuple(layer.params[name].shape) for key, layer, name in model.named_parameters()}
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} does not match the model: it has no parameter {key!r} "
                                  f"(it has {', '.join(sorted(state)) or 'none'})")
        got = tuple(state[key].shape)
        if got != shape and not (key.endswith(".bias") and got == (1,) + shape):
            raise CheckpointError(f"checkpoint {path} does not match the model: {key!r} has shape {got}, "
                                  f"the model expects {shape}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: it has parameter {unexpected[0]!r} "
                              "that the model lacks")
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} does not match the model: {exc}") from None


def restore_optimizer(optimizer, checkpoint, model):
    """Put a checkpoint's optimizer state and step count into ``optimizer``, bound to ``model``.

    Call it after loading the weights into ``model`` (and moving the model to its device); `fit`
    with the same model keeps the restored state. Hyper-parameters (lr, momentum, ...) stay those
    ``optimizer`` was built with, so a resumed run may change them; the L2 strength is restored.

    Parameters
    ----------
    optimizer : Optimizer
        Of the class that was saved.
    checkpoint : Checkpoint or str or os.PathLike
        From `load_checkpoint`, or a path to read.
    model : Sequential

    Returns
    -------
    Optimizer
        ``optimizer``, bound to ``model`` with its state on the model's device.

    Raises
    ------
    CheckpointError
        The checkpoint has no optimizer, saved another optimizer class, or its buffers do not fit
        the model's parameters.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    config = checkpoint.optimizer_config
    if config is None:
        raise CheckpointError("the checkpoint holds no optimizer state (it was saved without optimizer=)")
    name = type(optimizer).__name__
    if config.get("class") != name:
        raise CheckpointError(f"the checkpoint holds {config.get('class')} state but the optimizer is {name}")
    params = {key: layer.params[p] for key, layer, p in model.named_parameters()}
    count = {"SGD": 1, "Adam": 2}.get(name)
    saved = checkpoint.optimizer_state
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise CheckpointError(f"the checkpoint's optimizer state for {unknown[0]!r} has no parameter in the model")
    for key, buffers in ((key, saved[key]) for key in params if key in saved):  # in the model's order
        shape = tuple(params[key].shape)
        if count is not None and len(buffers) != count:
            raise CheckpointError(f"the checkpoint's optimizer state for {key!r} has {len(buffers)} buffers, "
                                  f"{name} needs {count}")
        for buffer in buffers:
            if tuple(buffer.shape) != shape:
                raise CheckpointError(f"the checkpoint's optimizer state for {key!r} has shape "
                                      f"{tuple(buffer.shape)}, the parameter has {shape}")
    optimizer.bind(model, config.get("l2", optimizer.l2))
    dev = model.device
    optimizer.state = {key: tuple(dev.asarray(np.array(b, dtype=model.dtype, copy=True)) for b in buffers)
                       for key, buffers in ((key, saved[key]) for key in params if key in saved)}
    optimizer.steps = int(config.get("steps", 0))
    return optimizer

