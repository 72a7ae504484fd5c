"""Training as an animation: a recorder that reads the model at every ``frame_every``-th step of ``fit``
(``on_step``), and the GIF (Pillow) or MP4 (ffmpeg) written from its frames.

Between frame steps the recorder only counts: parameters come to the host (``model.state_dict()``) and
``predict_proba`` runs on a few fixed rows at frame steps alone, so recording works on every device and
changes nothing in training (eval mode for its predictions: no Dropout draw, no BatchNorm update).
"""
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .losses import SoftmaxCrossEntropy, get_loss
from .train import fit, predict, predict_proba
from .validation import check_batch_size

__all__ = ["AnimationError", "Frame", "TrainingRecorder", "animate_training", "check_animation_path",
           "default_frame_every", "is_animation", "FRAMES", "MAX_FRAMES"]

FRAMES = 200  # the default frame_every keeps an animation at about this many frames
MAX_FRAMES = 1000  # the most frames after the first that an explicit frame_every may ask for
WRITERS = {".gif": "pillow", ".mp4": "ffmpeg"}
MARK = "portablenn training animation"  # in the GIF's comment and the MP4's metadata: the file is ours
_MAX_SIDE = 128  # a heat map shows at most this many rows and columns of a matrix
_IMAGE_UNITS = 16  # the first layer of image inputs: this many units, drawn as images
_EXAMPLES = 24  # rows of the prediction matrix
_EVAL_ROWS = 4096  # the frames' loss and accuracy are over at most this many training rows
_MESH = 150  # decision-region mesh points per axis (2-D inputs)


class AnimationError(ValueError):
    """The animation cannot be written as asked (its format, or a missing ffmpeg); one line."""


def check_animation_path(path, flag="animation"):
    """The writer for ``path`` ("pillow" for .gif, "ffmpeg" for .mp4) once what it needs is installed.

    Raises
    ------
    AnimationError
        Another suffix, or .mp4 where no ffmpeg is on the PATH.
    ImportError
        matplotlib is missing.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in WRITERS:
        raise AnimationError(f"{flag} {path}: an animation is written as .gif or .mp4, not {suffix or 'no suffix'}")
    try:
        import matplotlib
        import matplotlib.animation  # noqa: F401
        import matplotlib.backends.backend_agg  # noqa: F401
    except ImportError:
        raise ImportError(f"{flag} needs matplotlib: pip install 'portablenn[plot]'") from None
    if WRITERS[suffix] == "ffmpeg":
        program = matplotlib.rcParams["animation.ffmpeg_path"]
        if shutil.which(program) is None:
            raise AnimationError(f"{flag} {path}: writing .mp4 needs ffmpeg, and '{program}' is not on the PATH; "
                                 "install ffmpeg, or write a .gif")
    return WRITERS[suffix]


def default_frame_every(total_steps, frames=FRAMES):
    """The smallest step interval that gives at most ``frames`` frames after the initial one (the last step's
    included)."""
    return max(1, math.ceil(int(total_steps) / frames))


def is_animation(path):
    """Whether ``path`` is an animation portablenn wrote (its mark in a GIF comment or MP4 metadata)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
            if head in (b"GIF87a", b"GIF89a"):
                from PIL import Image

                with Image.open(path) as image:
                    return MARK.encode() in bytes(image.info.get("comment", b""))
            size = fh.seek(0, os.SEEK_END)  # MP4: the metadata atom lies in the moov box, at either end
            ends = []
            for start in (0, max(0, size - (1 << 20))):
                fh.seek(start)
                ends.append(fh.read(1 << 20))
            return any(MARK.encode() in part for part in ends)
    except Exception:  # unreadable or not an image: not ours
        return False


@dataclass
class Frame:
    """What one frame shows: the model after ``step`` steps of the fit (0: before the first)."""
    step: int
    epoch: int
    params: dict  # key -> host array, as many rows and columns as the picture draws
    proba: np.ndarray  # (examples, classes): the fixed examples' class probabilities
    loss: float  # mean cross-entropy over the evaluated training rows
    accuracy: float  # over the same rows
    regions: np.ndarray = None  # (mesh, mesh) int8 predicted class over the plane (2-D inputs), else None


