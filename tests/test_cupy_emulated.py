"""The host-side logic of the CuPy CUDA-graph path, run here without a GPU against a stand-in CuPy.

``backends.cupy_kernels`` is imported with fake ``cupy`` modules: NumPy arrays that expose ``.data.ptr``,
a column-major ``cublasSgemm_v2``/``cublasDgemm_v2`` emulated from raw addresses (scalars by
address), CuPy 14.2's cuBLAS module as its source has it (its wrappers refuse a recording stream,
``CUBLAS_TF32_TENSOR_OP_MATH`` is not there), and streams/graphs that log what they are asked to do.
Both were bugs here that only a GPU run would otherwise have shown. This checks
what a GPU would otherwise be the first to check: the row-major to column-major operand mapping
of the private-handle GEMM, the warm-up / record-once / replay / fall-back sequence of
``_GraphStep``, and the math of the fused kernels: their CUDA C operations are translated to NumPy
statement by statement, or, for a kernel over raw arrays (loops, indices), compiled as written for
the host with a C++ compiler (``scripts/check_cuda_kernels.py`` compiles the same strings with NVRTC).
The real thing is tested by the ``gpu`` tests; these skip where CuPy is usable.
"""
import ctypes
import hashlib
import importlib
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
import types
import warnings

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import portablenn
from portablenn import backend
from portablenn.kernels import Kernels
from portablenn.losses import SoftmaxCrossEntropy


class _DeviceArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.ptr``."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


def _column_major(address, rows, cols, ld, dtype):
    """The column-major ``(rows, cols)`` matrix with leading dimension ``ld`` at ``address``."""
    count = ld * (cols - 1) + rows
    flat = np.ctypeslib.as_array((np.ctypeslib.as_ctypes_type(dtype) * count).from_address(address))
    return as_strided(flat, shape=(rows, cols), strides=(flat.itemsize, ld * flat.itemsize))


def _gemm(dtype):
    """``cublasSgemm_v2``/``cublasDgemm_v2`` (column-major, scalars by address), returning cuBLAS's status."""
    def gemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        scalar = np.ctypeslib.as_ctypes_type(dtype)
        alpha, beta = scalar.from_address(alpha).value, scalar.from_address(beta).value
        op_a = _column_major(a, *((m, k) if transa == 0 else (k, m)), lda, dtype)
        op_b = _column_major(b, *((k, n) if transb == 0 else (n, k)), ldb, dtype)
        out = _column_major(c, m, n, ldc, dtype)
        out[...] = alpha * ((op_a if transa == 0 else op_a.T) @ (op_b if transb == 0 else op_b.T)) + beta * out
        return 0
    return gemm


def _refused_while_recording(log, gemm):
    """CuPy 14.2's wrapper: ``cublasSetStream`` to the current stream first, refused while it records."""
    def wrapper(handle, *args):
        if log.current[-1].capturing:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        return gemm(handle, *args)
    return wrapper


_C_FUNCTIONS = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "where": np.where}


def _names(params):
    """``"T x, T top"`` -> ``["x", "top"]``."""
    return [p.split()[-1] for p in params.split(",")]


def _python(statement):
    """One statement of a kernel's CUDA C as Python over whole arrays.

    Understands only the C these kernels use: casts to ``T``, declarations of ``T`` locals,
    assignments (also ``-=`` and the like) and ``cond ? a : b``. Anything else is left as it is and
    fails to compile, so a new kernel gets translated or this extended, never silently skipped.
    """
    statement = re.sub(r"\(T\)\s*", "", statement.strip())
    statement = re.sub(r"^T\s+(?=\w+\s*=)", "", statement)
    ternary = re.fullmatch(r"(\w+)\s*=\s*([^?]+)\?([^:]+):(.+)", statement)
    if ternary:
        statement = "{} = where({}, {}, {})".format(*(part.strip() for part in ternary.groups()))
    return compile(statement, "<kernel>", "exec")


class _ElementwiseKernel:
    """``cupy.ElementwiseKernel`` run with NumPy: outputs are allocated, or updated when passed."""

    def __init__(self, in_params, out_params, operation, name, **kwargs):
        self.inputs, self.outputs = _names(in_params), _names(out_params)
        self.code = [_python(s) for s in operation.split(";") if s.strip()]

    def __call__(self, *args):
        inputs = args[:len(self.inputs)]
        dtype = next(a.dtype for a in inputs if isinstance(a, np.ndarray))
        shape = np.broadcast_shapes(*(np.shape(a) for a in inputs))
        outputs = list(args[len(self.inputs):]) or [np.empty(shape, dtype).view(_DeviceArray) for _ in self.outputs]
        scope = dict(_C_FUNCTIONS, **dict(zip(self.inputs, inputs)),
                     **{n: np.array(o, copy=True) for n, o in zip(self.outputs, outputs)})
        for code in self.code:
            exec(code, {"__builtins__": {}}, scope)
        for name, out in zip(self.outputs, outputs):
            out[...] = scope[name]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


_CXX = shutil.which("g++") or shutil.which("c++")
_C_TYPES = {np.dtype(np.float32): ("float", ctypes.c_float), np.dtype(np.float64): ("double", ctypes.c_double),
            np.dtype(np.int32): ("int32_t", ctypes.c_int32), np.dtype(np.int64): ("int64_t", ctypes.c_int64)}
