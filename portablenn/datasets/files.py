"""Labelled datasets from your own files: CSV (features..., targets) and NPZ (arrays X and y).

What the targets are follows the task of the loss that will train on them (``Loss.task``):

- ``"classification"`` (softmax cross-entropy, the default): one integer class label per row, the last
  CSV column or a 1-D ``y``; returned as int64 ``(n,)``.
- ``"regression"`` (mse, huber): real numbers, the last ``targets`` CSV columns or an NPZ ``y`` of shape
  ``(n,)`` or ``(n, K)``; returned as ``(n, K)`` in the features' dtype.
- ``"multilabel"`` (binary cross-entropy): 0/1 (or probabilities in [0, 1]), one column per label, laid
  out as regression targets: binary classification is one column, multi-label K columns.
"""
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..validation import CLASS_RULE, check_memory, class_limit, format_bytes
from .mnist import DatasetError

__all__ = ["load_csv", "load_npz", "load_npy", "load_spec"]


def _check_file(path, kind):
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{kind} file {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"{kind} file {path} is not a regular file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{kind} file {path} is empty")
    return path


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


TASKS = ("classification", "regression", "multilabel")


def _task(task, targets):
    """Checked ``(task, targets)``: targets is None (the default: 1 for CSV, y's columns for NPZ) or an int >= 1,
    and classification reads exactly one label column."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if targets is not None and (isinstance(targets, bool) or not isinstance(targets, int) or targets < 1):
        raise ValueError(f"targets must be a positive number of target columns, got {targets!r}")
    if task == "classification" and targets not in (None, 1):
        raise ValueError(f"classification reads one label column, not targets={targets}")
    return task, targets


def _float_dtype(dtype, default):
    if dtype is None:
        return default
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dtype


def _header_lines(path, first):
    """1 when the first row is a header, 0 when it is data; a row mixing names and numbers is refused.

    A header is a row where no cell is a (finite) number, or where the only numbers are the columns'
    own positions (``0,1,label`` or ``1,2,label``, as pandas writes integer column names); anything
    else with a cell that is not a number is a data row with a typo (``0.1,O.2,0``), named.
    """
    number, text = first
    cells = text.split(",")
    numeric = [_is_number(v) for v in cells]
    if all(numeric):
        return 0
    for offset in (0, 1):  # vacuously true for a row of names only ("nan" and "inf" count as names)
        if all(not n or v.strip() == str(c + offset) or not math.isfinite(float(v))
               for c, (v, n) in enumerate(zip(cells, numeric))):
            return number
    c = numeric.index(False)
    raise DatasetError(f"CSV file {path} line {number}, column {c + 1}: {cells[c].strip()!r} is not a number "
                       "(a header row holds names only; this row holds numbers too, so it is data with a typo)")


def load_csv(path, dtype="float32", *, task="classification", targets=None):
    """Read a comma-separated file of numbers: features, then the targets in the last column(s).

    A first row of names (no numbers, or only its column positions as pandas' integer column names)
    is a header and skipped; a first row mixing names and numbers is refused as a typo. Blank lines
    are ignored.

    Parameters
    ----------
    path : str or os.PathLike
    dtype : {"float32", "float64"}
        The features' dtype (the CLI passes ``--dtype``); regression and multi-label targets too.
    task : {"classification", "regression", "multilabel"}
        What the targets are (the module's docstring): an integer class label in the last column; real
        numbers; 0/1 labels (or probabilities in [0, 1]).
    targets : int, optional
        How many of the last columns are targets (regression, multi-label; default 1). At least one
        feature column must remain.

    Returns
    -------
    X : numpy.ndarray, shape (n_samples, n_features), of ``dtype``
    y : numpy.ndarray
        Classification: shape (n_samples,), int64. Otherwise: shape (n_samples, targets), of ``dtype``.

    Raises
    ------
    DatasetError
        Missing or empty file, no data rows, ragged rows or a non-numeric value (naming the line
        and column), NaN or infinite values, values beyond float32 when reading float32, too few
        columns for the targets; for classification, labels that are not non-negative integers, or
        a largest label that would make more classes than max(1000, 10 x rows) (a stray label must not
        decide the model's size); for multi-label, a target outside [0, 1] (naming line and column).
    """
    task, targets = _task(task, targets)
    k = targets or 1
    dtype = _float_dtype(dtype, np.dtype(np.float32))
    path = _check_file(path, "CSV")
    first = next(_rows(path), None)
    if first is None:
        raise DatasetError(f"CSV file {path} is empty")
    header = _header_lines(path, first)
    try:
        try:  # the fast C parser; on any problem re-read line by line to say where it is
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data" is reported below
                data = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=header, ndmin=2, comments=None,
                                  encoding="utf-8-sig")
        except ValueError:
            data = _parse_slowly(path, header)
    except MemoryError:  # the text itself is what is too large: nothing in it chose the size
        raise DatasetError(f"CSV file {path} ({format_bytes(path.stat().st_size)}) does not fit in memory "
                           "as numbers") from None
    if data.shape[0] == 0:
        raise DatasetError(f"CSV file {path} has a header but no data rows")
    if data.shape[1] < k + 1:
        expected = ("features followed by a label column" if task == "classification" else
                    f"features followed by {k} target column{'s' if k != 1 else ''}")
        have = "one column" if data.shape[1] == 1 else f"{data.shape[1]} columns"
        raise DatasetError(f"CSV file {path} has {have}; expected {expected}")
    bad = ~np.isfinite(data)
    if bad.any():
        raise _cell_error(path, header, bad, "is NaN or infinite")
    if dtype == np.float32:
        too_large = np.abs(data) > _FLOAT32_MAX  # finite in float64, infinite once float32
        if task == "classification":
            too_large[:, -1] = False  # a label is checked as a label below
        if too_large.any():
            raise _cell_error(path, header, too_large, f"is too large for float32 (at most {_FLOAT32_MAX:.4g})")
    if task != "classification":
        y = data[:, -k:]
        if task == "multilabel":
            outside = (y < 0) | (y > 1)
            if outside.any():
                mask = np.zeros(data.shape, dtype=bool)
                mask[:, -k:] = outside
                raise _cell_error(path, header, mask, "is not a 0/1 target (or a probability in [0, 1]) for "
                                  "binary cross-entropy")
        return data[:, :-k].astype(dtype), y.astype(dtype)
    labels = data[:, -1]
    wrong = labels != np.round(labels)
    if wrong.any():
        number, line = _data_row(path, header, int(np.argmax(wrong)))
        raise DatasetError(f"CSV file {path} line {number}: label {line.split(',')[-1].strip()!r} in the last "
                           "column is not an integer class index")
    if (labels < 0).any():
        number, line = _data_row(path, header, int(np.argmax(labels < 0)))
        raise DatasetError(f"CSV file {path} line {number}: label {line.split(',')[-1].strip()!r} is negative; "
                           "class labels must be 0, 1, 2, ...")
    if (labels > _MAX_LABEL).any():
        number, line = _data_row(path, header, int(np.argmax(labels > _MAX_LABEL)))
        raise DatasetError(f"CSV file {path} line {number}: label {line.split(',')[-1].strip()!r} is too large "
                           f"to be a class index (at most {_MAX_LABEL})")
    classes, rows = int(labels.max()) + 1, labels.shape[0]
    if classes > class_limit(rows):
        number, line = _data_row(path, header, int(np.argmax(labels)))
        raise DatasetError(f"CSV file {path} line {number}: label {line.split(',')[-1].strip()!r} would make "
                           f"{classes} classes from {rows} row{'s' if rows != 1 else ''}; {CLASS_RULE} "
                           f"(here {class_limit(rows)})")
    return data[:, :-1].astype(dtype), labels.astype(np.int64)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_LABEL = 2**31 - 1  # far beyond any class count, and well inside int64 for the cast


def _cell_error(path, header, mask, problem):
    """A DatasetError naming the line, column and text of the first data cell where ``mask`` is set."""
    r, c = (int(i) for i in np.argwhere(mask)[0])
    number, line = _data_row(path, header, r)
    return DatasetError(f"CSV file {path} line {number}, column {c + 1}: {line.split(',')[c].strip()!r} {problem}")


def _rows(path):
    """``(line number, text)`` of every non-blank line, numbered from 1."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield number, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise DatasetError(f"CSV file {path} is not UTF-8 text") from None


def _data_row(path, header, index):
    """``(line number, text)`` of data row ``index`` (0-based, after the header)."""
    rows = (row for row in _rows(path) if row[0] > header)
    return next(row for i, row in enumerate(rows) if i == index)


def _parse_slowly(path, header):
    """Parse row by row to name the first line that is ragged or holds a non-number."""
    out, width, first = [], None, None
    for number, line in _rows(path):
        if number <= header:
            continue
        values = line.split(",")
        if width is None:
            width, first = len(values), number
        if len(values) != width:
            raise DatasetError(f"CSV file {path} line {number} has {len(values)} values, expected {width} "
                               f"(as on line {first})")
        row = []
        for c, text in enumerate(values):
            try:
                row.append(float(text))
            except ValueError:
                raise DatasetError(f"CSV file {path} line {number}, column {c + 1}: {text.strip()!r} is not a "
                                   "number") from None
        out.append(row)
    return np.array(out, dtype=np.float64).reshape(len(out), width or 0)


def load_npz(path, dtype=None, *, task="classification", targets=None):
    """Read an ``.npz`` archive holding ``X`` (samples x features) and targets ``y``: integer labels
    ``(n,)`` for classification, ``(n,)`` or ``(n, K)`` real numbers (regression) or 0/1 labels
    (multi-label) otherwise (see the module's docstring).

    Each member's ``.npy`` header is read first and checked against what the archive really stores
    (and, for a compressed member, against what deflate can expand to) and against the memory,
    before the array is allocated.

    Parameters
    ----------
    path : str or os.PathLike
        Written by ``np.savez(path, X=X, y=y)``; loaded with ``allow_pickle=False``.
    dtype : {"float32", "float64"}, optional
        The features' dtype (the CLI passes ``--dtype``); by default float64 stays float64 and
        other numeric types become float32. Regression and multi-label targets take it too.
    task : {"classification", "regression", "multilabel"}
    targets : int, optional
        The number of target columns ``y`` must have (regression, multi-label); by default its own.

    Returns
    -------
    X : numpy.ndarray, shape (n_samples, n_features)
    y : numpy.ndarray
        Classification: shape (n_samples,), int64. Otherwise: shape (n_samples, K), of X's dtype.

    Raises
    ------
    DatasetError
        Missing, empty or non-npz file; ``X`` or ``y`` missing, pickled (object), non-numeric, or
        with a header shape larger than the archive holds or than memory; ``X`` not 2-D or empty;
        ``y`` not 1-D (classification) or 1-D/2-D (otherwise); lengths that differ; NaN or infinite
        values, or values beyond float32 when reading float32; labels that are not non-negative
        integers or would make more classes than max(1000, 10 x rows); multi-label targets outside
        [0, 1]; a ``y`` whose columns are not ``targets``.
    """
    task, targets = _task(task, targets)
    dtype = _float_dtype(dtype, None)
    path = _check_file(path, "NPZ")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:  # neither .npy nor .npz: numpy falls back to pickle, which is refused
        raise DatasetError(f"NPZ file {path} is not an .npz archive ({exc})") from None
    except Exception as exc:  # a damaged zip raises anything from BadZipFile to NotImplementedError
        raise DatasetError(f"NPZ file {path} is not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"NPZ file {path} holds a single array, not an archive with X and y "
                           "(write it with np.savez(path, X=X, y=y))")
    try:
        with archive:
            names = set(archive.files)
            for name in ("X", "y"):
                if name not in names:
                    have = ", ".join(sorted(names)) or "none"
                    raise DatasetError(f"NPZ file {path} has no array {name!r} (it has {have}; "
                                       "write it with np.savez(path, X=X, y=y))")
            for name in ("X", "y"):
                _check_member(archive, name, path)
            X, y = (_array(archive, name, path) for name in ("X", "y"))
        return _checked_npz(path, X, y, dtype, task, targets)
    except MemoryError:
        raise DatasetError(f"NPZ file {path} ({format_bytes(path.stat().st_size)}) does not fit in memory") from None


def _checked_npz(path, X, y, dtype, task="classification", targets=None):
    if X.ndim != 2:
        raise DatasetError(f"NPZ file {path}: X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DatasetError(f"NPZ file {path}: X is empty (shape {X.shape})")
    if task == "classification" and y.ndim != 1:
        raise DatasetError(f"NPZ file {path}: y must be 1-D (n_samples,), got shape {y.shape}")
    if y.ndim not in (1, 2):
        raise DatasetError(f"NPZ file {path}: y must be (n_samples,) or (n_samples, targets), got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise DatasetError(f"NPZ file {path}: X has {X.shape[0]} samples but y has {y.shape[0]} labels")
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"NPZ file {path}: X must hold numbers, got dtype {X.dtype}")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise DatasetError(f"NPZ file {path}: X contains {int((~np.isfinite(X)).sum())} NaN or infinite value(s)")
    if dtype is None:
        dtype = np.dtype(np.float64) if X.dtype == np.float64 else np.dtype(np.float32)
    if dtype == np.float32 and X.dtype.kind == "f" and X.dtype.itemsize > 4 and X.size:
        largest = float(np.max(np.abs(X)))
        if largest > _FLOAT32_MAX:
            raise DatasetError(f"NPZ file {path}: X has values too large for float32 (magnitude up to "
                               f"{largest:.4g}, at most {_FLOAT32_MAX:.4g}); scale the data or use float64")
    X = X.astype(dtype, copy=False)
    if task != "classification":
        return X, _npz_targets(path, y, dtype, task, targets)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DatasetError(f"NPZ file {path}: y must hold integer class indices; found non-integer values")
    elif y.dtype.kind not in "iub":
        raise DatasetError(f"NPZ file {path}: y must hold integer class indices, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DatasetError(f"NPZ file {path}: y has a negative label ({int(y.min())}); "
                           "class labels must be 0, 1, 2, ...")
    if y.size and y.max() > _MAX_LABEL:
        raise DatasetError(f"NPZ file {path}: y has a label too large to be a class index ({y.max()}; "
                           f"at most {_MAX_LABEL})")
    rows = y.shape[0]
    classes = int(y.max()) + 1
    if classes > class_limit(rows):
        raise DatasetError(f"NPZ file {path}: label {classes - 1} in y (row {int(np.argmax(y)) + 1}) would make "
                           f"{classes} classes from {rows} row{'s' if rows != 1 else ''}; {CLASS_RULE} "
                           f"(here {class_limit(rows)})")
    return X, y.astype(np.int64)


def _npz_targets(path, y, dtype, task, targets):
    """Regression or multi-label ``y`` -> checked ``(n, K)`` of ``dtype``."""
    y = y.reshape(-1, 1) if y.ndim == 1 else y
    if y.shape[1] == 0:
        raise DatasetError(f"NPZ file {path}: y has no target columns (shape {y.shape})")
    if targets is not None and y.shape[1] != targets:
        raise DatasetError(f"NPZ file {path}: y has {y.shape[1]} target column{'s' if y.shape[1] != 1 else ''}, "
                           f"expected {targets}")
    if y.dtype.kind not in "biuf":
        raise DatasetError(f"NPZ file {path}: y must hold numbers, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DatasetError(f"NPZ file {path}: y contains {int((~np.isfinite(y)).sum())} NaN or infinite value(s)")
    if dtype == np.float32 and y.size and float(np.max(np.abs(y.astype(np.float64)))) > _FLOAT32_MAX:
        raise DatasetError(f"NPZ file {path}: y has values too large for float32 (magnitude up to "
                           f"{float(np.max(np.abs(y))):.4g}, at most {_FLOAT32_MAX:.4g}); scale them or use float64")
    if task == "multilabel" and y.size and (y.min() < 0 or y.max() > 1):
        row, column = (int(i) for i in np.argwhere((y < 0) | (y > 1))[0])
        raise DatasetError(f"NPZ file {path}: y[{row}, {column}] = {y[row, column]:g} is not a 0/1 target (or a "
                           "probability in [0, 1]) for binary cross-entropy")
    return y.astype(dtype)


# The most a deflate stream can expand (1032:1); a member claiming more was not written by NumPy.
_DEFLATE_RATIO = 1032


def _npy_header(fh):
    """``(shape, dtype, header bytes)`` of the ``.npy`` stream ``fh``; ValueError if it is not one."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fh)
    else:
        shape, _, dtype = fmt._read_array_header(fh, version)
    return tuple(int(d) for d in shape), np.dtype(dtype), fh.tell()


def _check_member(archive, name, path):
    """Refuse a member whose header claims more data than the archive stores, or than memory holds."""
    try:
        zf = archive.zip
        member = name + ".npy" if name + ".npy" in zf.namelist() else name
        info = zf.getinfo(member)
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > info.compress_size * _DEFLATE_RATIO + 1024:
            raise DatasetError(f"NPZ file {path}: {name} claims {format_bytes(info.file_size)} uncompressed from "
                               f"{format_bytes(info.compress_size)} compressed, more than deflate can expand; "
                               "the archive is damaged")
        with zf.open(info) as fh:
            try:
                shape, dtype, offset = _npy_header(fh)
            except ValueError:
                return  # not a .npy member, or a damaged header: _array says which
    except DatasetError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, NotImplementedError, ...
        raise DatasetError(f"NPZ file {path}: cannot read {name}, the archive is damaged "
                           f"({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        return  # refused unread by _array (allow_pickle=False)
    nbytes = math.prod(shape) * dtype.itemsize
    stored = info.file_size - offset
    if nbytes > stored:
        raise DatasetError(f"NPZ file {path}: {name}'s header says shape {shape} of {dtype} "
                           f"({format_bytes(nbytes)}) but the archive stores only {format_bytes(max(stored, 0))} "
                           "of it; the file is damaged")
    check_memory(2 * nbytes, f"NPZ file {path}: {name} of shape {shape} and dtype {dtype}", DatasetError)


def _array(archive, name, path):
    try:
        array = archive[name]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DatasetError(f"NPZ file {path}: {name} is a pickled object array, which is never loaded; "
                               "save plain numeric arrays") from None
        raise DatasetError(f"NPZ file {path}: cannot read {name} ({exc})") from None
    except MemoryError:
        raise DatasetError(f"NPZ file {path}: {name} does not fit in memory") from None
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, NotImplementedError, ...
        raise DatasetError(f"NPZ file {path}: cannot read {name}, the archive is damaged "
                           f"({type(exc).__name__}: {exc})") from None
    if not isinstance(array, np.ndarray):  # a zip member that is not a .npy file comes back as bytes
        raise DatasetError(f"NPZ file {path}: {name} is not a NumPy array (write it with np.savez)")
    return array


def load_npy(path):
    """Read the one array of an ``.npy`` file (``predict --input``), never unpickling.

    The header's shape is checked against the file's size and the memory before anything is
    allocated.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    numpy.ndarray
        As stored.

    Raises
    ------
    DatasetError
        Missing, empty or not an ``.npy`` file, an object (pickled) array, a header whose shape
        needs more bytes than the file holds or than memory.
    """
    path = _check_file(path, "NPY")
    try:
        with open(path, "rb") as fh:
            shape, dtype, offset = _npy_header(fh)
    except ValueError as exc:
        raise DatasetError(f"NPY file {path} is not an .npy array file ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read NPY file {path}: {exc.strerror or exc}") from None
    if dtype.hasobject:
        raise DatasetError(f"NPY file {path} holds a pickled object array, which is never loaded; "
                           "save a plain numeric array")
    nbytes = math.prod(shape) * dtype.itemsize
    stored = path.stat().st_size - offset
    if nbytes > stored:
        raise DatasetError(f"NPY file {path}: its header says shape {shape} of {dtype} ({format_bytes(nbytes)}) "
                           f"but the file holds only {format_bytes(max(stored, 0))}; the file is damaged")
    check_memory(nbytes, f"NPY file {path}: shape {shape} of {dtype}", DatasetError)
    try:
        return np.load(path, allow_pickle=False)
    except MemoryError:
        raise DatasetError(f"NPY file {path} ({format_bytes(nbytes)}) does not fit in memory") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"NPY file {path} cannot be read ({exc})") from None


def load_spec(spec, dtype=None, *, task="classification", targets=None):
    """Load a dataset named ``"csv:PATH"`` or ``"npz:PATH"`` (the CLI's ``--dataset`` form).

    Parameters
    ----------
    spec : str
    dtype : {"float32", "float64"}, optional
        The features' dtype; by default that of `load_csv` / `load_npz`.
    task, targets
        What the targets are and how many columns they take, as `load_csv` / `load_npz`.

    Returns
    -------
    X : numpy.ndarray, shape (n_samples, n_features)
    y : numpy.ndarray
        Classification: shape (n_samples,), int64; otherwise (n_samples, K).

    Raises
    ------
    DatasetError
        An unknown prefix or an empty path, or whatever `load_csv` / `load_npz` raise.
    """
    kind, sep, path = str(spec).partition(":")
    loaders = {"csv": load_csv, "npz": load_npz}
    if not sep or kind.lower() not in loaders:
        raise DatasetError(f"unknown dataset {spec!r}; expected csv:PATH or npz:PATH")
    if not path:
        raise DatasetError(f"dataset {spec!r} names no file; expected {kind}:PATH")
    return loaders[kind.lower()](path, **({} if dtype is None else {"dtype": dtype}), task=task, targets=targets)
