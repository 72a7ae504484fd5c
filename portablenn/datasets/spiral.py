"""The CS231n two-dimensional spiral toy dataset."""

import numpy as np


def spiral(points_per_class=100, num_classes=3, seed=0):
    """Generate the CS231n "spiral" classification dataset.

    This reproduces, value for value, the generator from the CS231n
    "Putting it together: minimal neural network case study" notes when
    that code is preceded by ``np.random.seed(seed)``. A private
    ``np.random.RandomState(seed)`` is used instead, which yields the same
    legacy stream without touching NumPy's global random state.

    Parameters
    ----------
    points_per_class : int, optional
        Number of points ``N`` per class (spiral arm). Default 100.
    num_classes : int, optional
        Number of classes ``K``. Default 3.
    seed : int, optional
        Seed of the legacy Mersenne-Twister stream. Default 0.

    Returns
    -------
    X : numpy.ndarray, shape (N*K, 2), dtype float64
        Point coordinates; rows ``N*j .. N*(j+1)-1`` belong to class ``j``.
    y : numpy.ndarray, shape (N*K,), dtype uint8
        Class labels ``0 .. K-1`` (uint8, exactly as in the original code).
    """
    rng = np.random.RandomState(seed)
    N = int(points_per_class)
    K = int(num_classes)
    D = 2
    X = np.zeros((N * K, D))
    y = np.zeros(N * K, dtype="uint8")
    for j in range(K):
        ix = range(N * j, N * (j + 1))
        r = np.linspace(0.0, 1, N)
        t = np.linspace(j * 4, (j + 1) * 4, N) + rng.randn(N) * 0.2
        X[ix] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[ix] = j
    return X, y
