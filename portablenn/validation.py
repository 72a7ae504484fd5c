"""Input checks that turn bad data into one clear sentence (an InputError) before any training starts."""
import math
import os

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from .backend import _host

__all__ = ["InputError", "check_features", "check_range", "check_labels", "check_real_targets", "check_binary_targets",
           "check_class_weight", "check_label_smoothing", "check_batch_size", "class_limit", "CLASS_RULE",
           "available_memory", "check_memory", "format_bytes", "training_memory"]


class InputError(ValueError):
    """Data or arguments that cannot be trained on; the message says what is wrong."""


# -- what a file or a flag may make us allocate ------------------------------------------------------
MIN_CLASS_LIMIT, CLASSES_PER_ROW = 1000, 10
CLASS_RULE = (f"labels must be class indices 0..K-1, with K at most max({MIN_CLASS_LIMIT}, "
              f"{CLASSES_PER_ROW} x rows)")


def class_limit(rows):
    """The most classes (largest label + 1) that ``rows`` labelled samples may imply: max(1000, 10 * rows).

    One-hot rows and the output layer grow with the number of classes, so a stray label (200000 in a
    3-row file) must not decide the model's size; 1000 classes are always allowed (ImageNet-1k from a
    handful of rows), and a larger label set needs data to match.
    """
    return max(MIN_CLASS_LIMIT, CLASSES_PER_ROW * int(rows))


def format_bytes(n):
    """``n`` bytes for people: "512 B", "3.2 MiB", "149.0 GiB"."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def available_memory():
    """``(bytes, description)``: the machine's physical memory, or what the process's address-space
    limit (``ulimit -v``, RLIMIT_AS) leaves when that is lower; ``(None, None)`` where neither is known."""
    limit, source = None, None
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        source = "this machine's memory"
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, AttributeError, ValueError, OSError):
        soft = None
    if soft is not None and soft != resource.RLIM_INFINITY and soft >= 0:
        left = soft - _address_space_used()
        if limit is None or left < limit:
            limit, source = max(left, 0), "what the process's address-space limit (ulimit -v) leaves"
    return limit, source


def _address_space_used():
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def check_memory(nbytes, what, error=InputError, hint=""):
    """Raise ``error`` when ``nbytes`` exceed `available_memory` (no check where it is unknown).

    ``what`` names what would be allocated ("MNIST file x: 1000000000 images of 28 x 28"); the
    message adds the size, the limit and ``hint``.
    """
    limit, source = available_memory()
    if limit is not None and nbytes > limit:
        raise error(f"{what} needs {format_bytes(nbytes)}, more than {source} ({format_bytes(limit)})"
                    + (f"; {hint}" if hint else ""))


def training_memory(sizes, itemsize, rows, batch_rows, optimizer_buffers=0, bias=True, eval_rows=8192, norm=False):
    """Estimated bytes to build and train an ``mlp(sizes)`` on ``rows`` samples: ``(total, parameters)``.

    Counts the parameters, their gradients and ``optimizer_buffers`` copies (momentum: 1, Adam: 2),
    the float64 draw of the largest initial weight, the data and one-hot rows on the device, and the
    activations and their gradients for the larger of a minibatch and an evaluation chunk (with ``norm``, a
    normalization layer's after every hidden layer too: its output, normalized input and gradient).
    """
    sizes = [int(s) for s in sizes]
    params = sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))
    largest = max(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    pass_rows = max(int(batch_rows), min(int(rows), eval_rows))
    total = (params * itemsize * (2 + optimizer_buffers) + largest * 16
             + rows * (sizes[0] + sizes[-1]) * itemsize
             + pass_rows * (sum(sizes[1:]) + (sum(sizes[1:-1]) if norm else 0)) * itemsize * 3)
    return total, params


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


def _target_array(y, n_samples, name):
    """``y`` as a host array of real numbers, 1-D or 2-D, with ``n_samples`` finite rows; InputError otherwise."""
    if not is_array_api_obj(y):
        try:
            y = np.asarray(y)
        except Exception as exc:
            raise InputError(f"{name} is not an array: {exc}") from None
    y = _host(y)
    if y.dtype.kind not in "biuf":
        raise InputError(f"{name} must hold real numbers, got dtype {y.dtype}")
    if y.ndim not in (1, 2):
        raise InputError(f"{name} must be (n_samples,) or (n_samples, outputs), got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise InputError(f"X has {n_samples} samples but {name} has {y.shape[0]} rows")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise InputError(f"{name} contains {int(np.sum(~np.isfinite(y)))} NaN or infinite value(s)")
    return y


def _integer_valued(y):
    return y.dtype.kind in "biu" or bool(np.all(y == np.round(y)))


def _target_columns(y, n_samples, outputs, name, expects, labels_hint):
    """``y`` (checked by ``_target_array``) as ``(n_samples, outputs)`` float64; a 1-D ``y`` only for one output."""
    columns = 1 if y.ndim == 1 else y.shape[1]
    if columns != outputs or (y.ndim == 1 and outputs != 1):
        if _integer_valued(y) and columns == 1:
            raise InputError(f"{name} looks like class labels (one column of integers) but the model has {outputs} "
                             f"outputs: {expects} takes targets of shape (n_samples, {outputs}); {labels_hint}")
        got = "1-D (n_samples,)" if y.ndim == 1 else f"{columns} column(s)"
        raise InputError(f"{name} is {got} but the model has {outputs} outputs: {expects} takes targets of shape "
                         f"(n_samples, {outputs})" + (" or (n_samples,)" if outputs == 1 else ""))
    return y.reshape(n_samples, outputs).astype(np.float64)


def check_real_targets(y, n_samples, outputs, name="y"):
    """Check regression targets: finite real numbers ``(n_samples, outputs)``, or ``(n_samples,)`` for a
    model of one output; returns them as host float64 ``(n_samples, outputs)``."""
    y = _target_array(y, n_samples, name)
    return _target_columns(y, n_samples, outputs, name, "a regression loss",
                           "for classification use loss='softmax_cross_entropy'")


def check_binary_targets(y, n_samples, outputs, name="y"):
    """Check binary / multi-label targets: 0/1 (or probabilities in [0, 1]) ``(n_samples, outputs)``, one
    column per label, or ``(n_samples,)`` for one output; returns them as host float64 ``(n_samples, outputs)``."""
    y = _target_array(y, n_samples, name)
    y = _target_columns(y, n_samples, outputs, name, "binary cross-entropy (one 0/1 column per label)",
                        f"for one of {outputs} classes use loss='softmax_cross_entropy'")
    low, high = float(y.min()), float(y.max())
    if low < 0 or high > 1:
        hint = (f" (class labels 0..{int(high)}? use loss='softmax_cross_entropy' with {int(high) + 1} outputs)"
                if low == 0 and high > 1 and _integer_valued(y) and outputs == 1 else "")
        raise InputError(f"{name} must hold 0/1 targets (or probabilities in [0, 1]) for binary cross-entropy; "
                         f"found values from {low:g} to {high:g}{hint}")
    return y


def check_class_weight(class_weight):
    """None, or a sequence of positive finite numbers (one per class) -> a tuple of Python floats."""
    if class_weight is None:
        return None
    rule = "class_weight must be None or a sequence of positive finite numbers, one per class"
    if isinstance(class_weight, (str, bytes, dict)):
        raise InputError(f"{rule}, got {type(class_weight).__name__}")
    try:
        weights = tuple(float(w) for w in class_weight)
    except (TypeError, ValueError):
        raise InputError(f"{rule}, got {class_weight!r}") from None
    if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
        raise InputError(f"{rule}, got {list(weights)}")
    return weights


def check_label_smoothing(label_smoothing):
    """A number in [0, 1) -> a Python float."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.integer, np.floating)) \
            or not 0 <= label_smoothing < 1:
        raise InputError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)


