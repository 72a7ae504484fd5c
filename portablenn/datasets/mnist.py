"""MNIST loader: locate and parse the IDX files (raw or gzipped)."""

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..validation import check_memory, format_bytes

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


# The most a deflate stream can expand (1032:1, plus the gzip header and trailer): a gzip file of n bytes
# never holds more than this times n, whatever its header claims.
_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


def read_idx(path):
    """Parse one IDX file (optionally gzip-compressed) into an array.

    The header's dims are checked against what the file can hold before anything is allocated: a
    raw file's size must be exactly header + payload, a gzip file cannot expand more than deflate
    allows (1032:1), and the payload must fit in memory. Only then is the payload read.

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
        Bad magic number, unknown type code, short header, a payload whose size differs from the
        product of the dims, dims that no file of this size can hold or that do not fit in memory,
        or a corrupt gzip stream.
    """
    path = Path(path)
    gz = path.suffix == ".gz"
    try:
        size = path.stat().st_size
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            return _parse_idx(fh, path, size, gz)
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        if gz and not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise DatasetError(f"{path}: corrupt gzip stream ({exc})") from None
        raise DatasetError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except MemoryError:
        raise DatasetError(f"{path}: not enough memory to read it ({format_bytes(size)} on disk)") from None


def _parse_idx(fh, path, size, gz):
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
    code, ndim = magic[2], magic[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: unsupported IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    raw_dims = fh.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(
            f"{path}: truncated header, expected {header} bytes for {ndim} dims, "
            f"found {4 + len(raw_dims)}"
        )
    dims = tuple(int.from_bytes(raw_dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if not gz and size - header != expected:  # a raw file says its payload size without reading it
        raise DatasetError(
            f"{path}: payload size mismatch for dims {dims}, expected {expected} "
            f"bytes, found {size - header}"
        )
    if gz and expected + header > size * _DEFLATE_RATIO:
        raise DatasetError(
            f"{path}: header claims dims {dims} ({format_bytes(expected)}), more than a "
            f"{format_bytes(size)} gzip file can hold; the file is damaged"
        )
    # the payload, then its copy in native byte order
    check_memory(2 * expected, f"{path}: dims {dims} of {dtype.name}", DatasetError)
    payload = fh.read(expected)
    if len(payload) == expected and gz:
        extra = len(fh.read(_CHUNK))
        if extra:
            found = f"{expected + extra}" if extra < _CHUNK else f"more than {expected + extra - 1}"
            raise DatasetError(
                f"{path}: payload size mismatch for dims {dims}, expected {expected} bytes, found {found}"
            )
    if len(payload) != expected:
        raise DatasetError(
            f"{path}: payload size mismatch for dims {dims}, expected {expected} "
            f"bytes, found {len(payload)}"
        )
    array = np.frombuffer(payload, dtype=dtype, count=count).reshape(dims)
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
    where = "there" if root is not None else "in one of them (or set $PORTABLENN_DATA)"
    raise MnistNotFoundError(
        f"MNIST not found in {', '.join(str(d) for d in searched)}: download it with mnist(download=True) or "
        f"'portablenn download mnist', or put {', '.join(ALL_FILES)} (raw or .gz) {where}"
    )


def mnist(root=None, split="train", *, download=True):
    """Load one MNIST split as flat float images and uint8 labels, downloading it on first use.

    As the command line does: when the files are in none of the searched directories (see
    `find_mnist_dir`), ``download=True`` fetches them with `download_mnist` into ``root`` (else
    ``$PORTABLENN_DATA``, else ``~/.cache/portablenn/mnist``), checksum-verified, printing one line
    per file on stderr; ``download=False`` (the CLI's ``--no-download``) raises instead.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory with the IDX files; see `find_mnist_dir` for the search
        used when omitted.
    split : {"train", "test"}, optional
        ``"train"`` (60000 images) or ``"test"`` (10000 images).
    download : bool, optional
        Download the files when they are not found (default True).

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
        The files cannot be found and ``download`` is False.
    DownloadError
        The files cannot be found and could not be downloaded (a `DatasetError`).
    DatasetError
        A file is malformed, or image and label files disagree.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        directory = find_mnist_dir(root)
    except MnistNotFoundError:
        if not download:
            raise
        from .download import download_mnist

        directory = download_mnist(root)
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
    X = images.reshape(images.shape[0], 28 * 28).astype(np.float32)
    X /= np.float32(255)  # in place: one float32 copy of the images, not two
    return X, labels
