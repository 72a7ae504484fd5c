"""NumPy: the "cpu"/"numpy" device, and its fast kernels (``out=`` buffers, in-place ufuncs, BLAS row sums).

Small ``(batch, classes)`` reductions along rows are slow in NumPy (~5 us for 100 x 10), so row
sums go through BLAS (``exp @ ones``) and each row's maximum is picked by its arg-max (needed for
the error count anyway). Results equal the generic kernels up to float rounding; the parity tests
run both.
"""
import numpy as np

from .. import _blas
from ..backend import Device, DeviceError
from ..kernels import Kernels
from . import Backend, register


class NumpyBackend(Backend):
    library, words = "numpy", ("cpu", "numpy")

    def resolve(self, spec, rest, mode):
        import array_api_compat.numpy as xp

        if rest not in (None, "cpu"):
            raise DeviceError(f"unknown NumPy device {spec!r}; expected cpu or numpy")
        return Device("numpy", xp, None, "cpu", kernels=mode)

    def specs(self):
        return ["cpu"]

    def fast_kernels(self, dev):
        return NumpyKernels(dev.xp)

    def asarray(self, dev, array, dtype):
        from . import to_host

        return np.asarray(to_host(array), dtype=dtype)

    def to_host(self, array):
        return np.asarray(array)

    heap_pad = 64 << 20  # bytes of freed heap glibc keeps at its top (M_TOP_PAD) once ``reserve_heap`` ran

    def reserve_heap(self, dev):
        """Ask glibc to keep 64 MiB of freed memory at the top of the heap (``mallopt(M_TOP_PAD)``), once per process.

        By default glibc hands freed memory of a few MB back to the OS at once, and every new array of that
        size then page-faults it in again: measured on the spiral's 16-member stack, half of the step's time.
        Process-wide and harmless elsewhere (the memory stays reusable by the process); a no-op where the C
        library is not glibc.
        """
        if getattr(NumpyBackend, "_heap_reserved", False):
            return
        NumpyBackend._heap_reserved = True
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            libc.mallopt(-2, self.heap_pad)  # M_TOP_PAD
        except (OSError, AttributeError, TypeError):
            pass


register(NumpyBackend())


