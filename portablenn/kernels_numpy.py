"""NumPy fast path: the generic kernels with ``out=`` buffers and in-place ufuncs (same results)."""
import numpy as np

from .kernels import Kernels


class NumpyKernels(Kernels):
    """Writes into caller-owned buffers and avoids temporaries; see ``Kernels`` for the math."""

    def matmul(self, a, b, out=None):
        if out is None or out.shape != (a.shape[0], b.shape[1]) or out.dtype != np.result_type(a, b):
            return a @ b
        return np.matmul(a, b, out=out)

    def linear(self, x, weight, bias, out=None):
        y = self.matmul(x, weight, out)
        if bias is not None:
            y += bias
        return y

    def sum_rows(self, g, out=None):
        if out is None or out.shape != g.shape[1:] or out.dtype != g.dtype:
            return np.add.reduce(g, axis=0)
        return np.add.reduce(g, axis=0, out=out)

    def relu(self, x):
        return np.maximum(x, 0, out=x)

    def relu_backward(self, grad_output, output):
        # d relu/dx from the cached output: zero the gradient where the unit was off
        np.multiply(grad_output, output > 0, out=grad_output)
        return grad_output

    def softmax_xent(self, logits, onehot, labels, scale):
        top = logits.max(axis=1, keepdims=True)
        wrong = np.count_nonzero(logits.argmax(axis=1) != labels)
        shifted = np.subtract(logits, top, out=logits if logits.flags.writeable else None)
        loss_sum = -np.vdot(shifted, onehot)
        exp = np.exp(shifted, out=shifted)
        total = exp.sum(axis=1, keepdims=True)
        loss_sum += np.log(total).sum()
        # grad = (exp / total - onehot) * scale, written over exp without temporaries
        np.multiply(exp, scale / total, out=exp)
        exp -= onehot * scale if scale != 1.0 else onehot
        dtype = logits.dtype.type
        return exp, dtype(loss_sum), dtype(wrong)

    def sq_sum(self, w):
        flat = w.reshape(-1)
        return np.dot(flat, flat)

    def sgd_(self, param, grad, decay):
        if decay:
            param *= 1.0 - decay
        np.subtract(param, grad, out=param)
