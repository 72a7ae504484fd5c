"""Splitting a validation set off the training data: seeded, and stratified by class for classification."""
import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from .backend import _host
from .validation import InputError

__all__ = ["validation_split", "split_indices"]


def split_indices(n, fraction, seed, labels=None):
    """``(train_rows, validation_rows)``: sorted host int64 indices that partition ``range(n)``.

    About ``fraction`` of the rows go to validation, drawn from ``numpy.random.default_rng([seed, 1, 0])``,
    a stream of its own (each epoch's shuffle draws from ``[seed, epoch]``). With ``labels`` the draw is per
    class: each class gives ``round(fraction * its rows)`` rows but never all of them, so every class stays
    in training. At least one row goes to validation, and at least one stays.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise InputError(f"validation_fraction must be a number strictly between 0 and 1, got {fraction!r}")
    if n < 2:
        raise InputError(f"validation_fraction needs at least 2 rows to split, got {n}")
    rng = np.random.default_rng([seed, 1, 0])
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    chosen = []
    for rows in groups:
        take = min(int(np.floor(fraction * len(rows) + 0.5)), len(rows) - 1) if labels is not None else \
            min(max(int(np.floor(fraction * len(rows) + 0.5)), 1), len(rows) - 1)
        chosen.append(rng.permutation(rows)[:take])
    val = np.sort(np.concatenate(chosen)).astype(np.int64)
    if val.size == 0:  # every class too small to give a row: take one from the largest
        largest = max(groups, key=len)
        val = np.sort(rng.permutation(largest)[:1]).astype(np.int64)
    train = np.setdiff1d(np.arange(n), val).astype(np.int64)
    return train, val


def _rows(array, index):
    """The rows ``index`` (host int64) of a host or device array, in its own library."""
    if isinstance(array, np.ndarray) or not is_array_api_obj(array):
        return np.asarray(array)[index]
    xp = array_namespace(array)
    return xp.take(array, xp.asarray(index, device=getattr(array, "device", None)), axis=0)


def validation_split(X, y, fraction, seed, stratify, sample_weight=None):
    """``(X_train, y_train, (X_val, y_val))`` in the arrays' own library (see ``split_indices``); with
    ``sample_weight`` (host, one per row) also the training rows' weights, a fourth item.

    ``stratify``: a bool (stratify by ``y`` itself), or a callable host ``y`` -> the 1-D labels to
    stratify by or None (a loss's ``strata``: binary cross-entropy's 0/1 column, nothing for multi-label).
    """
    y_host = np.asarray(_host(y)) if is_array_api_obj(y) else np.asarray(y)
    n = int(y_host.shape[0])
    labels = stratify(y_host) if callable(stratify) else (y_host if stratify else None)
    train, val = split_indices(n, fraction, seed, labels)
    split = _rows(X, train), _rows(y, train), (_rows(X, val), _rows(y, val))
    return split if sample_weight is None else (*split, np.asarray(sample_weight)[train])
