"""CuPy fast path: fused elementwise/reduction kernels, cuBLAS GEMM updates and CUDA-graph replay.

On a GPU a minibatch step is launch-bound: the generic softmax cross-entropy is ~15 kernels, this
one is 2 (a thread per row, then the batch's sums; 7 beyond 256 classes), a stack's 3; ReLU backward is one
kernel instead of three; the SGD weight update is one cuBLAS GEMM with ``beta = 1``; Adam updates
``param, m, v`` in one kernel. With ``fit(graph=True)`` the whole step is recorded once as a CUDA
graph and replayed: one launch per step (``_GraphStep``). Results equal the generic ``Kernels`` up
to float rounding; the parity tests run both.
"""
import contextlib
import ctypes
import functools
import os
import threading
import warnings

import cupy
import numpy
from cupy import cublas
from cupy_backends.cuda.libs import cublas as cublas_api  # handles and their settings; GEMMs: _cublas_gemm

from .. import _blas
from ..kernels import Kernels

_relu_backward = cupy.ElementwiseKernel(
    "T grad, T out", "T grad_input", "grad_input = out > (T)0 ? grad : (T)0", "portablenn_relu_backward")

_row_sum_exp = cupy.ReductionKernel(
    "T x, T top", "T total", "exp(x - top)", "a + b", "total = a", "0", "portablenn_row_sum_exp")

# grad = (softmax - onehot) * scale, from the row maximum and the row sum of exponentials
_xent_grad = cupy.ElementwiseKernel(
    "T x, T top, T total, T onehot, T scale", "T grad",
    "grad = (exp(x - top) / total - onehot) * scale", "portablenn_xent_grad")

# sum over the batch of log(total) + top - x[label], picked out by the one-hot row
_xent_loss = cupy.ReductionKernel(
    "T x, T top, T total, T onehot", "T loss", "onehot * (log(total) + top - x)", "a + b", "loss = a", "0",
    "portablenn_xent_loss")

# One thread per row of (batch, classes) logits, for few classes (a row's loop is serial): the row's
# maximum and arg-max, the sum of exponentials, the gradient row, and into ``stats`` (2, batch) the row's
# loss and whether it was predicted wrong. The arithmetic of each gradient element is the generic
# twin's; the arg-max is the first maximal logit, as ``argmax``.
_xent_rows = cupy.ElementwiseKernel(
    "raw T x, raw I labels, T scale, int32 classes", "raw T grad, raw T stats",
    """
    const ptrdiff_t row = (ptrdiff_t)i * classes;
    const int label = labels[i];
    T top = x[row];
    int best = 0;
    for (int j = 1; j < classes; ++j) {
        if (x[row + j] > top) { top = x[row + j]; best = j; }
    }
    T total = 0;
    for (int j = 0; j < classes; ++j) total += exp(x[row + j] - top);
    for (int j = 0; j < classes; ++j) {
        grad[row + j] = (exp(x[row + j] - top) / total - (j == label ? (T)1 : (T)0)) * scale;
    }
    stats[i] = log(total) + top - x[row + label];
    stats[_ind.size() + i] = best != label ? (T)1 : (T)0;
    """, "portablenn_xent_rows")
_ROW_KERNEL_CLASSES = 256  # beyond, a row per thread is too serial: seven kernels over all elements

# The minibatch of a recorded step, one thread per element of xb (batch, features): rows start + r of
# the epoch (through the permutation ``order`` when shuffled); each row's first thread copies its
# label and one-hot row. Indices are flat, in C order: CuPy's raw arrays map them to any layout.
_minibatch = cupy.ElementwiseKernel(
    "raw T X, raw I y, raw T onehot, raw I order, raw I start, int32 shuffled, int32 features, int32 classes",
    "raw T xb, raw I yb, raw T ob",
    """
    const ptrdiff_t r = i / features, c = i % features;
    const ptrdiff_t row = shuffled ? (ptrdiff_t)order[start[0] + r] : (ptrdiff_t)start[0] + r;
    xb[i] = X[row * features + c];
    if (c == 0) {
        yb[r] = y[row];
        for (int k = 0; k < classes; ++k) ob[r * classes + k] = onehot[row * classes + k];
    }
    """, "portablenn_minibatch")

# After a recorded step, in one thread: the step's loss into the epoch's vector, the error count, the counter
_record_step = cupy.ElementwiseKernel(
    "T loss, T wrong, int32 batch", "raw T losses, raw T wrong_total, raw I start",
    """
    losses[start[0] / batch] = loss;
    wrong_total[0] += wrong;
    start[0] += batch;
    """, "portablenn_record_step")

