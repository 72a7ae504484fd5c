"""portablenn sweep: a grid of learning rates, L2 strengths, momenta, dropout rates and seeds trained as one stacked
model (``portablenn.sweep``); a table of members sorted by the validation metric, their spread over seeds."""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__, outputs
from ..early_stopping import EarlyStopping
from ..datasets import registry
from ..registry import LOSSES
from ..stack import StackedLinear
from ..sweep import (SETTINGS, LogUniform, Uniform, _settings, evaluate_stack, grid, memory_limit, number_text,
                     predict_proba_stack, rank_key, sample, sweep, tie_field)
from ..validation import available_memory, format_bytes
from . import table
from .arguments import control_args, device, kernels_arg, model_args
from .errors import CLIError
from .sweep_plots import PLOTS, plots
from .model import (ADAM_LR, DEFAULTS, check_monitor, control_options, fill_defaults, hold_out, make_schedule,
                    options, outputs_of)
from .train_outputs import check_log_and_plots, first_best

# the flags whose values are comma-separated lists, and what each member gets from them
LISTS = {"lr": "--lr", "l2": "--l2", "momentum": "--momentum", "weight_decay": "--weight-decay",
         "dropout": "--dropout", "seed": "--seed"}


def add_parser(commands):
    p = commands.add_parser(
        "sweep", conflict_handler="resolve", help="train a grid of settings (and seeds) as one stacked model",
        description="Train every combination of the comma-separated values of --lr, --l2/--weight-decay, --momentum, "
                    "--dropout, --seed (or --seeds N) and --hidden as one stacked model: each member trains as "
                    "'portablenn train' would train it alone (train's --schedule, --early-stopping, --clip-grad and "
                    "--norm act on each member on its own). Prints the members sorted by the validation metric "
                    "and, for settings run with several seeds, their mean and standard deviation.")
    model_args(p)  # train's model flags; those below take comma-separated lists instead of one value
    control_args(p)  # train's schedule, early stopping and clipping: every member gets its own
    p.add_argument("--hidden", nargs="+", metavar="WIDTHS",
                   help="hidden layer widths, one argument per layer, each a comma list: --hidden 50,100 sweeps one "
                        "hidden layer of 50 or 100 units (each width its own stack)")
    p.add_argument("--lr", metavar="LIST", help="learning rates, e.g. 0.1,0.3,1 (default: the dataset's)")
    p.add_argument("--l2", metavar="LIST", help="L2 strengths, e.g. 0,1e-4,1e-3 (default: the dataset's)")
    p.add_argument("--weight-decay", metavar="LIST", help="AdamW's decoupled weight decays (--optimizer adamw)")
    p.add_argument("--momentum", metavar="LIST", help="SGD momenta, e.g. 0,0.9 (default 0)")
    p.add_argument("--dropout", metavar="LIST", help="dropout probabilities in [0, 1), e.g. 0,0.2,0.5 (default 0)")
    p.add_argument("--seed", metavar="LIST", help="seeds of the initial weights (and Dropout's masks), e.g. 0,1,2")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (instead of --seed)")
    p.add_argument("--trials", type=int, metavar="N",
                   help="random search: N different members drawn at random instead of every combination; --lr, "
                        "--l2, --weight-decay, --momentum and --dropout then also take a range, loguniform:LOW:HIGH "
                        "or uniform:LOW:HIGH (a number drawn per trial, 3 significant digits, more in a narrow "
                        "range), a list is drawn from, and every trial runs with each --seed")
    p.add_argument("--search-seed", type=int, default=0, metavar="S",
                   help="seed of --trials' draws (default 0)")
    p.add_argument("--data-seed", type=int, default=0, metavar="S",
                   help="seed of the generated datasets, the --val-fraction split and the shared minibatch order "
                        "(default 0)")
    p.add_argument("--shuffle-per-member", action="store_true",
                   help="each member shuffles by its own --seed (default: all share each minibatch, read once)")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="hold out this share of the training rows to rank the members (default 0.2 where the "
                        "dataset has no validation split of its own: spiral, mnist, a file without --val)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto | array_api_strict[:NAME] | torch")
    kernels_arg(p)
    p.add_argument("--log-every", type=int, metavar="N", help="read the metrics and print a line every N epochs")
    p.add_argument("--chunk", action="store_true",
                   help="when the device's memory cannot hold every member at once, train them in chunks "
                        "(default: refuse, naming how many would fit)")
    p.add_argument("--ensemble", action="store_true",
                   help="for each setting run with several seeds, also report the ensemble of its seeds: their "
                        "averaged probabilities (classification)")
    p.add_argument("--log", metavar="FILE", help="append one JSON object per member and epoch (JSON lines)")
    p.add_argument("--plot", metavar="DIR", help="write the learning curves of every member and, over a "
                                                 "two-setting grid, a heat map of the validation metric (with "
                                                 "--trials, a scatter of it over the drawn settings) (PNG)")
    p.add_argument("--save", metavar="FILE", help="write the best member (by the validation metric) as an ordinary "
                                                  "checkpoint, with its optimizer state")
    p.add_argument("--save-all", metavar="DIR", help="write every member that did not diverge as DIR/member-K"
                                                     ".safetensors (K its number in the table)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --save, --save-all, --log and --plot replace files that portablenn did not write")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


