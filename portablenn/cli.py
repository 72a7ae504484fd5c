"""Command line: train, eval, predict, download, info, parity; errors are one line on stderr and exit code 2."""
import argparse
import contextlib
import difflib
import json
import os
import shlex
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__, backend, outputs
from .datasets import DatasetError
from .models import ACTIVATIONS, mlp
from .optim import OPTIMIZERS
from .train import DivergenceError, evaluate, fit, predict, predict_proba
from .validation import CLASS_RULE, InputError, check_epochs, check_memory, class_limit, training_memory

# Per-dataset defaults: the classic setups (CS231n spiral, the 3x3 lines net, CMU 10-714 hw0 MNIST)
DEFAULTS = {
    "spiral": dict(hidden=[100], activation="relu", init="small", bias=True, epochs=10000, lr=1.0,
                   batch_size=0, l2=1e-3, shuffle=True, log_every=1000),
    "lines": dict(hidden=[6], activation="sigmoid", init="xavier", bias=True, epochs=1000, lr=1.0,
                  batch_size=0, l2=0.0, shuffle=True, log_every=100),
    "mnist": dict(hidden=[100], activation="relu", init="cmu", bias=False, epochs=10, lr=0.2,
                  batch_size=100, l2=0.0, shuffle=False, log_every=1),
    "file": dict(hidden=[100], activation="relu", init="auto", bias=True, epochs=20, lr=0.1,
                 batch_size=100, l2=0.0, shuffle=True, log_every=1),
}
# Adam's learning rate where --lr is not given (the SGD rates above make Adam stall or diverge): with the
# other defaults the spiral reaches 98% training accuracy, the lines 100% on both validation sets
ADAM_LR = {"spiral": 1e-3, "lines": 1e-2, "mnist": 1e-3, "file": 1e-3}
# model flags whose default is filled in after parsing, so that a flag the user gave can be told apart
MODEL_DEFAULTS = {"dataset": "spiral", "model": "mlp", "optimizer": "sgd", "momentum": 0.0, "seed": 0}
PARITY_RTOL = {"float64": 1e-8, "float32": 1e-3}


class CLIError(Exception):
    """A usage problem found after parsing (exit code 2)."""


class _Quiet(CLIError):
    """A problem rank 0 reports: the other MPI ranks exit 2 without repeating it."""


# -- arguments ---------------------------------------------------------------------------------------
def _model_args(p):
    p.add_argument("--dataset", help="spiral (default) | lines | mnist | csv:PATH | npz:PATH (label in the last "
                                      "CSV column)")
    p.add_argument("--val", help="validation file for csv:/npz: datasets (same format)")
    p.add_argument("--data-dir", help="MNIST directory (default: $PORTABLENN_DATA, ../shared/data/mnist, cache)")
    p.add_argument("--no-download", action="store_true", help="never download MNIST; fail if it is missing")
    p.add_argument("--model", choices=["mlp", "linear"], help="mlp (default), or linear = softmax regression")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths, e.g. --hidden 256 128")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS))
    p.add_argument("--init", help="weight initialiser: he, xavier, xavier_normal, small, cmu, zeros")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default: the dataset's, per optimizer)")
    p.add_argument("--batch-size", type=int, help="minibatch size; 0 = full batch")
    p.add_argument("--l2", type=float, help="L2 strength: adds 0.5*l2*sum(W**2) to the loss")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="sgd (default) or adam")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0; not with --optimizer adam)")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                   help="reshuffle every epoch (--no-shuffle: minibatches in order)")
    p.add_argument("--seed", type=int, help="seed of the initial weights and the shuffling (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"])


def _kernels_arg(p):
    p.add_argument("--kernels", default="auto", choices=backend.KERNEL_MODES,
                   help="fast: the backend's fused kernels; generic: the Array API ones they must match; auto "
                        "(default): fast, after a one-time self-test on a GPU (generic, with a warning, if it fails)")


def _device(args, spec=None):
    return backend.device(args.device if spec is None else spec, kernels=args.kernels)