_adam = cupy.ElementwiseKernel(
    "T grad, T beta1, T beta2, T step_size, T eps_hat, T l2", "T param, T m, T v",
    """
    T g = grad + l2 * param;
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    param -= step_size * m / (sqrt(v) + eps_hat);
    """, "portablenn_adam")

_sgd_decay = cupy.ElementwiseKernel(
    "T grad, T keep, T lr", "T param", "param = param * keep - lr * grad", "portablenn_sgd_decay")


class CupyKernels(Kernels):
    """Fused CUDA kernels; see ``Kernels`` for the math each one must match."""

    def __init__(self, xp):
        super().__init__(xp)
        self._private = threading.local()  # one Device's kernels serve every thread

    @property
    def _handle(self):
        """The private cuBLAS handle of the step this thread runs or records (see ``_cublas_gemm``), or None."""
        return getattr(self._private, "handle", None)

    def matmul(self, a, b, out=None):
        if out is None or out.shape != (a.shape[0], b.shape[1]) or out.dtype != a.dtype:
            if self._handle is None:
                return a @ b
            out = cupy.empty((a.shape[0], b.shape[1]), a.dtype)
        if self._handle is not None and self._gemm(out, a, b, 1.0, 0.0):
            return out
        return cupy.matmul(a, b, out=out)

    def matmul_update_(self, c, a, b, alpha, beta=1.0):
        # c = alpha * a @ b + beta * c in one cuBLAS call
        if self._handle is not None and self._gemm(c, a, b, alpha, beta):
            return
        if c.flags.c_contiguous and a.dtype == b.dtype == c.dtype and c.dtype.char in "fd":
            cublas.gemm("N", "N", a, b, out=c, alpha=alpha, beta=beta)
        else:
            super().matmul_update_(c, a, b, alpha, beta)

    def _gemm(self, c, a, b, alpha, beta):
        """``c = alpha a @ b + beta c`` on ``_handle``; False where the layout does not fit.

        cuBLAS is column-major: the row-major ``c = a @ b`` is the column-major ``c.T = b.T @ a.T``,
        so the operands swap, with the transpose flags and leading dimensions of CBLAS's row-major.
        """
        if not (c.flags.c_contiguous and a.dtype == b.dtype == c.dtype and c.dtype.char in "fd"):
            return False
        op_a, op_b = _blas._operand(a), _blas._operand(b)
        if op_a is None or op_b is None or 0 in a.shape or 0 in b.shape:
            return False
        gemm = _cublas_gemm().get(c.dtype.char)
        if gemm is None:
            return False
        (m, n), k = c.shape, a.shape[1]
        # alpha and beta by address, in host memory: the handle is in host pointer mode, where cuBLAS
        # reads them at the call, and a recording keeps their values
        scalars = numpy.array([alpha, beta], dtype=c.dtype)
        address = scalars.ctypes.data
        status = gemm(self._handle, _OPS[op_b[0]], _OPS[op_a[0]], n, m, k, address, b.data.ptr, op_b[1],
                      a.data.ptr, op_a[1], address + scalars.itemsize, c.data.ptr, n)
        if status:
            raise RuntimeError(f"cuBLAS {c.dtype.char}gemm failed with status {status}")
        return True

    @contextlib.contextmanager
    def _private_blas(self, handle, stream):
        # here, before the stream starts recording: CuPy refuses cublasSetStream on a recording stream
        cublas_api.setStream(handle, stream.ptr)
        self._private.handle = handle
        try:
            yield
        finally:
            self._private.handle = None

    def capture(self, step):
        """``step`` recorded as a CUDA graph and replayed (``_GraphStep``); ``Backend.compile`` calls it."""
        return _GraphStep(self, step)

    @property
    def tf32(self):
        """Whether float32 matmuls run on TF32 tensor cores (``kernel_check`` then allows their error)."""
        return _tf32()

    def relu(self, x):
        return cupy.maximum(x, 0)

    def relu_backward(self, grad_output, output):
        return _relu_backward(grad_output, output)

    fuses_sgd = True

    def softmax_xent(self, logits, labels, onehot, scale):
        """``SoftmaxCrossEntropy.value_and_grad`` fused: ``(grad, loss_sum, wrong)``."""
        n, classes = logits.shape
        if 0 < classes <= _ROW_KERNEL_CLASSES and n:
            grad = cupy.empty((n, classes), logits.dtype)
            stats = cupy.empty((2, n), logits.dtype)  # each row's loss and wrong prediction
            _xent_rows(logits, labels, logits.dtype.type(scale), numpy.int32(classes), grad, stats, size=n)
            sums = stats.sum(axis=1)
            return grad, sums[0], sums[1]
        top = cupy.broadcast_to(logits.max(axis=1, keepdims=True), logits.shape)
        total = cupy.broadcast_to(_row_sum_exp(logits, top, axis=1, keepdims=True), logits.shape)
        grad = _xent_grad(logits, top, total, onehot, logits.dtype.type(scale))
        loss_sum = _xent_loss(logits, top, total, onehot)
        wrong = (logits.argmax(axis=1) != labels).sum(dtype=logits.dtype)
        return grad, loss_sum, wrong

    def stacked_softmax_xent(self, logits, labels, onehot, scale):
        """``softmax_xent`` for a stack: ``(M, batch, classes)`` logits, the targets shared ``(batch,)`` and
        ``(batch, classes)`` or each member's ``(M, batch)``, ``(M, batch, classes)`` -> ``(grad, loss sums (M,),
        wrong (M,))``: the same kernels over the M batch rows, then each member's sums (3 launches, not ~12)."""
        M, n, classes = logits.shape
        if 0 < classes <= _ROW_KERNEL_CLASSES and n:
            grad = cupy.empty((M, n, classes), logits.dtype)
            stats = cupy.empty((2, M, n), logits.dtype)  # each row's loss and wrong prediction
            _xent_rows(cupy.ascontiguousarray(logits), cupy.ascontiguousarray(cupy.broadcast_to(labels, (M, n))),
                       logits.dtype.type(scale), numpy.int32(classes), grad, stats, size=M * n)
            sums = stats.sum(axis=2)
            return grad, sums[0], sums[1]
        top = cupy.broadcast_to(logits.max(axis=2, keepdims=True), logits.shape)
        total = cupy.broadcast_to(_row_sum_exp(logits, top, axis=2, keepdims=True), logits.shape)
        onehot = cupy.broadcast_to(onehot, logits.shape)
        grad = _xent_grad(logits, top, total, onehot, logits.dtype.type(scale))
        loss_sums = _xent_loss(logits, top, total, onehot, axis=(1, 2))
        wrong = (logits.argmax(axis=2) != labels).sum(axis=1, dtype=logits.dtype)
        return grad, loss_sums, wrong

    def minibatch(self, X, y, onehot, order, start, offsets):
        (batch,), (features, classes) = offsets.shape, (X.shape[1], onehot.shape[1])
        xb, yb = cupy.empty((batch, features), X.dtype), cupy.empty((batch,), y.dtype)
        ob = cupy.empty((batch, classes), onehot.dtype)
        _minibatch(X, y, onehot, start if order is None else order, start, numpy.int32(order is not None),
                   numpy.int32(features), numpy.int32(classes), xb, yb, ob, size=batch * features)
        return xb, yb, ob

    def record_step(self, losses, wrong_total, start, starts, loss, wrong, batch):
        _record_step(loss, wrong, numpy.int32(batch), losses, wrong_total, start)

    def sgd_(self, param, grad, lr, decay):
        if decay or lr != 1.0:
            t = param.dtype.type
            _sgd_decay(grad, t(1.0 - lr * decay), t(lr), param)
        else:
            param -= grad

    def adam_(self, param, m, v, grad, beta1, beta2, step_size, eps_hat, l2):
        t = param.dtype.type
        _adam(grad, t(beta1), t(beta2), t(step_size), t(eps_hat), t(l2), param, m, v)


