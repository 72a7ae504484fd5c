"""Safetensors checkpoints: model weights, optimizer state and metadata, written atomically, never pickled."""
import dataclasses
import hashlib
import json
import math
import os  # noqa: F401 (tests patch checkpoint.os.replace and .fsync, which outputs.atomic_write calls)
import re
from pathlib import Path

import numpy as np

from . import backend, outputs
from .layers import Sequential
from .models import mlp, mlp_layer_configs
from .registry import ACTIVATIONS, LAYERS, LOSSES, SCHEDULES
from .schedules import Schedule
from .validation import check_memory, format_bytes

__all__ = ["FORMAT_VERSION", "Checkpoint", "CheckpointError", "save", "load", "load_into", "load_checkpoint",
           "restore_optimizer", "restore_schedule"]

FORMAT_VERSION = 1  # bump when a reader of this version could misread what a newer writer produces

_RESERVED = ("format_version", "architecture", "dtype", "portablenn_version", "optimizer", "schedule", "sha256")
_OPTIM, _EXTRA = "optim.", "extra."


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read, or does not fit the model; the message says why."""


@dataclasses.dataclass
class Checkpoint:
    """The host-side content of a checkpoint file, for resume logic.

    Attributes
    ----------
    state_dict : dict of str -> numpy.ndarray
        Model parameters and buffers keyed ``"0.weight"``, ``"0.bias"``, ``"1.running_mean"``, ``"2.weight"``, ...
        (buffers: running statistics, Dropout's draw counter; integer buffers are int64).
    metadata : dict of str -> str
        Every metadata entry as stored (strings; values that were not strings are JSON-encoded).
    optimizer_state : dict of str -> tuple of numpy.ndarray
        Optimizer buffers per parameter key (SGD momentum: ``(velocity,)``; Adam: ``(m, v)``); empty
        when no optimizer was saved or it had no state yet.
    optimizer_config : dict or None
        ``{"class": "SGD", "lr": ..., "momentum": ..., "steps": ..., ...}``, None without optimizer.
    extra : dict of str -> numpy.ndarray
        The arrays passed as ``extra`` to `save`.
    schedule : dict or None
        The optimizer's learning-rate schedule, ``{"config": {"type": "cosine", ...}, "state": {...}}``
        (``SCHEDULES.to_config`` and ``state_dict()``), None when none was set; `restore_schedule` rebuilds it.
    """

    state_dict: dict
    metadata: dict
    optimizer_state: dict
    optimizer_config: dict
    extra: dict
    schedule: dict = None

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
    """``model.config`` (the ``mlp`` arguments) or, without one, every layer's registry config."""
    config = getattr(model, "config", None)
    if config is not None:
        return dict(config)
    try:
        return model.to_config()["layers"]
    except ValueError as exc:
        raise CheckpointError(f"cannot describe the model in a checkpoint: {exc}") from None


def _optimizer_config(optimizer):
    """Class name, hyper-parameters (public scalar attributes), l2 and step count of ``optimizer``."""
    config = {"class": type(optimizer).__name__}
    for key, value in vars(optimizer).items():
        if not key.startswith("_") and key not in ("state", "steps", "model") and isinstance(value, (bool, int, float)):
            config[key] = value
    config["steps"] = int(optimizer.steps)
    return config


def _schedule_entry(schedule):
    """``{"config": ..., "state": ...}`` of a registered schedule, JSON-able; CheckpointError otherwise."""
    try:
        entry = {"config": SCHEDULES.to_config(schedule), "state": schedule.state_dict()}
        json.dumps(entry)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot store the optimizer's schedule in a checkpoint: {_one_line(exc)}") from None
    return entry


def _host_tensor(value, name):
    try:
        array = np.require(backend._host(value), requirements="C")  # 0-d stays 0-d (ascontiguousarray: 1-d)
    except Exception as exc:
        raise CheckpointError(f"cannot store {name} in a checkpoint: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise CheckpointError(f"cannot store {name} in a checkpoint: dtype {array.dtype} is not a number or bool")
    return array


def save(model, path, *, optimizer=None, extra=None, metadata=None):
    """Write ``model`` (and optionally its optimizer) to a safetensors file, atomically.

    The file holds the parameters and buffers (``model.state_dict()``: running statistics, Dropout's
    draw counter, the integer ones as int64) as host arrays keyed ``"0.weight"``, ``"0.bias"``, ...; optimizer
    buffers as ``"optim.<key>.<i>"``; ``extra`` arrays as ``"extra.<name>"``. Its metadata holds
    ``format_version``, ``architecture`` (JSON), ``dtype``, ``portablenn_version``, ``optimizer``
    (JSON, when given), every entry of ``metadata`` and ``sha256``, a checksum over all the other
    metadata and every tensor that `load_checkpoint` verifies. The data goes to a temporary file in the
    same directory, is flushed and fsynced, then renamed over ``path``: a crash leaves either the
    old file or the new one, never a partial file. The temporary file's name carries the host and the
    process id (``.NAME.portablenn-HOST-PID-XXXXXXXX.tmp``); each save removes those of its naming in the
    directory whose process is gone (killed mid-save) or that are an hour old, never one a live process
    is writing (`portablenn.outputs.sweep_temporaries`).

    ``path`` may name a new file or replace a regular file (as ``numpy.save`` would); a directory or a
    file that is not regular (a FIFO, a device) is refused. The command line is stricter: it replaces
    only portablenn's own files unless told ``--overwrite``.

    Parameters
    ----------
    model : Sequential
        On any device; its parameters are copied to the host.
    path : str or os.PathLike
    optimizer : Optimizer, optional
        Saves its class, hyper-parameters, step count and state buffers (shapes as the parameters), and
        its learning-rate schedule if one is set (``optimizer.schedule``, as ``fit(schedule=...)`` leaves
        it): the metadata entry ``schedule``, ``{"config": SCHEDULES.to_config(s), "state": s.state_dict()}``
        (`restore_schedule` rebuilds it).
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
        cannot be stored, ``path`` is a directory or not a regular file, or an OS error while writing
        (the old file, if any, is left untouched).
    """
    path = Path(path)
    _refuse_special(path)
    data, _ = _serialise(model, optimizer=optimizer, extra=extra, metadata=metadata)
    _atomic_write(path, data)
    return path


def _serialise(model, *, optimizer=None, extra=None, metadata=None):
    """``(bytes, tensors)``: the safetensors file `save` writes, and its host arrays by name."""
    from . import __version__

    st = _safetensors()
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
        schedule = getattr(optimizer, "schedule", None)
        if schedule is not None:
            meta["schedule"] = json.dumps(_schedule_entry(schedule))
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
    return st.numpy.save(tensors, metadata=meta), tensors


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


def _refuse_special(path, what="checkpoint"):
    try:
        outputs.refuse_special(path, what)
    except outputs.OutputError as exc:
        raise CheckpointError(str(exc)) from None


def _atomic_write(path, data, what="checkpoint"):
    """Write ``data`` to ``path`` through a fsynced temporary file in the same directory and a rename
    (`portablenn.outputs.atomic_write`, which also removes temporary files that killed saves left)."""
    path = Path(path)
    try:
        outputs.atomic_write(path, data, what)
    except outputs.OutputError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc


def _file_mode(path):
    """The permission bits of the file being replaced, else those a new file gets under the umask."""
    return outputs.file_mode(path)


def load_checkpoint(path):
    """Read a checkpoint file into host arrays and decoded metadata.

    Every metadata entry portablenn reads back is checked for type and range before anything uses
    it: ``format_version``, ``dtype``, ``architecture`` (which must describe exactly the parameter and
    buffer tensors in the file, with their dtypes, so a damaged size never decides what is allocated),
    ``optimizer`` (class, step count, finite hyper-parameters in range), ``schedule`` (a registered
    schedule that its own checks accept, with a state it accepts) and, where present, the entries
    ``portablenn train`` writes: ``dataset`` (text), ``epoch`` and ``seed`` (non-negative integers) and ``train`` (the
    training options).

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
        was written by a newer format version, fails its checksum (corrupted or altered), does not
        fit in memory, or has a metadata entry of the wrong type or out of range (naming it).
    """
    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists()
                              else f"checkpoint {path} is not a regular file")
    size = path.stat().st_size
    check_memory(2 * size, f"checkpoint {path}", CheckpointError)  # the file mapped, and its tensors copied
    try:
        with st.safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {key: np.array(fh.get_tensor(key), copy=True) for key in fh.keys()}
    except st.SafetensorError as exc:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint (truncated or corrupted?): "
                              f"{exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except MemoryError:
        raise CheckpointError(f"checkpoint {path} ({format_bytes(size)}) does not fit in memory") from None
    except Exception as exc:  # the Rust reader can raise others on malformed headers
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint: {type(exc).__name__}: "
                              f"{exc}") from None
    version = meta.get("format_version")
    if version is None or "architecture" not in meta or "dtype" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a portablenn checkpoint "
                              "(its metadata lacks format_version, architecture or dtype)")
    if not (isinstance(version, str) and re.fullmatch(r"[0-9]{1,9}", version)):
        raise CheckpointError(f"{path} has an unreadable format_version {_short(version)}")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer portablenn (format {version}); upgrade portablenn "
                              f"to read it (this version reads format {FORMAT_VERSION} and older)")
    if meta.get("sha256") != _digest(tensors, meta):
        raise CheckpointError(f"{path} is corrupted: its content does not match the SHA-256 checksum saved with it"
                              if "sha256" in meta else f"{path} has no checksum (sha256) in its metadata; it was not "
                              "written by portablenn.checkpoint.save or was altered")
    if meta["dtype"] not in ("float32", "float64"):
        raise CheckpointError(f"{path} has unsupported dtype {_short(meta['dtype'])}; expected float32 or float64")
    architecture = _check_architecture(_json(meta, "architecture", path), path)
    optimizer_config = (_check_optimizer_config(_json(meta, "optimizer", path), path) if "optimizer" in meta
                        else None)
    schedule = None
    if "schedule" in meta:
        if optimizer_config is None:
            raise CheckpointError(f"{path} has corrupted metadata: a schedule without an optimizer")
        schedule = _json(meta, "schedule", path)
        _build_schedule(schedule, path)  # checked by building it: every value through the schedule's own checks
    _check_run_metadata(meta, path)
    state, optim, extra = {}, {}, {}
    for key, value in sorted(tensors.items(), key=lambda item: _natural(item[0])):
        if key.startswith(_EXTRA):
            extra[key[len(_EXTRA):]] = value
        elif key.startswith(_OPTIM):
            param, _, index = key[len(_OPTIM):].rpartition(".")
            if not re.fullmatch(r"[0-9]{1,4}", index):
                raise CheckpointError(f"{path} has a malformed optimizer tensor name {key!r}")
            optim.setdefault(param, {})[int(index)] = value
        else:
            state[key] = value
    _check_tensors(architecture, state, path)
    optimizer_state = {}
    for param, buffers in optim.items():
        if sorted(buffers) != list(range(len(buffers))):
            raise CheckpointError(f"{path} lacks some optimizer buffers of {param!r} (has {sorted(buffers)})")
        for i, buffer in buffers.items():
            if buffer.dtype.kind != "f":
                raise CheckpointError(f"{path}: optimizer buffer {_OPTIM}{param}.{i} has dtype {buffer.dtype}, "
                                      "not a float")
        optimizer_state[param] = tuple(buffers[i] for i in range(len(buffers)))
    return Checkpoint(state, meta, optimizer_state, optimizer_config, extra, schedule)