def build_parser():
    parser = argparse.ArgumentParser(prog="portablenn", description="A small, fast MLP trainer on NumPy or CuPy.")
    parser.add_argument("--version", action="version", version=f"portablenn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train an MLP and print the epoch table",
                                description="Train an MLP with softmax cross-entropy. With no options: the "
                                            "CS231n spiral, 2-layer ReLU net, full-batch SGD.")
    _model_args(train)
    train.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto | array_api_strict[:NAME] | torch")
    _kernels_arg(train)
    train.add_argument("--log-every", type=int, help="print a table row every N epochs")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--log", metavar="FILE", help="append one JSON object per epoch (JSON lines)")
    train.add_argument("--plot", metavar="DIR", help="write PNG plots there (needs portablenn[plot])")
    train.add_argument("--save", metavar="FILE", help="write the trained model, optimizer state and options "
                                                      "(safetensors, atomically; default with --resume: its file)")
    train.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="also save to --save every N epochs (each written once the next epoch ended finite)")
    train.add_argument("--overwrite", action="store_true",
                       help="let --save, --log and --plot replace files that portablenn did not write (never an "
                            "input, a directory or a non-regular file)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the MPI ranks (mpiexec -n K portablenn train --distributed ...); "
                            "--batch-size is the global batch; needs portablenn[mpi]")
    train.add_argument("--comm", default="auto", choices=["auto", "mpi", "nccl"],
                       help="with --distributed: NCCL for GPUs, MPI otherwise (auto)")
    train.add_argument("--cuda-graph", action="store_true",
                       help="record the training step once as a CUDA graph and replay it: one launch per step "
                            "(SGD; on a device other than CUDA the same fixed-address step runs eagerly)")
    train.add_argument("--resume", metavar="FILE", help="continue a saved run up to --epochs (the total); model, "
                                                        "optimizer state, options and shuffling are restored")

    ev = commands.add_parser("eval", help="loss, error and confusion matrix of a saved model")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    ev.add_argument("--split", help="train | test (mnist) | a lines split | val (a file dataset's --val) "
                                    "(default: test, or train where it is the only split)")
    ev.add_argument("--data-dir")
    ev.add_argument("--no-download", action="store_true")
    ev.add_argument("--device", default="cpu")
    _kernels_arg(ev)

    pr = commands.add_parser("predict", help="class indices and probabilities for the rows of a .npy/.csv file")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--input", required=True, help=".npy array (n, features) or .csv without labels")
    pr.add_argument("--output", help=".npz (arrays classes, probabilities) or .csv; '-' prints CSV "
                                     "(default: INPUT.predictions.npz)")
    pr.add_argument("--overwrite", action="store_true", help="let --output replace a file portablenn did not write")
    pr.add_argument("--device", default="cpu")
    _kernels_arg(pr)

    dl = commands.add_parser("download", help="download a dataset into the cache (MNIST)")
    dl.add_argument("name", choices=["mnist"])
    dl.add_argument("--data-dir", help="target directory (default: $PORTABLENN_DATA or the cache)")

    ex = commands.add_parser("export", help="write a saved model as ONNX (logits and probabilities; needs "
                                            "portablenn[onnx])")
    ex.add_argument("checkpoint")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--overwrite", action="store_true", help="let --onnx replace a file portablenn did not write")

    commands.add_parser("info", help="versions, and which devices are usable here (and why not)")

    pa = commands.add_parser("parity", help="train the same model on several devices and compare step by step",
                             description="Train from identical initial weights on every device and print, per "
                                         "epoch (or per minibatch step with --steps), the largest parameter and "
                                         "loss differences against the first, and where they first exceed --rtol.")
    _model_args(pa)
    pa.add_argument("--devices", default="cpu,array_api_strict:device1",
                    help="comma-separated device specs; the first is the reference")
    _kernels_arg(pa)
    pa.add_argument("--steps", type=int, metavar="N",
                    help="compare after each of the first N minibatch steps instead of each epoch (reads the "
                         "weights back every step: a diagnostic, slower than training)")
    pa.add_argument("--rtol", type=float, help="fail (exit 1) above this relative parameter difference "
                                               "(default: 1e-8 for float64, 1e-3 for float32)")
    parser.commands = {"train": train, "eval": ev, "predict": pr, "download": dl, "export": ex, "parity": pa}
    return parser


# -- data and model --------------------------------------------------------------------------------
def _dataset_kind(name):
    if name in ("spiral", "lines", "mnist"):
        return name
    if name.startswith(("csv:", "npz:")):
        return "file"
    raise CLIError(f"unknown dataset {name!r}; expected spiral, lines, mnist, csv:PATH or npz:PATH")


def load_dataset(name, data_dir=None, seed=0, val=None, download=True, dtype=None):
    """``{"train": (X, y), <eval split>: (X, y), ...}`` as host arrays; csv:/npz: files read in ``dtype``."""
    from . import datasets

    kind = _dataset_kind(name)
    if kind == "spiral":
        return {"train": datasets.spiral(seed=seed)}
    if kind == "lines":
        return datasets.lines(seed=seed)
    if kind == "mnist":  # downloaded on first use unless --no-download, as datasets.mnist(download=...)
        return {split: datasets.mnist(data_dir, split, download=download) for split in ("train", "test")}
    from .datasets.files import load_spec

    splits = {"train": load_spec(name, dtype)}
    if val:  # a bare path is read in the training file's format
        splits["val"] = load_spec(val if val.startswith(("csv:", "npz:")) else name[:4] + val, dtype)
    return splits


def _fill_defaults(args):
    """Note the model flags given (``args.given``), then fill in `MODEL_DEFAULTS` for the others."""
    args.given = {key for key, value in vars(args).items() if value is not None}
    for key, value in MODEL_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _options(args):
    kind = _dataset_kind(args.dataset)
    if args.val is not None and kind != "file":
        raise CLIError(f"--val is for csv:/npz: datasets; {args.dataset} brings its own splits and would ignore "
                       f"--val {args.val}")
    if args.optimizer != "sgd" and args.momentum:
        raise CLIError(f"--momentum {args.momentum:g} is SGD's; --optimizer {args.optimizer} has no momentum "
                       "(leave --momentum out, or use --optimizer sgd)")
    opts = {**DEFAULTS[kind], **{k: v for k, v in vars(args).items() if v is not None}}
    if args.lr is None and args.optimizer == "adam":
        opts["lr"] = ADAM_LR[kind]
    opts.setdefault("dtype", "float32")
    return opts


def _build(args, opts, splits):
    X, y = splits["train"]
    present = np.unique(np.asarray(y))
    if present.size == 1:  # it would train to "100% accuracy" and learn nothing
        raise CLIError(f"the training set has a single class (label {int(present[0])} on all {len(y)} rows); "
                       "a classifier needs at least two classes")
    classes = max(int(np.max(labels)) for _, labels in splits.values()) + 1
    rows = sum(len(labels) for _, labels in splits.values())
    if classes > class_limit(rows):  # the file readers say where; this guards any other source
        raise CLIError(f"label {classes - 1} would make {classes} classes from {rows} rows; {CLASS_RULE} "
                       f"(here {class_limit(rows)})")
    sizes = [X.shape[1]] + ([] if args.model == "linear" else list(opts["hidden"])) + [classes]
    if all(isinstance(s, int) and s >= 1 for s in sizes):  # mlp names any other size
        batch = min(opts["batch_size"] or len(y), len(y))
        buffers = 2 if args.optimizer == "adam" else 1 if args.momentum else 0
        need, params = training_memory(sizes, np.dtype(opts["dtype"]).itemsize, rows, batch, buffers,
                                       bias=opts["bias"])
        flag = f"--hidden {' '.join(map(str, args.hidden))}: " if args.hidden else ""
        check_memory(need, f"{flag}training the model {sizes} ({params:,} {opts['dtype']} parameters, with "
                           f"gradients, optimizer state, data and activations) on {rows} rows", CLIError,
                     hint="choose smaller --hidden widths or a smaller --batch-size")
    model = mlp(sizes, activation=opts["activation"], bias=opts["bias"], init=opts["init"], seed=args.seed,
                dtype=opts["dtype"])
    extra = {"momentum": args.momentum} if args.optimizer == "sgd" and args.momentum else {}
    return model, OPTIMIZERS[args.optimizer](opts["lr"], **extra)


