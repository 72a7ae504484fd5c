"""Command line: ``portablenn train`` (and ``info``); errors become one line on stderr and exit code 2."""
import argparse
import sys
import time

from . import __version__, backend
from .datasets import DatasetError
from .models import ACTIVATIONS, mlp
from .optim import OPTIMIZERS
from .train import evaluate, fit
from .validation import InputError

# Per-dataset defaults: the classic setups (CS231n spiral, the 3x3 lines net, CMU 10-714 hw0 MNIST)
DEFAULTS = {
    "spiral": dict(hidden=[100], activation="relu", init="small", bias=True, epochs=10000, lr=1.0,
                   batch_size=0, l2=1e-3, shuffle=True, log_every=1000),
    "lines": dict(hidden=[6], activation="sigmoid", init="xavier", bias=True, epochs=2000, lr=1.0,
                  batch_size=0, l2=0.0, shuffle=True, log_every=200),
    "mnist": dict(hidden=[100], activation="relu", init="cmu", bias=False, epochs=10, lr=0.2,
                  batch_size=100, l2=0.0, shuffle=False, log_every=1),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="portablenn", description=__doc__.split(";")[0])
    parser.add_argument("--version", action="version", version=f"portablenn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train an MLP and print the epoch table",
                                description="Train an MLP with softmax cross-entropy. With no options: "
                                            "the CS231n spiral, 2-layer ReLU net, full-batch SGD.")
    train.add_argument("--dataset", default="spiral", choices=sorted(DEFAULTS))
    train.add_argument("--model", default="mlp", choices=["mlp", "linear"],
                       help="linear = softmax regression (no hidden layer)")
    train.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths, e.g. --hidden 256 128")
    train.add_argument("--activation", choices=sorted(ACTIVATIONS))
    train.add_argument("--init", help="weight initialiser: he, xavier, small, cmu, zeros, xavier_normal")
    train.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None)
    train.add_argument("--epochs", type=int)
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--batch-size", type=int, help="minibatch size; 0 = full batch")
    train.add_argument("--l2", type=float, help="L2 strength: adds 0.5*l2*sum(W**2) to the loss")
    train.add_argument("--optimizer", default="sgd", choices=sorted(OPTIMIZERS))
    train.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    train.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                       help="reshuffle every epoch (--no-shuffle: minibatches in order)")
    train.add_argument("--seed", type=int, default=0, help="seed of weights and shuffling")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (also array_api_strict[:NAME], "
                                                        "torch[:cuda])")
    train.add_argument("--data-dir", help="directory with the MNIST IDX files (default: $PORTABLENN_DATA, "
                                          "../shared/data/mnist, the cache)")
    train.add_argument("--log-every", type=int, help="print a table row every N epochs")

    commands.add_parser("info", help="versions and which devices are usable here")
    return parser


def load_dataset(name, data_dir=None, seed=0):
    """``{"train": (X, y), <eval split>: (X, y), ...}`` host arrays for a dataset name."""
    from . import datasets

    if name == "spiral":
        return {"train": datasets.spiral(seed=seed)}
    if name == "lines":
        return datasets.lines(seed=seed)
    return {"train": datasets.mnist(data_dir, "train"), "test": datasets.mnist(data_dir, "test")}


def _row(cells, widths):
    return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"


def train(args):
    opts = {**DEFAULTS[args.dataset], **{k: v for k, v in vars(args).items() if v is not None}}
    dev = backend.device(args.device, verbose=False)
    why = f" ({backend._cuda_problem(0)})" if args.device.strip().lower() == "auto" and dev.kind == "cpu" else ""
    splits = load_dataset(args.dataset, args.data_dir, args.seed)
    X, y = splits["train"]
    evals = [name for name in splits if name != "train"]
    classes = max(int(labels.max()) for _, labels in splits.values()) + 1
    sizes = [X.shape[1]] + ([] if args.model == "linear" else list(opts["hidden"])) + [classes]
    model = mlp(sizes, activation=opts["activation"], bias=opts["bias"], init=opts["init"], seed=args.seed,
                dtype=args.dtype)
    opt_args = {"momentum": args.momentum} if args.optimizer == "sgd" and args.momentum else {}
    optimizer = OPTIMIZERS[args.optimizer](opts["lr"], **opt_args)
    batch = opts["batch_size"] or None
    print(f"portablenn {__version__} | device {dev.name}{why} | {args.dataset}: {X.shape[0]} train"
          + "".join(f", {splits[n][0].shape[0]} {n}" for n in evals))
    print(f"model {args.model} {sizes} {opts['activation'] if len(sizes) > 2 else ''} bias={opts['bias']} "
          f"{args.dtype} | {optimizer!r} l2={opts['l2']} | batch {batch or 'full'} | {opts['epochs']} epochs")
    head = ["Epoch", "Train Loss", "Train Err"] + ([f"{evals[0].title()} Loss", f"{evals[0].title()} Err"]
                                                  if evals else [])
    widths = [max(5, len(str(opts["epochs"])))] + [len(h) for h in head[1:]]
    print(_row(head, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")

    def show(r):
        if r["epoch"] % opts["log_every"] and r["epoch"] not in (1, opts["epochs"]):
            return
        cells = [r["epoch"], f"{r['loss']:.5f}", f"{r['error']:.5f}"]
        if "val_loss" in r:
            cells += [f"{r['val_loss']:.5f}", f"{r['val_error']:.5f}"]
        print(_row(cells, widths), flush=True)

    began = time.perf_counter()
    fit(model, X, y, optimizer=optimizer, epochs=opts["epochs"], batch_size=batch, shuffle=opts["shuffle"],
        l2=opts["l2"], device=dev, seed=args.seed, validation=splits[evals[0]] if evals else None,
        callback=show, log_every=opts["log_every"])
    seconds = time.perf_counter() - began
    print(f"trained in {seconds:.2f} s")
    for name in ["train"] + evals:
        loss, err = evaluate(model, *splits[name], l2=opts["l2"])
        print(f"{name:>10s}: loss {loss:.5f}  accuracy {100 * (1 - err):.2f}%")
    return 0


def info(args):
    import array_api_compat
    import numpy

    print(f"portablenn {__version__}\nnumpy {numpy.__version__}\narray-api-compat {array_api_compat.__version__}")
    for name in ("cupy", "array_api_strict", "torch"):
        try:
            module = __import__(name)
            print(f"{name} {module.__version__}")
        except Exception:
            print(f"{name} not installed")
    print("devices:")
    for spec in backend.device_specs():
        dev, why = backend.probe(spec)
        print(f"  {spec:28s} {'usable -> ' + dev.name if dev else 'not usable: ' + why}")
    return 0


def main(argv=None):
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"train": train, "info": info}[args.command](args)
    except (backend.DeviceError, InputError, DatasetError, ValueError) as exc:
        print(f"portablenn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("portablenn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