def check_sample_weight(sample_weight, n_samples):
    """None, or one weight per row (a number: the same for all): finite, >= 0, not all 0 -> host float64
    ``(n_samples,)`` scaled to average 1, so that their scale changes neither the loss reported nor the step."""
    if sample_weight is None:
        return None
    if not is_array_api_obj(sample_weight):  # a list, a number, anything with __array__
        try:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"sample_weight must be numbers, one per row, got {sample_weight!r}") from None
    shape = tuple(sample_weight.shape)
    if not shape:  # a number: Python's, NumPy's (np.float64(2), w.mean()) or any library's 0-d array
        number = _host(sample_weight)
        sample_weight = np.full(n_samples, number, dtype=number.dtype)
    elif len(shape) != 1:
        raise InputError(f"sample_weight must be 1-D, one weight per row, got shape {shape}")
    w = _target_array(sample_weight, n_samples, "sample_weight").astype(np.float64)
    if (w < 0).any():
        raise InputError(f"sample_weight must be >= 0; it holds {int(np.sum(w < 0))} negative value(s)")
    top = float(w.max()) if n_samples else 0.0
    if not top > 0:
        raise InputError("sample_weight is zero for every row: there is nothing to train on")
    w = w / top  # before the sum: huge finite weights would overflow it
    return w * (n_samples / w.sum())


AUTO_BATCH = 100  # the minibatch of batch_size="auto", fit's default (CMU 10-714's): fewer rows are one full batch


def check_batch_size(batch_size, n_samples):
    """``None`` (full batch), ``"auto"`` (``AUTO_BATCH`` rows, or all of them where there are fewer, as
    scikit-learn's ``batch_size="auto"`` is ``min(200, n_samples)``) or an int in ``[1, n_samples]``; returns the
    batch size to use."""
    if batch_size is None:
        return n_samples
    if isinstance(batch_size, str) and batch_size == "auto":
        return min(AUTO_BATCH, n_samples)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise InputError(f"batch_size must be a positive integer, None (full batch) or \"auto\", got {batch_size!r}")
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