_HOST_SOURCE = """#include <cmath>
#include <cstddef>
#include <cstdint>
using std::exp; using std::log; using std::sqrt;
{typedefs}
struct Indexer {{ ptrdiff_t n; ptrdiff_t size() const {{ return n; }} }};
extern "C" void kernel(ptrdiff_t size, {params}) {{
  const Indexer _ind{{size}};
  for (ptrdiff_t i = 0; i < size; ++i) {{
{operation}
  }}
}}
"""


class _HostElementwiseKernel:
    """``cupy.ElementwiseKernel`` over raw arrays, its C operation compiled as written for the host.

    CuPy runs the operation once per index ``i`` with raw arrays indexed flat (for C-contiguous
    arrays, a plain pointer offset) and scalars by value; here it is the body of a C++ loop over
    ``i`` with pointers (``const`` for inputs, as CuPy's ``const CArray``) and ``_ind.size()``.
    Only what these kernels use: raw C-contiguous arrays, scalars and 0-d arrays (read by value).
    """

    _built = {}  # source -> compiled function

    def __init__(self, in_params, out_params, operation, name, **kwargs):
        self.params = [(p.split(), i < len(in_params.split(","))) for i, p in
                       enumerate(f"{in_params}, {out_params}".split(","))]
        self.operation, self.name = operation, name

    def __call__(self, *args, size=None):
        if _CXX is None:
            pytest.skip("no C++ compiler to run a raw CUDA kernel's C on the host")
        if size is None:  # as CuPy: the broadcast size of the non-raw arguments (0-d here: one thread)
            size = int(np.prod(np.broadcast_shapes(*(np.shape(a) for (w, _), a in zip(self.params, args)
                                                     if "raw" not in w))))
        types_, decls, argtypes, values = {}, [], [ctypes.c_ssize_t], [size]
        for (words, is_input), arg in zip(self.params, args):
            *kind, type_, name = words
            if "raw" in kind:
                assert isinstance(arg, np.ndarray) and arg.flags.c_contiguous, f"{name}: raw arrays are contiguous here"
                dtype = arg.dtype
                decls.append(f"{'const ' if is_input else ''}{type_} *{name}")
                argtypes.append(ctypes.c_void_p)
                values.append(arg.__array_interface__["data"][0])
            else:
                assert np.ndim(arg) == 0, f"{name}: non-raw parameters are scalars here"
                dtype = np.dtype(type_) if len(type_) > 1 else np.asarray(arg).dtype
                decls.append(f"{_C_TYPES[dtype][0] if len(type_) > 1 else type_} {name}")
                argtypes.append(_C_TYPES[dtype][1])
                values.append(np.asarray(arg).item())
            if len(type_) == 1:
                assert types_.setdefault(type_, dtype) == dtype, f"{type_} bound to two dtypes"
        source = _HOST_SOURCE.format(typedefs="\n".join(f"typedef {_C_TYPES[d][0]} {t};" for t, d in types_.items()),
                                     params=", ".join(decls), operation=self.operation)
        function = self._built.get(source) or self._build(source)
        function.argtypes = argtypes
        function(*values)

    @classmethod
    def _build(cls, source):
        with tempfile.TemporaryDirectory(prefix="portablenn-kernel-") as folder:  # a loaded library outlives its file
            stem = f"{folder}/{hashlib.sha1(source.encode()).hexdigest()[:12]}"
            with open(stem + ".cpp", "w") as f:
                f.write(source)
            done = subprocess.run([_CXX, "-O2", "-std=c++17", "-shared", "-fPIC", "-o", stem + ".so", stem + ".cpp"],
                                  capture_output=True, text=True)
            assert done.returncode == 0, f"the kernel's C does not compile on the host:\n{done.stderr}"
            cls._built[source] = ctypes.CDLL(stem + ".so").kernel
        return cls._built[source]


def _elementwise_kernel(in_params, out_params, operation, name, **kwargs):
    """The stand-in ``cupy.ElementwiseKernel``: translated to NumPy, or compiled for the host if over raw arrays."""
    raw = any("raw" in p.split()[:-2] for p in f"{in_params}, {out_params}".split(","))
    return (_HostElementwiseKernel if raw else _ElementwiseKernel)(in_params, out_params, operation, name, **kwargs)


