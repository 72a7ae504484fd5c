"""Losses as objects: a training objective's value, gradient and metric over a minibatch, in any Array API
namespace; and the L2 penalty. A backend may replace a loss's ``value_and_grad`` by a fused twin when a
training step is built (``portablenn.step``); the method here is the definition the twin is tested against."""
import math

from array_api_compat import array_namespace

from .registry import LOSSES, Configurable, register_loss
from .validation import (InputError, check_binary_targets, check_class_weight, check_label_smoothing, check_labels,
                         check_range, check_real_targets)

__all__ = ["Loss", "SoftmaxCrossEntropy", "BinaryCrossEntropy", "RegressionLoss", "MeanSquaredError", "Huber",
           "LOSSES", "get_loss", "softmax", "softmax_cross_entropy", "softmax_cross_entropy_grad", "l2_penalty",
           "one_hot"]


class Loss(Configurable):
    """A training objective: its targets, its value summed over a minibatch, the gradient, and a metric.

    Sums, not means: ``fit`` adds them over minibatches (and data-parallel ranks) and divides once by
    the rows. ``xp`` is passed in, resolved once per fit. Subclasses define ``check_targets``,
    ``encode`` and ``value_and_grad``, and may define a cheaper ``value``.

    On the host, once per metrics read, ``metrics`` turns the metric sums into the History fields
    ``metric_names`` (from the target figures ``statistics`` gave); ``predict`` and ``probabilities``
    turn a model's outputs into what the task predicts. ``task`` names the task: "classification"
    (one class per row), "multilabel" (independent 0/1 labels; binary is one label), "regression".
    """

    metric = "error"  # what the metric sum counts (here: wrong predictions)
    metric_names = ("error",)  # the History fields ``metrics`` gives (and their ``val_`` twins)
    task = None  # "classification", "multilabel" or "regression"; None: not said
    fused = None  # the name of the kernels' fused twin of value_and_grad, if any (read on the class itself)
    stratify = False  # whether a validation split keeps each class's share (classification losses)

    def check_targets(self, y, n, outputs, name="y"):
        """Host targets checked against ``n`` rows and the model's ``outputs`` features; InputError otherwise."""
        raise NotImplementedError

    def encode(self, device, y, outputs, dtype):
        """Checked host targets -> a tuple of device arrays, each with the batch as its first axis, for a
        model of ``outputs`` output features in ``dtype``."""
        raise NotImplementedError

    member_axis = False  # whether value_and_grad also takes a stack's outputs (see ``takes_members``)
    row_weights = False  # whether value_and_grad takes fit's sample weights (see ``takes_row_weights``)

    def value_and_grad(self, xp, outputs, targets, scale):
        """``(grad, loss_sum, metric_sum)``: the gradient of the summed loss with respect to ``outputs``
        times ``scale`` (``1 / rows`` for the mean), and two 0-d arrays.

        Where the class says ``member_axis``, ``outputs`` may also be a stack's ``(M, batch, out)`` (targets
        shared, or each with the member axis first): the sums are then each member's, ``(M,)``. Where it says
        ``row_weights``, ``targets`` may end with fit's sample weights ``(batch, 1)``: each row's loss and
        gradient times its weight (the metric sum stays unweighted)."""
        raise NotImplementedError

    def value(self, xp, outputs, targets):
        """``(loss_sum, metric_sum)`` without the gradient (evaluation)."""
        _, loss_sum, metric_sum = self.value_and_grad(xp, outputs, targets, 1.0)
        return loss_sum, metric_sum

    def takes_members(self):
        """Whether ``value_and_grad`` takes a stack's outputs ``(M, batch, out)`` with per-member sums: said
        by ``member_axis`` on the class that defines it, so a subclass that rewrites it for ``(batch, out)``
        alone is run member by member."""
        return self._said("member_axis")

    def takes_row_weights(self):
        """Whether ``value_and_grad`` takes sample weights after its targets: said by ``row_weights`` on the
        class that defines it (a subclass that rewrites it does not, until it says so)."""
        return self._said("row_weights")

    def _said(self, name):
        for cls in type(self).__mro__:
            if "value_and_grad" in cls.__dict__:
                return bool(cls.__dict__.get(name, False))
        return False

    def fused_twin(self):
        """The name of the kernels' fused twin of this object's ``value_and_grad``, or None.

        The ``fused`` named by the object's own class, not inherited: a subclass that changes the math
        has none until it names one. A loss whose options change the math returns None for them."""
        return type(self).__dict__.get("fused")

    # -- host side: once per metrics read, or once per fit ----------------------------------------
    def statistics(self, y):
        """Checked host targets -> ``{name: float}``, the figures of the data ``metrics`` needs."""
        return {}

    def metrics(self, metric_sums, n, outputs, statistics):
        """Host metric sums (float64 array, one per epoch) of ``n`` rows of a model with ``outputs``
        outputs -> ``{name: float64 array}`` for each of ``metric_names``: here the sum per row."""
        return {self.metric_names[0]: metric_sums / n}

    def predict(self, xp, outputs):
        """``(batch, outputs)`` device outputs -> device predictions."""
        raise NotImplementedError(f"{type(self).__name__} defines no predict")

    def probabilities(self, xp, outputs):
        """``(batch, outputs)`` device outputs -> device probabilities; TypeError where the task has none."""
        raise TypeError(f"{type(self).__name__} gives no probabilities")

    def strata(self, y):
        """Host targets -> the 1-D class labels a stratified validation split keeps the shares of, or
        None (not stratified): ``y`` itself where ``stratify``."""
        return y if self.stratify else None

    def __eq__(self, other):
        return type(self) is type(other) and self.to_config() == other.to_config()

    def __hash__(self):
        config = self.to_config()
        return hash((type(self), tuple(sorted((key, tuple(value) if isinstance(value, list) else value)
                                              for key, value in config.items()))))