# -- metadata checks: everything read back from a file is input ------------------------------------------------
_MAX_SIZE = 2**31 - 1  # a layer width or class count (the tensors in the file must then match it)
_MAX_COUNT = 2**63 - 1  # steps, seeds
_MAX_EPOCHS = 2**31 - 1


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json(meta, key, path):
    text = meta[key]
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested garbage
        raise CheckpointError(f"{path} has corrupted metadata (invalid JSON in {key}): "
                              f"{_one_line(exc)}") from None


def _one_line(exc):
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _bad(path, where, expected, value):
    return CheckpointError(f"{path} has corrupted metadata: {where} must be {expected}, got {_short(value)}")


def _int(value, path, where, low=0, high=_MAX_COUNT):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(path, where, f"an integer from {low} to {high}", value)
    return value


def _number(value, path, where, low=0.0, high=math.inf, low_open=False, high_open=False):
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not ok:
        span = (f"{'>' if low_open else '>='} {low:g}" if high == math.inf
                else f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise _bad(path, where, f"a finite number {span}", value)
    return float(value)


def _check_architecture(architecture, path):
    """The ``mlp`` arguments (a dict) or the layer list, checked field by field; returned unchanged."""
    def cannot(why):
        return CheckpointError(f"{path} has an architecture this portablenn cannot build: {why}")

    if isinstance(architecture, dict):
        unknown = sorted(set(architecture) - {"sizes", "activation", "bias", "dropout", "norm", "seed"})
        if unknown:
            raise cannot(f"unknown entry {_short(unknown[0])} (expected sizes, activation, bias, dropout, norm, seed)")
        sizes = architecture.get("sizes")
        if (not isinstance(sizes, list) or not 2 <= len(sizes) <= 10_000
                or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_SIZE for s in sizes)):
            raise cannot(f"sizes must be a list of 2 or more integers from 1 to {_MAX_SIZE}, "
                         f"got {_short(sizes)}")
        activation = architecture.get("activation", "relu")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise cannot(f"activation {_short(activation)} is not one of {', '.join(sorted(ACTIVATIONS))}")
        if not isinstance(architecture.get("bias", True), bool):
            raise cannot(f"bias must be true or false, got {_short(architecture['bias'])}")
        dropout = architecture.get("dropout", 0.0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise cannot(f"dropout must be a number in [0, 1), got {_short(dropout)}")
        if architecture.get("norm") not in (None, "layer", "batch"):
            raise cannot(f"norm must be null, \"layer\" or \"batch\", got {_short(architecture['norm'])}")
        seed = architecture.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_COUNT:
            raise cannot(f"seed must be an integer from 0 to {_MAX_COUNT}, got {_short(seed)}")
        return architecture
    if not isinstance(architecture, list) or not 1 <= len(architecture) <= 10_000:
        raise cannot(f"expected the mlp arguments (an object) or a list of layers, got {_short(architecture)}")
    parameters = 0
    for i, spec in enumerate(architecture):
        kind = spec.get("type") if isinstance(spec, dict) else None
        if not isinstance(kind, str) or kind not in LAYERS:
            raise cannot(f"layer {i} is {_short(spec)}; expected one of the layers {', '.join(LAYERS)}")
        cls, config = LAYERS.get(kind), {k: v for k, v in spec.items() if k != "type"}
        try:
            cls.check_config(config)
            shapes = cls.parameter_shapes(config)
            buffers = cls.buffer_shapes(config)
        except (TypeError, ValueError) as exc:
            raise cannot(f"layer {i} ({kind}): {exc}") from None
        for name, shape in {**shapes, **buffers}.items():  # the tensors in the file must then match these
            if not all(1 <= size <= _MAX_SIZE for size in shape):
                raise cannot(f"layer {i} ({kind}) {name} would have shape {_short(shape)}: every size must be "
                             f"from 1 to {_MAX_SIZE}")
        parameters += len(shapes)
    if not parameters:
        raise cannot("it has no layer with parameters")
    return architecture


def _state_shapes(architecture):
    """``(shapes, buffers, integers)``: ``{"0.weight": (in, out), "0.bias": (out,), "1.running_mean": (n,), ...}``,
    the parameters and buffers the architecture's model holds, read from the configs alone (nothing built);
    the keys that are buffers; those of integer buffers."""
    specs = mlp_layer_configs(**architecture) if isinstance(architecture, dict) else architecture
    shapes, buffers, integers = {}, set(), set()
    for index, spec in enumerate(specs):
        cls, config = LAYERS.get(spec["type"]), {k: v for k, v in spec.items() if k != "type"}
        for name, shape in cls.parameter_shapes(config).items():
            shapes[f"{index}.{name}"] = tuple(shape)
        for name, shape in cls.buffer_shapes(config).items():
            shapes[f"{index}.{name}"] = tuple(shape)
            buffers.add(f"{index}.{name}")
        integers.update(f"{index}.{name}" for name in cls.integer_buffers)
    return shapes, buffers, integers


def _check_tensors(architecture, state, path):
    """The parameters and buffers the architecture describes must be exactly the tensors in the file, of a
    float dtype (integer buffers: an integer one): a size in the metadata never allocates more than the file holds."""
    shapes, buffers, integers = _state_shapes(architecture)
    _match_shapes(shapes, state, f"checkpoint {path} does not match the model its architecture describes",
                  "the architecture needs", buffers)
    for key, value in state.items():
        if key in integers and value.dtype.kind not in "iu":
            raise CheckpointError(f"checkpoint {path}: buffer {key!r} has dtype {value.dtype}, not an integer")
        if key not in integers and value.dtype.kind != "f":
            raise CheckpointError(f"checkpoint {path}: {'buffer' if key in buffers else 'parameter'} {key!r} has dtype "
                                  f"{value.dtype}, not a float")


# Hyper-parameters: (check, description); any other entry must be a finite number or a bool.
_UNIT = dict(low=0.0, high=1.0, high_open=True)
_OPTIMIZER_FIELDS = {
    "lr": dict(low=0.0, high=math.inf, low_open=True),
    "momentum": _UNIT, "beta1": _UNIT, "beta2": _UNIT,
    "eps": dict(low=0.0, high=math.inf, low_open=True),
    "l2": dict(low=0.0, high=math.inf),
    "weight_decay": dict(low=0.0, high=math.inf),
}


def _check_optimizer_config(config, path):
    """The saved optimizer: its class, step count and finite, in-range hyper-parameters."""
    where = "optimizer"
    if not isinstance(config, dict):
        raise _bad(path, where, "an object", config)
    name = config.get("class")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", name):
        raise _bad(path, f"{where} class", "a class name", name)
    if "steps" not in config:
        raise CheckpointError(f"{path} has corrupted metadata: optimizer has no steps")
    _int(config["steps"], path, f"{where} steps")
    if name in ("SGD", "Adam", "AdamW") and "lr" not in config:
        raise CheckpointError(f"{path} has corrupted metadata: the {name} optimizer has no lr")
    for key, value in config.items():
        if key in ("class", "steps"):
            continue
        if key in _OPTIMIZER_FIELDS:
            _number(value, path, f"{where} {key}", **_OPTIMIZER_FIELDS[key])
        elif key == "nesterov":
            if not isinstance(value, bool):
                raise _bad(path, f"{where} nesterov", "true or false", value)
        elif not (isinstance(value, bool) or isinstance(value, (int, float)) and math.isfinite(value)):
            raise _bad(path, f"{where} {key}", "a finite number or a bool", value)
    if config.get("nesterov") and not config.get("momentum"):
        raise CheckpointError(f"{path} has corrupted metadata: optimizer nesterov needs momentum > 0")
    return config


def _build_schedule(entry, path):
    """The Schedule a checkpoint's ``schedule`` entry describes, its state loaded; one CheckpointError naming
    the problem otherwise (the entry is untrusted: every value goes through the schedule's own checks)."""
    where = "schedule"
    if not isinstance(entry, dict) or set(entry) != {"config", "state"}:
        raise _bad(path, where, 'an object {"config": ..., "state": ...}', entry)
    config, state = entry["config"], entry["state"]
    kind = config.get("type") if isinstance(config, dict) else None
    if not isinstance(kind, str) or kind not in SCHEDULES:
        raise _bad(path, f"{where} type", f"one of {', '.join(SCHEDULES)}",
                   kind if isinstance(config, dict) else config)
    for key, value in [*config.items(), *(state.items() if isinstance(state, dict) else ())]:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_COUNT:
            raise _bad(path, f"{where} {key}", f"at most {_MAX_COUNT} in size", value)
    try:
        schedule = SCHEDULES.from_config(config)
        schedule.load_state_dict(state)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has corrupted metadata: {where} {kind}: {_one_line(exc)}") from None
    if not isinstance(schedule, Schedule):
        raise CheckpointError(f"{path} has corrupted metadata: {where} {kind} is not a Schedule")
    return schedule


def restore_schedule(checkpoint):
    """The learning-rate schedule a checkpoint saved with its optimizer, rebuilt with its learned state.

    Pass it to the resumed ``fit(..., schedule=...)`` together with the optimizer from `restore_optimizer`
    (whose step count drives the schedule) and ``initial_epoch``: the run then continues exactly as the
    uninterrupted one. (``fit`` sets ``optimizer.schedule`` itself, so `restore_optimizer` leaves it alone.)

    Parameters
    ----------
    checkpoint : Checkpoint or str or os.PathLike
        From `load_checkpoint`, or a path to read.

    Returns
    -------
    Schedule or None
        A new ``portablenn.schedules.Schedule`` of the saved type, configuration and ``state_dict``; None
        when the optimizer had no schedule.

    Raises
    ------
    CheckpointError
        The entry names no registered schedule, or its configuration or state fails the schedule's checks.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    if checkpoint.schedule is None:
        return None
    return _build_schedule(checkpoint.schedule, "the checkpoint")


# The entries ``portablenn train`` writes (and reads back to resume or evaluate), checked where present.
_TRAIN_OPTIONS = {
    "dataset": lambda v, p, w: _text(v, p, w),
    "seed": lambda v, p, w: _int(v, p, w),
    "lr": lambda v, p, w: _number(v, p, w, low_open=True),
    "l2": lambda v, p, w: _number(v, p, w),
    "batch_size": lambda v, p, w: _int(v, p, w, high=_MAX_SIZE),
    "shuffle": lambda v, p, w: _bool(v, p, w),
    "epochs": lambda v, p, w: _int(v, p, w, high=_MAX_EPOCHS),
    "log_every": lambda v, p, w: _int(v, p, w, low=1, high=_MAX_EPOCHS),
}


def _name(value, path, where, registry):
    if not isinstance(value, str) or value not in registry:
        raise _bad(path, where, f"one of {', '.join(registry)}", value)
    return value


def _early_stopping_options(value, path, where):
    """``{"monitor": text, "patience": int >= 1, "min_delta": number >= 0}``."""
    if not isinstance(value, dict) or set(value) != {"monitor", "patience", "min_delta"}:
        raise _bad(path, where, 'an object {"monitor", "patience", "min_delta"}', value)
    _text(value["monitor"], path, f"{where} monitor", "a History field")
    _int(value["patience"], path, f"{where} patience", low=1, high=_MAX_EPOCHS)
    _number(value["min_delta"], path, f"{where} min_delta")
    return value


def _early_stopping_state(value, path, where):
    """``{"best": number (infinite before any epoch) or null, "best_epoch": epoch or null, "wait": count,
    "stopped_epoch": epoch or null}``."""
    if not isinstance(value, dict) or set(value) != {"best", "best_epoch", "wait", "stopped_epoch"}:
        raise _bad(path, where, 'an object {"best", "best_epoch", "wait", "stopped_epoch"}', value)
    best = value["best"]
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best)):
        raise _bad(path, f"{where} best", "a number or null", best)
    for key in ("best_epoch", "stopped_epoch"):
        if value[key] is not None:
            _int(value[key], path, f"{where} {key}", low=1, high=_MAX_EPOCHS)
    _int(value["wait"], path, f"{where} wait", high=_MAX_EPOCHS)
    return value


def _first_best(value, path, where):
    """``{"epoch": epoch, metric: number}``: the epoch whose training accuracy (or RMSE) was the run's first best,
    ``metric`` one of the losses' first metrics."""
    if not isinstance(value, dict) or len(value) != 2 or "epoch" not in value \
            or not set(value) - {"epoch"} <= {"error", "rmse", "r2"}:
        raise _bad(path, where, 'an object {"epoch", and "error", "rmse" or "r2"}', value)
    _int(value["epoch"], path, f"{where} epoch", low=1, high=_MAX_EPOCHS)
    metric = next(key for key in value if key != "epoch")
    _number(value[metric], path, f"{where} {metric}", low=-math.inf)
    return value


# Entries later versions of ``portablenn train`` write: checked where present and not null (older files lack them).
_OPTIONAL_TRAIN_OPTIONS = {
    "loss": lambda v, p, w: _name(v, p, w, LOSSES),
    "targets": lambda v, p, w: _int(v, p, w, low=1, high=_MAX_SIZE),
    "clip_grad": lambda v, p, w: _number(v, p, w, low_open=True),
    "val_fraction": lambda v, p, w: _number(v, p, w, high=1.0, low_open=True, high_open=True),
    "early_stopping": _early_stopping_options,
    "early_stopping_state": _early_stopping_state,
    "first_best": _first_best,
}


def _text(value, path, where, what="a dataset name or path"):
    if not isinstance(value, str) or not 1 <= len(value) <= 4096 or not value.isprintable():
        raise _bad(path, where, f"a line of text ({what})", value)
    return value


def _bool(value, path, where):
    if not isinstance(value, bool):
        raise _bad(path, where, "true or false", value)
    return value


def _check_run_metadata(meta, path):
    if "dataset" in meta:
        _text(meta["dataset"], path, "dataset")
    for key, high in (("epoch", _MAX_EPOCHS), ("seed", _MAX_COUNT)):
        if key in meta:
            text = meta[key]
            if not re.fullmatch(r"[0-9]{1,19}", text):
                raise _bad(path, key, "a non-negative integer", text)
            _int(int(text), path, key, high=high)
    if "train" in meta:
        options = _json(meta, "train", path)
        if not isinstance(options, dict):
            raise _bad(path, "train", "an object of training options", options)
        for key, check in _TRAIN_OPTIONS.items():
            if key not in options:
                raise CheckpointError(f"{path} has corrupted metadata: train has no {key}")
            check(options[key], path, f"train {key}")
        for key, check in _OPTIONAL_TRAIN_OPTIONS.items():
            if options.get(key) is not None:
                check(options[key], path, f"train {key}")
        for key, what in (("val", "a dataset path"), ("init", "an initialiser's name")):  # optional, or null
            if options.get(key) is not None:
                _text(options[key], path, f"train {key}", what)


def _natural(key):
    """The model's order, "2.weight" before "2.bias" before "10.weight" (safetensors sorts names as text)."""
    rank = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}  # PyTorch's
    # a name read from a file may hold any digits ("²", 5000 of them): only short ASCII ones are numbers
    return [(0, int(part), "") if part.isascii() and part.isdigit() and len(part) < 19
            else (1, rank.get(part, len(rank)), part) for part in key.split(".")]