class _ReductionKernel:
    """``cupy.ReductionKernel`` run with NumPy, for the sums these kernels are (``a + b`` from 0)."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name, **kwargs):
        (output,) = _names(out_params)
        assert reduce_expr.replace(" ", "") == "a+b" and identity == "0", "only sums are emulated"
        assert post_map_expr.replace(" ", "") == f"{output}=a", "only a plain post-map is emulated"
        self.inputs, self.map = _names(in_params), compile(map_expr, "<kernel>", "eval")

    def __call__(self, *inputs, axis=None, keepdims=False):
        shape = np.broadcast_shapes(*(np.shape(a) for a in inputs))
        mapped = eval(self.map, {"__builtins__": {}}, dict(_C_FUNCTIONS, **dict(zip(self.inputs, inputs))))
        total = np.sum(np.broadcast_to(mapped, shape), axis=axis, keepdims=keepdims, dtype=inputs[0].dtype)
        return np.asarray(total).view(_DeviceArray)


def _cupy_cublas_gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """``cupy.cublas.gemm``: ``out = alpha op(a) @ op(b) + beta out``."""
    a, b = (a.T if transa == "T" else a), (b.T if transb == "T" else b)
    out[...] = alpha * (np.asarray(a) @ np.asarray(b)) + beta * np.asarray(out)
    return out


class _Log:
    def __init__(self):
        self.events = []
        self.current = []
        self.streams = {}  # by pointer


class _Stream:
    def __init__(self, log, non_blocking=False):
        self.log, self.ptr, self.capturing = log, id(self), False
        log.streams[self.ptr] = self

    def __enter__(self):
        self.log.current.append(self)
        return self

    def __exit__(self, *exc):
        self.log.current.pop()

    def record(self, event=None):
        return ("event", self.ptr)

    def wait_event(self, event):
        self.log.events.append("wait")

    def begin_capture(self, mode=None):
        self.capturing = True

    def end_capture(self):
        assert self.capturing
        self.capturing = False
        log = self.log

        class Graph:
            def launch(self, stream=None):
                log.events.append("launch")
        return Graph()


@pytest.fixture
def emulated(monkeypatch):
    """``(backends.cupy_kernels, log)`` imported against the stand-in CuPy; sys.modules is restored afterwards."""
    if backend.probe("cuda")[0] is not None:
        pytest.skip("a real GPU is here: the gpu tests check the real thing")
    log = _Log()
    log.current.append(_Stream(log))
    cupy = types.ModuleType("cupy")
    cupy.ElementwiseKernel, cupy.ReductionKernel = _elementwise_kernel, _ReductionKernel
    cupy.empty = lambda shape, dtype: np.empty(shape, dtype).view(_DeviceArray)
    cupy.maximum, cupy.broadcast_to, cupy.matmul = np.maximum, np.broadcast_to, np.matmul
    cupy.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(_DeviceArray)
    cupy.cublas = types.ModuleType("cupy.cublas")
    cupy.cublas.gemm = _cupy_cublas_gemm
    cupy.cuda = types.SimpleNamespace(
        MemoryPool=lambda: types.SimpleNamespace(
            malloc=lambda size: types.SimpleNamespace(ptr=4096, device_id=0)),
        Stream=lambda non_blocking=False: _Stream(log, non_blocking),
        get_current_stream=lambda: log.current[-1],
        using_allocator=lambda malloc: _Allocating(log, malloc),
        MemoryPointer=lambda memory, offset: types.SimpleNamespace(memory=memory, offset=offset),
        UnownedMemory=lambda ptr, size, owner, device_id: types.SimpleNamespace(ptr=ptr, owner=owner))
    api = types.ModuleType("cupy_backends.cuda.libs.cublas")
    # the names CuPy 14.2's module has (no CUBLAS_TF32_TENSOR_OP_MATH), refusing what it refuses
    api.CUBLAS_OP_N, api.CUBLAS_OP_T, api.CUBLAS_POINTER_MODE_HOST = 0, 1, 0
    api.create, api.destroy = (lambda: 7), (lambda handle: None)

    def set_stream(handle, stream):
        if log.streams[stream].capturing:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        log.events.append(("setStream", handle, stream))
    api.setStream = set_stream
    api.setPointerMode = lambda handle, mode: None
    api.setMathMode = lambda handle, mode: log.events.append(("setMathMode", handle, mode))
    api.sgemm, api.dgemm = (_refused_while_recording(log, _gemm(t)) for t in (np.float32, np.float64))
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = api
    for name, module in {"cupy": cupy, "cupy.cublas": cupy.cublas, "cupy_backends": types.ModuleType("x"),
                         "cupy_backends.cuda": types.ModuleType("x"), "cupy_backends.cuda.libs": libs,
                         "cupy_backends.cuda.libs.cublas": api}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "portablenn.backends.cupy_kernels", None)  # undone: removed again afterwards
    del sys.modules["portablenn.backends.cupy_kernels"]
    monkeypatch.setattr(portablenn.backends, "cupy_kernels", None, raising=False)
    module = importlib.import_module("portablenn.backends.cupy_kernels")
    monkeypatch.setattr(module, "_tf32", lambda: False)
    monkeypatch.setattr(module, "_cublas_gemm", lambda: {"f": _gemm(np.float32), "d": _gemm(np.float64)})
    return module, log


class _Allocating:
    def __init__(self, log, malloc):
        self.log, self.malloc = log, malloc

    def __enter__(self):
        self.log.events.append("private pool")

    def __exit__(self, *exc):
        self.log.events.append("default pool")


def _kernels(module):
    import array_api_compat.numpy as xp

    kernels = module.CupyKernels(xp)
    kernels._private.handle = 7
    return kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", [(5, 3, 4), (1, 7, 2), (6, 1, 3), (4, 4, 1)])
def test_private_handle_gemm_matches_numpy_for_every_layout(emulated, dtype, m, n, k):
    kernels = _kernels(emulated[0])
    rng = np.random.default_rng(0)
    for transposed_a, transposed_b in itertools.product([False, True], repeat=2):
        a = rng.standard_normal((k, m) if transposed_a else (m, k)).astype(dtype).view(_DeviceArray)
        b = rng.standard_normal((n, k) if transposed_b else (k, n)).astype(dtype).view(_DeviceArray)
        a, b = (a.T if transposed_a else a), (b.T if transposed_b else b)
        c = rng.standard_normal((m, n)).astype(dtype).view(_DeviceArray)
        expected = 0.5 * np.asarray(c) - 2.0 * (np.asarray(a) @ np.asarray(b))
        kernels.matmul_update_(c, a, b, -2.0, 0.5)
        np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kernels.matmul(a, b), np.asarray(a) @ np.asarray(b), rtol=1e-5, atol=1e-6)


def test_private_handle_gemm_reads_minibatch_views(emulated):
    kernels = _kernels(emulated[0])
    rng = np.random.default_rng(1)
    X = rng.standard_normal((10, 6)).astype(np.float32).view(_DeviceArray)
    W = rng.standard_normal((6, 3)).astype(np.float32).view(_DeviceArray)
    np.testing.assert_allclose(kernels.linear(X[2:7], W, None), np.asarray(X[2:7]) @ np.asarray(W), rtol=1e-5)
    np.testing.assert_allclose(kernels.matmul(X[2:7, :4], W[:4]), np.asarray(X[2:7, :4]) @ np.asarray(W[:4]),
                               rtol=1e-5)


def test_graph_step_warms_up_records_once_then_replays(emulated):
    module, log = emulated
    kernels = _kernels(module)
    kernels._private.handle = None
    seen = []

    def step():
        stream = log.current[-1]
        seen.append((kernels._handle, stream.capturing))

    run = kernels.capture(step)
    for _ in range(4):
        run()
    # call 1 runs on the private handle, call 2 is recorded on it (not executed), then only launches
    assert seen == [(7, False), (7, True)]
    assert log.events.count("launch") == 3 and run.graph is not None
    assert log.events.count("private pool") == 2 == log.events.count("default pool")
    assert kernels._handle is None  # CuPy's own handle again outside the recorded step


def test_graph_step_goes_on_eagerly_when_recording_fails(emulated, monkeypatch):
    module, log = emulated
    kernels = _kernels(module)
    kernels._private.handle = None
    calls, destroyed = [], []
    monkeypatch.setattr(sys.modules["cupy_backends.cuda.libs.cublas"], "destroy", destroyed.append)

    def step():
        calls.append((log.current[-1].capturing, kernels._handle))
        if log.current[-1].capturing:
            raise RuntimeError("operation not permitted when stream is capturing")

    run = kernels.capture(step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            run()
    assert [str(w.message) for w in caught] == [
        "recording the training step as a CUDA graph failed (RuntimeError: operation not permitted when stream "
        "is capturing); training goes on without one"]
    # warm-up, the refused recording, then every call eagerly: each of the 4 steps ran exactly once, the eager
    # ones on CuPy's own cuBLAS handle (the private one is destroyed at the failure, never used after it)
    assert calls == [(False, 7), (True, 7), (False, None), (False, None), (False, None)] and destroyed == [7]
    assert run.graph is None and "launch" not in log.events and not log.current[-1].capturing


def test_arrays_from_the_private_pool_hold_it(emulated):
    module, _ = emulated
    run = _kernels(module).capture(lambda: None)
    pointer = run._malloc(256)
    assert pointer.memory.owner[0] is run.pool  # the pool outlives the graph while this array lives


def test_private_handle_is_per_thread(emulated):
    """One Device's kernels serve every thread: a step being recorded in one thread must not send
    another thread's GEMMs to its handle (bound to its own stream)."""
    import threading

    kernels = _kernels(emulated[0])
    seen = []
    thread = threading.Thread(target=lambda: seen.append(kernels._handle))
    thread.start()
    thread.join()
    assert kernels._handle == 7 and seen == [None]