@register_loss(name="softmax_cross_entropy")
class SoftmaxCrossEntropy(Loss):
    """``-sum_j t_j log softmax(logits)_j`` per row (torch.nn.CrossEntropyLoss); the metric counts rows whose
    arg-max is not the label. Targets are integer labels ``(n,)``.

    Parameters
    ----------
    class_weight : sequence of K positive floats, optional
        Each row's loss is multiplied by its label's weight, and ``fit`` divides the sum by the rows, as
        Keras' ``class_weight`` does. (``torch.nn.CrossEntropyLoss(weight=...)``'s mean divides by the
        summed weights of the rows instead; and with label smoothing torch weights each class's term of
        the smoothed target by its own class's weight, where here the whole row takes its label's.)
    label_smoothing : float in [0, 1)
        The target is ``(1 - eps) onehot + eps / K``, as torch's ``label_smoothing``.

    Without options the targets are encoded on the device as ``(labels, one-hot rows)`` and the kernels'
    fused twin ``softmax_xent`` may run; with either option as ``(labels, w[label] * smoothed target
    rows)`` (each row sums to its weight) and only the loss's own code runs.
    """

    config_keys = ("class_weight", "label_smoothing")
    metric_names = ("error",)
    task = "classification"
    stratify = True
    fused = "softmax_xent"  # NumPy's and CuPy's kernels: (logits, labels, onehot, scale) -> (grad, loss, wrong)

    def __init__(self, class_weight=None, label_smoothing=0.0):
        self.class_weight = check_class_weight(class_weight)  # a tuple of floats, or None
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def to_config(self):
        return {"class_weight": None if self.class_weight is None else list(self.class_weight),
                "label_smoothing": self.label_smoothing}

    def fused_twin(self):
        plain = self.class_weight is None and not self.label_smoothing
        return super().fused_twin() if plain else None

    def check_targets(self, y, n, outputs, name="y"):
        if self.class_weight is not None and len(self.class_weight) != outputs:
            raise InputError(f"class_weight has {len(self.class_weight)} weights but the model has {outputs} "
                             f"outputs (one weight per class)")
        return check_labels(y, n, outputs, name)

    def encode(self, device, y, outputs, dtype):
        labels = device.asarray(y, dtype=device.index_dtype)
        dtype = device.dtype(dtype)
        rows = _one_hot_rows(device, labels, outputs, dtype)
        eps, xp = self.label_smoothing, device.xp
        with device.activate():
            if eps:
                rows = rows * (1.0 - eps) + eps / outputs
            if self.class_weight is not None:
                weights = xp.asarray(self.class_weight, dtype=dtype, device=device.native)
                rows = rows * xp.take(weights, labels, axis=0)[:, None]
        return labels, rows

    member_axis = row_weights = True

    def value_and_grad(self, xp, logits, targets, scale):
        labels, target, *weight = targets  # (batch,), (batch, classes): one-hot, or the (weighted, smoothed) rows
        if weight:  # sample weights (batch, 1): a row of weight s is s times its target row, and sums to s w
            target = target * weight[0]
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=-1, keepdims=True)
        if self.class_weight is None and not weight:  # the target rows sum to 1
            grad = (exp / total - target) * scale  # d/dlogits of the summed loss: softmax - target
            loss_sum = _sum(xp, xp.log(total)) - _sum(xp, shifted * target)  # stable for huge logits
        else:  # each row w * t sums to its weight w: loss w (log total - t . shifted), gradient w softmax - w t
            weight = xp.sum(target, axis=-1, keepdims=True)
            grad = (exp / total * weight - target) * scale
            loss_sum = _sum(xp, weight * xp.log(total)) - _sum(xp, shifted * target)
        wrong = xp.sum(xp.astype(xp.argmax(logits, axis=-1) != labels, logits.dtype), axis=-1)
        return grad, loss_sum, wrong

    def metrics(self, metric_sums, n, outputs, statistics):
        """``{"error": wrong rows / n}``."""
        return {"error": metric_sums / n}

    def predict(self, xp, outputs):
        """``(batch, classes)`` -> ``(batch,)`` integer labels of the largest logit."""
        return xp.argmax(outputs, axis=-1)

    def probabilities(self, xp, outputs):
        """``(batch, classes)`` -> softmax rows."""
        return _softmax(xp, outputs)