class TrainingRecorder:
    """Host copies of what an animation of training shows, read at every ``frame_every``-th step.

    Give ``recorder.on_step`` to ``fit`` (its ``on_step`` hook), call ``finish()`` after the fit and
    ``save(path)``. Frames hold the initial model, then the model after steps ``frame_every``,
    ``2 * frame_every``, ... and after the last step. Only classifiers trained with softmax
    cross-entropy (the probabilities of the prediction matrix).

    Parameters
    ----------
    model : Sequential
        A classifier producing logits, on any device.
    X : array of shape (n_samples, in_features)
        The training inputs (host).
    y : integer array of shape (n_samples,)
    total_steps : int, optional
        The steps the fit will run, for the default ``frame_every`` (about 200 frames).
    frame_every : int, optional
        Steps between frames; default about 200 frames over ``total_steps``, else every step. At most
        ``MAX_FRAMES`` frames after the first over ``total_steps``; whatever the fit does, the recorder
        never holds more than ``MAX_FRAMES + 2`` (400 where neither is given): past that it drops every
        other frame and doubles ``frame_every``.
    examples : int or sequence of int
        The rows of ``X`` in the prediction matrix: that many evenly spaced rows (all when fewer), or
        these row indices.
    image_shape : tuple of int, optional
        Draw the first layer as images of this shape (its first 16 units). Default: square images where
        the first layer has more than 128 inputs that make a square (MNIST's 784 = 28 x 28).
    initial_step : int
        Steps already trained (a resumed fit); frames are numbered from there.

    Attributes
    ----------
    frames : list of Frame
    frame_every : int
    history : History or None
        What ``finish`` was given.
    """

    def __init__(self, model, X, y, *, total_steps=None, frame_every=None, examples=_EXAMPLES, image_shape=None,
                 initial_step=0):
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != model.in_features:
            raise ValueError(f"the animation needs X of shape (n, {model.in_features}); got shape {X.shape}")
        if y.shape != (X.shape[0],) or y.dtype.kind not in "iub" or y.min() < 0 or y.max() >= model.out_features:
            raise ValueError(f"the animation draws class predictions: y must hold {X.shape[0]} class labels in "
                             f"0..{model.out_features - 1}")
        explicit = frame_every
        if frame_every is None:
            frame_every = default_frame_every(total_steps) if total_steps is not None else 1
        if isinstance(frame_every, bool) or not isinstance(frame_every, (int, np.integer)) or frame_every < 1:
            raise ValueError(f"frame_every must be a positive integer, got {frame_every!r}")
        if total_steps is not None and math.ceil(total_steps / frame_every) > MAX_FRAMES:
            raise ValueError(f"one frame every {frame_every} steps over {total_steps} steps makes "
                             f"{math.ceil(total_steps / frame_every)} frames after the first; at most {MAX_FRAMES}: "
                             f"take frame_every {default_frame_every(total_steps, MAX_FRAMES)} or more")
        self.model, self.frame_every, self.frames, self.history = model, int(frame_every), [], None
        # the most frames held: past it every other one goes (about FRAMES where nothing set the interval)
        self._cap = 2 * FRAMES if total_steps is None and explicit is None else MAX_FRAMES + 2
        self.classes = model.out_features
        n = X.shape[0]
        if isinstance(examples, (int, np.integer)):
            self.examples = np.unique(np.linspace(0, n - 1, min(int(examples), n)).round().astype(np.int64))
        else:
            self.examples = np.asarray(examples, dtype=np.int64).reshape(-1)
            if self.examples.size == 0 or self.examples.min() < -n or self.examples.max() >= n:
                raise ValueError(f"examples must be row indices of X (0..{n - 1})")
        self.X_examples, self.y_examples = X[self.examples], y[self.examples].astype(np.int64)
        rows = np.unique(np.linspace(0, n - 1, min(n, _EVAL_ROWS)).round().astype(np.int64))
        self.X_eval, self.y_eval, self.n_train = X[rows], y[rows].astype(np.int64), n
        self.image_shape = self._image_shape(image_shape)
        self.mesh = None
        if X.shape[1] == 2:  # the decision regions: a fixed mesh over the data's range extended by 1
            lo, hi = X.min(axis=0) - 1.0, X.max(axis=0) + 1.0
            self.extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
            xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], _MESH), np.linspace(lo[1], hi[1], _MESH))
            self.mesh = np.c_[xx.ravel(), yy.ravel()]
            self.points = (np.asarray(X, dtype=np.float64), y.astype(np.int64))
        self._step, self._epoch = int(initial_step), 0
        self.record(0)

    def _image_shape(self, image_shape):
        first = next((key for key, _, name in self.model.named_parameters() if name == "weight"), None)
        self.image_key = None
        inputs = self.model.in_features
        if image_shape is None and inputs > _MAX_SIDE and math.isqrt(inputs) ** 2 == inputs:
            image_shape = (math.isqrt(inputs),) * 2
        if image_shape is not None:
            image_shape = tuple(int(s) for s in image_shape)
            if math.prod(image_shape) != inputs:
                raise ValueError(f"the first layer takes {inputs} inputs, which are not images of shape "
                                 f"{image_shape}")
            self.image_key = first
        return image_shape

    def _view(self, key, array):
        """The part of a parameter the picture draws: the first units of an image layer, else at most
        128 rows and columns."""
        if array.ndim == 2 and key == self.image_key:
            return array[:, :_IMAGE_UNITS].copy()
        return array[(slice(_MAX_SIDE),) * array.ndim].copy()

    def on_step(self, epoch, step, steps):
        """``fit``'s hook, after every step: counts, and records at frame steps."""
        self._epoch, self._step = epoch, (epoch - 1) * steps + step
        if self._step % self.frame_every == 0:
            self.record(epoch)

    def record(self, epoch):
        """Read the model now: its parameters, the examples' probabilities, the loss and accuracy, the regions."""
        if len(self.frames) >= self._cap:  # never unbounded: keep every other frame (steps 0, 2k, 4k, ...)
            self.frames, self.frame_every = self.frames[::2], 2 * self.frame_every
            if self._step % self.frame_every:
                return
        model = self.model
        params = {key: self._view(key, value) for key, value in model.state_dict().items()
                  if key in {k for k, _, _ in model.named_parameters()}}
        proba = predict_proba(model, self.X_eval)
        with np.errstate(divide="ignore"):
            loss = float(-np.mean(np.log(proba[np.arange(len(self.y_eval)), self.y_eval])))
        accuracy = float(np.mean(proba.argmax(axis=1) == self.y_eval))
        regions = None
        if self.mesh is not None:
            regions = predict(model, self.mesh).reshape(_MESH, _MESH).astype(np.int8 if self.classes < 128
                                                                             else np.int32)
        self.frames.append(Frame(self._step, epoch, params, predict_proba(model, self.X_examples), loss, accuracy,
                                 regions))

    def finish(self, history=None):
        """After the fit: record the model as it ended unless the last step already was; keep ``history``."""
        self.history = history
        if self.frames[-1].step != self._step:
            self.record(self._epoch)
        return self

    def limits(self):
        """``{key: (vmin, vmax)}`` of every parameter's colour scale, fixed over the whole run: symmetric
        ``(-m, m)`` with m the largest magnitude any frame shows, or ``(0, max(1, largest))`` for a
        parameter that is never negative (drawn in grey); ``"proba"``: (0, 1)."""
        limits = {}
        for key in self.frames[0].params:
            low = min(float(np.min(f.params[key])) for f in self.frames)
            high = max(float(np.max(np.abs(f.params[key]))) for f in self.frames)
            limits[key] = (0.0, max(1.0, high)) if low >= 0 else (-high, high)
        limits["proba"] = (0.0, 1.0)
        return limits

    @property
    def sampled(self):
        """Whether the frames' loss and accuracy are over part of the training rows (a large dataset)."""
        return len(self.y_eval) < self.n_train

    def save(self, path, *, fps=10, title=None, dpi=100):
        """Write the frames as ``path`` (.gif through matplotlib's Pillow writer, .mp4 through ffmpeg),
        replacing it atomically; returns the path."""
        from .animation_figure import FrameFigure, write

        check_animation_path(path)
        figure = FrameFigure(self, title=title, dpi=dpi)
        return write(figure, len(self.frames), Path(path), fps=fps)


