"""The training step, built once: forward, loss, backward, gradient reduction and update in one callable.

``make_step(model, loss, optimizer, device)`` assembles the model's layers, the loss and the optimizer
(the math, which knows nothing of backends) into ``step(xb, targets, rows) -> (loss_sum, metric_sum)``.
When it is built, the step chooses which of the device kernels' fusions run that math:

* the loss's fused twin, ``kernels.fused_loss(loss)`` (NumPy's and CuPy's softmax cross-entropy);
* plain SGD folded into the backward GEMMs, where ``kernels.fuses_sgd``: with no momentum, no
  reducer, no gradient clipping and every parameter in a ``Linear`` layer, the step's learning rate
  (``optimizer.lr_at(step)``: scheduled or not, a host float) is folded into the loss gradient and each
  Linear layer's update is one GEMM ``W = (1 - lr l2) W - x.T @ g`` (no weight gradient is made); its
  bias takes ``b -= sum(g)``;
* otherwise every layer's ``backward`` fills true gradients, a reducer (data parallelism) sums them,
  and the optimizer's in-place rule updates each parameter through the kernels (fused twins on CuPy);
  on a backend whose arrays cannot change in place (``Backend.mutable`` False) its functional rule
  returns new parameters and state instead.

With the generic kernels nothing is fused: the step is then the plain composition of the layers',
the loss's and the optimizer's own code, the twin that every fusion is tested against. A recorded
(CUDA graph) replay of the step is ``portablenn.static_step``'s business, on top of this.
"""
from .layers import Linear, Sequential
from .losses import l2_penalty, weight_matrices
from .optim import SGD

__all__ = ["Step", "make_step", "loss_function"]


def loss_function(loss, kernels):
    """``value_and_grad(xp, outputs, targets, scale)`` of ``loss`` as a step on ``kernels`` runs it: the
    backend's fused twin where it has one, else the loss's own."""
    return kernels.fused_loss(loss) or loss.value_and_grad


def make_step(model, loss, optimizer, device, *, l2=0.0, clip_norm=None, reducer=None, gradients=None,
              weighted=False):
    """The training step of ``model`` with ``loss`` and ``optimizer`` on ``device``; see ``Step``."""
    return Step(model, loss, optimizer, device, l2=l2, clip_norm=clip_norm, reducer=reducer, gradients=gradients,
                weighted=weighted)


