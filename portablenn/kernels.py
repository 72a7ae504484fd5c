"""Generic Array API kernels for the hot path: the reference that every backend fast path must match."""


class Kernels:
    """The hot-path operations, written once against the Array API standard.

    Layers and the optimizers' in-place forms call these instead of composing ``xp`` calls
    themselves, so a backend can replace one with a faster twin (``backends.numpy``,
    ``backends.cupy_kernels``) without touching the model code. Every method here is the definition of what
    its twin computes. A backend may also offer fusions that a built training step chooses
    (``fused_loss``, ``fuses_sgd``; see ``portablenn.step``); here there are none.
    ``out`` arguments are buffers a twin *may* write into; the generic version ignores them.
    """

    def __init__(self, xp):
        self.xp = xp

    def matmul(self, a, b, out=None):
        """``(m, k) @ (k, n) -> (m, n)``."""
        return a @ b

    def linear(self, x, weight, bias, out=None):
        """``(batch, in) @ (in, out) + (out,) -> (batch, out)``; ``bias`` may be None.

        Through ``self.matmul``, so a twin's GEMM (and its ``out`` buffer) serves here too; the bias
        is added in place to that fresh result.
        """
        y = self.matmul(x, weight, out)
        if bias is not None:
            y += bias
        return y

    def matmul_update_(self, c, a, b, alpha, beta=1.0):
        """In place ``c = beta * c + alpha * (a @ b)``: a weight update (with its decay) and no gradient array."""
        if beta != 1.0:
            c *= beta
        if alpha == -1.0:
            c -= a @ b
        else:
            c += alpha * (a @ b)

    def sum_rows(self, g, out=None):
        """``(batch, n) -> (n,)``: the bias gradient."""
        return self.xp.sum(g, axis=0)

    def relu(self, x):
        """``max(x, 0)`` elementwise."""
        return self.xp.maximum(x, 0.0)

    def relu_backward(self, grad_output, output):
        """``grad_output * (output > 0)``."""
        return self.xp.where(output > 0, grad_output, 0.0)

    def fused_loss(self, loss, stacked=False):
        """A fused twin of ``loss.value_and_grad`` (same signature) that a built step may use, or None; with
        ``stacked``, the twin for a stack's ``(M, batch, out)`` outputs (named ``stacked_`` + the same name).

        The twin is the kernel method named by ``loss.fused_twin()``: the ``fused`` of the loss's own class
        (not inherited: a subclass that changes the math has none until it names one), and none where the
        loss's options change the math (class weights, label smoothing); the generic kernels define no
        twins, so a step built on them is the plain composition of the layers', the loss's and the
        optimizer's own code, the reference every fusion is tested against. A twin takes
        ``(outputs, *targets, scale)``: softmax cross-entropy's ``softmax_xent(logits, labels, onehot, scale)``.
        """
        name = loss.fused_twin()
        twin = getattr(self, ("stacked_" if stacked else "") + name, None) if name else None
        if twin is None:
            return None
        return lambda xp, outputs, targets, scale: twin(outputs, *targets, scale)

    fuses_sgd = False  # whether a built step may fold plain SGD into the backward GEMMs (``portablenn.step``)

    def sq_sum(self, w):
        """``sum(w ** 2)`` as a 0-d array."""
        return self.xp.sum(w * w)

    def sgd_(self, param, grad, lr, decay):
        """In place: ``param = param * (1 - lr * decay) - lr * grad``."""
        if decay:
            param *= 1.0 - lr * decay
        param -= grad if lr == 1.0 else lr * grad

    def momentum_(self, param, velocity, grad, lr, momentum, decay, nesterov):
        """In place, PyTorch's SGD momentum (for a constant lr) with the velocity holding ``lr * v``:
        ``g = grad + decay * param``, ``velocity = momentum * velocity + lr * g``, then ``param -= velocity``
        or, Nesterov, ``param -= lr * g + momentum * velocity``."""
        if decay:
            grad = grad + decay * param
        step = lr * grad
        velocity *= momentum
        velocity += step
        param -= (step + momentum * velocity) if nesterov else velocity

    def minibatch(self, X, y, onehot, order, start, offsets):
        """The rows at positions ``start + offsets`` (through the permutation ``order`` unless None) of
        ``X (n, in)``, ``y (n,)`` and ``onehot (n, classes)``: copies, for a step whose addresses are fixed.

        ``start`` is a 0-d index array on the device, ``offsets`` is ``arange(batch)``.
        """
        xp = self.xp
        rows = start + offsets
        if order is not None:
            rows = xp.take(order, rows, axis=0)
        return xp.take(X, rows, axis=0), xp.take(y, rows, axis=0), xp.take(onehot, rows, axis=0)

    def record_step(self, losses, wrong_total, start, starts, loss, wrong, batch):
        """In place, after a fixed-address step: ``losses[start // batch] = loss``, ``wrong_total +=
        wrong``, ``start += batch``. ``starts`` is ``arange(len(losses)) * batch``; the others are 0-d.
        """
        # where, not a product with a mask: an infinite loss must not turn the other steps into NaN
        losses[...] = self.xp.where(starts == start, loss, losses)
        wrong_total += wrong
        start += batch

    def scale_(self, x, factor):
        """In place: ``x *= factor`` (AdamW's decoupled weight decay)."""
        x *= factor

    def adam_(self, param, m, v, grad, beta1, beta2, step_size, eps_hat, l2):
        """In place, PyTorch's Adam: ``param -= step_size * m / (sqrt(v) + eps_hat)``."""
        xp = self.xp
        if l2:
            grad = grad + l2 * param
        m *= beta1
        m += (1.0 - beta1) * grad
        v *= beta2
        v += (1.0 - beta2) * (grad * grad)
        param -= step_size * (m / (xp.sqrt(v) + eps_hat))
