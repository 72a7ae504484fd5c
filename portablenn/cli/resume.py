"""train --resume: the model, optimizer and options a checkpoint holds, and refusing flags that contradict it."""
import json
import os

from ..optim import OPTIMIZERS
from ..registry import SCHEDULES
from .errors import CLIError


def _optimizer_from(config):
    """An optimizer with the class and hyper-parameters a checkpoint recorded (the registry's class of that
    name, built from the saved entries of its config; absent ones take their defaults)."""
    name = config.get("class", "SGD")
    cls = next((cls for _, cls in OPTIMIZERS.items() if cls.__name__ == name), None)
    if cls is None:
        raise CLIError(f"the checkpoint's optimizer {name!r} is not one portablenn knows")
    return cls.from_config({key: config[key] for key in cls.config_keys if key in config})


def resume(args, dev):
    """(model, optimizer, options, epochs done, schedule, early stopping) from a --resume checkpoint, on ``dev``:
    the schedule restored with its state (or None), and the early-stopping ``(state, best weights)`` (or None);
    a flag given that contradicts the checkpoint is refused."""
    from .. import checkpoint

    ckpt = checkpoint.load_checkpoint(args.resume)
    meta = ckpt.metadata
    if "train" not in meta:
        raise CLIError(f"{args.resume} was not written by 'portablenn train' (no training options in it)")
    saved = {**_OLD_DEFAULTS, **json.loads(meta["train"])}  # a checkpoint from before an option was written
    _refuse_contradictions(args, ckpt, saved)
    model = checkpoint.load(args.resume, device=dev)
    if ckpt.optimizer_config is None:
        raise CLIError(f"{args.resume} holds no optimizer state, so training cannot resume exactly")
    optimizer = checkpoint.restore_optimizer(_optimizer_from(ckpt.optimizer_config), ckpt, model)
    schedule = checkpoint.restore_schedule(ckpt)
    saved["schedule"] = SCHEDULES.name_of(schedule) if schedule is not None else None
    early = saved.get("early_stopping")
    saved["monitor"] = early["monitor"] if early else getattr(schedule, "monitor", None)
    return model, optimizer, saved, int(meta.get("epoch", 0)), schedule, _early_stopping(args.resume, ckpt, saved,
                                                                                         model)


# the options a checkpoint written before they existed trained with
_OLD_DEFAULTS = {"loss": "softmax_cross_entropy", "targets": None, "clip_grad": None, "val_fraction": None,
                 "early_stopping": None}


def _early_stopping(path, ckpt, saved, model):
    """``(state, best weights by state-dict key or None)`` of the early stopping saved in ``ckpt``, checked
    against the model; None where the run had none or saved no state."""
    state = saved.get("early_stopping_state")
    if not saved.get("early_stopping") or state is None:
        return None
    best = {key[len("best."):]: value for key, value in ckpt.extra.items() if key.startswith("best.")}
    if state.get("best_epoch") is None:
        return state, None
    expected = {key: tuple(store[name].shape) for key, _, name, store in model._named_state()}
    if set(best) != set(expected):
        missing = sorted(set(expected) ^ set(best))
        raise CLIError(f"{path} has early-stopping state without the best weights it needs (first difference: "
                       f"{missing[0]!r})")
    for key, shape in expected.items():
        if tuple(best[key].shape) != shape:
            raise CLIError(f"{path}: the early-stopping best weight {key!r} has shape {tuple(best[key].shape)}, the "
                           f"model's has {shape}")
    return state, best


_FLAGS = {"batch_size": "--batch-size"}  # attribute -> flag, where not "--" + attribute


