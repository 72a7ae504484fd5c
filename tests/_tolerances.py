"""The one place where test tolerances live: keyed by dtype name, used by every test module."""
import numpy as np

# float64 results of the same computation on different backends differ by a few ulps per operation;
# over the short horizons the tests use they stay far below 1e-10 relative.
_RTOL = {
    "float64": 1e-10,
    "float32": float(np.finfo(np.float32).eps) * 100,  # ~1.2e-5
}

# Central finite differences in float64 with step FD_STEP: truncation ~h^2, rounding ~eps/h.
FD_STEP = 1e-6
FD_RTOL = 1e-6


def _name(dtype):
    return np.dtype(str(dtype).split(".")[-1]).name


def rtol_for(dtype):
    """Relative tolerance for comparing two backends' results in ``dtype`` ("float32"/"float64")."""
    return _RTOL[_name(dtype)]


def atol_for(dtype, scale=1.0):
    """Absolute tolerance for values of magnitude ``scale`` in ``dtype``."""
    return rtol_for(dtype) * max(float(scale), 1e-30)


def assert_close(actual, desired, dtype, *, factor=1.0, scale=None, err_msg=""):
    """``actual ~= desired`` to the dtype's tolerance times ``factor``.

    The absolute tolerance is the relative one times ``scale`` (default ``max|desired|``), so
    entries near zero of an array of O(1) values are judged against the array's magnitude.
    """
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    rtol = rtol_for(dtype) * factor
    if scale is None:
        scale = float(np.max(np.abs(desired))) if desired.size else 1.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * max(scale, 1e-30), err_msg=err_msg)


def assert_state_close(actual, desired, dtype, *, factor=1.0, err_msg=""):
    """Two state dicts hold the same keys, shapes and (within tolerance) values."""
    assert sorted(actual) == sorted(desired), f"{err_msg}: keys {sorted(actual)} != {sorted(desired)}"
    for key in desired:
        assert np.shape(actual[key]) == np.shape(desired[key]), f"{err_msg}: {key} shape"
        assert_close(actual[key], desired[key], dtype, factor=factor, err_msg=f"{err_msg} [{key}]")