def _row(cells, widths):
    return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"


def _loss(value):
    """A loss for the table: 5 decimals, or 4 significant digits in exponent form once it is huge."""
    return f"{value:.5f}" if abs(value) < 1e5 else f"{value:.4e}"


@contextlib.contextmanager
def _progress(epochs, quiet):
    """tqdm bars for epochs and batches, or None where tqdm is missing, --quiet, or not a terminal."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or quiet or not sys.stderr.isatty():
        yield None, None
        return
    bar = tqdm(total=epochs, unit="epoch", dynamic_ncols=True, leave=False)
    batches = [None]

    def on_step(epoch, step, steps):
        if steps < 2:
            return
        if batches[0] is None or step == 1:
            if batches[0] is not None:
                batches[0].close()
            batches[0] = tqdm(total=steps, unit="batch", desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        batches[0].update(1)
    try:
        yield bar, on_step
    finally:
        if batches[0] is not None:
            batches[0].close()
        bar.close()


# -- commands --------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from the epoch callback after SIGINT/SIGTERM: stop at this epoch boundary."""


@contextlib.contextmanager
def _graceful_stop(quiet=False):
    """SIGINT/SIGTERM set a flag (training stops after the epoch and saves); a second one aborts.

    ``train`` holds it from before the first epoch until after its last save, so a signal during the
    final evaluation or save still ends with the model saved. ``quiet``: say nothing (MPI ranks but 0).
    """
    state = {"signum": None}

    def handler(signum, frame):
        if state["signum"] is not None:
            raise KeyboardInterrupt
        state["signum"] = signum
        if not quiet:
            print("\nportablenn: stopping after this epoch to save (signal again to abort)", file=sys.stderr)
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave the handlers alone
            pass
    try:
        yield state
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _optimizer_from(config):
    """An optimizer with the class and hyper-parameters a checkpoint recorded."""
    name = config.get("class", "SGD")
    if name == "SGD":
        return OPTIMIZERS["sgd"](config["lr"], momentum=config.get("momentum", 0.0),
                                 nesterov=config.get("nesterov", False))
    if name == "Adam":
        return OPTIMIZERS["adam"](config["lr"], beta1=config.get("beta1", 0.9), beta2=config.get("beta2", 0.999),
                                  eps=config.get("eps", 1e-8))
    raise CLIError(f"the checkpoint's optimizer {name!r} is not one portablenn knows")


def _resume(args, dev):
    """(model, optimizer, options, epochs done) from a --resume checkpoint, on ``dev``; a flag given that
    contradicts the checkpoint is refused."""
    from . import checkpoint

    ckpt = checkpoint.load_checkpoint(args.resume)
    meta = ckpt.metadata
    if "train" not in meta:
        raise CLIError(f"{args.resume} was not written by 'portablenn train' (no training options in it)")
    saved = json.loads(meta["train"])
    _refuse_contradictions(args, ckpt, saved)
    model = checkpoint.load(args.resume, device=dev)
    if ckpt.optimizer_config is None:
        raise CLIError(f"{args.resume} holds no optimizer state, so training cannot resume exactly")
    optimizer = checkpoint.restore_optimizer(_optimizer_from(ckpt.optimizer_config), ckpt, model)
    return model, optimizer, saved, int(meta.get("epoch", 0))


_FLAGS = {"batch_size": "--batch-size"}  # attribute -> flag, where not "--" + attribute


def _checkpoint_options(ckpt, saved):
    """What a checkpoint says each model flag was (attribute -> value), for the flags it records."""
    from .models import _AUTO_INIT

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
                values["init"] = _AUTO_INIT.get(arch.get("activation")) if saved["init"] == "auto" else saved["init"]
    config = ckpt.optimizer_config or {}
    name = {"SGD": "sgd", "Adam": "adam"}.get(config.get("class"))
    if name is not None:
        values["optimizer"] = name
        values["momentum"] = float(config.get("momentum", 0.0)) if name == "sgd" else 0.0
    return values


def _show_flag(key, value):
    flag = _FLAGS.get(key, "--" + key)
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if value is None:
        return f"no {flag}"
    if isinstance(value, list):
        return f"{flag} {' '.join(map(str, value))}" if value else f"no {flag} (a linear model)"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _same_value(key, given, saved):
    from .models import _AUTO_INIT

    if key in ("lr", "l2", "momentum"):
        return saved is not None and float(given) == float(saved)
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
    if "momentum" in given and args.momentum and recorded.get("optimizer") == "adam":
        raise CLIError(f"--momentum {args.momentum:g} contradicts {args.resume}, which was trained with "
                       "--optimizer adam (no momentum)")


def _communicator(args):
    """The MPI/NCCL communicator for --distributed (None without it); maps the device to this rank's GPU."""
    from . import distributed

    if not args.distributed:
        if args.comm != "auto":
            raise CLIError("--comm needs --distributed")
        if distributed.launched_by_mpi():
            print("portablenn: warning: started by mpiexec without --distributed: every rank trains its own copy",
                  file=sys.stderr)
        return None
    comm = distributed.make_communicator(args.comm)
    args.device = comm.device(args.device)
    return comm


