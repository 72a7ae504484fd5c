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

    def sq_sum(self, w):
        flat = w.reshape(-1)
        return np.dot(flat, flat)

    def sgd_(self, param, grad, lr, decay):
        if decay:
            param *= 1.0 - lr * decay
        np.subtract(param, grad if lr == 1.0 else np.multiply(grad, param.dtype.type(lr)), out=param)