_OPS = {_blas._NO_TRANS: cublas_api.CUBLAS_OP_N, _blas._TRANS: cublas_api.CUBLAS_OP_T}  # from CBLAS's flags
_TF32_TENSOR_OP_MATH = 3  # cublasMath_t's CUBLAS_TF32_TENSOR_OP_MATH (cublas_api.h): CuPy 13.6 and 14.2 name none


@functools.lru_cache(maxsize=None)
def _cublas_gemm():
    """``{"f": cublasSgemm_v2, "d": cublasDgemm_v2}`` of the libcublas CuPy loaded, through ctypes; {} if not found.

    The private handle's GEMMs bypass CuPy's wrappers (``cupy_backends.cuda.libs.cublas.sgemm``): they
    call ``cublasSetStream`` before every GEMM, which CuPy refuses while the current stream records
    ("calling cuBLAS API during stream capture is currently unsupported", CuPy 14.2's ``cublas.pyx``).
    The handle's stream is set once instead, before the recording starts (``_private_blas``).
    """
    names = _blas.loaded_libraries("libcublas.so") or ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            functions = {"f": lib.cublasSgemm_v2, "d": lib.cublasDgemm_v2}
        except (OSError, AttributeError):
            continue
        for fn in functions.values():
            i, p = ctypes.c_int, ctypes.c_void_p
            fn.argtypes = [p, i, i, i, i, i, p, p, i, p, i, p, p, i]
            fn.restype = i
        return functions
    return {}