def _agreed(comm, root, check):
    """Run ``check`` on rank 0 (the rank that writes files); its problem ends every rank, said once."""
    problem = None
    if root:
        try:
            check()
        except (CLIError, outputs.OutputError, ImportError) as exc:
            if comm is None:
                raise
            problem = _one_line(exc)
    if comm is not None:
        problem = comm.bcast_object(problem, what="output check")
        if problem is not None:
            raise CLIError(problem) if root else _Quiet(problem)


def _train_inputs(args, with_resume=True):
    """(path, description) of the files a training run reads: never one of its outputs."""
    inputs = []
    if args.dataset and args.dataset.startswith(("csv:", "npz:")):
        inputs.append((args.dataset[4:], f"the --dataset file ({args.dataset})"))
    if args.val:
        inputs.append((args.val[4:] if args.val.startswith(("csv:", "npz:")) else args.val, "the --val file"))
    if with_resume and args.resume:
        inputs.append((args.resume, "the --resume checkpoint"))
    return inputs


def _need_matplotlib():
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'portablenn[plot]'") from None


def _plot_files(dataset, X, splits):
    """The PNG names `_plots` writes for this dataset."""
    names = ["history.png"]
    if X.shape[1] == 2:
        names.append("decision_regions.png")
    if dataset == "lines":
        names += [f"lines_{name}.png" for name in splits]
    if X.shape[1] == 784:
        names.append("first_layer.png")
    return names


def _check_train_outputs(args, plot_files=(), prepare=False):
    """Every output of a training run may be written (principle: never a file that is not portablenn's, an
    input, a directory or a non-regular file), and what it needs is installed; ``prepare``: make their
    folders (mkdir -p) and prove them writable. Raises OutputError, ImportError."""
    inputs, named = _train_inputs(args), []
    if args.save:
        from . import checkpoint

        checkpoint._safetensors()  # ImportError with the pip line, now rather than after the last epoch
        # the --resume checkpoint is ours, so the default target of a resumed run
        outputs.check(args.save, "checkpoint", flag="--save", overwrite=args.overwrite,
                      inputs=_train_inputs(args, with_resume=False))
        named.append(("--save", args.save))
    if args.log:
        outputs.check(args.log, "log", flag="--log", overwrite=args.overwrite, inputs=inputs)
        named.append(("--log", args.log))
    if args.plot:
        _need_matplotlib()
        outputs.check_directory(args.plot, flag="--plot", inputs=inputs)
        for name in plot_files:
            outputs.check(Path(args.plot) / name, "png", flag="--plot", overwrite=args.overwrite, inputs=inputs)
            named.append(("--plot", Path(args.plot) / name))
    outputs.check_distinct(named)
    if prepare:
        if args.save:
            outputs.prepare(args.save, flag="--save")
        if args.log:
            outputs.prepare(args.log, flag="--log", append=True)
        if args.plot:
            outputs.prepare(args.plot, flag="--plot", directory=True)


def _interrupt_path(args):
    """Where an interrupted run without --save goes: ./portablenn-interrupted.safetensors if that is free or
    ours, else a name with the process id, in the working directory or else the temporary one."""
    name = f"portablenn-interrupted-{os.getpid()}.safetensors"
    for candidate in ("portablenn-interrupted.safetensors", name, os.path.join(tempfile.gettempdir(), name)):
        try:
            outputs.check(candidate, "checkpoint", flag="interrupted run:", inputs=_train_inputs(args))
            outputs.prepare(candidate, flag="interrupted run:")
            return candidate
        except outputs.OutputError:
            continue
    raise CLIError("cannot save the interrupted run: neither the working directory nor the temporary one can "
                   "be written")


def _continue_command(args, device, comm, path, epochs):
    """The command that continues an interrupted run (it saves back to ``path``), quoted for a shell."""
    words = ["portablenn", "train"]
    if comm is not None:
        words = ["mpiexec", "-n", str(comm.size), *words, "--distributed"]
        if args.comm != "auto":
            words += ["--comm", args.comm]
    words += ["--resume", str(path), "--epochs", str(epochs)]
    if device != "cpu":
        words += ["--device", device]
    if args.kernels != "auto":
        words += ["--kernels", args.kernels]
    for flag, value in (("--data-dir", args.data_dir), ("--log", args.log), ("--plot", args.plot),
                        ("--checkpoint-every", args.checkpoint_every)):
        if value is not None:
            words += [flag, str(value)]
    words += [flag for flag, on in (("--no-download", args.no_download), ("--cuda-graph", args.cuda_graph),
                                    ("--quiet", args.quiet)) if on]
    return " ".join(shlex.quote(word) for word in words)