def _device(a):
    return np.asarray(a).view(_DeviceArray)


@pytest.mark.parametrize("classes", [5, 300])  # one thread per row up to 256 classes, seven kernels beyond
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_softmax_xent_computes_what_the_loss_defines(emulated, dtype, classes):
    """The fused softmax cross-entropy (its C, run on the host) against the loss object's own code."""
    import array_api_compat.numpy as xp

    fused, generic = emulated[0].CupyKernels(xp), Kernels(xp)
    rng = np.random.default_rng(3)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    logits = (20 * rng.standard_normal((9, classes))).astype(dtype)
    logits[0] += 1000  # the row maximum keeps exp finite
    logits[2, 1:] = logits[2, 0] = logits[2].max()  # a tie: the first maximal logit is the prediction
    labels = rng.integers(1, classes, 9)
    labels[1] = np.argmin(logits[1])  # at least one wrong prediction
    labels[2] = 0  # right only if ties go to the first maximal logit
    labels[3] = np.argmax(logits[3])  # and one right
    onehot = np.eye(classes, dtype=dtype)[labels]
    grad, loss, wrong = fused.softmax_xent(_device(logits), _device(labels), _device(onehot), 0.25)
    expected = SoftmaxCrossEntropy().value_and_grad(xp, logits.copy(), (labels, onehot), 0.25)  # the definition
    assert generic.fused_loss(SoftmaxCrossEntropy()) is None
    assert grad.shape == (9, classes) and grad.dtype == dtype and loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(grad, expected[0], **tol)
    np.testing.assert_allclose(loss, expected[1], **tol)
    assert float(wrong) == float(expected[2]) >= 1


