"""The picture of a training animation's frame (a `TrainingRecorder`'s), laid out once and updated frame by
frame, and the writers that put the frames in a .gif (matplotlib's Pillow writer) or an .mp4 (ffmpeg)."""
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .animation import MARK

WARM_COLD, GREY = "coolwarm", "gray"  # warm positive, cold negative; grey 0 (black) to 1 (white)
GREEN, RED = "green", "red"
SHORT_LINE_CLASSES = ("vert.", "horiz.")  # portablenn.datasets.lines: 0 vertical, 1 horizontal


def _layers(params):
    """``[(layer index, [2-D keys], [1-D keys])]`` in layer order: one column of the picture each."""
    groups = {}
    for key, value in params.items():
        index = key.split(".", 1)[0]
        groups.setdefault(index, ([], []))[0 if value.ndim == 2 else 1].append(key)
    return [(index, matrices, vectors) for index, (matrices, vectors) in groups.items()]


def _mosaic(weights, shape):
    """The columns of ``weights`` (pixels, units) as images of ``shape`` in a near-square grid, NaN between."""
    units = weights.shape[1]
    columns = math.ceil(math.sqrt(units))
    rows = math.ceil(units / columns)
    h, w = shape
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for j in range(units):
        r, c = divmod(j, columns)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = weights[:, j].reshape(shape)
    return out


def _scale(limits):
    low, high = limits
    return f"0..{high:.3g}" if low == 0 else f"\u00b1{high:.3g}"


