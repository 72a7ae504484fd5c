"""The in-place BLAS update (``portablenn._blas.gemm_update``) against NumPy, over every operand layout.

The fast path hands raw pointers and strides to BLAS, so a wrong address or leading dimension would
silently train on the wrong numbers: each case compares ``c += alpha * (a @ b)`` with NumPy's.
"""
import os
import sys

import numpy as np
import pytest

blas = pytest.importorskip("portablenn._blas")
# the fallback tests below simulate the library lookup, so they run wherever NumPy's BLAS is not found too
needs_blas = pytest.mark.skipif(not blas.available(), reason="NumPy's BLAS was not found")


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


@needs_blas
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


@needs_blas
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


@needs_blas
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_loaded_libraries_finds_numpys_blas_by_file_name():
    """The finder the CuPy backend also uses (for libcublas): NumPy's BLAS is loaded, so it is listed."""
    found = blas.loaded_libraries("blas")
    assert found and all("blas" in os.path.basename(p).lower() and os.path.exists(p) for p in found)
    assert blas.loaded_libraries("no-library-is-called-this") == []


# -- fallback: where NumPy's BLAS is not the wheel's OpenBLAS, gemm_update declines and the kernels fall back --
# Other NumPy builds (MKL, Accelerate, a system OpenBLAS) are simulated by replacing what ``_blas`` looks up:
# the library paths (``loaded_libraries``, ``glob``), the library loader (``ctypes.CDLL``), the symbols a
# library exports and the build string OpenBLAS reports. ``_load()`` is rerun on the simulation and its
# table installed as ``_GEMM``, as at import.

_WHEEL_CONFIG = b"OpenBLAS 0.3.31.188.0  USE64BITINT DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"
_LP64_CONFIG = b"OpenBLAS 0.3.26 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"


class _FakeFunction:
    """A C function of a simulated library: records its calls, returns ``result``."""

    def __init__(self, result=None):
        self.result, self.calls = result, []

    def __call__(self, *args):
        self.calls.append(args)
        return self.result


class _FakeLibrary:
    """A simulated shared library exporting exactly ``symbols`` ({name: return value})."""

    def __init__(self, symbols):
        self._functions = {name: _FakeFunction(result) for name, result in symbols.items()}

    def __getattr__(self, name):
        try:
            return self._functions[name]
        except KeyError:
            raise AttributeError(name) from None

    def called(self):
        return any(fn.calls for name, fn in self._functions.items() if "gemm" in name)


def _simulate(monkeypatch, libraries):
    """``_blas`` finds exactly ``libraries`` ({path: _FakeLibrary, or None for a file that will not load})."""
    import ctypes
    import types

    def cdll(path):
        if libraries.get(path) is None:
            raise OSError(f"{path}: cannot open shared object file")
        return libraries[path]

    fake_ctypes = types.ModuleType("ctypes")
    fake_ctypes.__dict__.update(vars(ctypes))
    fake_ctypes.CDLL = cdll
    monkeypatch.setattr(blas, "ctypes", fake_ctypes)  # ctypes itself stays untouched
    monkeypatch.setattr(blas, "loaded_libraries", lambda word: list(libraries))
    monkeypatch.setattr(blas, "glob", types.SimpleNamespace(glob=lambda pattern: []))
    monkeypatch.setattr(blas, "_GEMM", blas._load())