def animate_training(model, X, y, path, *, optimizer, epochs=1, batch_size="auto", frame_every=None, fps=10,
                     examples=_EXAMPLES, image_shape=None, title=None, on_step=None, **fit_kwargs):
    """Train ``model`` as ``fit`` does and write the training as an animation.

    One frame every ``frame_every`` steps (default: about 200 frames in all, and the first and last
    states): every weight matrix and bias vector as a heat map on a colour scale fixed over the run
    (warm positive, cold negative; grey 0 to 1 for a parameter never negative), the class probabilities
    of a fixed set of examples with a green (right) or red (wrong) mark each, the step, the loss and
    accuracy so far; for 2-D inputs the decision regions with the training points; for image inputs
    (MNIST) the first units' weights as images.

    Parameters
    ----------
    model, X, y, optimizer, epochs, batch_size
        As ``fit``'s; ``y`` holds class labels (softmax cross-entropy).
    path : str or os.PathLike
        ``.gif`` or ``.mp4`` (needs ffmpeg); checked before training.
    frame_every : int, optional
    fps : int
        Frames per second of the file.
    examples, image_shape
        As `TrainingRecorder`'s.
    title : str, optional
    on_step : callable(epoch, step, steps), optional
        Called after the recorder's hook.
    **fit_kwargs
        The rest of ``fit``'s arguments (``l2``, ``device``, ``validation``, ...).

    Returns
    -------
    TrainingRecorder
        Its ``frames``, ``limits()`` and ``history`` (what ``fit`` returned).
    """
    check_animation_path(path)
    if not isinstance(get_loss(fit_kwargs.get("loss")), SoftmaxCrossEntropy):
        raise ValueError("an animation draws class probabilities: it needs softmax cross-entropy, "
                         f"not {fit_kwargs['loss']!r}")
    n = len(y)
    steps = math.ceil(n / check_batch_size(batch_size, n))
    initial = int(fit_kwargs.get("initial_epoch", 0))
    recorder = TrainingRecorder(model, X, y, total_steps=(epochs - initial) * steps, frame_every=frame_every,
                                examples=examples, image_shape=image_shape, initial_step=initial * steps)

    def hook(epoch, step, steps_per_epoch):
        recorder.on_step(epoch, step, steps_per_epoch)
        if on_step is not None:
            on_step(epoch, step, steps_per_epoch)

    history = fit(model, X, y, optimizer=optimizer, epochs=epochs, batch_size=batch_size, on_step=hook,
                  **fit_kwargs)
    recorder.finish(history)
    recorder.save(path, fps=fps, title=title)
    return recorder