class NumpyKernels(Kernels):
    """Writes into caller-owned buffers and avoids temporaries; see ``Kernels`` for the math."""

    def __init__(self, xp):
        super().__init__(xp)
        self._constants = {}  # read-only arrays keyed by (maker, shape, dtype): safe to share across threads

    def _constant(self, maker, shape, dtype):
        key = (maker, shape, dtype)
        if key not in self._constants:
            self._constants[key] = maker(shape, dtype=dtype)
        return self._constants[key]

    def matmul(self, a, b, out=None):
        if out is None or out.shape != (a.shape[0], b.shape[1]) or out.dtype != a.dtype:
            return a @ b
        return np.matmul(a, b, out=out)

    # A BLAS call through ctypes costs ~5 us more than NumPy's own dispatch; it pays for itself where the
    # passes over ``c`` it saves are longer (measured break-even 16-32 K elements, float32 and float64).
    blas_update_min = 32768

    def matmul_update_(self, c, a, b, alpha, beta=1.0):
        # one BLAS call (beta = the decay) where NumPy's BLAS is reachable, else GEMM into a temporary
        if c.size < self.blas_update_min or not _blas.gemm_update(c, a, b, alpha, beta):
            super().matmul_update_(c, a, b, alpha, beta)

    def sum_rows(self, g, out=None):
        # (batch, n) -> (n,) as a BLAS gemv: ones @ g
        ones = self._constant(np.ones, g.shape[0], g.dtype)
        if out is None or out.shape != g.shape[1:] or out.dtype != g.dtype:
            return ones @ g
        return np.matmul(ones, g, out=out)

    def relu(self, x):
        if not x.flags.c_contiguous:  # a strided view (a stack's side-by-side layer): keep its layout
            return np.maximum(x, x.dtype.type(0))
        # against an array of zeros: NumPy's maximum with a scalar operand takes a slow unvectorised loop
        return np.maximum(x, self._constant(np.zeros, x.shape, x.dtype))

    def relu_backward(self, grad_output, output):
        # d relu/dx from the cached output: zero the gradient where the unit was off
        return np.multiply(grad_output, output > 0)

    fuses_sgd = True

    def softmax_xent(self, logits, labels, onehot, scale):
        """``SoftmaxCrossEntropy.value_and_grad`` fused: ``(grad, loss_sum, wrong)``; the gradient is one
        new array, worked on in place (``logits`` is left as it is: backward may still read it)."""
        dtype = logits.dtype
        n = logits.shape[0]
        predicted = logits.argmax(axis=1)
        wrong = np.count_nonzero(predicted != labels)
        # each row's maximum, picked by its arg-max (faster than a max-reduction along short rows)
        shifted = np.subtract(logits, logits[self._constant(np.arange, n, np.intp), predicted][:, None])
        picked = np.vdot(shifted, onehot)  # sum over rows of the label's shifted logit
        exp = np.exp(shifted, out=shifted)
        total = exp @ self._constant(np.ones, logits.shape[1], dtype)
        loss_sum = np.log(total).sum() - picked
        # grad = (exp / total - onehot) * scale, in place, in the generic twin's order
        np.divide(exp, total[:, None], out=exp)
        np.subtract(exp, onehot, out=exp)
        np.multiply(exp, dtype.type(scale), out=exp)
        return exp, dtype.type(loss_sum), dtype.type(wrong)

    # -- a stack's layers (portablenn.stack), NumPy-only layouts; the generic twin is the broadcast matmul --
    def side_by_side(self, a):
        """``(M, rows, cols)`` laid out in memory as ``(rows, M, cols)`` -> its ``(rows, M * cols)`` view; None for
        another layout. A stack's first layer keeps its weight so: one GEMM ``x @ W`` does every member's work."""
        if a.ndim != 3 or not a.transpose(1, 0, 2).flags.c_contiguous:
            return None
        return a.transpose(1, 0, 2).reshape(a.shape[1], -1)

    # below this many rows (a first layer's inputs) the side-by-side GEMM saves nothing: the product is
    # bound by writing its output, and the activations' strided layout costs the backward a slower GEMM
    side_by_side_min_rows = 32

    def lay_side_by_side(self, a):
        """A copy of ``(M, rows, cols)`` laid out as ``(rows, M, cols)`` (``side_by_side`` gives its 2-D view);
        ``a`` itself where it has fewer than ``side_by_side_min_rows`` rows."""
        if a.shape[1] < self.side_by_side_min_rows:
            return a
        return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)

    def join_bias(self, weight, bias):
        """``(joint, weight view, bias view)``: a stack's ``(M, in, out)`` weight and ``(M, 1, out)`` bias copied into
        one ``(M, in + 1, out)`` array, the bias its last row, and the two views of it that replace them. With
        a column of ones beside the input, ``[x, 1] @ joint`` is ``x @ W + b`` and ``[x, 1].T @ g`` both gradients:
        the bias's own pass over the ``(M, batch, out)`` product and its row sums go. For a narrow shared input
        (the spiral's 2 columns; ``side_by_side_min_rows``), where those passes cost as much as the GEMM."""
        joint = np.concatenate([weight, bias], axis=1)
        return joint, joint[:, :-1, :], joint[:, -1:, :]

    def matmul_like(self, a, b, like):
        """``a @ b`` written into a new array laid out as ``like`` (of the result's shape): a stack's input
        gradient in its input's layout, so the next layer's weight GEMM reads it without a copy."""
        out = np.empty_like(like)
        return np.matmul(a, b, out=out)

    def matmul_into(self, a, b, out):
        """``a @ b`` (broadcast over a leading member axis) written into ``out``, an array the caller reuses
        from step to step: a fresh array of a few MB costs a pass of page faults and cache misses."""
        return np.matmul(a, b, out=out)

    def stacked_softmax_xent(self, logits, labels, onehot, scale):
        """``softmax_xent`` for a stack: logits ``(M, batch, classes)``, the targets shared ``(batch,)`` and
        ``(batch, classes)`` or each member's ``(M, batch)``, ``(M, batch, classes)`` -> ``(grad, loss sums (M,),
        wrong (M,))``. The logits are copied class-major, ``(classes, M batch)``: each row's maximum is then a
        pass per class and every broadcast runs along contiguous rows (NumPy's reductions and broadcasts along
        a short last axis are several times slower); the sums go through GEMV and ``einsum``."""
        dtype, (M, n, classes) = logits.dtype, logits.shape
        cols = np.ascontiguousarray(logits.reshape(M * n, classes).T)  # (classes, M n)
        top, predicted = cols[0].copy(), np.zeros(M * n, dtype=np.intp)
        for c in range(1, classes):  # strictly larger: the first of equal values wins, as argmax
            np.copyto(predicted, c, where=cols[c] > top)
            np.maximum(top, cols[c], out=top)
        shifted = np.subtract(cols, top, out=cols)
        members = shifted.reshape(classes, M, n)
        picked = np.einsum("cmb,mbc->m" if onehot.ndim == 3 else "cmb,bc->m", members, onehot)
        exp = np.exp(shifted, out=shifted)
        total = self._constant(np.ones, classes, dtype) @ exp  # (M batch,)
        loss_sums = np.log(total).reshape(M, n).sum(axis=1) - picked
        wrong = np.count_nonzero(predicted.reshape(M, n) != labels, axis=1).astype(dtype)
        np.divide(exp, total, out=exp)
        grad = np.subtract(exp.T.reshape(M, n, classes), onehot)  # back to (M, batch, classes), C-ordered
        np.multiply(grad, dtype.type(scale), out=grad)
        return grad, loss_sums.astype(dtype, copy=False), wrong

    def sq_sum_members(self, w):
        """``(M, ...)`` -> ``(M,)``: each member's sum of squares in one pass over ``w`` as it lies in memory (a
        side-by-side weight is not copied, as a reshape to ``(M, -1)`` would copy it)."""
        letters = "abcdefgh"[:w.ndim - 1]
        return np.einsum(f"m{letters},m{letters}->m", w, w)

    def relu_(self, x):
        """``relu`` in place (``x`` is the caller's fresh product)."""
        return np.maximum(x, x.dtype.type(0), out=x)

    def relu_backward_(self, grad_output, output):
        """``relu_backward`` in place: ``grad_output`` (the caller's own array) zeroed where the unit was off."""
        return np.multiply(grad_output, output > 0, out=grad_output)

    def sq_sum(self, w):
        flat = w.reshape(-1)
        return np.dot(flat, flat)

    def sgd_(self, param, grad, lr, decay):
        if decay:
            param *= 1.0 - lr * decay
        np.subtract(param, grad if lr == 1.0 else np.multiply(grad, param.dtype.type(lr)), out=param)