def _assert_falls_back(dtype=np.float32, shape=(784, 100, 100)):
    """gemm_update declines and writes nothing; NumpyKernels.matmul_update_ gives the generic kernels' result."""
    from portablenn.backends.numpy import NumpyKernels
    from portablenn.kernels import Kernels

    n_in, n_out, batch = shape
    rng = np.random.default_rng(2)
    a = rng.standard_normal((batch, n_in)).astype(dtype).T  # x.T, as Linear.backward passes it
    b = rng.standard_normal((batch, n_out)).astype(dtype)
    c = rng.standard_normal((n_in, n_out)).astype(dtype)
    assert not blas.available()
    untouched = c.copy()
    assert blas.gemm_update(c, a, b, -0.1, 0.99) is False
    np.testing.assert_array_equal(c, untouched)
    kernels = NumpyKernels(np)
    assert c.size >= kernels.blas_update_min  # the size at which the fast path would take BLAS
    for alpha, beta in ((-1.0, 1.0), (-0.1, 1.0 - 0.1 * 1e-4)):  # SGD as fit calls it, and with decay
        fast, generic = c.copy(), c.copy()
        kernels.matmul_update_(fast, a, b, alpha, beta)
        Kernels(np).matmul_update_(generic, a, b, alpha, beta)
        np.testing.assert_array_equal(fast, generic)
        expected = beta * c.astype(np.float64) + alpha * (a.astype(np.float64) @ b)
        np.testing.assert_allclose(fast, expected, rtol=1e-4, atol=1e-4)


def test_falls_back_when_no_blas_library_is_found(monkeypatch):
    """Nothing with "blas" in its name is loaded and numpy.libs has none (MKL's libmkl_rt, Accelerate)."""
    _simulate(monkeypatch, {})
    assert blas._libraries() == []
    assert blas._GEMM == {}
    _assert_falls_back(np.float32)
    _assert_falls_back(np.float64)


def test_falls_back_when_the_blas_library_does_not_load(monkeypatch):
    _simulate(monkeypatch, {"/gone/libopenblas.so.0": None, "/gone/libcblas.so.3": None})
    assert blas._GEMM == {}
    _assert_falls_back()


@pytest.mark.parametrize("symbols", [
    {},  # a library named *blas* with no CBLAS at all (e.g. a Fortran-only reference libblas.so.3)
    {"sgemm_": None, "dgemm_": None},  # Fortran BLAS names only
    {"scipy_cblas_sgemm": None, "scipy_cblas_dgemm": None,  # scipy-openblas32 (SciPy's wheel): other names
     "scipy_openblas_get_config": _LP64_CONFIG},
    {"cblas_sgemm$NEWLAPACK$ILP64": None, "cblas_dgemm$NEWLAPACK$ILP64": None},  # Accelerate's ILP64 names
    {"mkl_cblas_sgemm": None, "MKL_Get_Version": None},  # MKL-style prefixed names
    {"scipy_cblas_sgemm64_": None},  # the wheel's names, but single precision only
    {"cblas_sgemm": None, "openblas_get_config": _LP64_CONFIG},  # a system OpenBLAS without dgemm
], ids=["no-cblas", "fortran-only", "scipy-openblas32", "accelerate", "mkl-prefixed", "sgemm-only", "no-dgemm"])
def test_falls_back_when_the_gemm_symbols_are_missing(monkeypatch, symbols):
    library = _FakeLibrary(symbols)
    _simulate(monkeypatch, {"/usr/lib/libblas-like.so": library})
    assert blas._GEMM == {}
    _assert_falls_back(np.float32)
    _assert_falls_back(np.float64)
    assert not library.called()


@pytest.mark.parametrize("symbols", [
    # an ILP64 OpenBLAS exporting the plain LP64 names (Debian's libopenblas64): 32-bit ints would be garbage
    {"cblas_sgemm": None, "cblas_dgemm": None, "openblas_get_config": _WHEEL_CONFIG},
    # the wheel's ILP64 names on an LP64 build
    {"scipy_cblas_sgemm64_": None, "scipy_cblas_dgemm64_": None, "scipy_openblas_get_config64_": _LP64_CONFIG},
    # a config function that answers nothing (NULL) or not an OpenBLAS build string
    {"cblas_sgemm64_": None, "cblas_dgemm64_": None, "openblas_get_config64_": None},
    {"cblas_sgemm": None, "cblas_dgemm": None, "openblas_get_config": b"BLIS 1.0 int64"},
], ids=["ilp64-with-lp64-names", "lp64-with-ilp64-names", "null-config", "foreign-config"])
def test_falls_back_when_the_library_reports_an_unexpected_config(monkeypatch, symbols):
    library = _FakeLibrary(symbols)
    _simulate(monkeypatch, {"/usr/lib/x86_64-linux-gnu/libopenblas64.so.0": library})
    assert blas._GEMM == {}
    _assert_falls_back()
    assert not library.called()