def train(args):
    device_spec = args.device
    comm = _communicator(args)
    root = comm is None or comm.rank == 0  # only rank 0 prints, logs, plots and writes files
    say = print if root else (lambda *a, **k: None)
    dev = _device(args)
    if args.checkpoint_every is not None and (args.checkpoint_every < 1 or not (args.save or args.resume)):
        raise CLIError("--checkpoint-every N needs N >= 1 and --save PATH")
    if args.cuda_graph and comm is not None:
        raise CLIError("--cuda-graph cannot be combined with --distributed")
    if args.resume:
        model, optimizer, opts, done = _resume(args, dev)
        opts["epochs"] = args.epochs if args.epochs is not None else opts["epochs"]
        opts["log_every"] = args.log_every or opts["log_every"]
        args.dataset, args.seed, args.val = opts["dataset"], opts["seed"], opts.get("val")
        args.save = args.save or args.resume  # a resumed run saves back to its checkpoint
    else:
        opts, done = _options(args), 0
    # every output and what it needs, before the data (a download) and long before the first epoch
    _agreed(comm, root, lambda: _check_train_outputs(args, prepare=True))
    why = backend._cuda_problem(0) if args.device.strip().lower() == "auto" and dev.kind == "cpu" else None
    if comm is not None and not root:
        comm.barrier()  # rank 0 downloads first
    splits = load_dataset(args.dataset, args.data_dir, args.seed, args.val, not args.no_download,
                          dtype=model.dtype if args.resume else opts["dtype"])
    if comm is not None and root:
        comm.barrier()
    evals = [name for name in splits if name != "train"]
    X, y = splits["train"]
    if args.plot:  # the PNG files, whose names depend on the data
        _agreed(comm, root, lambda: _check_train_outputs(args, _plot_files(args.dataset, X, splits)))
    if not args.resume:
        model, optimizer = _build(args, opts, splits)
    if args.cuda_graph and not optimizer.replayable:
        raise CLIError(f"--cuda-graph replays the same step every time: it needs --optimizer sgd, "
                       f"not {type(optimizer).__name__}")
    if not args.resume and args.batch_size is None and opts["batch_size"] > X.shape[0]:
        opts["batch_size"] = 0  # the default minibatch is larger than this dataset: one full batch
    batch = opts["batch_size"] or None
    ranks = f" x {comm.size} MPI ranks" if comm is not None else ""
    say(f"portablenn {__version__} | device {dev.name}{ranks}" + (f" (auto: {why})" if why else "")
          + f" | {args.dataset}: {X.shape[0]} train" + "".join(f", {splits[n][0].shape[0]} {n}" for n in evals))
    say(f"model {model.config['sizes']} {model.config['activation'] if len(model.config['sizes']) > 2 else 'linear'} "
          f"bias={model.config['bias']} {model.dtype} | {optimizer!r} l2={opts['l2']} | batch {batch or 'full'} | "
          f"{opts['epochs']} epochs" + (f" (resuming after epoch {done} from {args.resume})" if args.resume else "")
          + (" | --cuda-graph: no CUDA graph off a GPU, the same fixed-address step runs eagerly"
             if args.cuda_graph and dev.library != "cupy" else ""))
    check_epochs(opts["epochs"])
    if args.resume and done >= opts["epochs"]:
        say(f"nothing to do: the checkpoint has {done} epochs and --epochs is {opts['epochs']}")
        return 0
    keep = {k: opts[k] for k in ("dataset", "seed", "lr", "l2", "batch_size", "shuffle", "epochs", "log_every")}
    keep["val"] = args.val
    if "init" in opts:
        keep["init"] = opts["init"]

    def snapshot(epoch):
        """The checkpoint of the current state, in host memory; None where a weight or buffer is not finite."""
        from . import checkpoint

        data, tensors = checkpoint._serialise(model, optimizer=optimizer, metadata={
            "dataset": args.dataset, "epoch": epoch, "seed": args.seed, "train": json.dumps(keep)})
        return data if all(np.isfinite(t).all() for t in tensors.values() if t.dtype.kind == "f") else None

    def checked_snapshot(epoch, loss=None):
        """`snapshot` where the current weights also give a finite ``loss`` on the training data (one forward
        pass, computed when not given: what the next epoch would start with), else None."""
        if loss is None:
            with np.errstate(over="ignore", invalid="ignore"):
                loss, _ = evaluate(model, X, y, l2=opts["l2"])
        return snapshot(epoch) if np.isfinite(loss) else None

    def write(path, epoch, data):
        from . import checkpoint

        checkpoint._atomic_write(Path(path), data)
        last_saved[0] = (path, epoch)

    def kept(nothing=""):
        """Where the last good state is, for a message saying that the current one was not saved."""
        if last_saved[0]:
            return f"; the last good checkpoint is {last_saved[0][0]} (epoch {last_saved[0][1]})"
        if args.resume:
            return f"; {args.resume} (epoch {done}) is as it was"
        return nothing

    head = ["Epoch", "Train Loss", "Train Err"]
    if evals:
        label = "Test" if evals[0] == "test" else evals[0].replace("_", " ").title()
        head += [f"{label} Loss", f"{label} Err"]
    widths = [max(5, len(str(opts["epochs"])))] + [len(h) for h in head[1:]]
    # last_saved: (path, epoch) of the last checkpoint written; held: (epoch, bytes) of a --checkpoint-every
    # state, written once the next epoch has ended with a finite loss (the state that diverges is never kept)
    records, last_saved, held = [], [None], [None]
    # the log appends to its own earlier records; a file that is not one is replaced (--overwrite allowed it)
    log_mode = "a" if not args.log or not os.path.exists(args.log) or os.path.getsize(args.log) == 0 \
        or outputs.is_ours(args.log, "log") else "w"
    log = open(args.log, log_mode) if args.log and root else contextlib.nullcontext()

    def interrupted(epoch, signum, finished, loss=None):
        """Save the state after ``epoch`` (rank 0) and say where; the exit status of the signal. The other
        ranks wait for rank 0 (a rank that ends with an error status ends the whole job at once)."""
        try:
            return _interrupted(epoch, signum, finished, loss)
        finally:
            if comm is not None and not finished:
                comm.barrier(what="the interrupted run's save")

    def _interrupted(epoch, signum, finished, loss):
        if root:
            done_already = args.save and last_saved[0] == (args.save, epoch)  # by the final save
            data = None if done_already else checked_snapshot(epoch, loss)
            if data is None and not done_already:
                print(f"portablenn: interrupted after epoch {epoch}, whose weights give a non-finite loss, so they "
                      f"were not saved{kept()}", file=sys.stderr)
                return 128 + signum
            if not done_already:
                write(args.save or _interrupt_path(args), epoch, data)
            path = last_saved[0][0]
            then = ("training was complete" if finished else
                    "continue with: " + _continue_command(args, device_spec, comm, path, opts["epochs"]))
            print(f"portablenn: interrupted after {'the last epoch' if finished else 'epoch'} {epoch}; saved {path} "
                  f"({then})", file=sys.stderr)
        return 128 + signum

    # the handlers cover the whole run up to the last save: a signal after the last epoch still saves
    with _graceful_stop(quiet=not root) as stop:
        with log, _progress(opts["epochs"] - done, args.quiet or not root) as (bar, on_step):
            write_row = bar.write if bar is not None else say
            write_row(_row(head, widths))
            write_row("|" + "|".join("-" * (w + 2) for w in widths) + "|")

            def show(r):
                records.append(r)
                if args.log and root:
                    log.write(json.dumps({**r, "device": dev.name}) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{r['loss']:.4f}", err=f"{r['error']:.4f}", refresh=False)
                if not (r["epoch"] % opts["log_every"] and r["epoch"] not in (done + 1, opts["epochs"])):
                    cells = [r["epoch"], _loss(r["loss"]), f"{r['error']:.5f}"]
                    if "val_loss" in r:
                        cells += [_loss(r["val_loss"]), f"{r['val_error']:.5f}"]
                    write_row(_row(cells, widths))
                if held[0] is not None:  # a record comes only for an epoch whose loss is finite
                    write(args.save, *held[0])
                    held[0] = None
                if (root and args.checkpoint_every and r["epoch"] % args.checkpoint_every == 0
                        and r["epoch"] < opts["epochs"]):  # the last epoch is the final save's
                    data = snapshot(r["epoch"])
                    held[0] = (r["epoch"], data) if data is not None else None
                stopping = stop["signum"] is not None
                if comm is not None:  # every rank stops at the same epoch
                    stopping = comm.any(stopping)
                if stopping and r["epoch"] < opts["epochs"]:
                    raise _Stop(r["epoch"])

            began = time.perf_counter()
            try:  # metrics read once per epoch: checkpoints and a stop request land on epoch boundaries
                with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported as one line instead
                    fit(model, X, y, optimizer=optimizer, epochs=opts["epochs"], batch_size=batch,
                        shuffle=opts["shuffle"], l2=opts["l2"], device=dev, seed=args.seed,
                        validation=splits[evals[0]] if evals else None, callback=show, log_every=1,
                        on_step=on_step, initial_epoch=done, comm=comm, graph=args.cuda_graph)
            except _Stop as stopped:
                return interrupted(stopped.args[0], stop["signum"] or signal.SIGTERM, finished=False)
            except DivergenceError as exc:
                held[0] = None  # its next epoch diverged: not a good state
                if root:
                    print(f"portablenn: error: {exc}" + kept(
                        "; there is no good checkpoint: no saved state was followed by an epoch with a finite loss"
                        if args.checkpoint_every else "; nothing was saved"), file=sys.stderr)
                if comm is not None:  # every rank diverged at this epoch: the others wait until rank 0 has said so
                    comm.barrier(what="the divergence report")
                return 1
        if not root:
            return 0
        seconds = time.perf_counter() - began
        final = opts["epochs"]
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite loss is reported as one line
            results = {"train": evaluate(model, X, y, l2=opts["l2"])}
        if args.save:  # first of all: the finished training is on disk, if its weights are good
            finite = np.isfinite(results["train"][0])
            data = snapshot(final) if finite else None
            if data is None:
                why = (f"gives a non-finite loss ({results['train'][0]}) on the training data" if not finite
                       else "has weights or optimizer state that are not finite")
                print(f"portablenn: error: the model after the last epoch ({final}) {why}, so it would diverge if "
                      "resumed: not saved" + kept(), file=sys.stderr)
                return 1
            write(args.save, final, data)
        if stop["signum"] is not None:
            return interrupted(final, stop["signum"], finished=True, loss=results["train"][0])
        print(f"trained in {seconds:.2f} s")
        for name in ["train"] + evals:
            with np.errstate(over="ignore", invalid="ignore"):
                loss, err = results[name] if name in results else evaluate(model, *splits[name], l2=opts["l2"])
            print(f"{name:>10s}: loss {_loss(loss)}  accuracy {100 * (1 - err):.2f}%")
            if stop["signum"] is not None:
                return interrupted(final, stop["signum"], finished=True, loss=results["train"][0])
        if args.save:
            print(f"saved {args.save}")
        if args.plot:
            _plots(Path(args.plot), args.dataset, model, records, splits)
        if stop["signum"] is not None:
            return interrupted(final, stop["signum"], finished=True, loss=results["train"][0])
    return 0


def _plots(directory, dataset, model, records, splits):
    from . import plots

    directory.mkdir(parents=True, exist_ok=True)
    written = [plots.plot_history(records, directory / "history.png")]
    X, y = splits["train"]
    if X.shape[1] == 2:
        written.append(plots.plot_decision_regions(model, X, y, directory / "decision_regions.png"))
    if dataset == "lines":
        for name, (Xs, ys) in splits.items():
            written.append(plots.plot_lines_predictions(model, Xs, ys, directory / f"lines_{name}.png", title=name))
    if X.shape[1] == 784:
        written.append(plots.plot_first_layer(model, directory / "first_layer.png"))
    print("plots: " + ", ".join(str(p) for p in written))


def _load_model(path, device):
    from . import checkpoint

    model = checkpoint.load(path, device=device)
    return model, checkpoint.load_checkpoint(path).metadata


def evaluate_command(args):
    dev = _device(args)
    model, meta = _load_model(args.checkpoint, dev)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise CLIError("the checkpoint does not name its dataset; pass --dataset")
    saved = json.loads(meta["train"]) if "train" in meta else {}
    val = saved.get("val") if not args.dataset and isinstance(saved, dict) else None  # the run's --val file
    splits = load_dataset(dataset, args.data_dir, int(meta.get("seed", 0)), val, download=not args.no_download,
                          dtype=model.dtype)
    split = args.split
    if split is None:  # test where there is one, else the only split there is
        split = "test" if "test" in splits else ("train" if len(splits) == 1 else None)
        if split is None:
            raise CLIError(f"dataset {dataset} has no test split; choose one with --split: {', '.join(splits)}")
    elif split not in splits:
        raise CLIError(f"dataset {dataset} has no split {split!r}; choose one of {', '.join(splits)}")
    X, y = splits[split]
    loss, err = evaluate(model, X, y, device=dev)
    pred = predict(model, X, device=dev)
    classes = model.out_features
    confusion = np.bincount(np.asarray(y, dtype=np.int64) * classes + pred,
                            minlength=classes * classes).reshape(classes, classes)
    print(f"{dataset} {split}: {X.shape[0]} samples | loss {_loss(loss)} | error {err:.5f} | "
          f"accuracy {100 * (1 - err):.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    width = max(len(str(confusion.max())), len(str(classes - 1))) + 1
    print(" " * (width + 1) + "".join(str(c).rjust(width) for c in range(classes)))
    for c in range(classes):
        print(str(c).rjust(width) + " " + "".join(str(v).rjust(width) for v in confusion[c]))
    return 0


def predict_command(args):
    path = Path(args.input)
    if not path.is_file():
        raise CLIError(f"input file {path} does not exist")
    out = args.output or str(path) + ".predictions.npz"
    if out != "-":
        kind = {".npz": "predictions-npz", ".csv": "predictions-csv"}.get(Path(out).suffix.lower())
        if kind is None:
            raise CLIError(f"--output {out}: name a .npz file (arrays classes and probabilities) or a .csv file, "
                           "or '-' for CSV on standard output")
        outputs.check(out, kind, flag="--output", overwrite=args.overwrite,
                      inputs=[(args.input, "the --input file"), (args.checkpoint, "the --checkpoint")])
        outputs.prepare(out, flag="--output")
    model, _ = _load_model(args.checkpoint, _device(args))
    if path.suffix == ".npy":
        from .datasets.files import load_npy

        X = load_npy(path)
    else:
        try:
            X = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as exc:
            raise CLIError(f"cannot read {path} as numeric CSV: {exc}") from None
    probs = predict_proba(model, X, device=args.device)
    classes = probs.argmax(axis=1)
    if out == "-" or out.lower().endswith(".csv"):
        lines = ["class," + ",".join(f"p{c}" for c in range(probs.shape[1]))]
        lines += [f"{c}," + ",".join(f"{p:.6g}" for p in row) for c, row in zip(classes, probs)]
        if out == "-":
            print("\n".join(lines))
            return 0
        data = ("\n".join(lines) + "\n").encode()
    else:
        import io

        buffer = io.BytesIO()  # written under the name given (np.savez would append .npz to another name)
        np.savez(buffer, classes=classes, probabilities=probs)
        data = buffer.getvalue()
    outputs.atomic_write(out, data, "predictions")
    print(f"{X.shape[0]} predictions -> {out}", file=sys.stderr)
    return 0


def download_command(args):
    from .datasets.download import download_mnist

    print(f"MNIST is in {download_mnist(args.data_dir)}")
    return 0


def export_command(args):
    try:
        from .onnx import export_onnx
        import ndonnx  # noqa: F401
    except ImportError:
        raise CLIError("ONNX export needs ndonnx and onnx: pip install 'portablenn[onnx]'") from None
    outputs.check(args.onnx, "onnx", flag="--onnx", overwrite=args.overwrite,
                  inputs=[(args.checkpoint, "the checkpoint")])
    outputs.prepare(args.onnx, flag="--onnx")
    model, _ = _load_model(args.checkpoint, "cpu")
    export_onnx(model, args.onnx)
    print(f"wrote {args.onnx}: input (N, {model.in_features}) {model.dtype} -> logits, probabilities "
          f"(N, {model.out_features})")
    return 0


def info(args):
    import array_api_compat

    print(f"portablenn {__version__}\nnumpy {np.__version__}\narray-api-compat {array_api_compat.__version__}")
    for name in ("cupy", "array_api_strict", "torch"):
        try:
            print(f"{name} {__import__(name).__version__}")
        except Exception:
            print(f"{name}: not installed")
    print("devices (kernels: what --kernels auto runs there):")
    for spec in backend.device_specs():
        dev, why = backend.probe(spec)
        if dev is None:
            print(f"  {spec:28s} not usable: {why}")
            continue
        with warnings.catch_warnings():  # the fallback is said here, in the kernels column
            warnings.simplefilter("ignore", backend.KernelFallbackWarning)
            dev.kernels  # noqa: B018 (chooses them: on a GPU, the self-test)
        print(f"  {spec:28s} usable -> {dev.name}, kernels {dev.kernel_status}")
    if backend.probe("cuda")[0] is not None:
        import cupy

        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            print(f"  GPU {i}: {props['name'].decode()}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
    return 0


def parity(args):
    opts = _options(args)
    specs = [s.strip() for s in args.devices.split(",") if s.strip()]
    if len(specs) < 2:
        raise CLIError("parity needs at least two devices, e.g. --devices cpu,array_api_strict:device1")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be a positive number of minibatch steps, got {args.steps}")
    devices = [_device(args, s) for s in specs]
    splits = load_dataset(args.dataset, args.data_dir, args.seed, args.val, not args.no_download, dtype=opts["dtype"])
    X, y = splits["train"]
    if args.epochs is None:  # enough epochs for the steps asked for
        per_epoch = -(-len(X) // opts["batch_size"]) if opts["batch_size"] else 1
        opts["epochs"] = 10 if args.steps is None else -(-args.steps // per_epoch)
    rtol = args.rtol if args.rtol is not None else PARITY_RTOL[opts["dtype"]]
    runs = []
    for dev in devices:  # same seed -> identical initial weights on every device
        model, optimizer = _build(args, opts, splits)
        snapshots = []  # (label, loss or None, host state)
        if args.steps is None:
            hooks = dict(callback=lambda r, m=model, s=snapshots: s.append((r["epoch"], r["loss"], m.state_dict())))
        else:  # the loss of a step stays on the device until the epoch's end: parameters only
            hooks = dict(on_step=lambda epoch, step, steps, m=model, s=snapshots: len(s) < args.steps and s.append(
                (f"{epoch}.{step}", None, m.state_dict())))
        fit(model, X, y, optimizer=optimizer, epochs=opts["epochs"], batch_size=opts["batch_size"] or None,
            shuffle=opts["shuffle"], l2=opts["l2"], device=dev, seed=args.seed, **hooks)
        runs.append(snapshots)
    unit = "Epoch" if args.steps is None else "Epoch.step"
    print(f"parity of {', '.join(d.name for d in devices[1:])} against {devices[0].name} | {args.dataset} | "
          f"{opts['dtype']} | {opts['epochs']} epoch{'s' if opts['epochs'] != 1 else ''}"
          f"{'' if args.steps is None else f', first {len(runs[0])} steps'} | rtol {rtol:g}")
    print(f"| {unit} | Device | max abs param diff | max rel param diff | loss diff |")
    print(f"|{'-' * (len(unit) + 1)}:|--------|-------------------:|-------------------:|----------:|")
    worst, first = 0.0, None
    for i, (label, ref_loss, ref) in enumerate(runs[0]):
        for dev, run in zip(devices[1:], runs[1:]):
            _, loss, state = run[i]
            abs_diff = max(float(np.max(np.abs(state[k] - ref[k]))) for k in ref)
            # relative to the largest parameter of the reference (a near-zero bias says nothing alone)
            rel_diff = abs_diff / max(max(float(np.max(np.abs(ref[k]))) for k in ref), 1e-30)
            worst = max(worst, rel_diff)
            if first is None and not rel_diff <= rtol:
                first = f"{unit.lower()} {label} on {dev.name}"
            loss_diff = "-" if loss is None else f"{abs(loss - ref_loss):9.2e}"
            print(f"| {label:>{len(unit)}} | {dev.name} | {abs_diff:18.3e} | {rel_diff:18.3e} | {loss_diff:>9} |")
    if first is None:
        print(f"PASS: largest relative parameter difference {worst:.3e} (tolerance {rtol:g})")
        return 0
    print(f"FAIL: largest relative parameter difference {worst:.3e} (tolerance {rtol:g}); first above it at {first}")
    return 1


COMMANDS = {"train": train, "eval": evaluate_command, "predict": predict_command, "download": download_command,
            "export": export_command, "info": info, "parity": parity}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"portablenn: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Entry point; returns the process exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # a warning is one line, as an error is
        return _main(argv)


def _main(argv):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top-level one, and the closest option
        command = parser.commands.get(args.command, parser)
        command.error(_unrecognized(command, unknown))
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in ("train", "parity"):
        _fill_defaults(args)
    code = _run(args)
    if code and getattr(args, "distributed", False):
        from . import distributed

        distributed.failed(code)  # exits without MPI_Finalize, which hangs when a peer has died
    return code


def _unrecognized(parser, unknown):
    """argparse's message for arguments it does not know, with "did you mean --epochs?" for a typo."""
    known = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    hints = []
    for word in unknown:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append(f"did you mean {close[0]}?" if len(unknown) <= 2 else f"{word}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")


def _run(args):
    from .distributed import CommunicationError  # does not import mpi4py

    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's last flush
        return code
    except CommunicationError as exc:
        print(f"portablenn: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except _Quiet:  # rank 0 said it
        return 2
    except BrokenPipeError:  # the reader went away (`portablenn train | head`): stop quietly, as on SIGPIPE
        with contextlib.suppress(OSError, ValueError):  # nothing left to flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, backend.DeviceError, InputError, DatasetError, ValueError, OSError) as exc:
        print(f"portablenn: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"portablenn: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("portablenn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower():
            # cupy.cuda.memory.OutOfMemoryError, torch.cuda.OutOfMemoryError
            print(f"portablenn: error: the device ran out of memory ({_one_line(exc)}); "
                  "try a smaller --batch-size or a smaller model", file=sys.stderr)
            return 2
        if isinstance(exc, MemoryError):  # numpy names the array: "Unable to allocate 149. GiB for an array ..."
            print(f"portablenn: error: not enough memory ({_one_line(exc)}); try a smaller model, --batch-size "
                  "or dataset", file=sys.stderr)
            return 2
        if not _from_cuda(exc):
            raise
        print(f"portablenn: error: the GPU failed ({type(exc).__name__}: {_one_line(exc)}); rerun with "
              "--kernels generic, and please report it with the output of 'portablenn info'", file=sys.stderr)
        return 1


def _from_cuda(exc):
    """Whether ``exc`` comes from CUDA through CuPy (its runtime, driver, cuBLAS, NVRTC, compiler) or PyTorch."""
    modules = [cls.__module__ or "" for cls in type(exc).__mro__]
    return (any(m.split(".")[0] in ("cupy", "cupy_backends") for m in modules)
            or str(exc).startswith(("CUDA error", "CUBLAS_STATUS", "cuDNN error")))


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
