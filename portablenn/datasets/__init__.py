"""Host-side dataset loaders (pure NumPy): spiral, 3x3 lines, MNIST (and its download), CSV and NPZ files, and
`load` by the command line's names."""

from .download import DownloadError, download_mnist
from .files import load_csv, load_npy, load_npz, load_spec
from .lines import lines
from .mnist import DatasetError, MnistNotFoundError, mnist
from .registry import load
from .spiral import spiral

__all__ = ["spiral", "lines", "mnist", "MnistNotFoundError", "DatasetError", "DownloadError", "download_mnist",
           "load_csv", "load_npy", "load_npz", "load_spec", "load"]
