"""NumPy fast path: the generic kernels with ``out=`` buffers, in-place ufuncs and BLAS row sums.

Small ``(batch, classes)`` reductions along rows are slow in NumPy (~5 us for 100 x 10), so row
sums go through BLAS (``exp @ ones``) and the softmax is shifted by the batch's global maximum,
falling back to the per-row maximum when that would underflow a row. Results equal the generic
kernels up to float rounding; the parity tests run both.
"""
import numpy as np

from . import _blas
from .kernels import Kernels

_TINY = {np.dtype(np.float32): 1e-30, np.dtype(np.float64): 1e-290}


class NumpyKernels(Kernels):
    """Writes into caller-owned buffers and avoids temporaries; see ``Kernels`` for the math."""

    def __init__(self, xp):
        super().__init__(xp)
        self._ones = {}
        self._exp = {}

    def _ones_of(self, n, dtype):
        key = (n, dtype)
        if key not in self._ones:
            self._ones[key] = np.ones(n, dtype=dtype)
        return self._ones[key]

    def matmul(self, a, b, out=None):
        if out is None or out.shape != (a.shape[0], b.shape[1]) or out.dtype != a.dtype:
            return a @ b
        return np.matmul(a, b, out=out)

    def linear(self, x, weight, bias, out=None):
        y = self.matmul(x, weight, out)
        if bias is not None:
            y += bias
        return y

    def matmul_update_(self, c, a, b, alpha):
        # one BLAS call with beta=1 where NumPy's BLAS is reachable, else GEMM into a temporary
        if not _blas.gemm_update(c, a, b, alpha):
            super().matmul_update_(c, a, b, alpha)

    def sum_rows(self, g, out=None):
        # (batch, n) -> (n,) as a BLAS gemv: ones @ g
        ones = self._ones_of(g.shape[0], g.dtype)
        if out is None or out.shape != g.shape[1:] or out.dtype != g.dtype:
            return ones @ g
        return np.matmul(ones, g, out=out)

    def _zeros_like(self, x):
        key = ("zeros",) + x.shape + (x.dtype,)
        if key not in self._ones:
            self._ones[key] = np.zeros_like(x)
        return self._ones[key]

    def relu(self, x):
        # against an array of zeros: NumPy's maximum with a scalar operand takes a slow unvectorised loop
        return np.maximum(x, self._zeros_like(x), out=x)

    def relu_backward(self, grad_output, output):
        # d relu/dx from the cached output: zero the gradient where the unit was off
        return np.multiply(grad_output, output > 0, out=grad_output)

    def softmax_xent(self, logits, onehot, labels, scale):
        dtype = logits.dtype
        wrong = np.count_nonzero(logits.argmax(axis=1) != labels)
        logits = logits - logits.max() if not logits.flags.writeable else _sub_(logits, logits.max())
        picked = np.vdot(logits, onehot)  # sum over rows of the label's shifted logit
        key = logits.shape + (dtype,)
        exp = self._exp.get(key)
        if exp is None:
            exp = self._exp[key] = np.empty_like(logits)
        np.exp(logits, out=exp)
        total = exp @ self._ones_of(logits.shape[1], dtype)
        if total.min() < _TINY[dtype]:  # a row far below the batch maximum: shift each row by its own
            return super().softmax_xent(logits, onehot, labels, scale)[:2] + (dtype.type(wrong),)
        loss_sum = np.log(total).sum() - picked
        # grad = (exp / total - onehot) * scale, written over exp without temporaries
        np.multiply(exp, np.divide(scale, total, out=total)[:, None], out=exp)
        np.subtract(exp, onehot * dtype.type(scale), out=exp)
        return exp, dtype.type(loss_sum), dtype.type(wrong)

    def sq_sum(self, w):
        flat = w.reshape(-1)
        return np.dot(flat, flat)

    def sgd_(self, param, grad, decay):
        if decay:
            param *= 1.0 - decay
        np.subtract(param, grad, out=param)


def _sub_(a, value):
    a -= value
    return a
