"""CuPy fast path: fused elementwise/reduction kernels and cuBLAS GEMM updates (same results as ``Kernels``).

On a GPU a minibatch step is launch-bound: the generic softmax cross-entropy is ~15 kernels, this
one is 7; ReLU backward is one kernel instead of three; the SGD weight update is one cuBLAS GEMM
with ``beta = 1``; Adam updates ``param, m, v`` in one kernel.
"""
import cupy
from cupy import cublas

from .kernels import Kernels

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

_adam = cupy.ElementwiseKernel(
    "T grad, T beta1, T beta2, T step_size, T eps_hat, T l2", "T param, T m, T v",
    """
    T g = grad + l2 * param;
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    param -= step_size * m / (sqrt(v) + eps_hat);
    """, "portablenn_adam")

_sgd_decay = cupy.ElementwiseKernel(
    "T grad, T keep", "T param", "param = param * keep - grad", "portablenn_sgd_decay")


class CupyKernels(Kernels):
    """Fused CUDA kernels; see ``Kernels`` for the math each one must match."""

    def matmul(self, a, b, out=None):
        if out is None or out.shape != (a.shape[0], b.shape[1]) or out.dtype != a.dtype:
            return a @ b
        return cupy.matmul(a, b, out=out)

    def matmul_update_(self, c, a, b, alpha, beta=1.0):
        # c = alpha * a @ b + beta * c in one cuBLAS call
        if c.flags.c_contiguous and a.dtype == b.dtype == c.dtype and c.dtype.char in "fd":
            cublas.gemm("N", "N", a, b, out=c, alpha=alpha, beta=beta)
        else:
            super().matmul_update_(c, a, b, alpha, beta)

    def relu(self, x):
        return cupy.maximum(x, 0)

    def relu_backward(self, grad_output, output):
        return _relu_backward(grad_output, output)

    def softmax_xent(self, logits, onehot, labels, scale):
        top = cupy.broadcast_to(logits.max(axis=1, keepdims=True), logits.shape)
        total = cupy.broadcast_to(_row_sum_exp(logits, top, axis=1, keepdims=True), logits.shape)
        grad = _xent_grad(logits, top, total, onehot, logits.dtype.type(scale))
        loss_sum = _xent_loss(logits, top, total, onehot)
        wrong = (logits.argmax(axis=1) != labels).sum(dtype=logits.dtype)
        return grad, loss_sum, wrong

    def sgd_(self, param, grad, decay):
        if decay:
            _sgd_decay(grad, param.dtype.type(1.0 - decay), param)
        else:
            param -= grad

    def adam_(self, param, m, v, grad, beta1, beta2, step_size, eps_hat, l2):
        t = param.dtype.type
        _adam(grad, t(beta1), t(beta2), t(step_size), t(eps_hat), t(l2), param, m, v)
