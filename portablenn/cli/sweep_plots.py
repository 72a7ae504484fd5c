"""The plots of ``portablenn sweep --plot``: every member's learning curves, and the final validation metric over
the settings: a heat map over a two-setting grid, a scatter over the settings a random search drew (CS231n's
picture of its learning-rate and regularisation search)."""
import math

import numpy as np

from ..sweep import LogUniform, rank_key, tie_field

HEAT_MAP_AXES = ("lr", "l2", "weight_decay", "momentum", "dropout", "hidden")  # a heat map's axes, by preference
PLOTS = ("sweep_curves.png", "sweep_heatmap.png", "sweep_scatter.png")


def plots(directory, result, lists, varying, field, random=False):
    """Write the learning curves and, over two varying settings, the heat map (a grid) or the scatter (random
    search, ``random``) of the final ``field`` into ``directory``; returns the paths written."""
    from ..plots import _figure, _save as save_png

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    metric = field.removeprefix("val_")
    fig = _figure(figsize=(11, 4.2))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    order = result.ranking(field)
    colours = _colours(len(order))
    for rank, i in enumerate(order):
        h = result.histories[i]
        if not h.records:
            continue
        kwargs = dict(color=colours[rank], lw=1.6 if rank == 0 else 0.9, alpha=1.0 if rank < 5 else 0.55,
                      label=result.names[i] if rank < 8 else None,
                      marker="o" if len(h.records) == 1 else None, ms=4)  # one epoch: a point, not a line
        left.plot(h["epoch"], h["loss"], **kwargs)
        if field in h.records[0]:
            right.plot(h["epoch"], h[field], **kwargs)
    left.set(xlabel="epoch", ylabel="training loss", title="training loss, every member")
    left.set_yscale("log")
    right.set(xlabel="epoch", ylabel=field, title=f"{field} (the best 8 named; best is thickest)")
    if metric == "error":
        right.set_ylim(bottom=0)
    right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    written.append(save_png(fig, directory / PLOTS[0]))
    if random:
        axes = [k for k in HEAT_MAP_AXES if k in varying and k != "hidden"][:2]
        if axes:
            written.append(_scatter(directory / PLOTS[2], result, lists, axes, field))
        return written
    axes = [k for k in HEAT_MAP_AXES if k in varying][:2]
    if len(axes) == 2:
        written.append(_heat_map(directory / PLOTS[1], result, lists, axes, field, [k for k in varying
                                                                                     if k not in axes]))
    return written


def _colours(n):
    from ..plots import _colormap

    cmap = _colormap("viridis")
    return [cmap(0.9 * k / max(1, n - 1)) for k in range(n)]


def _heat_map(path, result, lists, axes, field, rest):
    """The final ``field`` over two settings: the mean over seeds, the best over any other varying setting."""
    from ..plots import _colormap, _figure, _save as save_png

    (ka, kb) = axes
    va, vb = lists[ka], lists[kb]
    grid_values = np.full((len(va), len(vb)), np.nan)
    higher = field.removeprefix("val_") == "r2"
    for a, x in enumerate(va):
        for b, z in enumerate(vb):
            cells = {}
            for i, m in enumerate(result.members):
                if m[ka] == x and m[kb] == z:
                    key = tuple((k, m[k]) for k in rest if k != "seed")
                    cells.setdefault(key, []).append(result.final(i, field))
            if cells:
                means = [np.mean(v) for v in cells.values()]
                finite = [v for v in means if not math.isnan(v)]
                grid_values[a, b] = (max(finite) if higher else min(finite)) if finite else np.nan
    fig = _figure(figsize=(1.2 + 1.0 * len(vb), 1.2 + 0.7 * len(va)))
    ax = fig.add_subplot(1, 1, 1)
    masked = np.ma.masked_invalid(grid_values)
    cmap = _colormap("viridis_r" if not higher else "viridis").copy()
    cmap.set_bad("lightgrey")
    image = ax.imshow(masked, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=field)

    def tick(k, v):
        return "x".join(map(str, v)) if k == "hidden" else f"{v:g}"
    ax.set_xticks(range(len(vb)), [tick(kb, v) for v in vb])
    ax.set_yticks(range(len(va)), [tick(ka, v) for v in va])
    ax.set(xlabel=kb, ylabel=ka)
    others = [k for k in rest if k != "seed"]
    title = f"final {field}" + (" (mean over seeds)" if "seed" in rest else "") + \
        (f", best over {', '.join(others)}" if others else "")
    ax.set_title(title, fontsize=9)
    finite = grid_values[np.isfinite(grid_values)]
    middle = float(np.median(finite)) if finite.size else 0.0  # dark text on the light half of the colours
    for a in range(len(va)):
        for b in range(len(vb)):
            v = grid_values[a, b]
            ax.text(b, a, "diverged" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=8,
                    color="black" if math.isnan(v) or (v >= middle if higher else v <= middle) else "white")
    fig.tight_layout()
    return save_png(fig, path)


