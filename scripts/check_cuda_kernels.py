"""Compile every CUDA kernel of portablenn's CuPy backend with NVRTC, on a machine with no GPU.

Not a test: a developer's check for the sessions that have no GPU. CuPy writes the CUDA source of an
``ElementwiseKernel``/``ReductionKernel`` only when it is called, which needs a device; this script
builds the same source with CuPy's own code generators (private functions, as in CuPy 13.6 and
14.2) and compiles it for sm_90 (H100/H200), float32 and float64, with the array
layouts CuPy launches them with. A typo or a type error in a kernel fails here instead of on the
first ``--device cuda`` run. What it cannot check: launches, results, cuBLAS and CUDA graphs (the
`gpu` tests do, on a GPU). Set up once, where pip can reach PyPI (no GPU or driver needed)::

    python3 -m venv /tmp/nvrtc && /tmp/nvrtc/bin/pip install numpy array-api-compat cupy-cuda13x \
        "nvidia-cuda-nvrtc==13.*" "nvidia-cuda-runtime==13.*"
    /tmp/nvrtc/bin/python scripts/check_cuda_kernels.py

(or ``cupy-cuda12x`` with ``nvidia-cuda-nvrtc-cu12`` and ``nvidia-cuda-runtime-cu12``, their lib
folders on ``LD_LIBRARY_PATH`` and ``CUDA_PATH`` set to the ``nvidia/cuda_runtime`` folder, for
``cuda_fp16.h``: CuPy 13 does not look in the pip packages by itself).

Exits 1 naming the kernel and NVRTC's first error if one does not compile.
"""
import argparse
import importlib
import os
import sys
import types

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import cupy  # noqa: E402
from cupy._core import _kernel, _reduction, _scalar, core  # noqa: E402
from cupy._core._carray import Indexer  # noqa: E402
from cupy.cuda import compiler  # noqa: E402

_NDARRAY, _INDEXER, _SCALAR = 1, 2, 3  # CuPy's _ArgKind


def _import_backend():
    """portablenn.backends.cupy_kernels, with a stand-in cuBLAS where the library is not installed (unused here)."""
    import cupy_backends.cuda.libs as libs
    try:
        importlib.import_module("cupy_backends.cuda.libs.cublas")  # ImportError where libcublas is missing
    except ImportError:  # CuPy 14 loads these modules lazily, by attribute: replace both ways in
        libs.cublas = sys.modules["cupy_backends.cuda.libs.cublas"] = types.ModuleType("cublas")
        libs.cublas.CUBLAS_OP_N, libs.cublas.CUBLAS_OP_T = 0, 1
        cupy.cublas = sys.modules["cupy.cublas"] = types.ModuleType("cupy.cublas")
    from portablenn.backends import cupy_kernels as backend_cupy
    return backend_cupy


def _array(dtype, ndim, contiguous=False):
    return _kernel._ArgInfo(_NDARRAY, cupy.ndarray, numpy.dtype(dtype), ndim, contiguous or ndim == 0, True)


def _scalar_arg(dtype):
    return _kernel._ArgInfo(_SCALAR, _scalar.CScalar, numpy.dtype(dtype), 0, True, True)


def _indexer(ndim):
    return _kernel._ArgInfo(_INDEXER, Indexer, None, ndim, True, True)


# How backends/cupy_kernels.py launches its kernels: parameters passed as host scalars, the dimensions of raw
# arrays (CuPy keeps their shape) and of 0-d arrays, and the dtypes of type placeholders other than T
_SCALARS = {"scale", "keep", "beta1", "beta2", "step_size", "eps_hat", "l2", "classes", "shuffled", "features",
            "batch"}
_NDIM = {"portablenn_xent_rows": {"x": 2, "labels": 1, "grad": 2, "stats": 2},
         "portablenn_minibatch": {"X": 2, "y": 1, "onehot": 2, "order": 1, "start": 0, "xb": 2, "yb": 1, "ob": 2},
         "portablenn_record_step": {"loss": 0, "wrong": 0, "losses": 1, "wrong_total": 0, "start": 0}}
_PLACEHOLDERS = {"I": "int64"}