@register_loss(name="binary_cross_entropy")
class BinaryCrossEntropy(Loss):
    """Binary cross-entropy with logits, mean over the outputs (torch.nn.BCEWithLogitsLoss): per element
    ``max(x, 0) - x y + log(1 + exp(-|x|))``, ``x`` a logit and ``y`` its 0/1 target.

    Binary classification (one output, targets ``(n,)`` or ``(n, 1)``) or multi-label (``k`` outputs,
    targets ``(n, k)`` of 0/1, one column per label); soft targets in [0, 1] are allowed. A row's loss is
    the mean of its ``k`` terms. The metric counts wrong entries (``x > 0``, i.e. ``sigmoid(x) > 0.5``,
    against ``y >= 0.5``): History's ``error`` is their fraction of the ``n k`` entries (for one output, the
    error rate). Not stratified by ``stratify`` (a multi-label row has no single class); ``strata`` gives
    the labels of 0/1 single-column targets for a split that can use them.
    """

    metric_names = ("error",)
    task = "multilabel"
    stratify = False

    def check_targets(self, y, n, outputs, name="y"):
        return check_binary_targets(y, n, outputs, name)

    def encode(self, device, y, outputs, dtype):
        return (device.asarray(_columns(y, outputs), dtype=dtype),)

    member_axis = row_weights = True

    def value_and_grad(self, xp, logits, targets, scale):
        (y, *weight), k = targets, logits.shape[-1]
        e = xp.exp(-xp.abs(logits))  # in (0, 1]: neither the loss nor the sigmoid overflows
        terms = xp.maximum(logits, 0.0) - logits * y + xp.log1p(e)
        sigmoid = xp.where(logits >= 0, 1.0, e) / (1.0 + e)
        grad = (sigmoid - y) * (scale / k)
        if weight:  # sample weights (batch, 1)
            terms, grad = terms * weight[0], grad * weight[0]
        wrong = _sum(xp, xp.astype((logits > 0) != (y >= 0.5), logits.dtype))
        return grad, _sum(xp, terms) / k, wrong

    def metrics(self, metric_sums, n, outputs, statistics):
        """``{"error": wrong entries / (n outputs)}``."""
        return {"error": metric_sums / (n * outputs)}

    def predict(self, xp, outputs):
        """``(batch, k)`` logits -> ``(batch, k)`` int64 0/1: 1 where the logit is positive."""
        return xp.astype(outputs > 0, xp.int64)

    def probabilities(self, xp, outputs):
        """``(batch, k)`` logits -> ``(batch, k)`` sigmoids."""
        e = xp.exp(-xp.abs(outputs))
        return xp.where(outputs >= 0, 1.0, e) / (1.0 + e)

    def strata(self, y):
        """The 0/1 labels of single-column hard targets; None for multi-label or soft targets."""
        xp = array_namespace(y)
        if len(y.shape) not in (1, 2) or (len(y.shape) == 2 and y.shape[1] != 1):
            return None
        flat = xp.reshape(y, (-1,))
        return flat if bool(xp.all((flat == 0) | (flat == 1))) else None