# -- the lists --------------------------------------------------------------------------------------------
RANGES = {"uniform": Uniform, "loguniform": LogUniform}


def _values(flag, text, kind=float, check=None, what="a number"):
    """The comma-separated ``text`` of ``flag`` as a list, or (``uniform:LOW:HIGH``, ``loguniform:LOW:HIGH``) a
    range for ``--trials`` to draw from; CLIError naming the first bad item."""
    head, _, rest = str(text).strip().partition(":")
    if kind is float and head.strip().lower() in RANGES:
        return _range(flag, head.strip().lower(), rest, check)
    items = [item.strip() for item in str(text).split(",")]
    values = []
    for item in items:
        if kind is float and item.partition(":")[0].strip().lower() in RANGES:
            raise CLIError(f"{flag}: {text}: a range is one value of its own, not an item of a list: give either a "
                           f"comma-separated list or one range (such as {item})")
        try:
            value = kind(item)
        except ValueError:
            raise CLIError(f"{flag}: {item!r} is not {what} (give a comma-separated list such as "
                           f"{'0.1,0.3,1' if kind is float else '0,1,2'})") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise CLIError(f"{flag}: {item!r} is not a finite number")
        if check is not None and not check[0](value):
            raise CLIError(f"{flag}: {item} is out of range: {check[1]}")
        values.append(value)
    if len(set(values)) != len(values):
        raise CLIError(f"{flag}: {text} lists a value twice")
    return values


def _range(flag, name, text, check):
    ends = text.split(":")
    try:
        low, high = (float(e) for e in ends) if len(ends) == 2 else (None, None)
    except ValueError:
        low = high = None
    example = "loguniform:1e-4:1" if name == "loguniform" else "uniform:0:0.5"
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        raise CLIError(f"{flag}: {name}:{text} is not a range {name}:LOW:HIGH of two numbers (e.g. {example})")
    if not low < high:
        raise CLIError(f"{flag}: {name}:{text}: LOW must be smaller than HIGH")
    if name == "loguniform" and low <= 0:
        raise CLIError(f"{flag}: {name}:{text}: a log-uniform range needs LOW > 0 (use uniform:{text} for 0)")
    for end in (low, high):
        if check is not None and not check[0](end):
            raise CLIError(f"{flag}: {name}:{text}: {end:g} is out of range: {check[1]}")
    return RANGES[name](low, high)