class Step:
    """One minibatch of training; ``fused`` names the fusions chosen (for tests and ``info``).

    Parameters
    ----------
    model : Sequential, on ``device``
    loss : portablenn.losses.Loss
    optimizer : Optimizer, bound to ``model``
    device : Device
    l2 : float
        L2 strength: ``0.5 l2 sum(W^2)`` in the loss, ``l2 W`` in every weight matrix's gradient.
    clip_norm : float, optional
        Clip the gradients to this global 2-norm (all parameters together) before the update, as
        ``torch.nn.utils.clip_grad_norm_``: every gradient times ``min(1, clip_norm / (norm + 1e-6))``,
        computed on the device (no host sync); the L2 term is added after, by the optimizer's rule.
    reducer : optional
        Sums gradients over data-parallel workers (``portablenn.train.Reducer``), through ``gradients``.
    gradients : optional
        The flat gradient buffer the reducer sums (``portablenn.train`` lays it out).
    weighted : bool
        The minibatch targets end with sample weights: the loss's own ``value_and_grad`` takes them, no fused
        twin (which knows the plain targets only).
    """

    def __init__(self, model, loss, optimizer, device, *, l2=0.0, clip_norm=None, reducer=None, gradients=None,
                 weighted=False):
        self.model, self.loss, self.optimizer, self.device = model, loss, optimizer, device
        self.l2, self.reducer, self.gradients = float(l2), reducer, gradients
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.xp, kernels = device.xp, device.kernels
        self._value_and_grad = loss.value_and_grad if weighted else loss_function(loss, kernels)
        self._functional = not device.backend.mutable  # arrays that cannot change in place: new ones instead
        # listed once where arrays change in place; where they are rebound, read afresh every step
        self._weights = weight_matrices(model) if self.l2 and not self._functional else None
        # (key, layer, name, L2 strength, takes weight decay): both touch what the layer declares `decayed`
        self._params = [(key, layer, name, self.l2 if name in layer.decayed else 0.0, name in layer.decayed)
                        for key, layer, name in model.named_parameters()]
        self._sgd_in_gemm = (kernels.fuses_sgd and not self._functional and type(optimizer) is SGD
                             and not optimizer.momentum and self.clip_norm is None
                             and reducer is None and isinstance(model, Sequential)
                             and all(type(layer) is Linear for layer in model.layers if layer.params))
        self.fused = [name for name, chosen in (("loss", self._value_and_grad != loss.value_and_grad),
                                                ("sgd_in_gemm", self._sgd_in_gemm)) if chosen]

    def __call__(self, xb, targets, rows, hyper=None):
        """Train on one minibatch (this worker's part of ``rows`` global rows): device ``(loss_sum, metric_sum)``.

        ``hyper`` is the optimizer's scalars for this step where the caller gives them (a compiled pure step
        passes them as arguments, ``portablenn.pure_step``); by default ``optimizer.hyper`` of the step's number.
        """
        model, optimizer = self.model, self.optimizer
        outputs = model.forward(xb)
        lr = optimizer.lr_at(optimizer.steps + 1) if self._sgd_in_gemm else 1.0  # folded into the loss gradient
        grad, loss_sum, metric_sum = self._value_and_grad(self.xp, outputs, targets, lr / rows)
        if self.l2:
            loss_sum = loss_sum + xb.shape[0] * l2_penalty(model, self.l2, self._weights)
        optimizer.steps += 1
        if self._sgd_in_gemm:
            self._backward_and_sgd(grad, lr)
            return loss_sum, metric_sum
        model.backward(grad, input_grad=False)
        if self.reducer is not None:
            self.gradients.reduce(self.reducer)
        if self.clip_norm is not None:
            self._clip()
        hyper, device = optimizer.hyper(optimizer.steps) if hyper is None else hyper, self.device
        for key, layer, name, decay, decays in self._params:
            p = layer.params[name]
            state = optimizer.buffers(key, p, device)
            if self._functional:
                layer.params[name], optimizer.state[key] = optimizer.update(self.xp, p, layer.grads[name], state,
                                                                            decay, hyper, decays)
            else:
                optimizer.update_(layer.kernels, p, layer.grads[name], state, decay, hyper, decays)
        return loss_sum, metric_sum

    def _clip(self):
        """Every gradient times ``min(1, clip_norm / (norm + 1e-6))``, ``norm`` the global 2-norm: on the device."""
        xp, total = self.xp, None
        for _, layer, name, _, _ in self._params:
            term = layer.kernels.sq_sum(layer.grads[name])
            total = term if total is None else total + term
        factor = xp.minimum(self.clip_norm / (xp.sqrt(total) + 1e-6), 1.0)
        for _, layer, name, _, _ in self._params:
            layer.grads[name] = layer.grads[name] * factor  # a new array: a reducer's flat views stay untouched

    def _backward_and_sgd(self, grad, lr):
        """Backward with plain SGD inside: ``grad`` already carries the step's learning rate ``lr``."""
        layers, keep = self.model.layers, 1.0 - lr * self.l2
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if type(layer) is Linear:
                grad = _linear_sgd(layer, grad, i > 0, keep)
            else:
                grad = layer.backward(grad, i > 0)


def _linear_sgd(layer, grad_output, input_grad, keep):
    """``Linear.backward`` and the SGD update fused: ``W = keep W - x.T @ g`` in one GEMM, ``b -= sum(g)``,
    where ``g`` is the output gradient times the learning rate; returns the input gradient."""
    k, weight = layer.kernels, layer.params["weight"]
    grad_input = k.matmul(grad_output, weight.T) if input_grad else None  # before the weight changes
    k.matmul_update_(weight, layer._x.T, grad_output, -1.0, keep)  # the decay as GEMM's beta
    if "bias" in layer.params:
        k.sgd_(layer.params["bias"], k.sum_rows(grad_output), 1.0, 0.0)
    return grad_input