@pytest.mark.parametrize("symbols, int_t", [
    ({"scipy_cblas_sgemm64_": None, "scipy_cblas_dgemm64_": None, "scipy_openblas_get_config64_": _WHEEL_CONFIG},
     "c_int64"),
    ({"cblas_sgemm": None, "cblas_dgemm": None, "openblas_get_config": _LP64_CONFIG}, "c_int"),
    ({"cblas_sgemm": None, "cblas_dgemm": None}, "c_int"),  # no config to ask (a reference CBLAS): LP64 names
], ids=["wheel", "system-lp64", "no-config"])
def test_the_simulation_loads_a_consistent_library(monkeypatch, symbols, int_t):
    """The control for the fallback tests: the same simulation with a consistent library is taken, so the
    declines above come from the missing symbols and the config, not from the simulation."""
    import ctypes

    library = _FakeLibrary(symbols)
    _simulate(monkeypatch, {"/gone/libmkl_rt.so": None, "/usr/lib/libblas-like.so": library})
    assert blas.available() and set(blas._GEMM) == {np.dtype(np.float32), np.dtype(np.float64)}
    assert blas._GEMM[np.dtype(np.float32)].argtypes[3] is getattr(ctypes, int_t)
    a, b, c = np.ones((6, 4), np.float32).T, np.ones((6, 3), np.float32), np.zeros((4, 3), np.float32)
    assert blas.gemm_update(c, a, b, -1.0, 0.5)
    (call,) = blas._GEMM[np.dtype(np.float32)].calls
    assert call[:7] == (blas._ROW_MAJOR, blas._TRANS, blas._NO_TRANS, 4, 3, 6, -1.0)
    assert (call[8], call[10], call[11], call[13]) == (4, 3, 0.5, 3)  # lda, ldb, beta, ldc


def test_a_consistent_library_after_an_inconsistent_one_is_taken(monkeypatch):
    bad = _FakeLibrary({"cblas_sgemm": None, "cblas_dgemm": None, "openblas_get_config": _WHEEL_CONFIG})
    good = _FakeLibrary({"cblas_sgemm64_": None, "cblas_dgemm64_": None, "openblas_get_config64_": _WHEEL_CONFIG})
    _simulate(monkeypatch, {"/a/libopenblas64.so.0": bad, "/b/libopenblas64_.so.0": good})
    assert blas._GEMM[np.dtype(np.float64)] is good.cblas_dgemm64_


def test_a_real_library_with_other_names_is_declined(monkeypatch):
    """SciPy's wheel bundles an LP64 OpenBLAS whose CBLAS is named scipy_cblas_sgemm: loaded for real, declined."""
    scipy = pytest.importorskip("scipy")
    import glob

    paths = glob.glob(os.path.dirname(scipy.__file__) + ".libs/*openblas*")
    if not paths:
        pytest.skip("this SciPy bundles no OpenBLAS")
    monkeypatch.setattr(blas, "_libraries", lambda: paths)
    monkeypatch.setattr(blas, "_GEMM", blas._load())
    _assert_falls_back()


def test_portablenn_no_blas_disables_it(tmp_path):
    """PORTABLENN_NO_BLAS=1 at import: no BLAS table, the fallback runs (a fresh interpreter)."""
    import subprocess

    code = ("import numpy as np; from portablenn import _blas; from portablenn.backends.numpy import NumpyKernels\n"
            "assert not _blas.available()\n"
            "c = np.ones((300, 200)); a = np.ones((5, 300)).T; b = np.ones((5, 200))\n"
            "assert not _blas.gemm_update(c, a, b, -1.0)\n"
            "NumpyKernels(np).matmul_update_(c, a, b, -1.0, 0.5); assert (c == -4.5).all()\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PORTABLENN_NO_BLAS="1", PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, timeout=120)
