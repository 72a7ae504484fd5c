"""MNIST loader: locate and parse the IDX files (raw or gzipped)."""

import gzip
import os
from pathlib import Path

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = FILES["train"] + FILES["test"]

# IDX type code -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent."""


class MnistNotFoundError(DatasetError, FileNotFoundError):
    """The MNIST IDX files could not be found in any searched directory."""


def _read_bytes(path):
    """Return the (decompressed if ``.gz``) contents of ``path``."""
    path = Path(path)
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: corrupt gzip stream ({exc})") from exc


def read_idx(path):
    """Parse one IDX file (optionally gzip-compressed) into an array.

    Parameters
    ----------
    path : str or os.PathLike
        IDX file; a ``.gz`` suffix means gzip-compressed.

    Returns
    -------
    numpy.ndarray, shape (d0, d1, ...)
        Array with the dims from the header, in native byte order, of the
        dtype given by the type code (0x08 uint8, 0x09 int8, 0x0B int16,
        0x0C int32, 0x0D float32, 0x0E float64).

    Raises
    ------
    DatasetError
        Bad magic number, unknown type code, short header, or a payload
        whose size differs from the product of the dims.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: unsupported IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{path}: truncated header, expected {header} bytes for {ndim} dims, "
            f"found {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise DatasetError(
            f"{path}: payload size mismatch for dims {dims}, expected {expected} "
            f"bytes, found {found}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _file_path(directory, name):
    """Return the raw or ``.gz`` path of ``name`` in ``directory``, or None."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _candidate_dirs(root=None):
    """Return the ordered directories to search for the MNIST files."""
    if root is not None:
        return [Path(root).expanduser()]
    dirs = []
    env = os.environ.get("PORTABLENN_DATA")
    if env:
        env_dir = Path(env).expanduser()
        dirs += [env_dir, env_dir / "mnist"]
    dirs.append(Path.cwd().resolve().parent / "shared" / "data" / "mnist")
    dirs.append(Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    dirs.append(Path(cache).expanduser() / "portablenn" / "mnist")
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_mnist_dir(root=None):
    """Return the first directory holding all four MNIST IDX files.

    Search order: ``root`` if given (then only ``root`` is searched);
    otherwise ``$PORTABLENN_DATA`` and ``$PORTABLENN_DATA/mnist``,
    ``../shared/data/mnist`` relative to the working directory and to the
    repository's parent directory, and ``$XDG_CACHE_HOME/portablenn/mnist``
    (default ``~/.cache/portablenn/mnist``). Each file may be raw or ``.gz``.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Explicit directory; disables the fallback search.

    Returns
    -------
    pathlib.Path
        The directory found.

    Raises
    ------
    MnistNotFoundError
        No searched directory holds all four files.
    """
    searched = _candidate_dirs(root)
    for directory in searched:
        if all(_file_path(directory, name) for name in ALL_FILES):
            return directory
    raise MnistNotFoundError(
        "MNIST not found: searched "
        + ", ".join(str(d) for d in searched)
        + "; put "
        + ", ".join(ALL_FILES)
        + " (raw or .gz) "
        + ("there." if root is not None else "in one of them or set $PORTABLENN_DATA.")
    )


def mnist(root=None, split="train"):
    """Load one MNIST split as flat float images and uint8 labels.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory with the IDX files; see `find_mnist_dir` for the search
        used when omitted.
    split : {"train", "test"}, optional
        ``"train"`` (60000 images) or ``"test"`` (10000 images).

    Returns
    -------
    X : numpy.ndarray, shape (n, 784), dtype float32
        Row-major 28x28 images scaled to [0, 1] (uint8 / 255).
    y : numpy.ndarray, shape (n,), dtype uint8
        Digit labels 0 .. 9.

    Raises
    ------
    ValueError
        ``split`` is not "train" or "test".
    MnistNotFoundError
        The files cannot be found.
    DatasetError
        A file is malformed, or image and label files disagree.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_mnist_dir(root)
    image_path, label_path = (_file_path(directory, n) for n in FILES[split])
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{image_path}: expected uint8 images of shape (n, 28, 28), "
            f"found {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(
            f"{label_path}: expected uint8 labels of shape (n,), "
            f"found {labels.dtype} {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{image_path} holds {images.shape[0]} images but {label_path} "
            f"holds {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{label_path}: label {int(labels.max())} outside 0..9")
    X = images.reshape(images.shape[0], 28 * 28).astype(np.float32) / np.float32(255)
    return X, labels
