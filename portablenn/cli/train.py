"""portablenn train: train an MLP, print the epoch table, save it (also when stopped by a signal)."""
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__, backend, outputs
from ..backends.cupy import cuda_problem
from ..datasets import registry
from ..early_stopping import EarlyStopping
from ..losses import SoftmaxCrossEntropy
from ..registry import LOSSES
from ..schedules import CosineWarmup
from ..train import DivergenceError, evaluate, fit
from ..validation import check_epochs
from . import table
from .arguments import control_args, device, kernels_arg, model_args
from .errors import CLIError
from .model import (build, check_monitor, control_options, held_out_split, hold_out,
                    make_schedule, options, outputs_of)
from .ranks import agreed, communicator
from .resume import resume
from .stopping import Stop, graceful_stop
from .train_outputs import (check_frames, check_outputs, continue_command, first_best, first_best_line,
                            interrupt_path, plot_files, recorder_for, write_plots)


def add_parser(commands):
    train = commands.add_parser("train", help="train an MLP and print the epoch table",
                                description="Train an MLP: a classifier with softmax cross-entropy, or with --loss "
                                            "a regression or multi-label model. With no options: the CS231n "
                                            "spiral, 2-layer ReLU net, full-batch SGD.")
    model_args(train)
    control_args(train)
    train.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto | array_api_strict[:NAME] | torch")
    kernels_arg(train)
    train.add_argument("--log-every", type=int, help="print a table row every N epochs")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--log", metavar="FILE", help="append one JSON object per epoch (JSON lines)")
    train.add_argument("--plot", metavar="DIR", help="write PNG plots there (needs portablenn[plot])")
    train.add_argument("--save", metavar="FILE", help="write the trained model, optimizer state and options "
                                                      "(safetensors, atomically; default with --resume: its file)")
    train.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="also save to --save every N epochs (each written once the next epoch ended finite)")
    train.add_argument("--animate", metavar="FILE",
                       help="write the training as an animation, .gif or .mp4 (needs ffmpeg): the weight and bias "
                            "matrices as heat maps, the class probabilities of fixed examples, loss and accuracy, "
                            "and for 2-D data the decision regions (needs portablenn[plot]; classifiers only)")
    train.add_argument("--frame-every", type=int, metavar="N",
                       help="with --animate: one frame every N steps (default: about 200 frames in all)")
    train.add_argument("--overwrite", action="store_true",
                       help="let --save, --log, --plot and --animate replace files that portablenn did not write "
                            "(never an input, a directory or a non-regular file)")
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
    return train


