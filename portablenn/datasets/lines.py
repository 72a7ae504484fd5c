"""The classic 3x3 vertical/horizontal lines toy dataset."""

import numpy as np

VERTICAL = 0
HORIZONTAL = 1

# (line level, background level) per training variant.
_TRAIN_VARIANTS = ((1.0, 0.0), (0.9, 0.0), (1.0, 0.1), (0.8, 0.2))
# Background levels of the dimmed validation variants (line level 0.4).
_DIM_LINE = 0.4
_DIM_BACKGROUNDS = (0.0, 0.05, 0.1)
_NOISE_SD = 0.2


def _line_image(label, position, line, background):
    """Return one flattened 3x3 image of shape (9,) with a single line."""
    image = np.full((3, 3), background, dtype=np.float64)
    if label == VERTICAL:
        image[:, position] = line
    else:
        image[position, :] = line
    return image.reshape(9)


def _build(levels):
    """Stack images for every (label, position, (line, background)) triple."""
    images, labels = [], []
    for label in (VERTICAL, HORIZONTAL):
        for position in range(3):
            for line, background in levels:
                images.append(_line_image(label, position, line, background))
                labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.uint8)


def lines(seed=0):
    """Build the 3x3 lines dataset: vertical (0) versus horizontal (1).

    Each image is a 3x3 grid flattened row-major to 9 features
    (feature ``3*row + col``), float64 in [0, 1]. Labels are uint8:
    ``0`` = vertical line, ``1`` = horizontal line. Every split is ordered
    by label (all vertical first), then line position (column or row
    0, 1, 2), then variant.

    Parameters
    ----------
    seed : int, optional
        Seed for the noise of ``"val_noise"``; the other splits do not
        depend on it. Default 0.

    Returns
    -------
    dict
        ``{"train": (X, y), "val_dim": (X, y), "val_noise": (X, y)}`` with
        ``X`` of shape (n, 9), float64, and ``y`` of shape (n,), uint8;
        n is 24, 18 and 24 respectively.

    Notes
    -----
    Split sizes:

    ``"train"``: 24 images, 12 vertical + 12 horizontal
        = 2 orientations x 3 positions x 4 variants, where the variants
        are (line, background) = (1.0, 0.0), (0.9, 0.0), (1.0, 0.1),
        (0.8, 0.2).
    ``"val_dim"``: 18 images, 9 vertical + 9 horizontal
        = 2 orientations x 3 positions x 3 variants, line pixels 0.4 and
        background 0.0, 0.05 or 0.1.
    ``"val_noise"``: 24 images, 12 vertical + 12 horizontal: the training
        images plus Gaussian noise (sd 0.2) drawn from
        ``np.random.default_rng(seed)``, clipped to [0, 1].
    """
    X_train, y_train = _build(_TRAIN_VARIANTS)
    X_dim, y_dim = _build(tuple((_DIM_LINE, bg) for bg in _DIM_BACKGROUNDS))
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, _NOISE_SD, size=X_train.shape)
    X_noise = np.clip(X_train + noise, 0.0, 1.0)
    return {
        "train": (X_train, y_train),
        "val_dim": (X_dim, y_dim),
        "val_noise": (X_noise, y_train.copy()),
    }