def _elementwise_source(kernel, dtype, ndim, contiguous=False):
    """Source of ``kernel`` as launched: its non-raw arrays of ``ndim`` dimensions (after CuPy reduces
    dims), raw arrays of their own, scalars as scalars."""
    types_ = {"T": numpy.dtype(dtype), **{k: numpy.dtype(v) for k, v in _PLACEHOLDERS.items()}}
    infos, params, dims = [], kernel.params[:kernel.nargs], _NDIM.get(kernel.name, {})
    for p in params:
        kind = p.dtype if p.dtype is not None else types_[p.ctype]
        if p.name in _SCALARS:
            infos.append(_scalar_arg(kind))
        else:
            infos.append(_array(kind, dims[p.name] if p.raw or p.name in dims else ndim, contiguous))
    shaped = [p for p in params if not p.raw and p.name not in _SCALARS]
    index_ndim = 1 if not shaped else 0 if all(dims.get(p.name) == 0 for p in shaped) else ndim
    infos.append(_indexer(index_ndim))
    return _kernel._get_elementwise_kernel_code(tuple(infos), _kernel._TypeMap(tuple(types_.items())),
                                                kernel.params, kernel.operation, kernel.name, kernel.preamble)


def _reduction_source(kernel, dtype, in_ndim, out_ndim):
    """Source of ``kernel`` reducing ``in_ndim``-D inputs to an ``out_ndim``-D output (as ``_call`` builds it)."""
    nin, nout = len(kernel.in_params), len(kernel.out_params)
    params = (kernel.in_params + kernel.out_params
              + _kernel._get_param_info("CIndexer _in_ind, CIndexer _out_ind", False)
              + _kernel._get_param_info("int32 _block_stride", True))
    infos = (tuple(_array(dtype, in_ndim) for _ in range(nin)) + tuple(_array(dtype, out_ndim) for _ in range(nout))
             + (_indexer(in_ndim), _indexer(out_ndim),
                _kernel._ArgInfo(_SCALAR, _scalar.CScalar, numpy.dtype("int32"), 0, True, True)))
    types_ = _kernel._TypeMap((("T", numpy.dtype(dtype)), ("IndexT", numpy.dtype("int32"))))
    return _reduction._ReductionKernel_get_cached_function_code(
        nin, nout, params, infos, types_, kernel.name, 512, kernel.reduce_type or "T", kernel.identity,
        kernel.map_expr, kernel.reduce_expr, kernel.post_map_expr, kernel.preamble, kernel.options)


def compile_source(source, arch):
    """Compile as CuPy's ``compile_with_cache`` would (its headers and options); returns the cubin's size."""
    headers = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
    options = core.assemble_cupy_compiler_options(()) + (f"-arch=sm_{arch}", "--device-as-default-execution-space")
    program = compiler._NVRTCProgram(headers + source, "kern.cu", (), (), name_expressions=None, method="cubin")
    binary, _ = program.compile(options)
    return len(binary)


def kernels(module):
    """Every module-level CuPy kernel of ``module``, by variable name."""
    return {name: k for name, k in sorted(vars(module).items())
            if isinstance(k, (cupy.ElementwiseKernel, cupy.ReductionKernel))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="90", help="compute capability to compile for (default 90: H100/H200)")
    args = parser.parse_args(argv)
    print(f"CuPy {cupy.__version__}, NVRTC {'.'.join(map(str, cupy.cuda.nvrtc.getVersion()))}, sm_{args.arch}")
    found = kernels(_import_backend())
    if not found:
        print("no kernels found in portablenn.backends.cupy_kernels")
        return 1
    failed = 0
    for name, kernel in found.items():
        # elementwise: (dims, C-contiguous), the two ways CuPy's CArray indexes
        shapes = ([(2, 1), (1, 0)] if isinstance(kernel, cupy.ReductionKernel) else [(1, False), (2, False), (1, True)])
        for dtype in ("float32", "float64"):
            for shape in shapes:
                if isinstance(kernel, cupy.ReductionKernel):
                    source = _reduction_source(kernel, dtype, *shape)
                else:
                    source = _elementwise_source(kernel, dtype, *shape)
                try:
                    size = compile_source(source, args.arch)
                except compiler.CompileException as exc:
                    failed += 1
                    error = next((line for line in str(exc).splitlines() if "error" in line), str(exc))
                    print(f"FAIL {name} ({kernel.name}) {dtype} dims {shape}: {error.strip()}")
                    continue
                print(f"ok   {name} ({kernel.name}) {dtype} dims {shape}: {size} bytes of cubin")
    print(f"{len(found)} kernels, {failed} failed to compile")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