class RegressionLoss(Loss):
    """A loss on real targets ``(n, outputs)`` (``(n,)`` for one output), encoded as ``(targets,)``; its
    metric sum is the sum of squared errors over all elements, reported as ``rmse`` and ``r2``."""

    metric = "squared_error"
    metric_names = ("rmse", "r2")
    task = "regression"

    def check_targets(self, y, n, outputs, name="y"):
        return check_real_targets(y, n, outputs, name)

    def encode(self, device, y, outputs, dtype):
        check_range(y, dtype, "y")  # float64 targets beyond float32's range would train on infinities
        return (device.asarray(_columns(y, outputs), dtype=dtype),)

    def statistics(self, y):
        """``{"sst": sum over all elements of (y - its column's mean) ** 2}``, in float64."""
        xp = array_namespace(y)
        y = xp.astype(_columns(y, None), xp.float64)
        centred = y - xp.mean(y, axis=0)
        return {"sst": float(xp.sum(centred * centred))}

    def metrics(self, metric_sums, n, outputs, statistics):
        """``rmse = sqrt(SSE / (n outputs))``; ``r2 = 1 - SSE / sst`` (variance-weighted over the outputs, as
        scikit-learn's ``r2_score(multioutput="variance_weighted")``), NaN where the targets are constant
        (``sst`` 0 or not given: R^2 is undefined there)."""
        sst = (statistics or {}).get("sst")
        r2 = 1.0 - metric_sums / sst if sst else metric_sums * math.nan
        return {"rmse": (metric_sums / (n * outputs)) ** 0.5, "r2": r2}

    def predict(self, xp, outputs):
        """The outputs themselves, ``(batch, outputs)``."""
        return outputs

    def probabilities(self, xp, outputs):
        raise TypeError(f"{type(self).__name__} is a regression loss: it gives no probabilities")


@register_loss(name="mse")
class MeanSquaredError(RegressionLoss):
    """Mean squared error (torch.nn.MSELoss): a row's loss is ``sum_k (p_k - y_k) ** 2 / outputs``, so the
    loss ``fit`` reports is the mean over all elements."""

    member_axis = row_weights = True

    def value_and_grad(self, xp, outputs, targets, scale):
        (y, *weight), k = targets, outputs.shape[-1]
        diff = outputs - y
        squares = _sum(xp, diff * diff)
        if weight:  # sample weights (batch, 1): the loss and gradient weighted, the squared error (metric) not
            weighted = diff * weight[0]
            return weighted * (2.0 * scale / k), _sum(xp, weighted * diff) / k, squares
        return diff * (2.0 * scale / k), squares / k, squares


@register_loss(name="huber")
class Huber(RegressionLoss):
    """Huber loss (torch.nn.HuberLoss), mean over all elements: per element ``0.5 d ** 2`` where ``|d| <=
    delta``, else ``delta (|d| - 0.5 delta)``, ``d = p - y``; its gradient ``d`` clipped to ``[-delta, delta]``."""

    config_keys = ("delta",)

    def __init__(self, delta=1.0):
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < math.inf:
            raise InputError(f"Huber's delta must be a positive finite number, got {delta!r}")
        self.delta = float(delta)

    member_axis = row_weights = True

    def value_and_grad(self, xp, outputs, targets, scale):
        (y, *weight), k, delta = targets, outputs.shape[-1], self.delta
        diff = outputs - y
        size = xp.abs(diff)
        inner = xp.minimum(size, delta)  # |d| up to delta: the loss is inner (|d| - inner / 2) either way
        terms = inner * (size - 0.5 * inner)
        grad = xp.minimum(xp.maximum(diff, -delta), delta) * (scale / k)
        if weight:  # sample weights (batch, 1)
            terms, grad = terms * weight[0], grad * weight[0]
        return grad, _sum(xp, terms) / k, _sum(xp, diff * diff)


def _sum(xp, a):
    """The sum over a minibatch's ``(batch, out)``: 0-d, or ``(M,)`` over a stack's ``(M, batch, out)``."""
    return xp.sum(a, axis=(-2, -1))


def _columns(y, outputs):
    """Host targets ``(n,)`` -> ``(n, 1)``; 2-D ones as they are."""
    if len(y.shape) != 1:
        return y
    return array_namespace(y).reshape(y, (y.shape[0], 1))


def _softmax(xp, logits):
    exp = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
    return exp / xp.sum(exp, axis=-1, keepdims=True)


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
    return _softmax(array_namespace(logits), logits)


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
