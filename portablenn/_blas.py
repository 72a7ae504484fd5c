"""In-place GEMM ``c = beta * c + alpha * (a @ b)`` through the BLAS NumPy already loaded (ctypes), where found.

NumPy has no ``beta`` argument, so ``W = (1 - decay) W - x.T @ g`` costs a GEMM into a temporary plus
passes over ``W``. BLAS does it all in one call. This module finds NumPy's own BLAS (OpenBLAS in the PyPI wheels,
so its threads are the ones NumPy already uses) and exposes ``gemm_update``; where no BLAS is
found (MKL, Accelerate, a BLAS under other symbol names), its OpenBLAS build string contradicts the
integer width of the symbol found, or the arrays' layout does not fit, ``gemm_update`` returns False
and the caller falls back.
"""
import ctypes
import glob
import os

import numpy as np

__all__ = ["gemm_update", "available"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type) in the order tried: scipy-openblas ILP64 (NumPy wheels), other ILP64, LP64
_SYMBOLS = (("scipy_cblas_{}gemm64_", ctypes.c_int64), ("cblas_{}gemm64_", ctypes.c_int64),
            ("cblas_{}gemm", ctypes.c_int))
# OpenBLAS's build string, where exported: an ILP64 build (INTERFACE64) says USE64BITINT. Debian's
# libopenblas64 exports ILP64 functions under the plain cblas_ names, so the name alone does not tell.
_CONFIGS = ("scipy_openblas_get_config64_", "openblas_get_config64_", "scipy_openblas_get_config",
            "openblas_get_config")


def loaded_libraries(word):
    """Paths of the shared libraries this process has loaded whose file name contains ``word`` (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if ".so" in line]
    except OSError:
        return []
    return list(dict.fromkeys(p for p in paths if word in os.path.basename(p).lower()))


def _libraries():
    paths = loaded_libraries("blas")
    here = os.path.dirname(np.__file__)
    for pattern in (here + ".libs/*blas*", here + "/.dylibs/*blas*"):
        paths += glob.glob(pattern)
    return list(dict.fromkeys(paths))


def _config(lib):
    """The library's OpenBLAS build string; None where it exports none (not OpenBLAS), b"" if unreadable."""
    for name in _CONFIGS:
        try:
            fn = getattr(lib, name)
        except AttributeError:
            continue
        fn.restype, fn.argtypes = ctypes.c_char_p, []
        config = fn()
        return config if isinstance(config, bytes) else b""
    return None


def _int_width_agrees(lib, int_t):
    """False where the library's own config contradicts the integer width the symbol name implies."""
    config = _config(lib)
    if config is None:  # no OpenBLAS config to ask: trust the name (plain cblas_ names are LP64)
        return True
    if b"OpenBLAS" not in config:  # a config we cannot read: do not guess an ABI
        return False
    return (b"USE64BITINT" in config) == (int_t is ctypes.c_int64)


def _load():
    for path in _libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, int_t in _SYMBOLS:
            try:
                fns = {dt: getattr(lib, pattern.format(letter)) for dt, letter in
                       ((np.dtype(np.float32), "s"), (np.dtype(np.float64), "d"))}
            except AttributeError:
                continue
            if not _int_width_agrees(lib, int_t):
                break  # this library's functions would get the wrong integer width: try the next library
            for dt, fn in fns.items():
                real = ctypes.c_float if dt == np.float32 else ctypes.c_double
                fn.restype = None
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t, real,
                               ctypes.c_void_p, int_t, ctypes.c_void_p, int_t, real, ctypes.c_void_p, int_t]
            return fns
    return {}


_GEMM = None if os.environ.get("PORTABLENN_NO_BLAS") else _load()


def available():
    """Whether an in-place BLAS GEMM was found."""
    return bool(_GEMM)


def _operand(a):
    """(transpose flag, leading dimension) for a row-major BLAS operand, or None if not expressible."""
    size = a.itemsize
    rows, cols = a.shape
    s0, s1 = a.strides
    if (s1 == size or cols == 1) and s0 % size == 0 and s0 // size >= max(1, cols):
        return _NO_TRANS, s0 // size
    if (s0 == size or rows == 1) and s1 % size == 0 and s1 // size >= max(1, rows):
        return _TRANS, s1 // size
    return None


_from_buffer, _addressof = ctypes.c_char.from_buffer, ctypes.addressof


def _address(a, trans):
    """The data pointer. ``__array_interface__`` and ``.ctypes`` cost ~2.5 us a call (they build
    objects); a ctypes view of the buffer costs ~0.8 us but needs a writable contiguous array (a
    transposed operand's ``.T`` is one)."""
    view = a.T if trans == _TRANS else a
    if view.flags.c_contiguous and view.flags.writeable:
        return _addressof(_from_buffer(view))
    return a.__array_interface__["data"][0]


def gemm_update(c, a, b, alpha, beta=1.0):
    """In place ``c = beta * c + alpha * (a @ b)`` for 2-D float32/float64 arrays; False if it could not run."""
    gemm = _GEMM.get(c.dtype) if _GEMM else None
    if gemm is None or a.dtype != c.dtype or b.dtype != c.dtype or c.ndim != 2 or a.ndim != 2 or b.ndim != 2:
        return False
    (m, n), k = c.shape, a.shape[1]
    if (a.shape[0] != m or b.shape != (k, n) or not (m and n and k) or not c.flags.c_contiguous
            or not c.flags.writeable or np.may_share_memory(c, a) or np.may_share_memory(c, b)):
        return False
    op_a, op_b = _operand(a), _operand(b)
    if op_a is None or op_b is None:
        return False
    gemm(_ROW_MAJOR, op_a[0], op_b[0], m, n, k, alpha, _address(a, op_a[0]), op_a[1],
         _address(b, op_b[0]), op_b[1], beta, _addressof(_from_buffer(c)), n)
    return True