def run(args):
    device_spec = args.device
    comm = communicator(args)
    root = comm is None or comm.rank == 0  # only rank 0 prints, logs, plots and writes files
    say = print if root else (lambda *a, **k: None)
    dev = device(args)
    if args.checkpoint_every is not None and (args.checkpoint_every < 1 or not (args.save or args.resume)):
        raise CLIError("--checkpoint-every N needs N >= 1 and --save PATH")
    if args.cuda_graph and comm is not None:
        raise CLIError("--cuda-graph cannot be combined with --distributed")
    if args.frame_every is not None and (args.frame_every < 1 or not args.animate):
        raise CLIError("--frame-every N needs N >= 1 and --animate FILE")
    early_saved = None  # a resumed run's early-stopping state: (state, best weights)
    if args.resume:
        model, optimizer, opts, done, schedule, early_saved = resume(args, dev)
        opts["epochs"] = args.epochs if args.epochs is not None else opts["epochs"]
        opts["log_every"] = args.log_every or opts["log_every"]
        args.dataset, args.seed, args.val = opts["dataset"], opts["seed"], opts.get("val")
        args.save = args.save or args.resume  # a resumed run saves back to its checkpoint
        if isinstance(schedule, CosineWarmup) and schedule.epochs is not None and schedule.epochs != opts["epochs"]:
            raise CLIError(f"--epochs {opts['epochs']} contradicts {args.resume}, whose cosine schedule runs over "
                           f"{schedule.epochs} epochs; resume with --epochs {schedule.epochs} (or leave it out)")
    else:
        opts, done = control_options(args, options(args)), 0
        schedule = make_schedule(opts)
    loss = LOSSES.get(opts["loss"])()
    check_monitor(opts, loss, held_out_split(args.dataset, args.val, opts.get("val_fraction")) is not None,
                  held_out_split(args.dataset, args.val, opts.get("val_fraction")))  # before a download
    if args.cuda_graph and schedule is not None:
        raise CLIError(f"--cuda-graph replays the same step every time: it cannot follow --schedule "
                       f"{opts.get('schedule') or 'of ' + args.resume}, whose learning rate changes")
    if args.cuda_graph and type(loss) is not SoftmaxCrossEntropy:
        raise CLIError(f"--cuda-graph records the step of softmax_cross_entropy only, not --loss {opts['loss']}")
    if args.animate and not isinstance(loss, SoftmaxCrossEntropy):
        raise CLIError(f"--animate draws class probabilities: it needs --loss softmax_cross_entropy, not --loss "
                       f"{opts['loss']}")
    # every output and what it needs, before the data (a download) and long before the first epoch
    agreed(comm, root, lambda: check_outputs(args, prepare=True))
    why = cuda_problem(0) if args.device.strip().lower() == "auto" and dev.kind == "cpu" else None
    if comm is not None and not root:
        comm.barrier()  # rank 0 downloads first
    splits = registry.load(args.dataset, args.data_dir, args.seed, args.val, not args.no_download,
                           dtype=model.dtype if args.resume else opts["dtype"], task=loss.task,
                           targets=opts.get("targets") if registry.kind(args.dataset) == "file" else None)
    if comm is not None and root:
        comm.barrier()
    splits = hold_out(splits, opts.get("val_fraction"), args.seed, loss)
    evals = [name for name in splits if name != "train"]
    X, y = splits["train"]
    check_monitor(opts, loss, bool(evals), evals[0] if evals else None)
    if args.plot:  # the PNG files, whose names depend on the data
        agreed(comm, root, lambda: check_outputs(args, plot_files(args.dataset, X, splits, loss.task)))
    if not args.resume:
        model, optimizer = build(args, opts, splits)
        opts["targets"] = None if loss.task == "classification" else model.out_features
    elif loss.task != "classification" and outputs_of(loss, splits) != model.out_features:
        raise CLIError(f"the data has {outputs_of(loss, splits)} target columns but the model of {args.resume} "
                       f"has {model.out_features} outputs")
    if args.cuda_graph and not optimizer.replayable:
        raise CLIError(f"--cuda-graph replays the same step every time: it needs --optimizer sgd, "
                       f"not {type(optimizer).__name__}")
    if not args.resume and args.batch_size is None and opts["batch_size"] > X.shape[0]:
        opts["batch_size"] = 0  # the default minibatch is larger than this dataset: one full batch
    batch = opts["batch_size"] or None
    steps = math.ceil(X.shape[0] / min(batch or X.shape[0], X.shape[0]))  # per epoch
    check_frames(args, steps * max(0, opts["epochs"] - done))
    early = None
    if opts.get("early_stopping"):
        stopping_options = opts["early_stopping"]
        early = EarlyStopping(stopping_options["monitor"], stopping_options["patience"],
                              stopping_options["min_delta"], restore_best=True)
        if early_saved:  # a resumed run stops, and restores, exactly where the uninterrupted one does
            early.load_state_dict(*early_saved)
    ranks = f" x {comm.size} MPI ranks" if comm is not None else ""
    say(f"portablenn {__version__} | device {dev.name}{ranks}" + (f" (auto: {why})" if why else "")
          + f" | {args.dataset}: {X.shape[0]} train" + "".join(f", {splits[n][0].shape[0]} {n}" for n in evals))
    config = model.config
    layers = "".join(f" {key}={config[key]}" for key in ("dropout", "norm") if config.get(key))
    say(f"model {config['sizes']} {config['activation'] if len(config['sizes']) > 2 else 'linear'} "
          f"bias={config['bias']}{layers} {model.dtype} | loss {opts['loss']} | {optimizer!r} l2={opts['l2']} | "
          f"batch {batch or 'full'} | {opts['epochs']} epochs"
          + (f" (resuming after epoch {done} from {args.resume})" if args.resume else "")
          + (" | --cuda-graph: no CUDA graph off a GPU, the same fixed-address step runs eagerly"
             if args.cuda_graph and dev.library != "cupy" else ""))
    controls = [f"schedule {schedule!r}" if schedule is not None else "",
                f"clip-grad {opts['clip_grad']:g}" if opts.get("clip_grad") else "",
                f"validation: {opts['val_fraction']:g} of the rows held out" if opts.get("val_fraction") else "",
                f"early stopping on {early.monitor} (patience {early.patience}, min-delta {early.min_delta:g})"
                if early is not None else ""]
    if any(controls):
        say("training: " + " | ".join(c for c in controls if c))
    check_epochs(opts["epochs"])
    if early_saved and early_saved[0].get("stopped_epoch") is not None:
        state = early_saved[0]
        say(f"nothing to do: early stopping ended {args.resume} after epoch {state['stopped_epoch']} (the best "
            f"{early.monitor} was epoch {state['best_epoch']}'s)")
        return 0
    if args.resume and done >= opts["epochs"]:
        say(f"nothing to do: the checkpoint has {done} epochs and --epochs is {opts['epochs']}")
        return 0
    recorder = recorder_for(args, model, X, y, steps, opts["epochs"], done) if root else None
    keep = {k: opts[k] for k in ("dataset", "seed", "lr", "l2", "batch_size", "shuffle", "epochs", "log_every")}
    keep["val"] = args.val
    if "init" in opts:
        keep["init"] = opts["init"]
    keep.update({key: opts.get(key) for key in ("loss", "targets", "clip_grad", "val_fraction", "early_stopping")})

    def snapshot(epoch):
        """The checkpoint of the current state, in host memory; None where a weight or buffer is not finite."""
        from .. import checkpoint

        train, extra = dict(keep), {}
        train["first_best"] = first_best([r for r in records if r["epoch"] <= epoch], loss, opts.get("first_best"))
        if early is not None:  # its state and best weights: a resumed run stops where this one would
            train["early_stopping_state"], best = early.state_dict(model)
            extra = {"best." + key: value for key, value in best.items()}
        data, tensors = checkpoint._serialise(model, optimizer=optimizer, extra=extra, metadata={
            "dataset": args.dataset, "epoch": epoch, "seed": args.seed, "train": json.dumps(train)})
        return data if all(np.isfinite(t).all() for t in tensors.values() if t.dtype.kind == "f") else None

    def checked_snapshot(epoch, loss_value=None):
        """`snapshot` where the current weights also give a finite loss on the training data (one forward
        pass, computed when not given: what the next epoch would start with), else None."""
        if loss_value is None:
            with np.errstate(over="ignore", invalid="ignore"):
                loss_value, _ = evaluate(model, X, y, l2=opts["l2"], loss=loss)
        return snapshot(epoch) if np.isfinite(loss_value) else None

    def write(path, epoch, data):
        from .. import checkpoint

        checkpoint._atomic_write(Path(path), data)
        last_saved[0] = (path, epoch)

    def kept(nothing=""):
        """Where the last good state is, for a message saying that the current one was not saved."""
        if last_saved[0]:
            return f"; the last good checkpoint is {last_saved[0][0]} (epoch {last_saved[0][1]})"
        if args.resume:
            return f"; {args.resume} (epoch {done}) is as it was"
        return nothing

    names = loss.metric_names  # the task's metric columns: error; rmse, r2
    head = ["Epoch", "Train Loss"] + [f"Train {table.HEADINGS.get(m, m)}" for m in names]
    if evals:
        label = "Test" if evals[0] == "test" else evals[0].replace("_", " ").title()
        head += [f"{label} Loss"] + [f"{label} {table.HEADINGS.get(m, m)}" for m in names]
    if schedule is not None:
        head.append("LR")
    least = {"LR": 9, "RMSE": 8, "R2": 8}  # room for "0.0001234" and "-0.12345"
    widths = [max(5, len(str(opts["epochs"])))] + [max(len(h), least.get(h.split()[-1], 0)) for h in head[1:]]
    # last_saved: (path, epoch) of the last checkpoint written; held: (epoch, bytes) of a --checkpoint-every
    # state, written once the next epoch has ended with a finite loss (the state that diverges is never kept)
    records, last_saved, held = [], [None], [None]
    lrs = {}  # epoch -> the learning rate of its last step (with a schedule)
    # the log appends to its own earlier records; a file that is not one is replaced (--overwrite allowed it)
    log_mode = "a" if not args.log or not os.path.exists(args.log) or os.path.getsize(args.log) == 0 \
        or outputs.is_ours(args.log, "log") else "w"
    log = open(args.log, log_mode) if args.log and root else contextlib.nullcontext()

    def interrupted(epoch, signum, finished, loss_value=None):
        """Save the state after ``epoch`` (rank 0) and say where; the exit status of the signal. The other
        ranks wait for rank 0 (a rank that ends with an error status ends the whole job at once)."""
        try:
            return _interrupted(epoch, signum, finished, loss_value)
        finally:
            if comm is not None and not finished:
                comm.barrier(what="the interrupted run's save")

    def _interrupted(epoch, signum, finished, loss_value):
        if root:
            done_already = args.save and last_saved[0] == (args.save, epoch)  # by the final save
            data = None if done_already else checked_snapshot(epoch, loss_value)
            if data is None and not done_already:
                print(f"portablenn: interrupted after epoch {epoch}, whose weights give a non-finite loss, so they "
                      f"were not saved{kept()}", file=sys.stderr)
                return 128 + signum
            if not done_already:
                write(args.save or interrupt_path(args), epoch, data)
            path = last_saved[0][0]
            then = ("training was complete" if finished else
                    "continue with: " + continue_command(args, device_spec, comm, path, opts["epochs"]))
            print(f"portablenn: interrupted after {'the last epoch' if finished else 'epoch'} {epoch}; saved {path} "
                  f"({then})", file=sys.stderr)
        return 128 + signum

    # the handlers cover the whole run up to the last save: a signal after the last epoch still saves
    with graceful_stop(quiet=not root) as stop:
        with log, table.progress(opts["epochs"] - done, args.quiet or not root) as (bar, on_step):
            write_row = bar.write if bar is not None else say
            write_row(table.row(head, widths))
            write_row("|" + "|".join("-" * (w + 2) for w in widths) + "|")

            def stepped(epoch, step, steps):
                if step == steps and schedule is not None:  # host arithmetic from the step count
                    lrs[epoch] = optimizer.lr_at(optimizer.steps)
                if recorder is not None:  # counts; reads the model at frame steps only
                    recorder.on_step(epoch, step, steps)
                if on_step is not None:
                    on_step(epoch, step, steps)

            def show(r):
                records.append(r)
                if schedule is not None:
                    r = {**r, "lr": lrs.get(r["epoch"], float("nan"))}
                if args.log and root:
                    log.write(json.dumps({**r, "device": dev.name}) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"loss": f"{r['loss']:.4f}", names[0]: f"{r[names[0]]:.4f}"}, refresh=False)
                if not (r["epoch"] % opts["log_every"] and r["epoch"] not in (done + 1, opts["epochs"])):
                    cells = [r["epoch"], table.loss(r["loss"])] + [table.metric(m, r[m]) for m in names]
                    if "val_loss" in r:
                        cells += [table.loss(r["val_loss"])] + [table.metric(m, r["val_" + m]) for m in names]
                    if schedule is not None:
                        cells.append(table.lr(r["lr"]))
                    write_row(table.row(cells, widths))
                if held[0] is not None:  # a record comes only for an epoch whose loss is finite
                    write(args.save, *held[0])
                    held[0] = None
                ending = early is not None and early.stopped_epoch == r["epoch"]  # the final save's, as the last
                if (root and args.checkpoint_every and r["epoch"] % args.checkpoint_every == 0
                        and r["epoch"] < opts["epochs"] and not ending):  # the last epoch is the final save's
                    data = snapshot(r["epoch"])
                    held[0] = (r["epoch"], data) if data is not None else None
                stopping = stop["signum"] is not None
                if comm is not None:  # every rank stops at the same epoch
                    stopping = comm.any(stopping)
                if stopping and r["epoch"] < opts["epochs"] and not ending:
                    raise Stop(r["epoch"])

            hooked = schedule is not None or on_step is not None or recorder is not None
            began = time.perf_counter()
            try:  # metrics read once per epoch: checkpoints and a stop request land on epoch boundaries
                with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported as one line instead
                    fit(model, X, y, optimizer=optimizer, loss=loss, epochs=opts["epochs"], batch_size=batch,
                        shuffle=opts["shuffle"], l2=opts["l2"], device=dev, seed=args.seed,
                        validation=splits[evals[0]] if evals else None, callback=show, log_every=1,
                        on_step=stepped if hooked else None,
                        initial_epoch=done, comm=comm, graph=args.cuda_graph, clip_norm=opts.get("clip_grad"),
                        early_stopping=early, schedule=schedule)
            except Stop as stopped:
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
        final = early.stopped_epoch if early is not None and early.stopped_epoch is not None else opts["epochs"]
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite loss is reported as one line
            results = {"train": evaluate(model, X, y, l2=opts["l2"], loss=loss, return_dict=True)}
        train_loss = results["train"]["loss"]
        if args.save:  # first of all: the finished training is on disk, if its weights are good
            finite = np.isfinite(train_loss)
            data = snapshot(final) if finite else None
            if data is None:
                why = (f"gives a non-finite loss ({train_loss}) on the training data" if not finite
                       else "has weights or optimizer state that are not finite")
                print(f"portablenn: error: the model after the last epoch ({final}) {why}, so it would diverge if "
                      "resumed: not saved" + kept(), file=sys.stderr)
                return 1
            write(args.save, final, data)
        if stop["signum"] is not None:
            return interrupted(final, stop["signum"], finished=True, loss_value=train_loss)
        print(f"trained in {seconds:.2f} s")
        if early is not None and early.best_epoch is not None:
            best = f"{early.monitor} {early.best:.6g}"
            print(f"early stopping: stopped after epoch {early.stopped_epoch}, {early.monitor} not having improved "
                  f"for {early.patience} epochs; the model has epoch {early.best_epoch}'s weights ({best})"
                  if early.stopped_epoch is not None else
                  f"early stopping: did not stop; the model has epoch {early.best_epoch}'s weights, the best ({best})")
        for name in ["train"] + evals:
            with np.errstate(over="ignore", invalid="ignore"):
                result = results[name] if name in results else evaluate(model, *splits[name], l2=opts["l2"],
                                                                        loss=loss, return_dict=True)
            print(table.summary(name, result, loss.task))
            if stop["signum"] is not None:
                return interrupted(final, stop["signum"], finished=True, loss_value=train_loss)
        line = first_best_line(records, loss, steps, opts.get("first_best"))
        if line:
            print(line)
        if args.save:
            print(f"saved {args.save}")
        if args.plot:
            write_plots(Path(args.plot), args.dataset, model, records, splits, loss.task)
        if recorder is not None:
            path = recorder.finish().save(args.animate)
            every = "every step" if recorder.frame_every == 1 else f"one every {recorder.frame_every} steps"
            print(f"animation: {path} ({len(recorder.frames)} frames, {every})")
        if stop["signum"] is not None:
            return interrupted(final, stop["signum"], finished=True, loss_value=train_loss)
    return 0