def _checkpoint_options(ckpt, saved):
    """What a checkpoint says each model flag was (attribute -> value), for the flags it records."""
    from ..registry import ACTIVATIONS

    values = {key: saved[key] for key in ("dataset", "val", "seed", "lr", "l2", "batch_size", "shuffle")
              if key in saved}
    values["dtype"] = ckpt.dtype
    arch = ckpt.architecture
    if isinstance(arch, dict) and "sizes" in arch:
        linear = len(arch["sizes"]) == 2
        values.update(model="linear" if linear else "mlp", hidden=list(arch["sizes"][1:-1]), bias=arch.get("bias"))
        if not linear:
            values["activation"] = arch.get("activation")
            if "init" in saved:
                auto = ACTIVATIONS[arch["activation"]].auto_init if arch.get("activation") in ACTIVATIONS else None
                values["init"] = auto if saved["init"] == "auto" else saved["init"]
    if isinstance(arch, dict) and "sizes" in arch:
        values.update(dropout=float(arch.get("dropout", 0.0)), norm=arch.get("norm"))
    config = ckpt.optimizer_config or {}
    name = next((key for key, cls in OPTIMIZERS.items() if cls.__name__ == config.get("class")), None)
    if name is not None:
        values["optimizer"] = name
        values["momentum"] = float(config.get("momentum", 0.0)) if name == "sgd" else 0.0
        if name == "adamw":
            values["weight_decay"] = config.get("weight_decay")
    values.update({key: saved.get(key) for key in ("loss", "targets", "clip_grad", "val_fraction")})
    schedule = (ckpt.schedule or {}).get("config") or {}
    kind = schedule.get("type")
    values["schedule"] = kind
    for key, owner, entry in (("warmup", "cosine", "warmup"), ("step_size", "step", "step_size"),
                              ("gamma", "step", "gamma"), ("factor", "plateau", "factor"),
                              ("plateau_patience", "plateau", "patience")):
        values[key] = schedule.get(entry) if kind == owner else None
    early = saved.get("early_stopping") or None
    values["early_stopping"] = early is not None
    values["patience"] = early["patience"] if early else None
    values["min_delta"] = early["min_delta"] if early else None
    values["monitor"] = early["monitor"] if early else schedule.get("monitor") if kind == "plateau" else None
    return values


def _show_flag(key, value):
    flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if value is None:
        return f"no {flag}"
    if isinstance(value, list):
        return f"{flag} {' '.join(map(str, value))}" if value else f"no {flag} (a linear model)"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


_NUMBERS = ("lr", "l2", "momentum", "dropout", "weight_decay", "clip_grad", "val_fraction", "warmup", "gamma", "factor",
            "min_delta")


def _same_value(key, given, saved):
    if key in _NUMBERS:
        return saved is not None and float(given) == float(saved)
    if key == "norm":
        return (None if given == "none" else given) == saved
    if key == "hidden":
        return list(given) == list(saved)
    if key in ("dataset", "val") and isinstance(given, str) and isinstance(saved, str):
        if given == saved:
            return True
        def path(spec):
            return spec[4:] if spec.startswith(("csv:", "npz:")) else spec
        same_format = key == "val" or given[:4] == saved[:4]  # csv:a.csv and ./a.csv as --val are one file
        return same_format and _same_file(path(given), path(saved))
    if key == "init" and given == "auto":
        return True  # "auto" is whatever the saved activation chose
    return given == saved


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _refuse_contradictions(args, ckpt, saved):
    """A model flag given with --resume must say what the checkpoint says: one line naming both values."""
    given = getattr(args, "given", set())
    recorded = _checkpoint_options(ckpt, saved)
    for key, value in recorded.items():
        if key in given and not _same_value(key, getattr(args, key), value):
            raise CLIError(f"{_show_flag(key, getattr(args, key))} contradicts {args.resume}, which was trained with "
                           f"{_show_flag(key, value)}; leave it out to resume (--resume restores the options), or "
                           "start a new run without --resume")
    if "momentum" in given and args.momentum and recorded.get("optimizer") not in (None, "sgd"):
        raise CLIError(f"--momentum {args.momentum:g} contradicts {args.resume}, which was trained with "
                       f"--optimizer {recorded['optimizer']} (no momentum)")
    if "weight_decay" in given and recorded.get("optimizer") not in (None, "adamw"):
        raise CLIError(f"--weight-decay {args.weight_decay:g} contradicts {args.resume}, which was trained with "
                       f"--optimizer {recorded['optimizer']} (no decoupled weight decay)")
