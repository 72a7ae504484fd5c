"""The in-place BLAS update (``portablenn._blas.gemm_update``) against NumPy, over every operand layout.

The fast path hands raw pointers and strides to BLAS, so a wrong address or leading dimension would
silently train on the wrong numbers: each case compares ``c += alpha * (a @ b)`` with NumPy's.
"""
import os
import sys

import numpy as np
import pytest

blas = pytest.importorskip("portablenn._blas")
pytestmark = pytest.mark.skipif(not blas.available(), reason="NumPy's BLAS was not found")


def _operand(rng, shape, dtype, layout):
    """An array of ``shape`` laid out as ``layout``: C order, a transpose, a row/column slice, read-only."""
    rows, cols = shape
    if layout == "c":
        return rng.standard_normal(shape).astype(dtype)
    if layout == "transposed":
        return rng.standard_normal((cols, rows)).astype(dtype).T
    if layout == "row-slice":  # rows of a taller array: C-contiguous
        return rng.standard_normal((rows + 7, cols)).astype(dtype)[3:3 + rows]
    if layout == "column-slice":  # padded rows: leading dimension > cols
        return rng.standard_normal((rows, cols + 5)).astype(dtype)[:, 2:2 + cols]
    if layout == "transposed-slice":
        return rng.standard_normal((cols + 4, rows)).astype(dtype)[1:1 + cols].T
    if layout == "read-only":
        a = rng.standard_normal(shape).astype(dtype)
        a.flags.writeable = False
        return a
    raise ValueError(layout)


LAYOUTS = ["c", "transposed", "row-slice", "column-slice", "transposed-slice", "read-only"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 4, 6), (9, 1, 2), (5, 8, 1)])
def test_gemm_update_matches_numpy(dtype, layout_a, layout_b, shape):
    m, k, n = shape
    rng = np.random.default_rng(0)
    a, b = _operand(rng, (m, k), dtype, layout_a), _operand(rng, (k, n), dtype, layout_b)
    c = rng.standard_normal((m, n)).astype(dtype)
    beta = 0.75 if n % 2 else 1.0  # a decayed update (W (1 - lr l2) - x.T @ g) and a plain one
    expected = dtype(beta) * c + dtype(-0.5) * (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype)
    assert blas.gemm_update(c, a, b, -0.5, beta)
    np.testing.assert_allclose(c, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_gemm_update_declines_what_it_cannot_do():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    c = np.zeros((4, 2))
    assert not blas.gemm_update(c.astype(np.float32), a, b, 1.0)  # mixed dtypes
    assert not blas.gemm_update(np.zeros((2, 4)).T, a, b, 1.0)  # c not C-contiguous
    read_only = np.zeros((4, 2))
    read_only.flags.writeable = False
    assert not blas.gemm_update(read_only, a, b, 1.0)
    assert not blas.gemm_update(np.zeros((4, 3)), a, b, 1.0)  # shapes do not chain
    square = rng.standard_normal((3, 3))
    assert not blas.gemm_update(square, square, square, 1.0)  # c aliases an operand
    assert not blas.gemm_update(c, a[:, ::2], b[::2], 1.0)  # every other column: no leading dimension fits
    assert not blas.gemm_update(np.zeros((4, 2), np.int64), a.astype(np.int64), b.astype(np.int64), 1)
    np.testing.assert_array_equal(c, 0.0)  # nothing was written by a declined call


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_loaded_libraries_finds_numpys_blas_by_file_name():
    """The finder the CuPy backend also uses (for libcublas): NumPy's BLAS is loaded, so it is listed."""
    found = blas.loaded_libraries("blas")
    assert found and all("blas" in os.path.basename(p).lower() and os.path.exists(p) for p in found)
    assert blas.loaded_libraries("no-library-is-called-this") == []
