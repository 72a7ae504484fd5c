"""What train writes: its outputs checked before training, its plots, where an interrupted run is saved and
the command that continues it."""
import math
import os
import shlex
import tempfile
from pathlib import Path

from .. import outputs
from ..history import History
from .errors import CLIError


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


def plot_files(dataset, X, splits, task="classification"):
    """The PNG names `write_plots` writes for this dataset (decision regions and the lines' predictions are
    pictures of class labels: classification only)."""
    names = ["history.png"]
    if X.shape[1] == 2 and task == "classification":
        names.append("decision_regions.png")
    if dataset == "lines" and task == "classification":
        names += [f"lines_{name}.png" for name in splits]
    if X.shape[1] == 784:
        names.append("first_layer.png")
    return names


def write_plots(directory, dataset, model, records, splits, task="classification"):
    from .. import plots

    directory.mkdir(parents=True, exist_ok=True)
    written = [plots.plot_history(records, directory / "history.png")]
    X, y = splits["train"]
    if X.shape[1] == 2 and task == "classification":
        written.append(plots.plot_decision_regions(model, X, y, directory / "decision_regions.png"))
    if dataset == "lines" and task == "classification":
        for name, (Xs, ys) in splits.items():
            written.append(plots.plot_lines_predictions(model, Xs, ys, directory / f"lines_{name}.png", title=name))
    if X.shape[1] == 784:
        written.append(plots.plot_first_layer(model, directory / "first_layer.png"))
    print("plots: " + ", ".join(str(p) for p in written))


def check_frames(args, total_steps):
    """Refuse a --frame-every that would make more than `animation.MAX_FRAMES` frames of ``total_steps``."""
    from ..animation import MAX_FRAMES, default_frame_every

    every = getattr(args, "frame_every", None)
    if getattr(args, "animate", None) and every is not None and math.ceil(total_steps / every) > MAX_FRAMES:
        raise CLIError(f"--frame-every {every} over {total_steps} steps makes {math.ceil(total_steps / every)} "
                       f"frames after the first; an animation has at most {MAX_FRAMES}: use --frame-every "
                       f"{default_frame_every(total_steps, MAX_FRAMES)} or more")


def recorder_for(args, model, X, y, steps, epochs, done):
    """The `TrainingRecorder` of --animate (None without it): ``steps`` per epoch, up to epoch ``epochs``,
    ``done`` of them trained already (a resumed run)."""
    if not getattr(args, "animate", None):
        return None
    from ..animation import TrainingRecorder

    return TrainingRecorder(model, X, y, total_steps=steps * max(0, epochs - done), frame_every=args.frame_every,
                            initial_step=steps * done)


def first_best(records, loss, earlier=None):
    """``{"epoch": e, metric: value}``: the first of the epoch ``records`` whose training accuracy (the loss's
    first metric, for regression) is their best, ``earlier`` (a resumed checkpoint's own, from the epochs before
    it) counting as the first record; None without any. A checkpoint keeps it (``"first_best"``), so that a
    resumed run names the epoch the uninterrupted one would."""
    history = History()
    metric = loss.metric_names[0]
    history.records = ([earlier] if earlier and metric in earlier else []) + [r for r in records if metric in r]
    best = history.first_best(metric, "max" if metric == "r2" else "min")
    return None if best is None else {"epoch": int(best["epoch"]), metric: float(best[metric])}


def first_best_line(records, loss, steps, earlier=None):
    """The summary line saying when training accuracy (the loss's first metric, for regression) first reached
    its best over the run's epoch ``records`` (and ``earlier``, the best of a resumed checkpoint's epochs): the
    step with full-batch training (a step is an epoch), else the epoch; None without records."""
    metric = loss.metric_names[0]
    best = first_best(records, loss, earlier)
    if best is None:
        return None
    where = (f"at step {best['epoch']} (full batch: one step per epoch)" if steps == 1 else
             f"in epoch {best['epoch']} (measured once per epoch, over its {steps} minibatch steps as trained)")
    if metric == "error":
        labels = " (of the labels)" if loss.task == "multilabel" else ""
        return (f"training accuracy{labels} first reached its maximum, {100 * (1 - best['error']):.2f}%, "
                f"{where}")
    return f"training {metric} first reached its {'maximum' if metric == 'r2' else 'minimum'}, " \
           f"{best[metric]:.5g}, {where}"


def check_outputs(args, plot_files=(), prepare=False):
    """Every output of a training run may be written (principle: never a file that is not portablenn's, an
    input, a directory or a non-regular file), and what it needs is installed; ``prepare``: make their
    folders (mkdir -p) and prove them writable. Raises OutputError, ImportError."""
    refuse_empty(args, ("save", "log", "plot", "animate"))
    inputs, named = _train_inputs(args), []
    if args.save:
        from .. import checkpoint

        checkpoint._safetensors()  # ImportError with the pip line, now rather than after the last epoch
        # the --resume checkpoint is ours, so the default target of a resumed run
        outputs.check(args.save, "checkpoint", flag="--save", overwrite=args.overwrite,
                      inputs=_train_inputs(args, with_resume=False))
        named.append(("--save", args.save))
    check_log_and_plots(args, inputs, plot_files, named)
    if getattr(args, "animate", None):
        from ..animation import check_animation_path

        check_animation_path(args.animate, flag="--animate")  # matplotlib, and ffmpeg for .mp4
        outputs.check(args.animate, "animation", flag="--animate", overwrite=args.overwrite, inputs=inputs)
        named.append(("--animate", args.animate))
    outputs.check_distinct(named)
    if prepare:
        if getattr(args, "animate", None):
            outputs.prepare(args.animate, flag="--animate")
        if args.save:
            outputs.prepare(args.save, flag="--save")
        if args.log:
            outputs.prepare(args.log, flag="--log", append=True)
        if args.plot:
            outputs.prepare(args.plot, flag="--plot", directory=True)


def refuse_empty(args, names):
    """An output flag given an empty path (``--save "$OUT"`` with OUT unset) is refused, not taken for a flag left
    out: a run that silently saves nothing loses the training."""
    for name in names:
        if getattr(args, name, None) == "":
            what = "a directory" if name in ("plot", "save_all") else "a file"
            raise outputs.OutputError(f"--{name.replace('_', '-')} is empty: name {what} (an unset shell variable?)")


def check_log_and_plots(args, inputs, plot_files, named):
    """The checks of ``--log FILE`` and ``--plot DIR`` (the PNGs ``plot_files`` in it), shared by train and sweep;
    appends each ``(flag, path)`` to ``named``; an empty --save or --save-all (sweep's) is refused here too."""
    refuse_empty(args, ("save", "save_all", "log", "plot"))
    if args.log:
        outputs.check(args.log, "log", flag="--log", overwrite=args.overwrite, inputs=inputs)
        named.append(("--log", args.log))
    if args.plot:
        _need_matplotlib()
        outputs.check_directory(args.plot, flag="--plot", inputs=inputs)
        for name in plot_files:
            outputs.check(Path(args.plot) / name, "png", flag="--plot", overwrite=args.overwrite, inputs=inputs)
            named.append(("--plot", Path(args.plot) / name))


def interrupt_path(args):
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


def continue_command(args, device, comm, path, epochs):
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
