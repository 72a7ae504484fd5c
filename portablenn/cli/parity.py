"""portablenn parity: train the same model on several devices and compare them epoch by epoch or step by step."""
import numpy as np

from ..datasets import registry
from ..registry import LOSSES
from ..train import fit
from .arguments import device, kernels_arg, model_args
from .errors import CLIError
from .model import build, options

PARITY_RTOL = {"float64": 1e-8, "float32": 1e-3}


def add_parser(commands):
    pa = commands.add_parser("parity", help="train the same model on several devices and compare step by step",
                             description="Train from identical initial weights on every device and print, per "
                                         "epoch (or per minibatch step with --steps), the largest parameter and "
                                         "loss differences against the first, and where they first exceed --rtol.")
    model_args(pa)
    pa.add_argument("--devices", default="cpu,array_api_strict:device1",
                    help="comma-separated device specs; the first is the reference")
    kernels_arg(pa)
    pa.add_argument("--steps", type=int, metavar="N",
                    help="compare after each of the first N minibatch steps instead of each epoch (reads the "
                         "weights back every step: a diagnostic, slower than training)")
    pa.add_argument("--rtol", type=float, help="fail (exit 1) above this relative parameter difference "
                                               "(default: 1e-8 for float64, 1e-3 for float32)")
    return pa


def run(args):
    opts = options(args)
    specs = [s.strip() for s in args.devices.split(",") if s.strip()]
    if len(specs) < 2:
        raise CLIError("parity needs at least two devices, e.g. --devices cpu,array_api_strict:device1")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be a positive number of minibatch steps, got {args.steps}")
    devices = [device(args, s) for s in specs]
    loss = LOSSES.get(opts["loss"])()
    splits = registry.load(args.dataset, args.data_dir, args.seed, args.val, not args.no_download, dtype=opts["dtype"],
                           task=loss.task, targets=opts.get("targets"))
    X, y = splits["train"]
    if args.epochs is None:  # enough epochs for the steps asked for
        per_epoch = -(-len(X) // opts["batch_size"]) if opts["batch_size"] else 1
        opts["epochs"] = 10 if args.steps is None else -(-args.steps // per_epoch)
    rtol = args.rtol if args.rtol is not None else PARITY_RTOL[opts["dtype"]]
    runs = []
    for dev in devices:  # same seed -> identical initial weights on every device
        model, optimizer = build(args, opts, splits)
        snapshots = []  # (label, loss or None, host state)
        if args.steps is None:
            hooks = dict(callback=lambda r, m=model, s=snapshots: s.append((r["epoch"], r["loss"], m.state_dict())))
        else:  # the loss of a step stays on the device until the epoch's end: parameters only
            hooks = dict(on_step=lambda epoch, step, steps, m=model, s=snapshots: len(s) < args.steps and s.append(
                (f"{epoch}.{step}", None, m.state_dict())))
        fit(model, X, y, optimizer=optimizer, loss=loss, epochs=opts["epochs"], batch_size=opts["batch_size"] or None,
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