def _trials(result, axes, field):
    """``(settings values, mean final field over seeds, members, mean final loss of the same split)`` per drawn
    setting (members differing only by seed are one trial); NaN where a member diverged."""
    trials = {}
    for i, m in enumerate(result.members):
        trials.setdefault(tuple((k, repr(m[k])) for k in m if k != "seed"), []).append(i)
    tie = tie_field(field)  # the ranking's tie-break
    out = []
    for indices in trials.values():
        m = result.members[indices[0]]
        out.append(([m[k] for k in axes], float(np.mean([result.final(i, field) for i in indices])), indices,
                    float(np.mean([result.final(i, tie) for i in indices]))))
    return out


def _scatter(path, result, lists, axes, field):
    """The final ``field`` of each trial over the one or two settings drawn (log axes for a log-uniform range or a
    list spanning a factor of 10 or more): points coloured by the metric, the best ringed (ties broken by the loss,
    as the ranking breaks them), diverged ones (or with no finite ``field``) as crosses, over one setting at the
    top of the plot."""
    from ..plots import _colormap, _figure, _save as save_png

    higher = field.removeprefix("val_") == "r2"
    trials = _trials(result, axes, field)
    values = np.array([t[0] for t in trials], dtype=float)  # (trials, len(axes))
    scores = np.array([t[1] for t in trials])
    good = np.isfinite(scores)

    def log_axis(k):
        v = lists.get(k)
        if isinstance(v, LogUniform):
            return True
        column = values[:, axes.index(k)]
        return bool(column.min() > 0 and column.max() >= 10 * column.min())

    fig = _figure(figsize=(6.2, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    x = values[:, 0]
    y = values[:, 1] if len(axes) == 2 else scores
    cmap = _colormap("viridis_r" if not higher else "viridis")
    if len(axes) == 2:
        points = ax.scatter(x[good], y[good], c=scores[good], cmap=cmap, s=46, edgecolors="black", linewidths=0.4)
        if good.any():
            fig.colorbar(points, ax=ax, label=field)
        ax.set_ylabel(axes[1])
        if log_axis(axes[1]):
            ax.set_yscale("log")
    else:
        ax.scatter(x[good], y[good], c="tab:blue", s=36, edgecolors="black", linewidths=0.4)
        ax.set_ylabel(field)
    bad = ~good
    if bad.any():
        diverged = all(i in result.diverged for t, b in zip(trials, bad) if b for i in t[2])
        label = "diverged" if diverged else f"diverged, or {field} not finite"
        if len(axes) == 2:
            ax.scatter(x[bad], values[bad, 1], marker="x", c="grey", s=40, label=label)
        else:  # no metric to place them by: along the top (x in data, y in axes coordinates)
            ax.scatter(x[bad], np.full(bad.sum(), 0.95), marker="x", c="red", s=40, label=label,
                       transform=ax.get_xaxis_transform())
            ax.update_datalim(np.column_stack([x[bad], np.zeros(bad.sum())]), updatey=False)  # (not automatic)
            if not good.any():
                ax.set_yticks([])  # no metric to read off
    if good.any():
        losses = np.array([t[3] for t in trials])
        key = rank_key(field)
        best = int(min(np.flatnonzero(good), key=lambda j: key(scores[j], losses[j], j)))
        ax.scatter([x[best]], [y[best]], s=170, facecolors="none", edgecolors="red", linewidths=1.5,
                   label=f"best: {field} {scores[best]:.4g}")
    if good.any() or bad.any():
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(axes[0])
    if log_axis(axes[0]):
        ax.set_xscale("log")
    seeds = len({m.get("seed") for m in result.members})
    ax.set_title(f"final {field} of {len(trials)} random trials" + (f" (mean over {seeds} seeds)" if seeds > 1 else ""),
                 fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