def _tf32():
    """Whether CuPy's float32 matmuls use TF32: ``CUPY_TF32=1`` or ``set_compute_type`` (CuPy 13 and 14)."""
    try:
        from cupy._core import _routines_linalg as linalg

        return linalg.get_compute_type(numpy.dtype(numpy.float32)) == linalg.COMPUTE_TYPE_TF32
    except Exception:  # a private API: if it moved, read the variable as CuPy 14.2 does
        try:
            return int(os.environ.get("CUPY_TF32", "0")) > 0
        except ValueError:
            return False


class _GraphStep:
    """Call ``step`` once eagerly, record it as a CUDA graph on the second call, replay it ever after.

    The eager first call compiles the kernels, creates the optimizer's buffers and warms up a
    private memory pool and a private cuBLAS handle (GEMMs through ``_cublas_gemm``) on the stream
    that then records, so the recording finds its memory ready, cuBLAS's default workspace for that
    stream included. Everything the step allocates comes from that pool, which nothing else
    allocates from: no other array can be given memory that the graph writes. The pool lives as
    long as the graph and every array taken from it (the optimizer's buffers outlive ``fit``).
    Recording does not execute, so the second call records and then launches; the launches go to
    the current stream, in order with the eager work around them.

    If CUDA or CuPy refuses any part of it (the handle, the recording, building the graph, a
    launch), a ``RuntimeWarning`` says which and why, and the step runs eagerly from then on: no
    step is lost or run twice. ``close`` releases the graph and the handle when ``fit`` ends.
    """

    def __init__(self, kernels, step):
        self.kernels, self.step = kernels, step
        self.graph, self.warm, self.failed, self.handle = None, False, False, None
        try:
            self.pool = cupy.cuda.MemoryPool()
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.handle = cublas_api.create()
            cublas_api.setPointerMode(self.handle, cublas_api.CUBLAS_POINTER_MODE_HOST)
            if _tf32():  # as CuPy's own matmuls
                cublas_api.setMathMode(self.handle, _TF32_TENSOR_OP_MATH)
        except Exception as exc:
            self._give_up("preparing", exc)
            self.close()

    def __call__(self):
        if self.failed:
            self.step()
            return
        current = cupy.cuda.get_current_stream()
        if self.graph is None:
            self.stream.wait_event(current.record())  # after the eager work queued so far
            with cupy.cuda.using_allocator(self._malloc), \
                    self.kernels._private_blas(self.handle, self.stream), self.stream:
                if self.warm:
                    self.graph = self._record()
                else:  # the warm-up
                    self.step()
                    self.warm = True
            current.wait_event(self.stream.record())
            if self.failed:  # recording or building failed: this call's step runs eagerly, as all later ones
                self.close()
                self.step()
            if self.graph is None:
                return
        try:
            self.graph.launch(current)
        except Exception as exc:  # refused at the launch: nothing of this step ran
            self._give_up("launching", exc)
            self.close()
            self.step()

    def _malloc(self, size):
        # CuPy's pooled memory holds its pool by a weak reference and the pool frees its blocks when it
        # dies: an array from it (a momentum buffer) must hold the pool itself, or it would dangle
        block = self.pool.malloc(size)
        owner = (self.pool, block)  # a tuple releases its items last first: the block goes back, then the pool
        return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(block.ptr, size, owner, block.device_id), 0)

    def _record(self):
        """The recorded graph, or None (with a warning) if CUDA or CuPy refused to record or build it.

        Recording executes nothing, so after a refusal the step simply runs eagerly.
        """
        try:
            self.stream.begin_capture()
            self.step()
        except Exception as exc:
            with contextlib.suppress(Exception):  # leave the stream usable
                self.stream.end_capture()
            self._give_up("recording", exc)
            return None
        try:
            return self.stream.end_capture()  # ends the capture and instantiates the graph
        except Exception as exc:
            self._give_up("building", exc)
            return None

    def _give_up(self, what, exc):
        """Warn; the caller then releases the handle (outside the private context) and runs the step eagerly."""
        self.failed, self.graph = True, None
        warnings.warn(f"{what} the training step as a CUDA graph failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); training goes on without one",
                      RuntimeWarning, stacklevel=4)

    def close(self):
        """Release the graph and the private cuBLAS handle; later calls run the step eagerly.

        Called by ``fit`` when it ends, in its own thread, not left to ``__del__``: the garbage
        collector could run ``cublasDestroy`` (a device-wide synchronisation) at any moment, during
        another fit's recording too.
        """
        self.failed, self.graph = True, None
        handle, self.handle = self.handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                cublas_api.destroy(handle)
