"""PNG pictures of training: loss/error curves, 2-D decision regions, 3x3 lines predictions, first-layer weights;
and training as an animation (`animate_training`, from ``portablenn.animation``)."""
import io
import math
from pathlib import Path

import numpy as np

from .animation import TrainingRecorder, animate_training
from .outputs import PNG_SOFTWARE, atomic_write
from .train import predict, predict_proba

__all__ = ["plot_history", "plot_decision_regions", "plot_lines_predictions", "plot_first_layer",
           "animate_training", "TrainingRecorder"]

_MAX_GRID = 1000  # mesh points per axis at most in plot_decision_regions
LINE_CLASSES = ("vertical", "horizontal")  # portablenn.datasets.lines labels 0 and 1


def _figure(**kwargs):
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend switch, thread-safe."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'portablenn[plot]'") from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """``fig`` as a PNG at ``path``, replaced atomically, marked as portablenn's (``outputs.PNG_SOFTWARE``, so
    that a later run may replace it and never a user's own picture); the folder made where missing."""
    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = io.BytesIO()
    fig.savefig(data, format="png", metadata={"Software": f"{PNG_SOFTWARE} {__version__} (matplotlib)"})
    atomic_write(path, data.getvalue(), "plot")
    return path


def _colormap(name):
    import matplotlib

    return matplotlib.colormaps[name]


_METRICS = {"error": ("error rate", "error rate (misclassified fraction)"),
            "rmse": ("RMSE", "root mean squared error")}


