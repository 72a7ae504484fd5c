"""Input checks that turn bad data into one clear sentence (an InputError) before any training starts."""
import math

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from .backend import _host

__all__ = ["InputError", "check_features", "check_range", "check_labels", "check_batch_size"]


class InputError(ValueError):
    """Data or arguments that cannot be trained on; the message says what is wrong."""


def check_features(X, in_features=None, name="X", dtype=None):
    """Check that ``X`` is a finite numeric 2-D array ``(n_samples, in_features)``; returns n_samples.

    With ``dtype`` (the float dtype ``X`` is about to be cast to) also ``check_range``.
    """
    if not is_array_api_obj(X):
        try:
            X = np.asarray(X)
        except Exception as exc:
            raise InputError(f"{name} is not an array: {exc}") from None
    if len(X.shape) != 2:
        raise InputError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
    if X.shape[0] == 0:
        raise InputError(f"{name} is empty (0 samples)")
    xp = array_namespace(X)
    if not (xp.isdtype(X.dtype, "real floating") or xp.isdtype(X.dtype, "integral")):
        raise InputError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if in_features is not None and X.shape[1] != in_features:
        raise InputError(f"{name} has {X.shape[1]} features per sample, the model expects {in_features}")
    # a finite sum proves every value finite (NaN and inf propagate); only an overflowing sum needs the full check
    if xp.isdtype(X.dtype, "real floating") and not _finite(_host(_sum(xp, X))):
        bad = int(_host(xp.sum(xp.astype(~xp.isfinite(X), xp.int32))))
        if bad:
            raise InputError(f"{name} contains {bad} NaN or infinite value(s)")
    if dtype is not None:
        check_range(X, dtype, name)
    return X.shape[0]


def check_range(X, dtype, name="X"):
    """Check that the finite floats ``X`` stay finite once cast to the float dtype ``dtype``.

    Only a cast to fewer bits can overflow (float64 values beyond 3.4e38 become float32 infinities);
    integers always fit. Costs a min and a max of ``X`` then, nothing otherwise.
    """
    xp = array_namespace(X)
    target = np.finfo(dtype)
    if not xp.isdtype(X.dtype, "real floating") or xp.finfo(X.dtype).bits <= target.bits:
        return
    largest = float(target.max)
    if float(_host(xp.max(X))) > largest or float(_host(xp.min(X))) < -largest:
        raise InputError(f"{name} has values too large for {target.dtype} (magnitude above {largest:.4g}); "
                         f"scale the data or train in float64")


def _sum(xp, X):
    if isinstance(X, np.ndarray):  # as row sums by BLAS gemv: all cores at memory speed, ~2x np.sum
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow only sends us to the full check
            return np.sum(X @ np.ones(X.shape[1], X.dtype))
    return xp.sum(X)


def _finite(value):
    return math.isfinite(float(value))


def check_labels(y, n_samples, num_classes, name="y"):
    """Check integer class labels ``(n_samples,)`` in ``[0, num_classes)``; returns them as host int64."""
    if not is_array_api_obj(y):
        y = np.asarray(y)
    y = _host(y)
    if y.ndim != 1:
        raise InputError(f"{name} must be 1-D (n_samples,), got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise InputError(f"X has {n_samples} samples but {name} has {y.shape[0]} labels")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"{name} must hold integer class indices; found non-integer values")
    elif y.dtype.kind not in "iub":
        raise InputError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    low, high = (int(y.min()), int(y.max())) if y.size else (0, 0)
    if low < 0:
        raise InputError(f"{name} has a negative label ({low}); labels must be 0..{num_classes - 1}")
    if high >= num_classes:
        raise InputError(f"{name} has label {high} but the model has only {num_classes} classes "
                         f"(labels must be 0..{num_classes - 1})")
    return y.astype(np.int64)


def check_batch_size(batch_size, n_samples):
    """``None`` (full batch) or an int in ``[1, n_samples]``; returns the batch size to use."""
    if batch_size is None:
        return n_samples
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise InputError(f"batch_size must be a positive integer or None (full batch), got {batch_size!r}")
    if not 1 <= batch_size <= n_samples:
        raise InputError(f"batch_size must be between 1 and the number of samples ({n_samples}), got {batch_size}")
    return int(batch_size)


def check_epochs(epochs):
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise InputError(f"epochs must be a non-negative integer, got {epochs!r}")
    return int(epochs)


def check_l2(l2):
    l2 = float(l2)
    if not (l2 >= 0 and math.isfinite(l2)):
        raise InputError(f"l2 must be a finite number >= 0, got {l2}")
    return l2