def _build(architecture, dtype, path):
    """A fresh model of the saved (already checked) architecture, zero weights to be overwritten."""
    try:
        if isinstance(architecture, dict):
            return mlp(**architecture, init="zeros", dtype=dtype)
        return Sequential.from_config({"layers": architecture}, dtype=dtype)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an architecture this portablenn cannot build ({type(exc).__name__}: "
                              f"{exc})") from None
    except MemoryError:
        raise CheckpointError(f"the model saved in {path} does not fit in memory") from None


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
    model = _build(_check_architecture(ckpt.architecture, path), ckpt.dtype, path)
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


def _match_shapes(expected, state, problem, needs, buffers=()):
    """Refuse unless ``state`` holds exactly the keys of ``expected`` with its shapes (a bias also as ``(1, n)``);
    ``buffers``: the keys that are buffers, for the message."""
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"{problem}: it has no {'buffer' if key in buffers else 'parameter'} {key!r} "
                                  f"of shape {shape} "
                                  f"(it has {', '.join(sorted(state)) or 'none'})")
        got = tuple(state[key].shape)
        if got != shape and not (key.endswith(".bias") and got == (1,) + shape):
            raise CheckpointError(f"{problem}: {key!r} has shape {got}, {needs} {shape}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{problem}: it has parameter {unexpected[0]!r} that the model lacks")