def plot_history(history_records, path, *, title=None):
    """Loss and the task's metric per epoch, training and (when recorded) validation, in two panels.

    Parameters
    ----------
    history_records : History or sequence of dict
        What `portablenn.fit` returns, or its records: dicts with ``epoch``, ``loss`` and a metric,
        ``error`` (classification) or ``rmse`` (regression), and optionally their ``val_`` twins.
    path : str or os.PathLike
        The PNG to write (parent directories are created).
    title : str, optional

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        No records, or records without ``epoch``/``loss`` and ``error`` or ``rmse``.
    """
    records = list(getattr(history_records, "records", history_records))
    if not records:
        raise ValueError("plot_history needs at least one epoch record; the history is empty")
    metric = next((key for key in _METRICS if key in records[0]), None)
    missing = sorted({"epoch", "loss"} - set(records[0])) + ([] if metric else ["error (or rmse)"])
    if missing:
        raise ValueError(f"history records lack {', '.join(missing)}; pass what fit returned")
    metric_label, metric_title = _METRICS[metric]
    epochs = [r["epoch"] for r in records]
    fig = _figure(figsize=(10, 4), layout="constrained")
    from matplotlib.ticker import MaxNLocator  # after _figure, which explains a missing matplotlib
    loss_ax, err_ax = fig.subplots(1, 2)
    marker = "o" if len(records) <= 30 else None
    for ax, key, label in ((loss_ax, "loss", "loss"), (err_ax, metric, metric_label)):
        ax.plot(epochs, [r[key] for r in records], marker=marker, label=f"train {label}")
        if all(f"val_{key}" in r for r in records):
            ax.plot(epochs, [r[f"val_{key}"] for r in records], marker=marker, label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    loss_ax.set_title("loss")
    err_ax.set_title(metric_title)
    if min(r["loss"] for r in records) > 0 and max(r["loss"] for r in records) / min(r["loss"] for r in records) > 100:
        loss_ax.set_yscale("log")
        loss_ax.set_ylabel("loss (log scale)")
    err_ax.set_ylim(bottom=0)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_decision_regions(model, X, y, path, *, step=0.02, title=None):
    """The predicted class over the plane, with the labelled points on top (the CS231n spiral picture).

    A mesh with spacing ``step`` covers the data's range extended by 1 on every side (coarser if
    that would exceed 1000 points per axis); each mesh point is coloured by ``predict(model, ...)``
    (filled contours, alpha 0.8), and the points by their label, edged in black.

    Parameters
    ----------
    model : Sequential
        With 2 input features; used on its device.
    X : array of shape (n_samples, 2)
    y : integer array of shape (n_samples,)
    path : str or os.PathLike
    step : float
    title : str, optional
        Default: the training accuracy.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        ``X`` is not ``(n, 2)`` or the model does not take 2 features.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(np.int64)
    if X.ndim != 2 or X.shape[1] != 2 or X.shape[0] == 0:
        raise ValueError(f"decision regions need 2-D points, X of shape (n, 2); got shape {X.shape}")
    if model.in_features != 2:
        raise ValueError(f"decision regions need a model with 2 inputs; this one takes {model.in_features}")
    classes = model.out_features
    lo, hi = X.min(axis=0) - 1, X.max(axis=0) + 1
    step = max(step, float((hi - lo).max()) / _MAX_GRID)
    xx, yy = np.meshgrid(np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step))
    Z = predict(model, np.c_[xx.ravel(), yy.ravel()]).reshape(xx.shape)
    cmap = _colormap("Spectral")
    fig = _figure(figsize=(6, 6), layout="constrained")
    ax = fig.subplots()
    levels = np.arange(classes + 1) - 0.5  # one band per class; points below use the same colour scale
    ax.contourf(xx, yy, Z, levels=levels, cmap=cmap, alpha=0.8)
    ax.scatter(X[:, 0], X[:, 1], c=y, s=40, cmap=cmap, vmin=-0.5, vmax=classes - 0.5, edgecolors="k",
               linewidths=0.6)
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_aspect("equal")
    accuracy = float(np.mean(predict(model, X) == y))
    ax.set_title(title if title is not None else f"decision regions: training accuracy {100 * accuracy:.1f}%")
    return _save(fig, path)


def plot_lines_predictions(model, X, y, path, *, title="3x3 lines: predictions", columns=6):
    """Each 3x3 image with the predicted class and its probability; green when right, red when wrong.

    Parameters
    ----------
    model : Sequential
        A 9-input, 2-class model (``portablenn.datasets.lines``: 0 vertical, 1 horizontal).
    X : array of shape (n_samples, 9)
        Images flattened row-major, values in [0, 1].
    y : integer array of shape (n_samples,)
    path : str or os.PathLike
    title : str
    columns : int
        Images per row.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        ``X`` is not ``(n, 9)``, or ``y`` has another length.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(np.int64)
    if X.ndim != 2 or X.shape[1] != 9 or X.shape[0] == 0:
        raise ValueError(f"lines predictions need 3x3 images, X of shape (n, 9); got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"X has {X.shape[0]} images but y has shape {y.shape}")
    proba = predict_proba(model, X)
    predicted = proba.argmax(axis=1)
    columns = max(1, min(int(columns), X.shape[0]))
    rows = math.ceil(X.shape[0] / columns)
    height = 1.75 * rows + 0.6  # inches; a fixed layout is much faster than "constrained" for many panels
    fig = _figure(figsize=(1.6 * columns, height))
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
        left=0.1 / (1.6 * columns), right=1 - 0.1 / (1.6 * columns), bottom=0.1 / height, top=1 - 0.85 / height,
        wspace=0.12, hspace=0.35)).ravel()
    names = LINE_CLASSES if proba.shape[1] == 2 else tuple(str(k) for k in range(proba.shape[1]))
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= X.shape[0]:
            ax.set_axis_off()
            continue
        ax.imshow(X[i].reshape(3, 3), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        right = predicted[i] == y[i]
        ax.set_title(f"{names[predicted[i]]} {proba[i, predicted[i]]:.2f}", fontsize=9,
                     color="green" if right else "red")
        for side in ax.spines.values():
            side.set_edgecolor("green" if right else "red")
            side.set_linewidth(2)
    wrong = int((predicted != y).sum())
    fig.suptitle(f"{title} ({X.shape[0] - wrong}/{X.shape[0]} correct)")
    return _save(fig, path)


def plot_first_layer(model, path, shape=(28, 28), max_units=100, *, title=None):
    """The first Linear layer's weight columns (one per hidden unit) as images in a grid.

    Each unit is drawn on its own symmetric scale (grey is 0, white positive, black negative),
    so the pattern each unit responds to is visible whatever its norm.

    Parameters
    ----------
    model : Sequential
        Whose first Linear layer has ``prod(shape)`` inputs.
    path : str or os.PathLike
    shape : tuple of int
        Image shape of one input, ``(28, 28)`` for MNIST.
    max_units : int
        Draw the first ``max_units`` units at most.
    title : str, optional

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        The model has no Linear layer or its input size is not ``prod(shape)``.
    """
    first = next((key for key, _, name in model.named_parameters() if name == "weight"), None)
    if first is None:
        raise ValueError("the model has no Linear layer to draw")
    W = model.state_dict()[first]  # (in_features, units)
    shape = tuple(int(s) for s in shape)
    if W.shape[0] != math.prod(shape):
        raise ValueError(f"the first layer takes {W.shape[0]} inputs, which are not images of shape {shape} "
                         f"({math.prod(shape)} pixels)")
    units = min(W.shape[1], int(max_units))
    if units < 1:
        raise ValueError(f"max_units must be at least 1, got {max_units}")
    columns = math.ceil(math.sqrt(units))
    rows = math.ceil(units / columns)
    width, height = max(4.5, 1.1 * columns), 1.1 * rows * shape[0] / shape[1] + 0.5  # inches
    fig = _figure(figsize=(width, height))
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
        left=0.05 / width, right=1 - 0.05 / width, bottom=0.05 / height, top=1 - 0.5 / height,
        wspace=0.08, hspace=0.08)).ravel()
    for j, ax in enumerate(axes):
        ax.set_axis_off()
        if j < units:
            image = W[:, j].reshape(shape)
            scale = float(np.abs(image).max()) or 1.0
            ax.imshow(image, cmap="gray", vmin=-scale, vmax=scale, interpolation="nearest")
    fig.suptitle(title if title is not None else f"first-layer weights: {units} of {W.shape[1]} units")
    return _save(fig, path)