@pytest.mark.parametrize("shared", [True, False], ids=["shared-targets", "own-targets"])
@pytest.mark.parametrize("classes", [5, 300])  # one thread per row up to 256 classes, the kernels per element beyond
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_stacked_softmax_xent_computes_what_the_loss_defines(emulated, dtype, classes, shared):
    """A stack's fused softmax cross-entropy, ``(M, batch, classes)`` logits, against the loss object's own code
    over the member axis: the gradient, each member's loss sum and wrong rows (ties to the first maximum)."""
    import array_api_compat.numpy as xp

    fused = emulated[0].CupyKernels(xp)
    rng = np.random.default_rng(4)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    logits = (20 * rng.standard_normal((3, 7, classes))).astype(dtype)
    logits[1, 0] += 1000  # the row maximum keeps exp finite
    logits[2, 2, 1:] = logits[2, 2, 0] = logits[2, 2].max()  # a tie: the first maximal logit is the prediction
    labels = rng.integers(0, classes, 7 if shared else (3, 7))
    onehot = np.eye(classes, dtype=dtype)[labels]
    twin = fused.fused_loss(SoftmaxCrossEntropy(), stacked=True)
    grad, loss, wrong = twin(xp, _device(logits), (_device(labels), _device(onehot)), 0.25)
    expected = SoftmaxCrossEntropy().value_and_grad(xp, logits.copy(), (labels, onehot), 0.25)  # the definition
    assert grad.shape == (3, 7, classes) and grad.dtype == dtype and loss.shape == (3,) and loss.dtype == dtype
    np.testing.assert_allclose(grad, expected[0], **tol)
    np.testing.assert_allclose(loss, expected[1], **tol)
    np.testing.assert_array_equal(wrong, expected[2])
    assert wrong.dtype == dtype and 0 < wrong.sum() < 21


