"""Labelled datasets from your own files: CSV (features..., label) and NPZ (arrays X and y)."""
import warnings
from pathlib import Path

import numpy as np

from .mnist import DatasetError

__all__ = ["load_csv", "load_npz", "load_spec"]


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


def load_csv(path):
    """Read a comma-separated file of numbers whose last column is an integer class label.

    A first row that is not all numbers is taken as a header and skipped. Blank lines are ignored.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    X : numpy.ndarray, shape (n_samples, n_features), float32
    y : numpy.ndarray, shape (n_samples,), int64

    Raises
    ------
    DatasetError
        Missing or empty file, no data rows, ragged rows or a non-numeric value (naming the line
        and column), NaN or infinite values, labels that are not non-negative integers.
    """
    path = _check_file(path, "CSV")
    first = next(_rows(path), None)
    if first is None:
        raise DatasetError(f"CSV file {path} is empty")
    header = first[0] if not all(_is_number(v) for v in first[1].split(",")) else 0
    try:  # the fast C parser; on any problem re-read line by line to say where it is
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data" is reported below
            data = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=header, ndmin=2, comments=None,
                              encoding="utf-8-sig")
    except ValueError:
        data = _parse_slowly(path, header)
    if data.shape[0] == 0:
        raise DatasetError(f"CSV file {path} has a header but no data rows")
    if data.shape[1] < 2:
        raise DatasetError(f"CSV file {path} has one column; expected features followed by a label column")
    bad = ~np.isfinite(data)
    if bad.any():
        raise _cell_error(path, header, bad, "is NaN or infinite")
    too_large = np.abs(data[:, :-1]) > _FLOAT32_MAX  # finite in float64, infinite once float32
    if too_large.any():
        raise _cell_error(path, header, too_large, f"is too large for float32 (at most {_FLOAT32_MAX:.4g})")
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
    return data[:, :-1].astype(np.float32), labels.astype(np.int64)


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


def load_npz(path):
    """Read an ``.npz`` archive holding ``X`` (samples x features) and integer labels ``y``.

    Parameters
    ----------
    path : str or os.PathLike
        Written by ``np.savez(path, X=X, y=y)``; loaded with ``allow_pickle=False``.

    Returns
    -------
    X : numpy.ndarray, shape (n_samples, n_features)
        float64 stays float64; other numeric types become float32.
    y : numpy.ndarray, shape (n_samples,), int64

    Raises
    ------
    DatasetError
        Missing, empty or non-npz file; ``X`` or ``y`` missing, pickled (object) or non-numeric;
        ``X`` not 2-D or empty; ``y`` not 1-D; lengths that differ; NaN or infinite values;
        labels that are not non-negative integers.
    """
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
    with archive:
        names = set(archive.files)
        for name in ("X", "y"):
            if name not in names:
                have = ", ".join(sorted(names)) or "none"
                raise DatasetError(f"NPZ file {path} has no array {name!r} (it has {have}; "
                                   "write it with np.savez(path, X=X, y=y))")
        X, y = (_array(archive, name, path) for name in ("X", "y"))
    if X.ndim != 2:
        raise DatasetError(f"NPZ file {path}: X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DatasetError(f"NPZ file {path}: X is empty (shape {X.shape})")
    if y.ndim != 1:
        raise DatasetError(f"NPZ file {path}: y must be 1-D (n_samples,), got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise DatasetError(f"NPZ file {path}: X has {X.shape[0]} samples but y has {y.shape[0]} labels")
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"NPZ file {path}: X must hold numbers, got dtype {X.dtype}")
    X = X if X.dtype == np.float64 else X.astype(np.float32)
    if not np.isfinite(X).all():
        raise DatasetError(f"NPZ file {path}: X contains {int((~np.isfinite(X)).sum())} NaN or infinite value(s)")
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
    return X, y.astype(np.int64)


def _array(archive, name, path):
    try:
        array = archive[name]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DatasetError(f"NPZ file {path}: {name} is a pickled object array, which is never loaded; "
                               "save plain numeric arrays") from None
        raise DatasetError(f"NPZ file {path}: cannot read {name} ({exc})") from None
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, NotImplementedError, MemoryError, ...
        raise DatasetError(f"NPZ file {path}: cannot read {name}, the archive is damaged "
                           f"({type(exc).__name__}: {exc})") from None
    if not isinstance(array, np.ndarray):  # a zip member that is not a .npy file comes back as bytes
        raise DatasetError(f"NPZ file {path}: {name} is not a NumPy array (write it with np.savez)")
    return array


def load_spec(spec):
    """Load a dataset named ``"csv:PATH"`` or ``"npz:PATH"`` (the CLI's ``--dataset`` form).

    Parameters
    ----------
    spec : str

    Returns
    -------
    X : numpy.ndarray, shape (n_samples, n_features)
    y : numpy.ndarray, shape (n_samples,), int64

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
    return loaders[kind.lower()](path)