class FrameFigure:
    """One figure for every frame of ``recorder``: ``draw(i)`` shows frame ``i``.

    ``images`` maps each parameter key (and ``"proba"``) to its AxesImage, whose colour limits are
    ``recorder.limits()``'s in every frame.
    """

    def __init__(self, recorder, *, title=None, dpi=100):
        from matplotlib.animation import adjusted_figsize
        from matplotlib.gridspec import GridSpec

        from .plots import _colormap, _figure

        self.recorder, self.title = recorder, title
        frames, first = recorder.frames, recorder.frames[0]
        self.limits = recorder.limits()
        groups = _layers(first.params)
        classes, k = recorder.classes, len(recorder.examples)
        regions = first.regions is not None

        def width(matrices, vectors):
            if matrices and matrices[0] == recorder.image_key:
                return 7.0
            columns = first.params[matrices[0]].shape[1] if matrices else first.params[vectors[0]].shape[0]
            return float(np.clip(columns, 2.5, 8))

        ratios = [width(m, v) for _, m, v in groups] + [max(3.0, 0.8 * classes + 1.5)] + ([9.0] if regions else [])
        # even numbers of pixels, as matplotlib's ffmpeg writer makes them (h264): then no writer resizes it
        size = adjusted_figsize(0.42 * sum(ratios) + 1.0, 5.6, dpi, 2)
        self.fig = fig = _figure(figsize=size, dpi=dpi, layout="constrained")
        grid = GridSpec(3, len(ratios), figure=fig, width_ratios=ratios, height_ratios=[5.0, 0.7, 2.0])
        self.images, self._mosaics = {}, {}
        cold = _colormap(WARM_COLD).with_extremes(bad="white")
        for column, (index, matrices, vectors) in enumerate(groups):
            for row, keys in ((0, matrices), (1, vectors)):
                if not keys:
                    fig.add_subplot(grid[row, column]).set_axis_off()
                    continue
                # one subplot per key; a layer has at most one matrix and one vector (weight, bias)
                sub = grid[row, column].subgridspec(1, len(keys))
                for j, key in enumerate(keys):
                    self._heat_map(fig.add_subplot(sub[0, j]), key, cold)
        self.proba_ax = ax = fig.add_subplot(grid[0:2, len(groups)])
        self.images["proba"] = ax.imshow(first.proba, cmap=GREY, vmin=0.0, vmax=1.0, aspect="auto",
                                         interpolation="nearest", extent=(-0.5, classes - 0.5, k - 0.5, -0.5))
        self.marks = ax.scatter(np.full(k, classes - 0.1), np.arange(k), s=max(8.0, min(40.0, 900.0 / k)),
                                marker="o", edgecolors="none")
        ax.set_xlim(-0.5, classes + 0.3)
        ax.set_ylim(k - 0.5, -0.5)
        names = SHORT_LINE_CLASSES if classes == 2 and recorder.model.in_features == 9 else \
            tuple(str(c) for c in range(classes))
        ax.set_xticks(range(classes), names, fontsize=7)
        ax.set_yticks(range(k), [names[c] for c in recorder.y_examples], fontsize=max(4.0, min(8.0, 160.0 / k)))
        ax.tick_params(length=0)
        ax.set_ylabel("example (its true class)", fontsize=7)
        ax.set_title(f"class probabilities\n{k} examples, \u25cf right/wrong", fontsize=8)
        self.curve_ax = fig.add_subplot(grid[2, :len(groups) + 1])
        self._curves(frames)
        self.regions = None
        if regions:
            ax = fig.add_subplot(grid[:, -1])
            X, y = recorder.points
            spectral = _colormap("Spectral")
            self.regions = ax.imshow(first.regions, origin="lower", extent=recorder.extent, cmap=spectral,
                                     vmin=-0.5, vmax=classes - 0.5, alpha=0.8, interpolation="nearest", aspect="auto")
            self.points = ax.scatter(X[:, 0], X[:, 1], c=y, s=12, cmap=spectral, vmin=-0.5, vmax=classes - 0.5,
                                     edgecolors="k", linewidths=0.4)
            ax.set_xlim(recorder.extent[:2])
            ax.set_ylim(recorder.extent[2:])
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
            ax.set_title("decision regions and the training points", fontsize=9)
        self.heading = fig.suptitle("", fontsize=10)
        self.draw(len(frames) - 1)  # the longest heading, for the layout
        fig.canvas.draw()  # the constrained layout, once: every frame keeps these positions
        fig.set_layout_engine("none")
        # what changes from frame to frame is drawn over a background drawn once (blitting), in this order
        self._changing = [*self.images.values(), self.marks, self.loss_line, self.accuracy_line]
        if self.regions is not None:
            self._changing += [self.regions, self.points]
        self._changing.append(self.heading)
        for artist in self._changing:
            artist.set_animated(True)
        self._background = None
        self._framed = {image for key, image in self.images.items() if key not in self._mosaics}

    def _heat_map(self, ax, key, cold):
        recorder, value = self.recorder, self.recorder.frames[0].params[key]
        low, high = self.limits[key]
        cmap = GREY if low == 0 else cold
        if key == recorder.image_key:
            shape = recorder.image_shape
            data = _mosaic(value, shape)
            self._mosaics[key] = shape
            self.images[key] = ax.imshow(data, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
            total = self._full_shape(key)[1]
            ax.set_title(f"{key}: units 1-{value.shape[1]} of {total}\nas {shape[0]}\u00d7{shape[1]} images, "
                         f"{_scale((low, high))}", fontsize=8)
            ax.set_axis_off()
            return
        data = value[None, :] if value.ndim == 1 else value
        self.images[key] = ax.imshow(data, cmap=cmap, vmin=low, vmax=high, aspect="auto", interpolation="nearest")
        shape = self._full_shape(key)
        shown = "\u00d7".join(map(str, value.shape))
        size = "\u00d7".join(map(str, shape)) + ("" if tuple(value.shape) == shape else f", first {shown}")
        ax.set_title(f"{key} ({size})\n{_scale((low, high))}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if value.ndim == 2:
            ax.set_ylabel("input", fontsize=7)
            ax.set_xlabel("unit", fontsize=7)

    def _full_shape(self, key):
        layer_index, name = key.split(".", 1)
        return tuple(self.recorder.model.layers[int(layer_index)].params[name].shape)

    def _curves(self, frames):
        ax = self.curve_ax
        steps = [f.step for f in frames]
        losses = np.array([f.loss for f in frames])
        finite = losses[np.isfinite(losses)]
        self.loss_line, = ax.plot([], [], color="C0", label="loss")
        twin = ax.twinx()
        self.accuracy_line, = twin.plot([], [], color="C1", label="accuracy")
        ax.set_xlim(steps[0], max(steps[-1], steps[0] + 1))
        ax.set_ylim(0, 1.05 * float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        twin.set_ylim(0, 1.02)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("loss", fontsize=7, color="C0")
        twin.set_ylabel("accuracy", fontsize=7, color="C1")
        ax.tick_params(labelsize=7)
        twin.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        rows = "training rows" if not self.recorder.sampled else \
            f"{len(self.recorder.y_eval)} of the {self.recorder.n_train} training rows"
        ax.set_title(f"loss (cross-entropy) and accuracy so far, on the {rows}", fontsize=8)

    def draw(self, i):
        """Show frame ``i``; returns the Figure."""
        recorder = self.recorder
        frame = recorder.frames[i]
        for key, value in frame.params.items():
            if key in self._mosaics:
                self.images[key].set_data(_mosaic(value, self._mosaics[key]))
            else:
                self.images[key].set_data(value[None, :] if value.ndim == 1 else value)
        self.images["proba"].set_data(frame.proba)
        right = frame.proba.argmax(axis=1) == recorder.y_examples
        self.marks.set_facecolor([GREEN if r else RED for r in right])
        done = recorder.frames[:i + 1]
        self.loss_line.set_data([f.step for f in done], [f.loss for f in done])
        self.accuracy_line.set_data([f.step for f in done], [f.accuracy for f in done])
        if self.regions is not None:
            self.regions.set_data(frame.regions)
        where = "initial weights" if frame.step == 0 else f"epoch {frame.epoch}"
        line = (f"step {frame.step} ({where})   loss {frame.loss:.4f}   accuracy {100 * frame.accuracy:.1f}%"
                f"   {int(right.sum())}/{len(right)} examples right")
        self.heading.set_text(f"{self.title}\n{line}" if self.title else line)
        return self.fig

    def pixels(self):
        """The figure as drawn now: RGBA bytes of ``size`` pixels. The still parts are drawn once; each call
        draws only what changes over them."""
        canvas = self.fig.canvas
        if self._background is None:
            canvas.draw()  # without the changing artists (animated)
            self._background = canvas.copy_from_bbox(self.fig.bbox)
        else:
            canvas.restore_region(self._background)
        for artist in self._changing:
            self.fig.draw_artist(artist)
            if artist in self._framed:  # the axes' frame over its image
                for spine in artist.axes.spines.values():
                    self.fig.draw_artist(spine)
        return canvas.buffer_rgba()

    def palette(self):
        """A palette image of the first, middle and last frames' colours, for every frame of a GIF: a pixel
        that does not change keeps its index, which the GIF's compression rewards (about 4x smaller files
        than a palette per frame)."""
        from PIL import Image

        from .plots import _colormap

        count = len(self.recorder.frames)
        shown = []
        for i in sorted({0, count // 2, count - 1}):
            self.draw(i)
            shown.append(Image.frombuffer("RGBA", self.size, self.pixels(), "raw", "RGBA", 0, 1).convert("RGB"))
        width, height = self.size
        sheet = Image.new("RGB", (width, height * len(shown)))
        for j, image in enumerate(shown):
            sheet.paste(image, (0, j * height))
        # and every colour a heat map can take between those frames: greys and the warm-cold ramp
        ramps = [(v, v, v) for v in np.linspace(0, 255, 32).round().astype(int)]  # 8 apart: see below
        cold = _colormap(WARM_COLD)(np.linspace(0, 1, 64))[:, :3]
        ramps += [tuple(int(round(255 * c)) for c in rgb) for rgb in cold]
        seen = sheet.quantize(256 - len(ramps), method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        seen = np.asarray(seen.getpalette()[:3 * (256 - len(ramps))]).reshape(-1, 3)
        ramps = np.asarray(ramps)
        # Pillow's palette lookup is approximate: a colour near a ramp's would take its pixels (white -> 251)
        apart = np.abs(seen[:, None, :] - ramps[None, :, :]).max(axis=2).min(axis=1) > 8
        palette = Image.new("P", (1, 1))
        palette.putpalette(np.concatenate([ramps, seen[apart]]).astype(int).ravel().tolist())
        return palette

    @property
    def size(self):
        """(width, height) in pixels."""
        return self.fig.canvas.get_width_height()


def _gif_writer(figure, fps):
    """matplotlib's Pillow writer taking each frame from ``figure.pixels()`` as a palette image (one byte a
    pixel, not four), and keeping the file as bytes (``data``) with portablenn's mark in its comment."""
    from matplotlib.animation import PillowWriter
    from PIL import Image

    class GifWriter(PillowWriter):
        palette = None

        def grab_frame(self, **savefig_kwargs):
            image = Image.frombuffer("RGBA", figure.size, figure.pixels(), "raw", "RGBA", 0, 1).convert("RGB")
            self._frames.append(image.quantize(palette=self.palette, dither=Image.Dither.NONE))

        def finish(self):
            buffer = io.BytesIO()
            self._frames[0].save(buffer, format="GIF", save_all=True, append_images=self._frames[1:],
                                 duration=round(1000 / self.fps), loop=0, comment=MARK.encode())
            self.data = buffer.getvalue()

    writer = GifWriter(fps=fps)
    writer.palette = figure.palette()
    return writer


def _ffmpeg_writer(figure, fps):
    """matplotlib's ffmpeg writer taking each frame from ``figure.pixels()``, with portablenn's mark."""
    from matplotlib.animation import FFMpegWriter

    class Writer(FFMpegWriter):
        def grab_frame(self, **savefig_kwargs):
            self._proc.stdin.write(figure.pixels())

    return Writer(fps=fps, metadata={"comment": MARK}, extra_args=["-f", "mp4"])  # the file's name ends in .tmp


def _temporary(path):
    """A fresh name beside ``path`` to write it under before the rename, named as ``outputs.atomic_write`` names
    its own: the next write into the folder removes it when a kill left it behind."""
    from .outputs import temporary_prefix

    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def write(figure, count, path, *, fps=10):
    """Draw frames ``0..count-1`` of ``figure`` into ``path`` (.gif or .mp4), replacing it atomically."""
    from . import outputs

    path = Path(path)
    outputs.refuse_special(path, "the animation")
    path.parent.mkdir(parents=True, exist_ok=True)
    dpi = figure.fig.dpi
    if path.suffix.lower() == ".gif":
        writer = _gif_writer(figure, fps)
        with writer.saving(figure.fig, str(path), dpi):
            for i in range(count):
                figure.draw(i)
                writer.grab_frame()
        return outputs.atomic_write(path, writer.data, "the animation")
    temporary = _temporary(path)
    try:
        writer = _ffmpeg_writer(figure, fps)
        with writer.saving(figure.fig, str(temporary), dpi):
            for i in range(count):
                figure.draw(i)
                writer.grab_frame()
        os.chmod(temporary, outputs.file_mode(path))  # mkstemp's 0600 -> what open() would give
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path