def _load_state(model, state, path):
    expected = {key: tuple(store[name].shape) for key, layer, name, store in model._named_state()}
    _match_shapes(expected, state, f"checkpoint {path} does not match the model", "the model expects",
                  {key for key, _, _ in model.named_buffers()})
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} does not match the model: {exc}") from None


def restore_optimizer(optimizer, checkpoint, model):
    """Put a checkpoint's optimizer state and step count into ``optimizer``, bound to ``model``.

    Call it after loading the weights into ``model`` (and moving the model to its device); `fit`
    with the same model keeps the restored state. Hyper-parameters (lr, momentum, ...) stay those
    ``optimizer`` was built with, so a resumed run may change them; the L2 strength is restored. A
    learning-rate schedule saved with the optimizer comes back from `restore_schedule`, for ``fit``.

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
    config = _check_optimizer_config(config, "the checkpoint")  # a Checkpoint may be built or changed by hand
    name = type(optimizer).__name__
    if config.get("class") != name:
        raise CheckpointError(f"the checkpoint holds {config.get('class')} state but the optimizer is {name}")
    params = {key: layer.params[p] for key, layer, p in model.named_parameters()}
    count = {"SGD": 1, "Adam": 2, "AdamW": 2}.get(name)
    saved = checkpoint.optimizer_state
    if not isinstance(saved, dict) or not all(
            isinstance(key, str) and isinstance(buffers, (tuple, list))
            and all(isinstance(b, np.ndarray) and b.dtype.kind == "f" for b in buffers) for key, buffers in saved.items()):
        raise CheckpointError("the checkpoint's optimizer state must map parameter names to tuples of float arrays")
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

