"""Losses as objects: a training objective's value, gradient and metric over a minibatch, in any Array API
namespace; and the L2 penalty. A backend may replace a loss's ``value_and_grad`` by a fused twin when a
training step is built (``portablenn.step``); the method here is the definition the twin is tested against."""
from array_api_compat import array_namespace

from .registry import LOSSES, Configurable, register_loss
from .validation import check_labels

__all__ = ["Loss", "SoftmaxCrossEntropy", "LOSSES", "get_loss", "softmax", "softmax_cross_entropy",
           "softmax_cross_entropy_grad", "l2_penalty", "one_hot"]


class Loss(Configurable):
    """A training objective: its targets, its value summed over a minibatch, the gradient, and a metric.

    Sums, not means: ``fit`` adds them over minibatches (and data-parallel ranks) and divides once by
    the rows. ``xp`` is passed in, resolved once per fit. Subclasses define ``check_targets``,
    ``encode`` and ``value_and_grad``, and may define a cheaper ``value``.
    """

    metric = "error"  # what the metric sum counts; History reports it divided by the rows
    fused = None  # the name of the kernels' fused twin of value_and_grad, if any (read on the class itself)
    stratify = False  # whether a validation split keeps each class's share (classification losses)

    def check_targets(self, y, n, outputs, name="y"):
        """Host targets checked against ``n`` rows and the model's ``outputs`` features; InputError otherwise."""
        raise NotImplementedError

    def encode(self, device, y, outputs, dtype):
        """Checked host targets -> a tuple of device arrays, each with the batch as its first axis, for a
        model of ``outputs`` output features in ``dtype``."""
        raise NotImplementedError

    def value_and_grad(self, xp, outputs, targets, scale):
        """``(grad, loss_sum, metric_sum)``: the gradient of the summed loss with respect to ``outputs``
        times ``scale`` (``1 / rows`` for the mean), and two 0-d arrays."""
        raise NotImplementedError

    def value(self, xp, outputs, targets):
        """``(loss_sum, metric_sum)`` without the gradient (evaluation)."""
        _, loss_sum, metric_sum = self.value_and_grad(xp, outputs, targets, 1.0)
        return loss_sum, metric_sum

    def __eq__(self, other):
        return type(self) is type(other) and self.to_config() == other.to_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.to_config().items()))))


@register_loss(name="softmax_cross_entropy")
class SoftmaxCrossEntropy(Loss):
    """``-log softmax(logits)[label]`` per row; the metric counts rows whose arg-max is not the label.

    Targets are integer labels ``(n,)``, encoded on the device as ``(labels, one-hot rows)``.
    """

    stratify = True
    fused = "softmax_xent"  # NumPy's and CuPy's kernels: (logits, labels, onehot, scale) -> (grad, loss, wrong)

    def check_targets(self, y, n, outputs, name="y"):
        return check_labels(y, n, outputs, name)

    def encode(self, device, y, outputs, dtype):
        labels = device.asarray(y, dtype=device.index_dtype)
        return labels, _one_hot_rows(device, labels, outputs, device.dtype(dtype))

    def value_and_grad(self, xp, logits, targets, scale):
        labels, onehot = targets
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=1, keepdims=True)
        grad = (exp / total - onehot) * scale  # d/dlogits of the summed loss: softmax - onehot
        loss_sum = xp.sum(xp.log(total)) - xp.sum(shifted * onehot)  # stable for huge logits
        wrong = xp.sum(xp.astype(xp.argmax(logits, axis=1) != labels, logits.dtype))
        return grad, loss_sum, wrong


def _one_hot_rows(device, labels, classes, dtype):
    """``(n, classes)`` one-hot rows of device ``labels``."""
    xp, n = device.xp, labels.shape[0]
    with device.activate():
        if classes <= n:  # rows of the identity picked by label: ~6x faster than comparing with arange
            identity = xp.eye(classes, dtype=dtype, device=device.native)
            return xp.take(identity, labels, axis=0)
        # never classes squared: an identity larger than the one-hot rows themselves
        columns = xp.arange(classes, dtype=labels.dtype, device=device.native)
        return xp.astype(labels[:, None] == columns, dtype)


def get_loss(loss):
    """A Loss object from itself, a registered name ("softmax_cross_entropy") or None (the default)."""
    if loss is None:
        return SoftmaxCrossEntropy()
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        return LOSSES.get(loss)()
    raise TypeError(f"loss must be a portablenn Loss or the name of one, not {type(loss).__name__}")


# -- the functions of the first wave, kept: the same math through the loss object ----------------
def softmax(logits):
    """``(batch, classes)`` logits -> probabilities, shifted by each row's maximum (no overflow)."""
    xp = array_namespace(logits)
    exp = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
    return exp / xp.sum(exp, axis=1, keepdims=True)


def one_hot(labels, num_classes, dtype):
    """``(batch,)`` integer labels -> ``(batch, num_classes)`` one-hot rows of ``dtype``."""
    xp = array_namespace(labels)
    classes = xp.arange(num_classes, dtype=labels.dtype, device=getattr(labels, "device", None))
    return xp.astype(labels[:, None] == classes[None, :], dtype)


def softmax_cross_entropy(logits, labels):
    """Mean of ``-log softmax(logits)[i, labels[i]]`` over a ``(batch, classes)`` batch, as a 0-d array."""
    xp = array_namespace(logits, labels)
    targets = (labels, one_hot(labels, logits.shape[1], logits.dtype))
    loss_sum, _ = SoftmaxCrossEntropy().value(xp, logits, targets)
    return loss_sum / logits.shape[0]


def softmax_cross_entropy_grad(logits, labels):
    """Gradient of ``softmax_cross_entropy``: ``(softmax(logits) - onehot) / batch``, shape (batch, classes)."""
    xp = array_namespace(logits, labels)
    targets = (labels, one_hot(labels, logits.shape[1], logits.dtype))
    return SoftmaxCrossEntropy().value_and_grad(xp, logits, targets, 1.0 / logits.shape[0])[0]


def l2_penalty(model, l2, weights=None):
    """``0.5 * l2 * sum(W ** 2)`` over the model's weight matrices (not biases), as a 0-d array.

    ``weights`` is ``weight_matrices(model)`` where the caller has listed them already (the
    training loop does so once per fit instead of once per step).
    """
    total = None
    for kernels, weight in weight_matrices(model) if weights is None else weights:
        term = kernels.sq_sum(weight)
        total = term if total is None else total + term
    return 0.5 * l2 * total


def weight_matrices(model):
    """``[(kernels, weight), ...]`` for every parameter its layer declares ``decayed`` (the weight matrices),
    in layer order."""
    return [(layer.kernels, layer.params[name]) for _, layer, name in model.named_parameters()
            if name in layer.decayed]
