"""Softmax cross-entropy (mean over the batch) with its gradient, and the L2 penalty, in any Array API namespace."""
from array_api_compat import array_namespace

__all__ = ["softmax", "softmax_cross_entropy", "softmax_cross_entropy_grad", "l2_penalty", "one_hot"]


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
    """Mean of ``-log softmax(logits)[i, labels[i]]``.

    Parameters
    ----------
    logits : array of shape (batch, classes)
    labels : integer array of shape (batch,)

    Returns
    -------
    0-d array: the mean loss, computed from ``logits - max(logits)`` so huge logits do not overflow.
    """
    xp = array_namespace(logits, labels)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    log_total = xp.log(xp.sum(xp.exp(shifted), axis=1))
    picked = xp.sum(shifted * one_hot(labels, logits.shape[1], logits.dtype), axis=1)
    return xp.mean(log_total - picked)


def softmax_cross_entropy_grad(logits, labels):
    """Gradient of ``softmax_cross_entropy``: ``(softmax(logits) - onehot) / batch``, shape (batch, classes)."""
    return (softmax(logits) - one_hot(labels, logits.shape[1], logits.dtype)) / logits.shape[0]


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
    """``[(kernels, weight), ...]`` for every layer with a weight matrix, in layer order."""
    return [(layer.kernels, layer.params[name]) for _, layer, name in model.named_parameters() if name == "weight"]
