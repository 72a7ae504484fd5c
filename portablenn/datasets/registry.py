"""Datasets by name, as the command line's --dataset gives them: spiral, lines, mnist, csv:PATH, npz:PATH."""
from .files import load_spec
from .lines import lines
from .mnist import DatasetError, mnist
from .spiral import spiral

__all__ = ["kind", "load"]


def kind(name):
    """``"spiral"``, ``"lines"``, ``"mnist"``, or ``"file"`` for csv:/npz: names; DatasetError for others."""
    if name in ("spiral", "lines", "mnist"):
        return name
    if name.startswith(("csv:", "npz:")):
        return "file"
    raise DatasetError(f"unknown dataset {name!r}; expected spiral, lines, mnist, csv:PATH or npz:PATH")


def load(name, data_dir=None, seed=0, val=None, download=True, dtype=None, task="classification", targets=None):
    """``{"train": (X, y), <eval split>: (X, y), ...}`` as host arrays; csv:/npz: files read in ``dtype``.

    ``data_dir`` and ``download`` are MNIST's (as `mnist`), ``seed`` that of the generated datasets, ``val``
    a csv:/npz: file's validation file (split ``"val"``; a bare path is read in the training file's format).
    ``task`` and ``targets`` say what a csv:/npz: file's targets are (`portablenn.datasets.files`); the
    embedded datasets and MNIST always give class labels.
    """
    which = kind(name)
    if which == "spiral":
        return {"train": spiral(seed=seed)}
    if which == "lines":
        return lines(seed=seed)
    if which == "mnist":  # downloaded on first use unless download=False, as mnist(download=...)
        return {split: mnist(data_dir, split, download=download) for split in ("train", "test")}
    splits = {"train": load_spec(name, dtype, task=task, targets=targets)}
    if val:  # a bare path is read in the training file's format, with as many target columns
        if task != "classification" and targets is None:
            targets = splits["train"][1].shape[1]
        splits["val"] = load_spec(val if val.startswith(("csv:", "npz:")) else name[:4] + val, dtype, task=task,
                                  targets=targets)
    return splits