@pytest.mark.parametrize("features", [1, 3])  # fewer than the classes: the one-hot row is a loop
@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recorded_step_bookkeeping_computes_what_the_generic_kernels_define(emulated, dtype, shuffled, features):
    """The minibatch gather and the step record of a CUDA-graph step (their C, run on the host) against
    ``Kernels``: the same rows, labels and one-hot rows; the loss at the step's place, the count, the counter."""
    import array_api_compat.numpy as xp

    fused, generic = emulated[0].CupyKernels(xp), Kernels(xp)
    rng = np.random.default_rng(8)
    n, classes, batch = 23, 4, 5
    X = rng.standard_normal((n, features)).astype(dtype)
    y = rng.integers(0, classes, n)
    onehot = np.eye(classes, dtype=dtype)[y]
    order = rng.permutation(n) if shuffled else None
    offsets, starts = np.arange(batch), np.arange(n // batch) * batch
    state = {name: (np.zeros(n // batch, dtype), np.zeros((), dtype), np.zeros((), np.int64)) for name in "fg"}
    for step in range(n // batch):
        for name, kernels in (("f", fused), ("g", generic)):
            losses, wrong, start = state[name]
            args = [_device(a) for a in (X, y, onehot)] + [None if order is None else _device(order)]
            got = kernels.minibatch(*args, _device(start) if name == "f" else start, _device(offsets))
            rows = (order[step * batch:][:batch] if shuffled else np.arange(step * batch, step * batch + batch))
            for part, whole in zip(got, (X, y, onehot)):
                np.testing.assert_array_equal(part, whole[rows])
            assert got[1].dtype == y.dtype and got[0].dtype == got[2].dtype == dtype
            loss, count = np.asarray(10.0 * step + 1, dtype), np.asarray(step % 3, dtype)
            if name == "f":
                views = [_device(a) for a in state[name]]
                kernels.record_step(*views, _device(starts), loss, count, batch)
            else:
                kernels.record_step(losses, wrong, start, starts, loss, count, batch)
    for a, b in zip(state["f"], state["g"]):
        np.testing.assert_array_equal(a, b)
    assert int(state["f"][2]) == (n // batch) * batch and float(state["f"][1]) == sum(s % 3 for s in range(n // batch))
    np.testing.assert_array_equal(state["f"][0], 10.0 * np.arange(n // batch) + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_kernels_compute_what_the_generic_kernels_define(emulated, dtype):
    """Each other fused CUDA kernel (its C operation, translated) against ``Kernels``, the definition."""
    import array_api_compat.numpy as xp

    fused, generic = emulated[0].CupyKernels(xp), Kernels(xp)
    rng = np.random.default_rng(3)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    out, upstream = np.maximum(rng.standard_normal((6, 4)), 0).astype(dtype), rng.standard_normal((6, 4)).astype(dtype)
    np.testing.assert_array_equal(fused.relu_backward(_device(upstream), _device(out)),
                                  generic.relu_backward(upstream, out))

    for lr, decay in ((1.0, 0.0), (0.5, 0.0), (1.0, 0.01), (0.3, 0.01)):
        param, step = rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
        updated, reference = _device(param.copy()), param.copy()
        fused.sgd_(updated, _device(step), lr, decay)
        generic.sgd_(reference, step, lr, decay)
        np.testing.assert_allclose(updated, reference, **tol)

    for l2 in (0.0, 0.1):
        state = [rng.standard_normal((4, 3)).astype(dtype) for _ in range(3)]
        state[2] = np.abs(state[2])  # v >= 0
        grad_w = rng.standard_normal((4, 3)).astype(dtype)
        mine, theirs = [_device(a.copy()) for a in state], [a.copy() for a in state]
        for _ in range(3):  # buffers carry over between steps
            fused.adam_(*mine, _device(grad_w), 0.9, 0.999, 1e-3, 1e-8, l2)
            generic.adam_(*theirs, grad_w, 0.9, 0.999, 1e-3, 1e-8, l2)
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a, b, **tol)


def test_eager_weight_update_goes_through_cublas_gemm(emulated):
    """Outside a recorded step the update is ``cupy.cublas.gemm`` on a transposed minibatch view."""
    import array_api_compat.numpy as xp

    kernels = emulated[0].CupyKernels(xp)
    rng = np.random.default_rng(4)
    X, g = rng.standard_normal((10, 6)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    W = rng.standard_normal((6, 3)).astype(np.float32)
    updated = _device(W.copy())
    kernels.matmul_update_(updated, _device(X)[3:7].T, _device(g), -0.5, 0.9)
    np.testing.assert_allclose(updated, 0.9 * W - 0.5 * (X[3:7].T @ g), rtol=1e-5, atol=1e-6)


def test_kernel_translation_refuses_c_it_does_not_understand():
    """A kernel in C the emulation cannot translate fails loudly instead of being skipped."""
    with pytest.raises(SyntaxError):
        _ElementwiseKernel("T x", "T y", "y = x > 0 && x < 1 ? x : 0", "unknown")


def test_gemms_in_a_recorded_step_bypass_cupys_wrappers(emulated):
    """CuPy 14.2's cuBLAS wrappers set the handle's stream before every call and refuse that while the
    stream records: the recorded step's GEMMs (forward, backward, update) must still be recorded."""
    import array_api_compat.numpy as xp

    module, log = emulated
    kernels = module.CupyKernels(xp)
    rng = np.random.default_rng(5)
    X, W = (rng.standard_normal(s).astype(np.float32).view(_DeviceArray) for s in ((8, 5), (5, 3)))
    start = np.asarray(W).copy()
    results = []

    def step():
        y = kernels.matmul(X, W)
        kernels.matmul_update_(W, X.T, y, -0.01)
        results.append(np.asarray(y).copy())

    run = kernels.capture(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a refused recording would warn
        run()
        run()
    assert run.graph is not None and log.events.count("launch") == 1
    # the eager warm-up and the recording (which the stand-in executes) each did one step
    expected = start - 0.01 * (np.asarray(X).T @ (np.asarray(X) @ start))
    np.testing.assert_allclose(results[0], np.asarray(X) @ start, rtol=1e-5)
    np.testing.assert_allclose(results[1], np.asarray(X) @ expected, rtol=1e-5)


def test_tf32_sets_the_private_handles_math_mode_by_number(emulated, monkeypatch):
    """CuPy 14.2 names no ``CUBLAS_TF32_TENSOR_OP_MATH``: the private handle gets cuBLAS's value, 3."""
    module, log = emulated
    monkeypatch.setattr(module, "_tf32", lambda: True)
    module._GraphStep(_kernels(module), lambda: None)
    assert ("setMathMode", 7, 3) in log.events


def test_private_gemm_declines_without_libcublas(emulated, monkeypatch):
    """Where ctypes finds no libcublas the private handle's GEMM declines and CuPy's own matmul runs
    (a recording then fails with CuPy's refusal and a warning, and training goes on eagerly)."""
    module = emulated[0]
    monkeypatch.setattr(module, "_cublas_gemm", lambda: {})
    kernels = _kernels(module)
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal(s).astype(np.float32).view(_DeviceArray) for s in ((4, 3), (3, 2)))
    assert not kernels._gemm(np.empty((4, 2), np.float32).view(_DeviceArray), a, b, 1.0, 0.0)
    np.testing.assert_allclose(kernels.matmul(a, b), np.asarray(a) @ np.asarray(b), rtol=1e-6)


@pytest.mark.parametrize("classes", [3, 300])  # the row softmax kernel, and the seven-kernel path beyond 256
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])  # weights updated in backward (cuBLAS), or after
def test_fit_through_the_emulated_cupy_kernels_trains_as_the_generic_ones(emulated, classes, optimizer):
    """``fit`` end to end (eager) with ``CupyKernels`` in place of NumPy's: every fused kernel in the
    order, with the arguments and dtypes ``fit`` gives them. Weights and History equal the generic path's."""
    import array_api_compat.numpy as xp

    from _support import classification_data
    from _tolerances import assert_close, assert_state_close

    cupy_like = backend.Device("numpy:emulated-cupy", xp, fast=False)
    cupy_like.kernels = emulated[0].CupyKernels(xp)
    X, y = classification_data(n=45, features=4, classes=classes, seed=2)
    results = []
    for dev in (cupy_like, portablenn.device("numpy", fast=False)):
        model = portablenn.mlp([4, 6, classes], dtype="float64", seed=1)
        opt = portablenn.SGD(0.2) if optimizer == "sgd" else portablenn.SGD(0.1, momentum=0.9)
        history = portablenn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=8, l2=1e-3, device=dev,
                                 validation=(X[:9], y[:9]))
        assert all(type(layer.kernels).__name__ == ("CupyKernels" if dev is cupy_like else "Kernels")
                   for layer in model.layers)
        results.append((model.state_dict(), history))
    (state, history), (reference, expected) = results
    assert_state_close(state, reference, "float64", factor=10)
    for field in ("loss", "error", "val_loss", "val_error"):
        assert_close(history[field], expected[field], "float64", factor=10)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])  # the stack's fused step (backward_and_sgd), or after
def test_a_stack_through_the_emulated_cupy_kernels_trains_as_the_generic_ones(emulated, optimizer, monkeypatch):
    """``fit_stack`` with ``CupyKernels``: every member equals the generic kernels' (weights, records), and the
    kernel calls per step do not grow with the members (no GEMM per member: on a GPU each is a launch)."""
    import array_api_compat.numpy as xp

    from _support import classification_data
    from _tolerances import assert_close, assert_state_close
    from portablenn.sweep import fit_stack, stack_mlp

    cupy_like = backend.Device("numpy:emulated-cupy", xp, fast=False)
    cupy_like.kernels = kernels = emulated[0].CupyKernels(xp)
    calls = []
    for name in ("matmul", "matmul_update_", "relu", "relu_backward", "stacked_softmax_xent", "sgd_"):
        original = getattr(type(kernels), name)
        monkeypatch.setattr(type(kernels), name, lambda self, *a, _f=original, _n=name, **k: (calls.append(_n),
                                                                                             _f(self, *a, **k))[1])
    X, y = classification_data(n=45, features=4, classes=3, seed=2)

    def run(dev, members):
        stacked = stack_mlp([4, 6, 3], list(range(members)), dtype="float64")
        opt = portablenn.SGD(0.2) if optimizer == "sgd" else portablenn.SGD(0.1, momentum=0.9)
        calls.clear()
        history = fit_stack(stacked, X, y, optimizer=opt, lr=list(np.linspace(0.1, 0.3, members)),
                            l2=list(np.linspace(0.0, 1e-2, members)), epochs=3, batch_size=8, device=dev,
                            validation=(X[:9], y[:9]))
        return stacked, history, len(calls)

    stacked, history, few = run(cupy_like, 3)
    reference, expected, _ = run(portablenn.device("numpy", fast=False), 3)
    assert_state_close(stacked.state_dict(), reference.state_dict(), "float64", factor=10)
    for i in range(3):
        for field in ("loss", "error", "val_loss", "val_error"):
            assert_close(history[i][field], expected[i][field], "float64", factor=10)
    assert run(cupy_like, 7)[2] == few
    # the stack's fused loss, once a minibatch (45 rows by 8: 6) and once a validation pass, 3 epochs
    assert calls.count("stacked_softmax_xent") == 3 * (6 + 1)


# -- the guard: fast kernels prove themselves first, and a CUDA graph that fails is a warning -------------
def _cupy_error(module, name):
    """An exception class as CuPy raises it (``cupy.cuda.compiler.CompileException``, ...)."""
    return type(name, (RuntimeError,), {"__module__": module})


@pytest.fixture
def auto_device(emulated, monkeypatch):
    """A CUDA Device in ``kernels="auto"`` mode whose fast kernels are the emulated CuPy ones."""
    import array_api_compat.numpy as xp

    module = emulated[0]
    monkeypatch.setattr(backend, "_fast_kernels", lambda dev: module.CupyKernels(dev.xp))
    dev = backend.Device("numpy:emulated-cupy", xp, None, "cuda")
    assert dev.kernel_mode == "auto"
    return dev


def _train(dev, graph=False):
    from _support import classification_data

    X, y = classification_data(n=45, features=4, classes=3, seed=2)
    model = portablenn.mlp([4, 6, 3], dtype="float64", seed=1)
    history = portablenn.fit(model, X, y, optimizer=portablenn.SGD(0.1, momentum=0.9), epochs=3, batch_size=8,
                             l2=1e-3, device=dev, graph=graph, validation=(X[:9], y[:9]))
    return model.state_dict(), history


def _assert_trains_as_generic(dev, graph=False, reference_device=None):
    """``dev`` trains bit for bit as the ordinary loop on ``reference_device`` (default NumPy's generic kernels)."""
    state, history = _train(dev, graph)
    reference, expected = _train(reference_device or portablenn.device("numpy", fast=False))
    for key in reference:
        np.testing.assert_array_equal(state[key], reference[key], err_msg=key)
    assert history["loss"] == expected["loss"] and history["val_error"] == expected["val_error"]


def test_correct_fast_kernels_pass_their_self_test(auto_device):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels = auto_device.kernels
    assert type(kernels).__name__ == "CupyKernels" and auto_device.kernel_status == "fast (self-test passed)"


def _compile_error(emulated):
    module = emulated[0]

    def broken(*args, **kwargs):
        raise _cupy_error("cupy.cuda.compiler", "CompileException")("error: identifier \"T\" is undefined\nmore")
    return module, "_xent_rows", broken, "softmax_xent raised CompileException: error: identifier \"T\" is undefined"


def _cublas_failure(emulated):
    def broken(*args, **kwargs):
        raise _cupy_error("cupy_backends.cuda.libs.cublas", "CUBLASError")("CUBLAS_STATUS_EXECUTION_FAILED")
    return sys.modules["cupy"].cublas, "gemm", broken, \
        "weight update (matmul_update_) raised CUBLASError: CUBLAS_STATUS_EXECUTION_FAILED"


def _wrong_result(emulated):
    broken = _elementwise_kernel("T grad, T out", "T grad_input", "grad_input = out >= (T)0 ? grad : (T)0", "bad")
    return emulated[0], "_relu_backward", broken, "relu is off by"


def _not_finite(emulated):
    broken = _elementwise_kernel("T grad, T keep, T lr", "T param", "param = param * keep - lr * grad / 0", "bad")
    return emulated[0], "_sgd_decay", broken, "sgd_ gave non-finite values"


def _members_mixed_up(emulated):
    original = emulated[0].CupyKernels.stacked_softmax_xent

    def broken(self, logits, labels, onehot, scale):  # each member's loss sum given to another member
        grad, loss_sums, wrong = original(self, logits, labels, onehot, scale)
        return grad, loss_sums[::-1], wrong
    return emulated[0].CupyKernels, "stacked_softmax_xent", broken, "stacked_softmax_xent is off by"


@pytest.mark.parametrize("inject", [_compile_error, _cublas_failure, _wrong_result, _not_finite, _members_mixed_up])
def test_a_failing_fast_kernel_falls_back_to_the_generic_ones_with_one_warning(emulated, auto_device, monkeypatch,
                                                                                 inject):
    owner, name, broken, words = inject(emulated)
    monkeypatch.setattr(owner, name, broken)
    with pytest.warns(backend.KernelFallbackWarning) as caught:
        _assert_trains_as_generic(auto_device)
        _assert_trains_as_generic(auto_device)  # a second fit: no second self-test, no second warning
    caught = [w for w in caught if w.category is backend.KernelFallbackWarning]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("the fast kernels of numpy:emulated-cupy failed their self-test (") and words in message
    assert "\n" not in message and message.endswith("(kernels='fast' forces the fast ones)")
    assert type(auto_device.kernels) is Kernels and auto_device.kernel_status.startswith("generic (fallback: ")


def test_fast_kernels_that_cannot_even_load_fall_back(emulated, monkeypatch):
    import array_api_compat.numpy as xp

    def broken(dev):
        raise ImportError("libnvrtc.so.13: cannot open shared object file")
    monkeypatch.setattr(backend, "_fast_kernels", broken)
    dev = backend.Device("numpy:emulated-cupy", xp, None, "cuda")
    with pytest.warns(backend.KernelFallbackWarning, match="loading them raised ImportError: libnvrtc"):
        assert type(dev.kernels) is Kernels


def test_kernels_fast_skips_the_self_test(emulated, monkeypatch):
    import array_api_compat.numpy as xp

    module = emulated[0]
    monkeypatch.setattr(backend, "_fast_kernels", lambda dev: module.CupyKernels(dev.xp))
    monkeypatch.setattr(module, "_relu_backward", _wrong_result(emulated)[2])
    dev = backend.Device("numpy:emulated-cupy", xp, None, "cuda", kernels="fast")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(dev.kernels).__name__ == "CupyKernels" and dev.kernel_status == "fast"


def test_a_refused_graph_recording_trains_eagerly_as_the_ordinary_loop(emulated, auto_device, monkeypatch):
    """``fit(graph=True)``: CUDA refuses to start the recording (before anything runs) -> one warning,
    and the epoch's steps all run eagerly, once each: the weights of the ordinary loop, bit for bit."""
    module, log = emulated
    monkeypatch.setattr(module, "_cublas_gemm", lambda: {})

    def refuse(self, mode=None):
        raise _cupy_error("cupy_backends.cuda.api.runtime", "CUDARuntimeError")(
            "cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")
    monkeypatch.setattr(_Stream, "begin_capture", refuse)
    with pytest.warns(RuntimeWarning, match="^recording the training step as a CUDA graph failed "
                                            r"\(CUDARuntimeError: cudaErrorStreamCaptureUnsupported"):
        _assert_trains_as_generic(auto_device, graph=True, reference_device=auto_device)
    assert "launch" not in log.events and type(auto_device.kernels).__name__ == "CupyKernels"


def _graph_step(emulated, monkeypatch, where):
    """A ``_GraphStep`` of a counting step, with building (``end_capture``) or launching made to fail."""
    module, log = emulated
    kernels = _kernels(module)
    kernels._private.handle = None
    destroyed = []
    monkeypatch.setattr(sys.modules["cupy_backends.cuda.libs.cublas"], "destroy", destroyed.append)
    error = _cupy_error("cupy_backends.cuda.api.runtime", "CUDARuntimeError")("cudaErrorInvalidValue: invalid argument")
    if where == "building":
        original = _Stream.end_capture

        def end_capture(self):
            original(self)
            raise error
        monkeypatch.setattr(_Stream, "end_capture", end_capture)
    runs = []  # one entry per execution of the step (a recording does not execute on a GPU)
    run = kernels.capture(lambda: runs.append(log.current[-1].capturing))
    if where == "launching":
        run.graph = types.SimpleNamespace(launch=lambda stream: (_ for _ in ()).throw(error))
        run.warm = True
    return run, runs, destroyed


@pytest.mark.parametrize("where", ["building", "launching"])
def test_a_graph_that_fails_to_build_or_launch_runs_every_step_once_eagerly(emulated, monkeypatch, where):
    run, runs, destroyed = _graph_step(emulated, monkeypatch, where)
    with pytest.warns(RuntimeWarning, match=f"^{where} the training step as a CUDA graph failed "
                                            r"\(CUDARuntimeError: cudaErrorInvalidValue"):
        for _ in range(4):
            run()
    eager = [capturing for capturing in runs if not capturing]
    assert len(eager) == 4  # each of the 4 calls ran the step exactly once, outside any recording
    assert run.failed and run.graph is None and destroyed == [7]  # the handle released at the failure


def test_fit_releases_the_graph_and_its_cublas_handle_when_it_ends(emulated, auto_device, monkeypatch):
    """Released explicitly by ``fit``, not by ``__del__`` (which the cycle collector runs at any moment)."""
    module, log = emulated
    monkeypatch.setattr(module, "_cublas_gemm", lambda: {})
    destroyed = []
    monkeypatch.setattr(sys.modules["cupy_backends.cuda.libs.cublas"], "destroy", destroyed.append)
    created = []
    monkeypatch.setattr(module._GraphStep, "__init__", _recording(module._GraphStep.__init__, created))
    _train(auto_device, graph=True)
    assert len(created) == 1 and destroyed == [7] and created[0].handle is None and created[0].graph is None
    assert "launch" in log.events and not hasattr(module._GraphStep, "__del__")
    with pytest.raises(RuntimeError):  # a fit that raises releases it too
        monkeypatch.setattr(portablenn.train, "_flush", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        _train(auto_device, graph=True)
    assert destroyed == [7, 7] and created[1].handle is None


def _recording(init, created):
    def wrapped(self, *args):
        init(self, *args)
        created.append(self)
    return wrapped