def _lists(args, kind):
    """``{setting: [values]}`` from the list flags (absent flags: the dataset's default or nothing)."""
    positive, nonneg = (lambda v: v > 0, "it must be > 0"), (lambda v: v >= 0, "it must be >= 0")
    lists = {}
    if args.lr is not None:
        lists["lr"] = _values("--lr", args.lr, check=positive)
    if args.l2 is not None:
        lists["l2"] = _values("--l2", args.l2, check=nonneg)
    if args.weight_decay is not None:
        lists["weight_decay"] = _values("--weight-decay", args.weight_decay, check=nonneg)
    if args.momentum is not None:
        lists["momentum"] = _values("--momentum", args.momentum, check=(lambda v: 0 <= v < 1, "it must be in [0, 1)"))
    if args.dropout is not None:
        lists["dropout"] = _values("--dropout", args.dropout, check=(lambda v: 0 <= v < 1, "it must be in [0, 1)"))
    if args.seed is not None and args.seeds is not None:
        raise CLIError("give either --seed LIST or --seeds N, not both")
    if args.seeds is not None:
        if args.seeds < 1:
            raise CLIError(f"--seeds must be a positive number of seeds, got {args.seeds}")
        lists["seed"] = range(args.seeds)  # a list once _check_count has taken its length
    elif args.seed is not None:
        lists["seed"] = _values("--seed", args.seed, int, (lambda v: v >= 0, "seeds are integers >= 0"),
                                "an integer")
    if args.hidden is not None:
        layers = [_values("--hidden", widths, int, (lambda v: v >= 1, "a width is a positive integer"), "an integer")
                  for widths in args.hidden]
        lists["hidden"] = [tuple(c) for c in _product(layers)]
    return lists


MEMBER_BYTES = 512  # a floor on the host memory of one member's settings, name and records (measured: about 1 KB)


def _check_count(args, lists, opts, optimizer, dev):
    """Refuse, before a member is built, more members than memory could hold whatever the data: each takes
    ``MEMBER_BYTES`` on the host, and on the device its parameters with one input and one output (and SGD's none, or
    Adam's two copies of them), which its stack keeps to the end of the sweep, chunked or not."""
    count = (args.trials if args.trials is not None else math.prod(len(v) for k, v in lists.items() if k != "seed")) \
        * len(lists["seed"])
    copies = 1 + (2 if optimizer in ("adam", "adamw") else 0)
    params = min(sum(a * b + (b if opts["bias"] else 0) for a, b in zip([1, *h], [*h, 1])) for h in lists["hidden"])
    flags = "--trials" if args.trials is not None else "values"
    for need, (limit, source) in ((count * MEMBER_BYTES, available_memory()),
                                  (count * params * copies * np.dtype(opts["dtype"]).itemsize, memory_limit(dev))):
        if limit is not None and need > limit:
            raise CLIError(f"{count} members need at least {format_bytes(need)} whatever the data, more than {source} "
                           f"({format_bytes(limit)}): ask for fewer {flags}" + (" or seeds" if len(lists["seed"]) > 1
                                                                                else ""))


def _product(layers):
    out = [[]]
    for widths in layers:
        out = [prefix + [w] for prefix in out for w in widths]
    return out


# -- outputs ------------------------------------------------------------------------------------------------
def _inputs(args):
    inputs = []
    if args.dataset and args.dataset.startswith(("csv:", "npz:")):
        inputs.append((args.dataset[4:], f"the --dataset file ({args.dataset})"))
    if args.val:
        inputs.append((args.val[4:] if args.val.startswith(("csv:", "npz:")) else args.val, "the --val file"))
    return inputs


def _check_outputs(args, members=None, prepare=False):
    """Every output may be written (portablenn's own files only, unless --overwrite; never an input)."""
    inputs, named = _inputs(args), []
    if args.save or args.save_all:
        from .. import checkpoint

        checkpoint._safetensors()
    if args.save:
        outputs.check(args.save, "checkpoint", flag="--save", overwrite=args.overwrite, inputs=inputs)
        named.append(("--save", args.save))
    if args.save_all:
        outputs.check_directory(args.save_all, flag="--save-all", inputs=inputs, contents="checkpoints")
        for k in range(members or 0):
            path = Path(args.save_all) / _member_file(k, members)
            outputs.check(path, "checkpoint", flag="--save-all", overwrite=args.overwrite, inputs=inputs)
            named.append(("--save-all", path))
    check_log_and_plots(args, inputs, PLOTS, named)
    outputs.check_distinct(named)
    if prepare:
        for flag, path, folder in (("--save", args.save, False), ("--save-all", args.save_all, True),
                                   ("--log", args.log, False), ("--plot", args.plot, True)):
            if path:
                outputs.prepare(path, flag=flag, directory=folder, append=flag == "--log")


