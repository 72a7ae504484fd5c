"""Host-side dataset loaders (pure NumPy): spiral, 3x3 lines and MNIST."""

from .lines import lines
from .mnist import DatasetError, MnistNotFoundError, mnist
from .spiral import spiral

__all__ = ["spiral", "lines", "mnist", "MnistNotFoundError", "DatasetError"]