def _member_file(k, members):
    return f"member-{k:0{len(str(max(members - 1, 0)))}d}.safetensors"


# -- the command ----------------------------------------------------------------------------------------------
def run(args):
    if getattr(args, "animate", None):
        raise CLIError("--animate records one model's training; 'portablenn sweep' trains many: use "
                       "'portablenn train --animate' on the member you want")
    if args.log_every is not None and args.log_every < 1:
        raise CLIError(f"--log-every must be a positive number of epochs, got {args.log_every}")
    kind = registry.kind(args.dataset or "spiral")
    lists = _lists(args, kind)
    ranges = [key for key, v in lists.items() if isinstance(v, Uniform)]
    if args.trials is not None and args.trials < 1:
        raise CLIError(f"--trials must be a positive number of members to draw, got {args.trials}")
    if args.trials is None and ranges:
        raise CLIError(f"{LISTS[ranges[0]]} {getattr(args, ranges[0])} is a range to draw from: give --trials N "
                       "(random search), or a comma-separated list of values")
    if args.search_seed < 0:
        raise CLIError(f"--search-seed must be a non-negative integer, got {args.search_seed}")
    if args.search_seed and args.trials is None:
        raise CLIError(f"--search-seed seeds the draws of --trials: give --trials N (random search), or leave "
                       f"--search-seed {args.search_seed} out")
    # train's option checks and dataset defaults, on one member's values (the first of each list, a range's low)
    scalar = argparse.Namespace(**vars(args))
    for key in ("lr", "l2", "weight_decay", "dropout"):
        setattr(scalar, key, (lists[key].low if key in ranges else lists[key][0]) if key in lists else None)
    scalar.momentum = ((lists["momentum"].high if "momentum" in ranges else max(lists["momentum"]))
                       if "momentum" in lists else None)
    scalar.seed = lists["seed"][0] if "seed" in lists else None
    scalar.hidden = list(lists["hidden"][0]) if "hidden" in lists else None
    fill_defaults(scalar)
    args.dataset, args.model, args.optimizer, args.loss = scalar.dataset, scalar.model, scalar.optimizer, scalar.loss
    opts = control_options(scalar, options(scalar))
    if opts["model"] == "linear" and "hidden" in lists:
        raise CLIError("--hidden sets hidden layers; --model linear has none")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise CLIError(f"--val-fraction must be a number strictly between 0 and 1, got {args.val_fraction:g}")
    if args.val_fraction is not None and args.val is not None:
        raise CLIError(f"--val-fraction holds out part of the training file; --val {args.val} is a validation "
                       "file already: pass one of them")
    optimizer = scalar.optimizer
    if optimizer == "adamw" and "weight_decay" not in lists:
        lists["weight_decay"] = [0.01]  # AdamW's default
    lists.setdefault("lr", [ADAM_LR[kind] if optimizer in ("adam", "adamw") else DEFAULTS[kind]["lr"]])
    lists.setdefault("l2", [opts["l2"]])
    lists.setdefault("hidden", [() if opts["model"] == "linear" else tuple(opts["hidden"])])
    lists.setdefault("seed", [0])
    dev = device(args)
    _check_count(args, lists, opts, optimizer, dev)
    lists["seed"] = list(lists["seed"])
    if args.trials is not None:
        if args.trials > 1 and not any(k in ranges or len(v) > 1 for k, v in lists.items() if k != "seed"):
            raise CLIError(f"--trials {args.trials} has nothing to draw: give --lr, --l2, --weight-decay, --momentum "
                           "or --dropout a range (such as loguniform:1e-4:1) or a list, or --hidden a list")
        members = sample(args.trials, search_seed=args.search_seed, **lists)
    else:
        members = grid(**lists)
    _check_outputs(args, len(members), prepare=True)  # before the data (a download) and the training
    loss = LOSSES.get(opts["loss"])()
    splits = registry.load(args.dataset, args.data_dir, args.data_seed, args.val, not args.no_download,
                           dtype=opts["dtype"], task=loss.task,
                           targets=opts.get("targets") if kind == "file" else None)
    own = {"lines": "val_dim"}.get(kind, "val" if "val" in splits else None)
    fraction = args.val_fraction if args.val_fraction is not None else (None if own else 0.2)
    splits = hold_out(splits, fraction, args.data_seed, loss)
    evaluated = "val" if fraction else own
    check_monitor(opts, loss, evaluated is not None, evaluated)
    X, y = splits["train"]
    early, schedule = None, make_schedule(opts)
    if opts.get("early_stopping"):
        stop = opts["early_stopping"]
        early = EarlyStopping(stop["monitor"], stop["patience"], stop["min_delta"], restore_best=True)
    outputs_count = outputs_of(loss, splits)
    rows = X.shape[0]
    batch = opts["batch_size"]
    if args.batch_size is None and batch > rows:
        batch = 0  # the default minibatch is larger than this dataset: one full batch (as train)
    epochs, log_every = opts["epochs"], args.log_every or opts["log_every"]
    validation = splits[evaluated] if evaluated else None
    varying = [key for key in SETTINGS if len({repr(m.get(key)) for m in members}) > 1]
    if args.trials is not None:  # what was drawn is shown, even where every trial drew the same (one trial)
        varying = [key for key in SETTINGS if key in varying or (key != "seed" and key in lists
                                                                  and (key in ranges or len(lists[key]) > 1))]
    config = {"activation": opts["activation"], "bias": opts["bias"], "init": opts["init"], "dtype": opts["dtype"],
              "norm": opts.get("norm")}
    print(f"portablenn {__version__} | device {dev.name} | {args.dataset}: {rows} train"
          + (f", {validation[0].shape[0]} {evaluated}" if validation else "")
          + (f" ({fraction:g} of the training rows held out)" if fraction else "")
          + "".join(f", {splits[n][0].shape[0]} {n}" for n in splits if n not in ("train", evaluated)))
    if args.trials is not None:
        drawn = [f"{k} {_described(lists[k])}" for k in SETTINGS if k != "seed" and k in lists
                 and (k in ranges or len(lists[k]) > 1)]
        shape = (f"{args.trials} random trial{'s' if args.trials != 1 else ''}"
                 + (f" of {', '.join(drawn)}" if drawn else "") + f" (search seed {args.search_seed})"
                 + (f" x {len(lists['seed'])} seeds" if len(lists["seed"]) > 1 else ""))
    else:
        shape = " x ".join(f"{len(lists[k])} {k}" for k in varying) or "1 setting"
    print(f"sweep: {len(members)} member{'s' if len(members) != 1 else ''} ({shape}) | {opts['activation']} "
          f"{opts['dtype']} | loss {opts['loss']} | {optimizer} | batch {batch or 'full'} | {epochs} epochs | "
          + ("each member shuffles by its own seed" if args.shuffle_per_member else
             f"shared minibatches (data seed {args.data_seed})"))
    log = _Log(args.log, dev.name) if args.log else None
    names_holder = {}
    last = [time.perf_counter()]

    def on_group(indices, stacked):
        sizes = [stacked.in_features] + [l.out_features for l in stacked.layers if isinstance(l, StackedLinear)]
        runs = []  # the members' numbers, runs of consecutive ones as a..b (drawn architectures interleave)
        for i in indices:
            if runs and runs[-1][1] == i - 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        named = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in runs)
        print(f"stack of {len(indices)} member{'s' if len(indices) != 1 else ''}: {sizes}"
              + (f" (member{'s' if len(indices) != 1 else ''} {named})" if len(indices) < len(members) else ""))

    field = ("val_" if validation else "") + loss.metric_names[0]
    tie, rank = tie_field(field), rank_key(field)

    def on_read(epoch, indices, history):
        if log is not None:
            log.flush()
        if args.quiet or (epoch % log_every and epoch != epochs):
            return
        finals = [(h.records[-1].get(field, math.nan), h.records[-1].get(tie, math.nan), k)
                  for k, h in enumerate(history.histories) if h.records and h.records[-1]["epoch"] == epoch]
        now = time.perf_counter()
        line = f"epoch {epoch:>{len(str(epochs))}}/{epochs}: "
        if finals:  # the best as the table ranks them (SweepResult.ranking): ties broken by the loss
            best, _, k = min(finals, key=lambda f: rank(*f))
            median = np.median([f for f, _, _ in finals])
            line += f"best {field} {best:.5g} ({names_holder['names'][indices[k]]}), median {median:.5g}"
        line += f" | {len(history.diverged)} diverged | {now - last[0]:.1f} s"
        last[0] = now
        print(line, flush=True)

    def callback(i, record):
        if log is not None:
            log.record(i, names_holder["names"][i], members_full[i], record)

    members_full = [_settings(m, k) for k, m in enumerate(members)]
    names_holder["names"] = [_short_name(m, varying) or f"member {k}" for k, m in enumerate(members_full)]
    began = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverging member is reported instead
        try:
            result = sweep(X, y, members, outputs=outputs_count, optimizer=optimizer, loss=loss,
                           epochs=epochs, batch_size=batch or None, shuffle=opts["shuffle"], seed=args.data_seed,
                           shuffle_per_member=args.shuffle_per_member, device=dev, validation=validation,
                           log_every=1 if early is not None or getattr(schedule, "reads_metrics", False)
                           else log_every, callback=callback, chunk=args.chunk, on_group=on_group,
                           on_read=on_read, schedule=schedule, early_stopping=early,
                           clip_norm=opts.get("clip_grad"), **config)
        finally:
            if log is not None:
                log.close()
    seconds = time.perf_counter() - began
    for note in result.notes:
        print(f"note: {note}")
    if log is not None:
        log.diverged(result, members_full)
    test = splits.get("test") if evaluated != "test" else None
    _print_table(result, varying, loss, field, test, evaluated)
    print(f"trained {len(result)} member{'s' if len(result) != 1 else ''} in {seconds:.2f} s")
    for i, info in sorted(result.diverged.items()):
        print(f"diverged: {info['message']}")
    for i, info in sorted(result.stopped.items()):
        best = (f" (its best {early.monitor}, {info['best']:.5g}, epoch {info['best_epoch']}'s weights restored)"
                if early is not None and info["best_epoch"] is not None else "")
        print(f"stopped: {result.names[i]} after epoch {info['epoch']}: {info['reason']}{best}")
    _print_spread(result, varying, field)
    if args.ensemble:
        _print_ensembles(result, loss, validation, test, evaluated, field)
    ranking = [i for i in result.ranking(field) if i not in result.diverged]
    meta = dict(args=args, opts=opts, batch=batch, epochs=epochs, log_every=log_every, fraction=fraction,
                optimizer=optimizer)
    if args.save and ranking:
        best = ranking[0]
        _save(result, best, args.save, meta)
        print(f"saved {args.save}: member {best} ({result.names[best]}), the best {field}")
    if args.save_all:
        for i in range(len(result)):
            if i not in result.diverged:
                _save(result, i, Path(args.save_all) / _member_file(i, len(result)), meta)
        print(f"saved {len(result) - len(result.diverged)} members in {args.save_all}")
    if args.plot:
        written = plots(Path(args.plot), result, lists, varying, field, random=args.trials is not None)
        print("plots: " + ", ".join(str(p) for p in written))
    if len(result.diverged) == len(result):
        print("portablenn: error: every member diverged; nothing to save", file=sys.stderr)
        return 1
    return 0


def _described(values):
    """A drawn setting as the header line shows it: ``loguniform 0.0001..1``, ``from 0,0.9``."""
    if isinstance(values, Uniform):  # the bounds as given (%g rounds to 6 digits)
        kind = "loguniform" if isinstance(values, LogUniform) else "uniform"
        return f"{kind} {number_text(values.low)}..{number_text(values.high)}"
    return "from " + ",".join("x".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" for v in values)


def _short_name(settings, varying):
    return " ".join(f"{k}={'x'.join(map(str, settings[k])) if k == 'hidden' else format(settings[k], 'g')}"
                    for k in varying)


def _print_table(result, varying, loss, field, test, evaluated):
    """The members, best first: their varying settings, final training and validation figures."""
    names = loss.metric_names
    head = ["#"] + (varying or ["member"]) + ["Train Loss"] + [f"Train {table.HEADINGS.get(m, m)}" for m in names]
    has_val = field.startswith("val_")
    label = (evaluated or "val").replace("_", " ").title()
    if has_val:
        head += [f"{label} Loss"] + [f"{label} {table.HEADINGS.get(m, m)}" for m in names]
    test_scores = None
    if test is not None:  # informative only: the ranking never looks at the test split
        test_scores = {}
        for indices, stacked, opt in result.groups:
            for k, score in enumerate(_evaluate(stacked, test, loss)):
                test_scores[indices[k]] = score
        head += [f"Test {table.HEADINGS.get(m, m)}" for m in names[:1]]
    head.append("Epochs")
    rows = []
    for i in result.ranking(field):
        m = result.members[i]
        cells = [i] + ([("x".join(map(str, m[k])) if k == "hidden" else f"{m[k]:g}") for k in varying] or [i])
        if i in result.diverged:
            d = result.diverged[i]
            cells += [f"diverged at epoch {d['epoch']} step {d['step']}"]
            rows.append(cells)
            continue
        cells += [table.loss(result.final(i, "loss"))] + [table.metric(n, result.final(i, n)) for n in names]
        if has_val:
            cells += [table.loss(result.final(i, "val_loss"))] + [table.metric(n, result.final(i, "val_" + n))
                                                                  for n in names]
        if test_scores is not None:
            cells.append(table.metric(names[0], test_scores[i][names[0]]))
        best = result.restored.get(i)
        cells.append(f"{len(result.histories[i])}" + (f" (best {best})" if best is not None else ""))
        rows.append(cells)
    fixed = len(varying or ["member"]) + 1  # the columns every row has: number and settings
    widths = [max([len(str(h))] + [len(str(r[c])) for r in rows if len(r) == len(head) or c < fixed])
              for c, h in enumerate(head)]
    print(table.row(head, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        if len(r) == len(head):
            print(table.row(r, widths))
        else:  # a diverged member: its note spans the figures' columns
            span = sum(widths[fixed:]) + 3 * (len(widths) - fixed - 1)
            print(table.row(r[:fixed], widths[:fixed])[:-1] + "| " + str(r[-1]).ljust(span) + " |")


def _evaluate(stacked, split, loss):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return evaluate_stack(stacked, *split, loss=loss)


def _print_spread(result, varying, field):
    """Each setting run with several seeds: the mean and standard deviation of its members' final figures."""
    with np.errstate(invalid="ignore", over="ignore"):  # a member's infinite figure: an infinite or NaN spread
        spread = result.spread(field)
    if not spread:
        return
    others = [k for k in varying if k != "seed"]
    print(f"over seeds ({field}: mean +- standard deviation of the members' final values):")
    sign = -1.0 if field.removeprefix("val_") == "r2" else 1.0
    for settings, indices, mean, std in sorted(spread, key=lambda s: (math.isnan(s[2]), sign * s[2])):
        label = _short_name(settings, others) or "all"
        with np.errstate(invalid="ignore", over="ignore"):
            train_loss = table.loss(float(np.mean([result.final(i, "loss") for i in indices])))
        metric = field.removeprefix("val_")
        print(f"  {label}: {table.metric(metric, mean)} +- {table.metric(metric, std)} over {len(indices)} seeds "
              f"(train loss {train_loss})"
              + (f", {sum(i in result.diverged for i in indices)} diverged" if any(i in result.diverged
                                                                                   for i in indices) else ""))


def _print_ensembles(result, loss, validation, test, evaluated, field):
    """The ensemble of each setting's seeds: averaged probabilities against its best and mean member."""
    if loss.task != "classification":
        print("ensembles: --ensemble averages class probabilities; this task has none")
        return
    splits = [(evaluated or "val", validation)] + ([("test", test)] if test is not None else [])
    splits = [(name, split) for name, split in splits if split is not None]
    if not splits:
        print("ensembles: no validation or test split to measure them on")
        return
    probabilities = {name: {} for name, _ in splits}
    for indices, stacked, _ in result.groups:
        for name, (Xs, _) in splits:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                p = predict_proba_stack(stacked, Xs, loss=loss)
            for k, i in enumerate(indices):
                probabilities[name][i] = p[k]
    for settings, indices, _, _ in result.spread(field):
        good = [i for i in indices if i not in result.diverged]
        if len(good) < 2:
            continue
        label = _short_name(settings, [k for k in SETTINGS if k != "seed" and len({repr(m[k]) for m in
                                                                                   result.members}) > 1]) or "all"
        parts = []
        for name, (Xs, ys) in splits:
            ys = np.asarray(ys)
            errors = [float(np.mean(np.argmax(probabilities[name][i], axis=1) != ys)) for i in good]
            mean = np.mean([probabilities[name][i] for i in good], axis=0)
            ensemble = float(np.mean(np.argmax(mean, axis=1) != ys))
            parts.append(f"{name} error {ensemble:.5f} (best member {min(errors):.5f}, mean {np.mean(errors):.5f})")
        print(f"ensemble of {len(good)} seeds ({label}): " + " | ".join(parts))


def _save(result, i, path, meta):
    """Member ``i`` as the checkpoint ``portablenn train`` would have written for it."""
    from .. import checkpoint

    args, opts, m = meta["args"], meta["opts"], result.members[i]
    model, optimizer = result.model(i), result.optimizer(i)
    model.config = dict(model.config or {})
    keep = {"dataset": args.dataset, "seed": args.data_seed, "lr": m["lr"], "l2": m["l2"],
            "batch_size": meta["batch"], "shuffle": opts["shuffle"], "epochs": meta["epochs"],
            "log_every": meta["log_every"], "val": args.val, "init": opts["init"], "loss": opts["loss"],
            "targets": opts.get("targets") if LOSSES.get(opts["loss"]).task != "classification" else None,
            "clip_grad": opts.get("clip_grad"), "val_fraction": meta["fraction"],
            "early_stopping": opts.get("early_stopping"),
            **{key: opts.get(key) for key in ("schedule", "warmup", "step_size", "gamma", "factor", "plateau_patience",
                                              "monitor")}}
    keep["first_best"] = first_best(result.histories[i].records, LOSSES.get(opts["loss"])())  # as train keeps it
    epoch, extra = len(result.histories[i]), {}
    rule = result.early_stopping.get(i)
    if rule is not None:  # its counters, and its best weights (the member's own: restored), as train saves them
        keep["early_stopping_state"], _ = rule.state_dict(model)
        if rule.best_epoch is not None:
            extra = {"best." + key: value for key, value in model.state_dict().items()}
    checkpoint.save(model, path, optimizer=optimizer, extra=extra, metadata={
        "dataset": args.dataset, "epoch": epoch, "seed": args.data_seed, "train": json.dumps(keep),
        "sweep": json.dumps({"member": i, "name": result.names[i], "init_seed": m["seed"]})})


class _Log:
    """--log: one JSON line per member and epoch, written as the records arrive."""

    def __init__(self, path, device_name):
        mode = "a" if not os.path.exists(path) or os.path.getsize(path) == 0 or outputs.is_ours(path, "log") else "w"
        self.file, self.device = open(path, mode), device_name

    def record(self, i, name, settings, record):
        self.file.write(json.dumps({"member": i, "name": name, **_jsonable(settings), **record,
                                    "device": self.device}) + "\n")

    def diverged(self, result, members):
        with open(self.file.name, "a") as fh:
            for i, info in sorted(result.diverged.items()):
                fh.write(json.dumps({"member": i, "name": result.names[i], **_jsonable(members[i]),
                                     "epoch": info["epoch"], "loss": None, "diverged": info["message"],
                                     "device": self.device}) + "\n")

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


def _jsonable(settings):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
