"""The losses of #18: mean squared error, Huber, binary cross-entropy with logits, and softmax cross-entropy
with class weights and label smoothing.

Each is checked on every device against a plain-NumPy oracle written below from the documented formulas
(PyTorch's ``MSELoss``, ``HuberLoss``, ``BCEWithLogitsLoss``, ``CrossEntropyLoss``; Keras' ``class_weight``),
against central differences in float64, and against PyTorch itself where it imports; then their targets'
checks, the registry round trip, when the kernels' fused twin may run, the host-side metrics (R^2 against
scikit-learn), predictions, and training with ``fit`` against a NumPy training loop.
"""
import json
import math

import numpy as np
import pytest

import portablenn as pn
from portablenn.losses import BinaryCrossEntropy, Huber, Loss, MeanSquaredError, SoftmaxCrossEntropy, get_loss
from portablenn.registry import LOSSES
from portablenn.split import validation_split
from portablenn.validation import InputError

from _support import central_difference, fd_close, host, require_dtype
from _tolerances import assert_close, assert_state_close


# -- the oracle: each loss from its formula, float64 NumPy; (d loss_sum / d outputs, loss_sum, metric_sum) ----
def np_mse(p, y):
    """torch.nn.MSELoss, a row's loss the mean of its squared errors: loss_sum / n is the mean over elements."""
    d, k = p - y, p.shape[1]
    return 2.0 * d / k, float(np.sum(d ** 2)) / k, float(np.sum(d ** 2))


def np_huber(p, y, delta):
    """torch.nn.HuberLoss: 0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta), mean over the elements."""
    d, k = p - y, p.shape[1]
    inside = np.abs(d) < delta
    per = np.where(inside, 0.5 * d ** 2, delta * (np.abs(d) - 0.5 * delta))
    grad = np.where(inside, d, delta * np.sign(d))
    return grad / k, float(per.sum()) / k, float(np.sum(d ** 2))


def np_bce(x, y):
    """torch.nn.BCEWithLogitsLoss: -[y log s + (1 - y) log(1 - s)], s = sigmoid(x), mean over the elements;
    the metric counts entries with (s > 0.5) != (y >= 0.5). Naive form: moderate logits only."""
    s, k = 1.0 / (1.0 + np.exp(-x)), x.shape[1]
    per = -(y * np.log(s) + (1.0 - y) * np.log(1.0 - s))
    return (s - y) / k, float(per.sum()) / k, float(np.sum((s > 0.5) != (y >= 0.5)))


def np_ce(z, labels, class_weight=None, label_smoothing=0.0):
    """Softmax cross-entropy against t = (1 - eps) onehot + eps / K, each row times its label's weight (Keras'
    class_weight: the sum is divided by the rows afterwards); the metric counts wrong arg-maxes."""
    n, K = z.shape
    logp = z - z.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    t = (1.0 - label_smoothing) * np.eye(K)[labels] + label_smoothing / K
    w = np.ones(n) if class_weight is None else np.asarray(class_weight, dtype=np.float64)[labels]
    per = -(t * logp).sum(axis=1)
    grad = w[:, None] * (np.exp(logp) - t)
    return grad, float(np.sum(w * per)), float(np.sum(np.argmax(z, axis=1) != labels))


def _away(rng, shape, low, high):
    """Random values with |v| in [low, high] and random signs."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


# name -> (loss, outputs, targets(rng, n, k, p), oracle(p, y)); the outputs p of each case are drawn by _case
def _huber_targets(rng, n, k, p):  # |p - y| at least 0.05 from delta = 0.7: no kink within a difference step
    d = np.where(rng.random((n, k)) < 0.5, _away(rng, (n, k), 0.05, 0.65), _away(rng, (n, k), 0.75, 2.0))
    return p - d


CASES = {
    "mse": (MeanSquaredError(), 3, lambda rng, n, k, p: rng.standard_normal((n, k)), np_mse),
    "mse-1-output": (MeanSquaredError(), 1, lambda rng, n, k, p: rng.standard_normal(n), np_mse),
    "huber": (Huber(delta=0.7), 3, _huber_targets, lambda p, y: np_huber(p, y, 0.7)),
    "bce-multilabel": (BinaryCrossEntropy(), 3, lambda rng, n, k, p: (rng.random((n, k)) < 0.4).astype(float),
                       np_bce),
    "bce-soft": (BinaryCrossEntropy(), 2, lambda rng, n, k, p: rng.random((n, k)), np_bce),
    "bce-binary": (BinaryCrossEntropy(), 1, lambda rng, n, k, p: rng.integers(0, 2, n), np_bce),
    "ce": (SoftmaxCrossEntropy(), 4, lambda rng, n, k, p: rng.integers(0, k, n), np_ce),
    "ce-weighted": (SoftmaxCrossEntropy(class_weight=[0.5, 2.0, 1.0, 3.0]), 4,
                    lambda rng, n, k, p: rng.integers(0, k, n), lambda p, y: np_ce(p, y, [0.5, 2.0, 1.0, 3.0])),
    "ce-smoothed": (SoftmaxCrossEntropy(label_smoothing=0.2), 4, lambda rng, n, k, p: rng.integers(0, k, n),
                    lambda p, y: np_ce(p, y, label_smoothing=0.2)),
    "ce-weighted-smoothed": (SoftmaxCrossEntropy(class_weight=[0.5, 2.0, 1.0, 3.0], label_smoothing=0.1), 4,
                             lambda rng, n, k, p: rng.integers(0, k, n),
                             lambda p, y: np_ce(p, y, [0.5, 2.0, 1.0, 3.0], 0.1)),
}


def _case(name, n=7, seed=0, dtype="float64"):
    """``(loss, k, p, y, checked y)``: outputs ``p`` (n, k) rounded to ``dtype``, held as float64, and targets."""
    loss, k, targets, _ = CASES[name]
    rng = np.random.default_rng(seed)
    p = (2.0 * rng.standard_normal((n, k))).astype(dtype).astype(np.float64)
    y = targets(rng, n, k, p)
    return loss, k, p, y, loss.check_targets(y, n, k)


def _oracle(name, p, checked):
    return CASES[name][3](p, checked if CASES[name][0].task == "classification" else checked.reshape(p.shape))


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_gradient_and_metric_equal_the_formulas_on_every_device(device, dtype, name):
    """The loss's own ``value_and_grad`` (with ``scale``) and ``value`` against the NumPy oracle, in each dtype."""
    require_dtype(device, dtype)
    loss, k, p, y, checked = _case(name, dtype=dtype)
    grad, loss_sum, metric = _oracle(name, p, checked)
    targets = loss.encode(device, checked, k, dtype)
    outputs = device.asarray(p, dtype=dtype)
    g, value, m = loss.value_and_grad(device.xp, outputs, targets, 0.25)
    g, value, m = host(device, g), host(device, value), host(device, m)
    assert g.shape == p.shape and g.dtype == np.dtype(dtype) and value.shape == () and m.shape == ()
    assert_close(g, 0.25 * grad, dtype, factor=10, err_msg="gradient")
    assert_close(value, loss_sum, dtype, factor=10, err_msg="loss sum")
    assert_close(m, metric, dtype, factor=10, err_msg="metric sum")
    value2, m2 = loss.value(device.xp, outputs, targets)
    assert_close(host(device, value2), loss_sum, dtype, factor=10)
    assert_close(host(device, m2), metric, dtype, factor=10)


def _stacked_case(device, name, dtype, shared, members=3):
    """A stack's ``(loss, outputs (M, n, k) host, device outputs, device targets, each member's checked targets)``:
    each member's outputs drawn as ``_case``'s, the targets member 0's for all (``shared``) or each its own."""
    parts = [_case(name, seed=s, dtype=dtype) for s in range(members)]
    loss, k = parts[0][0], parts[0][1]
    p = np.stack([part[2] for part in parts])
    checked = [parts[0][4] if shared else part[4] for part in parts]
    if shared:
        targets = loss.encode(device, checked[0], k, dtype)
    else:
        each = [loss.encode(device, c, k, dtype) for c in checked]
        targets = tuple(device.xp.stack([e[j] for e in each]) for j in range(len(each[0])))
    return loss, p, device.asarray(p, dtype=dtype), targets, checked


@pytest.mark.parametrize("shared", [True, False], ids=["shared-targets", "own-targets"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_stacks_outputs_give_each_members_sums_on_every_device(device, dtype, name, shared):
    """``value_and_grad`` of a stack's ``(M, batch, out)`` outputs (``fit_stack`` calls it so): each member's
    gradient, loss sum and metric sum are the oracle's on its own slice, the targets shared or each member's."""
    require_dtype(device, dtype)
    loss, p, outputs, targets, checked = _stacked_case(device, name, dtype, shared)
    assert loss.takes_members()
    g, value, m = (host(device, a) for a in loss.value_and_grad(device.xp, outputs, targets, 0.25))
    assert g.shape == p.shape and value.shape == (3,) and m.shape == (3,)
    for i in range(3):
        grad, loss_sum, metric = _oracle(name, p[i], checked[i])
        assert_close(g[i], 0.25 * grad, dtype, factor=10, err_msg=f"member {i}'s gradient")
        assert_close(value[i], loss_sum, dtype, factor=10, err_msg=f"member {i}'s loss sum")
        assert_close(m[i], metric, dtype, factor=10, err_msg=f"member {i}'s metric sum")


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_weights_weigh_each_rows_loss_and_gradient_on_every_device(device, dtype, name):
    """``fit``'s sample weights, a last target ``(batch, 1)``: the gradient and loss sum are the oracle's row by
    row times the row's weight; the metric sum stays unweighted."""
    require_dtype(device, dtype)
    loss, k, p, y, checked = _case(name, dtype=dtype)
    w = np.random.default_rng(5).uniform(0.0, 3.0, len(p)).astype(dtype).astype(np.float64)
    assert loss.takes_row_weights()
    targets = (*loss.encode(device, checked, k, dtype), device.asarray(w.reshape(-1, 1), dtype=dtype))
    g, value, m = (host(device, a) for a in loss.value_and_grad(device.xp, device.asarray(p, dtype=dtype), targets,
                                                                  0.25))
    rows = [_oracle(name, p[i:i + 1], checked[i:i + 1]) for i in range(len(p))]
    assert_close(g, 0.25 * np.concatenate([w[i] * row[0] for i, row in enumerate(rows)]), dtype, factor=10)
    assert_close(value, sum(w[i] * row[1] for i, row in enumerate(rows)), dtype, factor=10)
    assert_close(m, sum(row[2] for row in rows), dtype, factor=10)


class TwoDimensional(MeanSquaredError):
    """A user's loss whose ``value_and_grad`` is written for ``(batch, out)`` alone."""

    def value_and_grad(self, xp, outputs, targets, scale):
        assert len(outputs.shape) == 2, "a stack's outputs reached a loss that does not take them"
        return super().value_and_grad(xp, outputs, targets, scale)


def test_a_loss_that_rewrites_value_and_grad_runs_member_by_member_in_a_stack():
    """``takes_members`` is said by the class that defines ``value_and_grad``: a subclass that only inherits it
    takes a stack's outputs, one that rewrites it is called member by member, to the same sums."""
    from portablenn.stack_fit import _stacked_loss

    assert Smoothed().takes_members() and not TwoDimensional().takes_members() and not Loss().takes_members()
    assert Smoothed().takes_row_weights() and not TwoDimensional().takes_row_weights()
    dev = pn.device("numpy")
    for shared in (True, False):
        _, p, outputs, targets, _ = _stacked_case(dev, "mse", "float64", shared)
        want = MeanSquaredError().value_and_grad(dev.xp, outputs, targets, 0.5)
        got = _stacked_loss(TwoDimensional(), 3, not shared, dev.kernels)(dev.xp, outputs, targets, 0.5)
        for a, b in zip(got, want):
            assert_close(a, b, "float64")


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_equals_central_differences_on_every_device(device, name):
    """d loss_sum / d outputs against central differences of the loss's own value, float64."""
    require_dtype(device, "float64")
    loss, k, p, y, checked = _case(name, n=5, seed=1)
    targets = loss.encode(device, checked, k, "float64")
    grad = host(device, loss.value_and_grad(device.xp, device.asarray(p, dtype="float64"), targets, 1.0)[0])

    def value(outputs):
        return float(host(device, loss.value(device.xp, device.asarray(outputs, dtype="float64"), targets)[0]))

    fd_close(grad, central_difference(value, p), err_msg=name)


def test_the_stable_forms_stay_finite_for_huge_outputs(device, dtype):
    """Logits of +-80 (exp overflows float32 at 89) and +-1000: BCE's and softmax CE's loss and gradient stay
    finite and right; predictions and probabilities too."""
    require_dtype(device, dtype)
    x = np.array([[80.0, -80.0, 1000.0], [-1000.0, 0.5, -0.5]])
    y = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = BinaryCrossEntropy()
    g, value, m = loss.value_and_grad(device.xp, device.asarray(x, dtype=dtype), loss.encode(device, y, 3, dtype), 1.0)
    # per element: max(x, 0) - x y + log1p(exp(-|x|)), exactly: 0, 80, 1000, 0, 0.5 + log1p(e^-0.5), log1p(e^-0.5) + 0.5
    expected = (80.0 + 1000.0 + 2 * (0.5 + math.log1p(math.exp(-0.5)))) / 3
    assert_close(host(device, value), expected, dtype, factor=10)
    s = 1 / (1 + np.exp(-np.clip(x, -700, 700)))
    assert_close(host(device, g), (s - y) / 3, dtype, factor=10)
    assert float(host(device, m)) == 4.0  # wrong: -80 vs 1, 1000 vs 0, 0.5 vs 0, -0.5 vs 1
    probs = host(device, loss.probabilities(device.xp, device.asarray(x, dtype=dtype)))
    assert np.all(np.isfinite(probs)) and probs[0, 2] == 1.0 and probs[1, 0] == 0.0
    ce = SoftmaxCrossEntropy(label_smoothing=0.1, class_weight=[1.0, 2.0, 1.0])
    labels = np.array([1, 0])
    g, value, _ = ce.value_and_grad(device.xp, device.asarray(x, dtype=dtype), ce.encode(device, labels, 3, dtype), 1.0)
    grad, loss_sum, _ = np_ce(x, labels, [1.0, 2.0, 1.0], 0.1)
    assert np.all(np.isfinite(host(device, g))) and math.isfinite(float(host(device, value)))
    assert_close(host(device, g), grad, dtype, factor=10)
    assert_close(host(device, value), loss_sum, dtype, factor=10)


def test_bce_metric_counts_wrong_entries_at_the_boundaries(device):
    """x > 0 predicts 1 (x = 0 predicts 0, as sigmoid(0) = 0.5 is not > 0.5); y >= 0.5 is a positive target."""
    loss = BinaryCrossEntropy()
    for x, y, wrong in [(0.0, 0.0, 0), (0.0, 0.5, 1), (1e-3, 0.5, 0), (-1e-3, 0.49, 0), (1e-3, 0.49, 1),
                        (-2.0, 1.0, 1), (2.0, 1.0, 0)]:
        targets = loss.encode(device, np.array([[y]]), 1, "float32")
        _, _, m = loss.value_and_grad(device.xp, device.asarray(np.array([[x]]), dtype="float32"), targets, 1.0)
        assert float(host(device, m)) == wrong == np_bce(np.array([[x]]), np.array([[y]]))[2], (x, y)


# -- PyTorch as a second oracle --------------------------------------------------------------------------
def _torch_loss_and_grad(module, p, target, target_dtype=None):
    torch = pytest.importorskip("torch")
    logits = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(target, dtype=target_dtype or torch.float64)
    value = module(logits, target)
    value.backward()
    return float(value.detach()), logits.grad.numpy()


@pytest.mark.parametrize("name, module", [
    ("mse", lambda torch: torch.nn.MSELoss()),
    ("huber", lambda torch: torch.nn.HuberLoss(delta=0.7)),
    ("bce-multilabel", lambda torch: torch.nn.BCEWithLogitsLoss()),
    ("bce-soft", lambda torch: torch.nn.BCEWithLogitsLoss()),
    ("ce", lambda torch: torch.nn.CrossEntropyLoss()),
    ("ce-smoothed", lambda torch: torch.nn.CrossEntropyLoss(label_smoothing=0.2)),
])
def test_mean_losses_equal_torch(name, module):
    """torch's mean loss is our loss sum over the rows; its gradient is ours with scale 1 / rows."""
    torch = pytest.importorskip("torch")
    dev = pn.device("numpy")
    loss, k, p, y, checked = _case(name, n=9, seed=2)
    p = p * 10.0 if loss.task == "multilabel" else p  # logits up to ~+-50: torch's stable form against ours
    classes = loss.task == "classification"
    mean, grad = _torch_loss_and_grad(module(torch), p, checked if classes else checked.reshape(p.shape),
                                      torch.int64 if classes else None)
    g, value, _ = loss.value_and_grad(dev.xp, p, loss.encode(dev, checked, k, "float64"), 1.0 / len(p))
    np.testing.assert_allclose(float(value) / len(p), mean, rtol=1e-12)
    np.testing.assert_allclose(g, grad, rtol=1e-10, atol=1e-15)


def test_weighted_cross_entropy_equals_torch_up_to_the_normalisation():
    """torch.nn.CrossEntropyLoss(weight=w)'s mean divides the weighted sum by the rows' summed weights, ours
    (Keras) by the rows: ours / n = torch * sum(w[y]) / n. With label smoothing, ours is each row's
    smoothed loss times its label's weight: torch's unweighted per-row loss (reduction='none') times w[y]."""
    torch = pytest.importorskip("torch")
    dev = pn.device("numpy")
    w = [0.5, 2.0, 1.0, 3.0]
    loss, k, p, y, labels = _case("ce-weighted", n=9, seed=3)
    mean, grad = _torch_loss_and_grad(torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float64)),
                                      p, labels, torch.int64)
    total = float(np.sum(np.asarray(w)[labels]))
    g, value, _ = loss.value_and_grad(dev.xp, p, loss.encode(dev, labels, k, "float64"), 1.0)
    np.testing.assert_allclose(float(value), mean * total, rtol=1e-12)
    np.testing.assert_allclose(g, grad * total, rtol=1e-10, atol=1e-15)

    both = SoftmaxCrossEntropy(class_weight=w, label_smoothing=0.1)
    logits = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    rows = torch.nn.CrossEntropyLoss(label_smoothing=0.1, reduction="none")(logits, torch.tensor(labels))
    keras = (rows * torch.tensor(w, dtype=torch.float64)[torch.tensor(labels)]).sum()
    keras.backward()
    g, value, _ = both.value_and_grad(dev.xp, p, both.encode(dev, labels, k, "float64"), 1.0)
    np.testing.assert_allclose(float(value), float(keras.detach()), rtol=1e-12)
    np.testing.assert_allclose(g, logits.grad.numpy(), rtol=1e-10, atol=1e-15)


# -- options, configs and the registry ------------------------------------------------------------------
ROUND_TRIP = [MeanSquaredError(), Huber(), Huber(delta=0.25), BinaryCrossEntropy(), SoftmaxCrossEntropy(),
              SoftmaxCrossEntropy(class_weight=[1, 2.5, 0.5]), SoftmaxCrossEntropy(label_smoothing=0.15),
              SoftmaxCrossEntropy(class_weight=(2.0, 1.0), label_smoothing=0.05)]


@pytest.mark.parametrize("loss", ROUND_TRIP, ids=repr)
def test_losses_round_trip_through_the_registry_as_json(loss):
    config = LOSSES.to_config(loss)
    text = json.dumps(config)
    rebuilt = LOSSES.from_config(json.loads(text))
    assert type(rebuilt) is type(loss) and rebuilt == loss and hash(rebuilt) == hash(loss)
    assert LOSSES.to_config(rebuilt) == config and repr(rebuilt) == repr(loss)
    assert get_loss(config["type"]) == type(loss)()


def test_registered_names_and_configs():
    for name, cls in [("mse", MeanSquaredError), ("huber", Huber), ("binary_cross_entropy", BinaryCrossEntropy),
                      ("softmax_cross_entropy", SoftmaxCrossEntropy)]:
        assert LOSSES.get(name) is cls and isinstance(get_loss(name), cls)
    assert LOSSES.to_config(Huber(0.5)) == {"type": "huber", "delta": 0.5}
    assert LOSSES.to_config(SoftmaxCrossEntropy(class_weight=[1, 2])) == {
        "type": "softmax_cross_entropy", "class_weight": [1.0, 2.0], "label_smoothing": 0.0}
    assert LOSSES.to_config(SoftmaxCrossEntropy()) == {"type": "softmax_cross_entropy", "class_weight": None,
                                                       "label_smoothing": 0.0}
    assert SoftmaxCrossEntropy(class_weight=[1, 2]) != SoftmaxCrossEntropy(class_weight=[1, 3])
    assert SoftmaxCrossEntropy(label_smoothing=0.1) != SoftmaxCrossEntropy()
    assert Huber(1.0) == Huber() != Huber(2.0)
    assert len({SoftmaxCrossEntropy(class_weight=[1, 2]), SoftmaxCrossEntropy(class_weight=(1.0, 2.0))}) == 1


@pytest.mark.parametrize("make, message", [
    (lambda: SoftmaxCrossEntropy(class_weight=[1.0, -1.0]), r"class_weight must be None or a sequence of positive"),
    (lambda: SoftmaxCrossEntropy(class_weight=[1.0, 0.0]), r"positive finite numbers, one per class, got \[1.0, 0.0\]"),
    (lambda: SoftmaxCrossEntropy(class_weight=[1.0, float("nan")]), r"positive finite numbers"),
    (lambda: SoftmaxCrossEntropy(class_weight=[]), r"positive finite numbers, one per class, got \[\]"),
    (lambda: SoftmaxCrossEntropy(class_weight={0: 1.0, 1: 2.0}), r"one per class, got dict"),
    (lambda: SoftmaxCrossEntropy(class_weight="12"), r"one per class, got str"),
    (lambda: SoftmaxCrossEntropy(class_weight=[1, "a"]), r"one per class, got \[1, 'a'\]"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=1.0), r"label_smoothing must be a number in \[0, 1\), got 1.0"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=-0.1), r"label_smoothing must be a number in \[0, 1\)"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=True), r"label_smoothing must be a number in \[0, 1\), got True"),
    (lambda: SoftmaxCrossEntropy(label_smoothing="0.1"), r"label_smoothing must be a number"),
    (lambda: Huber(0.0), r"Huber's delta must be a positive finite number, got 0.0"),
    (lambda: Huber(float("inf")), r"Huber's delta must be a positive finite number"),
    (lambda: Huber(None), r"Huber's delta must be a positive finite number, got None"),
])
def test_bad_options_are_one_clear_error(make, message):
    with pytest.raises(InputError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_class_weight_must_match_the_outputs():
    with pytest.raises(InputError, match=r"class_weight has 2 weights but the model has 3 outputs"):
        SoftmaxCrossEntropy(class_weight=[1.0, 2.0]).check_targets(np.array([0, 1, 2]), 3, 3)
    model = pn.mlp([2, 3], dtype="float64")
    with pytest.raises(InputError, match=r"class_weight has 4 weights but the model has 3 outputs"):
        pn.fit(model, np.zeros((4, 2)), np.array([0, 1, 2, 0]), optimizer=pn.SGD(0.1), batch_size=2,
               loss=SoftmaxCrossEntropy(class_weight=[1, 1, 1, 1]))


# -- targets ----------------------------------------------------------------------------------------------
_LABELS = np.array([0, 2, 1, 1, 0, 2])
BAD_TARGETS = [
    (MeanSquaredError(), _LABELS, 3, r"^y looks like class labels \(one column of integers\) but the model has 3 "
                                     r"outputs: a regression loss takes targets of shape \(n_samples, 3\); for "
                                     r"classification use loss='softmax_cross_entropy'$"),
    (Huber(), _LABELS.astype(float), 3, r"^y looks like class labels"),
    (MeanSquaredError(), _LABELS[:, None], 3, r"^y looks like class labels"),
    (MeanSquaredError(), np.linspace(0, 1, 6), 2, r"^y is 1-D \(n_samples,\) but the model has 2 outputs: a "
                                                 r"regression loss takes targets of shape \(n_samples, 2\)$"),
    (MeanSquaredError(), np.zeros((6, 2)) + 0.5, 3, r"^y is 2 column\(s\) but the model has 3 outputs"),
    (MeanSquaredError(), np.zeros((6, 2)) + 0.5, 1, r"^y is 2 column\(s\) but the model has 1 outputs: a regression "
                                                    r"loss takes targets of shape \(n_samples, 1\) or \(n_samples,\)$"),
    (MeanSquaredError(), np.array([0.5, np.nan, 1, np.inf, 2, 3]), 1, r"^y contains 2 NaN or infinite value\(s\)$"),
    (MeanSquaredError(), np.zeros(5), 1, r"^X has 6 samples but y has 5 rows$"),
    (MeanSquaredError(), np.array(list("abcdef")), 1, r"^y must hold real numbers, got dtype <U1$"),
    (MeanSquaredError(), np.zeros((6, 1, 1)), 1, r"^y must be \(n_samples,\) or \(n_samples, outputs\), got shape"),
    (BinaryCrossEntropy(), _LABELS, 1, r"^y must hold 0/1 targets \(or probabilities in \[0, 1\]\) for binary "
                                       r"cross-entropy; found values from 0 to 2 \(class labels 0..2\? use "
                                       r"loss='softmax_cross_entropy' with 3 outputs\)$"),
    (BinaryCrossEntropy(), _LABELS, 3, r"^y looks like class labels \(one column of integers\) but the model has 3 "
                                       r"outputs: binary cross-entropy \(one 0/1 column per label\) takes targets "
                                       r"of shape \(n_samples, 3\); for one of 3 classes use "
                                       r"loss='softmax_cross_entropy'$"),
    (BinaryCrossEntropy(), np.full((6, 2), 1.5), 2, r"found values from 1.5 to 1.5$"),
    (BinaryCrossEntropy(), np.full((6, 2), -0.5), 2, r"found values from -0.5 to -0.5$"),
    (BinaryCrossEntropy(), np.full((6, 2), np.nan), 2, r"^y contains 12 NaN"),
    (SoftmaxCrossEntropy(), np.zeros((6, 3)), 3, r"^y must be 1-D \(n_samples,\)"),
]


@pytest.mark.parametrize("loss, y, outputs, message", BAD_TARGETS)
def test_bad_targets_are_one_clear_error(loss, y, outputs, message):
    with pytest.raises(InputError, match=message) as info:
        loss.check_targets(y, 6, outputs)
    assert "\n" not in str(info.value) and info.value.__cause__ is None


def test_bad_targets_stop_fit_before_training_and_name_the_validation_set():
    X = np.random.default_rng(0).standard_normal((6, 2))
    model = pn.mlp([2, 3], dtype="float64")
    with pytest.raises(InputError, match=r"^y looks like class labels"):
        pn.fit(model, X, _LABELS, optimizer=pn.SGD(0.1), loss="mse", batch_size=3)
    with pytest.raises(InputError, match=r"^validation.* is 1-D \(n_samples,\) but the model has 3 outputs"):
        pn.fit(model, X, np.zeros((6, 3)), optimizer=pn.SGD(0.1), loss="mse", batch_size=3,
               validation=(X, np.linspace(0, 1, 6)))


def test_targets_are_encoded_as_columns():
    dev = pn.device("numpy")
    (y,) = MeanSquaredError().encode(dev, MeanSquaredError().check_targets([1, 2.5, -3], 3, 1), 1, "float32")
    assert y.shape == (3, 1) and y.dtype == np.float32 and y[:, 0].tolist() == [1, 2.5, -3]
    (y,) = BinaryCrossEntropy().encode(dev, BinaryCrossEntropy().check_targets([True, False], 2, 1), 1, "float64")
    assert y.tolist() == [[1.0], [0.0]]
    labels, rows = SoftmaxCrossEntropy(class_weight=[1.0, 3.0, 2.0], label_smoothing=0.3).encode(
        dev, np.array([1, 0]), 3, "float64")
    np.testing.assert_allclose(rows, [[0.3, 2.4, 0.3], [0.8, 0.1, 0.1]])  # w[y] ((1 - 0.3) onehot + 0.1)
    assert labels.tolist() == [1, 0]
    with pytest.raises(InputError, match=r"^y has values too large for float32"):
        MeanSquaredError().encode(dev, np.array([[1e39]]), 1, "float32")


# -- the fused twin ----------------------------------------------------------------------------------------
class Smoothed(SoftmaxCrossEntropy):
    """A subclass inherits no twin, with or without options."""


def test_the_fused_twin_runs_only_without_options():
    fast, generic = pn.device("numpy"), pn.device("numpy", kernels="generic")
    assert fast.kernels.fused_loss(SoftmaxCrossEntropy()) is not None
    assert SoftmaxCrossEntropy().fused_twin() == "softmax_xent"
    for loss in [SoftmaxCrossEntropy(class_weight=[1, 1, 1]), SoftmaxCrossEntropy(label_smoothing=0.1),
                 SoftmaxCrossEntropy(class_weight=[1, 2, 3], label_smoothing=0.1), Smoothed(), MeanSquaredError(),
                 Huber(), BinaryCrossEntropy()]:
        assert loss.fused_twin() is None and fast.kernels.fused_loss(loss) is None, loss
    assert generic.kernels.fused_loss(SoftmaxCrossEntropy()) is None

    def chosen(loss):
        model = pn.mlp([4, 6, 3], seed=1, dtype="float64")
        return pn.make_step(model, loss, pn.Adam(0.01).bind(model), fast).fused

    assert chosen(SoftmaxCrossEntropy()) == ["loss"]
    assert chosen(SoftmaxCrossEntropy(label_smoothing=0.1)) == []
    assert chosen(SoftmaxCrossEntropy(class_weight=[1, 2, 3])) == []


@pytest.mark.parametrize("shared", [True, False], ids=["shared-targets", "own-targets"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_stacked_twin_equals_the_loss_over_a_stack_and_runs_only_without_options(dtype, shared):
    """NumPy's ``stacked_softmax_xent`` (a stack's fused loss) against ``value_and_grad`` of the same
    ``(M, batch, classes)`` logits; only plain softmax cross-entropy has it, and only the fast kernels."""
    fast, generic = pn.device("numpy"), pn.device("numpy", kernels="generic")
    twin = fast.kernels.fused_loss(SoftmaxCrossEntropy(), stacked=True)
    assert twin is not None and generic.kernels.fused_loss(SoftmaxCrossEntropy(), stacked=True) is None
    for loss in [SoftmaxCrossEntropy(label_smoothing=0.1), SoftmaxCrossEntropy(class_weight=[1, 2, 3, 4]),
                 Smoothed(), MeanSquaredError()]:
        assert fast.kernels.fused_loss(loss, stacked=True) is None, loss
    loss, _, outputs, targets, _ = _stacked_case(fast, "ce", dtype, shared)
    outputs[0, 2, :] = outputs[0, 2, 1]  # a tie: the first of equal logits is the prediction, as argmax's
    want = loss.value_and_grad(fast.xp, outputs, targets, 0.25)
    got = twin(fast.xp, outputs.copy(), targets, 0.25)
    for a, b, what in zip(got, want, ("gradient", "loss sums", "wrong rows")):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        assert_close(a, b, dtype, factor=10, err_msg=what)


# -- host-side metrics, predictions --------------------------------------------------------------------
def test_metric_names_and_tasks():
    assert (MeanSquaredError().metric_names, MeanSquaredError().task) == (("rmse", "r2"), "regression")
    assert (Huber().metric_names, Huber().task) == (("rmse", "r2"), "regression")
    assert (BinaryCrossEntropy().metric_names, BinaryCrossEntropy().task) == (("error",), "multilabel")
    assert (SoftmaxCrossEntropy().metric_names, SoftmaxCrossEntropy().task) == (("error",), "classification")
    assert SoftmaxCrossEntropy().stratify and not BinaryCrossEntropy().stratify and not MeanSquaredError().stratify


def test_metrics_on_known_numbers():
    sums = np.array([12.0, 3.0, 0.0])
    got = MeanSquaredError().metrics(sums, 4, 3, {"sst": 24.0})
    assert sorted(got) == ["r2", "rmse"]
    np.testing.assert_array_equal(got["rmse"], [1.0, 0.5, 0.0])  # sqrt(SSE / 12)
    np.testing.assert_array_equal(got["r2"], [0.5, 0.875, 1.0])  # 1 - SSE / 24
    assert got["rmse"].dtype == np.float64 and got["r2"].dtype == np.float64
    constant = Huber().metrics(sums, 4, 3, {"sst": 0.0})
    assert np.isnan(constant["r2"]).all() and constant["rmse"].tolist() == [1.0, 0.5, 0.0]
    assert MeanSquaredError().statistics(np.full((5, 2), 3.0)) == {"sst": 0.0}
    np.testing.assert_array_equal(SoftmaxCrossEntropy().metrics(np.array([3.0, 0.0]), 10, 4, {})["error"], [0.3, 0.0])
    np.testing.assert_array_equal(BinaryCrossEntropy().metrics(np.array([6.0, 30.0]), 10, 3, {})["error"], [0.2, 1.0])
    assert SoftmaxCrossEntropy().statistics(np.array([0, 1])) == {} == BinaryCrossEntropy().statistics(np.ones((2, 1)))

    class Custom(Loss):  # a loss that defines no metrics: its sum per row, as "error"
        pass
    assert Custom().metric_names == ("error",)
    np.testing.assert_array_equal(Custom().metrics(np.array([5.0]), 10, 2, {})["error"], [0.5])


@pytest.mark.parametrize("outputs", [1, 3])
def test_rmse_and_r2_equal_scikit_learn(outputs):
    """From the SSE sum and the targets' statistics: R^2 = scikit-learn's r2_score(multioutput=
    'variance_weighted') (for one output, plain R^2), RMSE = sqrt(mean_squared_error)."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    y = rng.standard_normal((40, outputs)) * np.array([1.0, 5.0, 0.2])[:outputs] + 3.0
    pred = y + rng.standard_normal(y.shape) * 0.7
    raw = y[:, 0] if outputs == 1 else y  # a 1-D target for one output
    loss = MeanSquaredError()
    checked = loss.check_targets(raw, 40, outputs)
    got = loss.metrics(np.array([np.sum((pred - y) ** 2)]), 40, outputs, loss.statistics(checked))
    np.testing.assert_allclose(got["r2"], [metrics.r2_score(y, pred, multioutput="variance_weighted")], rtol=1e-12)
    np.testing.assert_allclose(got["rmse"], [np.sqrt(metrics.mean_squared_error(y, pred))], rtol=1e-12)
    assert isinstance(loss.statistics(checked)["sst"], float)
    assert loss.statistics(checked.astype(np.float32))["sst"] == pytest.approx(loss.statistics(checked)["sst"], 1e-6)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no overflow in exp on the way (NumPy warns)
def test_predictions_and_probabilities_on_every_device(device, dtype):
    require_dtype(device, dtype)
    rng = np.random.default_rng(6)
    x = (3.0 * rng.standard_normal((6, 3))).astype(dtype)
    x[0, :] = [90.0, -90.0, 0.0]  # no overflow in the sigmoid; x = 0 predicts 0
    out = device.asarray(x, dtype=dtype)
    xp = device.xp
    labels = host(device, SoftmaxCrossEntropy().predict(xp, out))
    assert labels.shape == (6,) and labels.dtype.kind == "i" and labels.tolist() == np.argmax(x, axis=1).tolist()
    probs = host(device, SoftmaxCrossEntropy(label_smoothing=0.1).probabilities(xp, out))
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    assert_close(probs, e / e.sum(axis=1, keepdims=True), dtype, factor=10)
    bits = host(device, BinaryCrossEntropy().predict(xp, out))
    assert bits.dtype == np.int64 and bits.tolist() == (x > 0).astype(int).tolist()
    sig = host(device, BinaryCrossEntropy().probabilities(xp, out))
    assert_close(sig, 1 / (1 + np.exp(-x.astype(np.float64))), dtype, factor=10)
    assert np.isfinite(sig).all() and sig[0, 2] == 0.5
    for loss in (MeanSquaredError(), Huber()):
        np.testing.assert_array_equal(host(device, loss.predict(xp, out)), x)
        with pytest.raises(TypeError, match="is a regression loss: it gives no probabilities"):
            loss.probabilities(xp, out)


def test_strata_for_a_stratified_split():
    """Class labels for softmax CE; 0/1 single-column BCE targets give their labels; multi-label, soft and
    regression targets give None (validation_split is then not stratified: ``stratify`` is False)."""
    labels = np.array([0, 1, 1, 2])
    assert SoftmaxCrossEntropy().strata(labels) is labels
    assert BinaryCrossEntropy().strata(np.array([[1.0], [0.0], [1.0]])).tolist() == [1.0, 0.0, 1.0]
    assert BinaryCrossEntropy().strata(np.array([1, 0, 1])).tolist() == [1, 0, 1]
    assert BinaryCrossEntropy().strata(np.array([[1.0, 0.0], [0.0, 1.0]])) is None
    assert BinaryCrossEntropy().strata(np.array([0.2, 1.0])) is None
    assert MeanSquaredError().strata(np.array([0.0, 1.0])) is None


def test_a_multilabel_validation_split_keeps_whole_rows():
    """``stratify`` is False for BCE: a (n, k) target splits by rows, as X does."""
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((20, 2)), (rng.random((20, 3)) < 0.5).astype(float)
    X_train, y_train, (X_val, y_val) = validation_split(X, y, 0.25, 0, BinaryCrossEntropy().stratify)
    assert len(X_train) == len(y_train) == 15 and len(X_val) == len(y_val) == 5
    for Xs, ys in ((X_train, y_train), (X_val, y_val)):
        for row, target in zip(Xs, ys):
            np.testing.assert_array_equal(y[np.flatnonzero((X == row).all(axis=1))[0]], target)


# -- training: fit against a NumPy loop from the formulas -----------------------------------------------------
def _np_fit(state, X, y, name, lr, epochs, batch):
    """SGD on ``mlp([in, hidden, k], activation="tanh")`` with the oracle's loss gradient, minibatches in order:
    the final parameters and each epoch's mean loss (the loss sums of the minibatches as trained, over n)."""
    W0, b0, W2, b2 = (np.array(state[key], dtype=np.float64) for key in ("0.weight", "0.bias", "2.weight", "2.bias"))
    losses = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, len(X), batch):
            xb, yb = X[start:start + batch], y[start:start + batch]
            h = np.tanh(xb @ W0 + b0)
            grad, loss_sum, _ = _oracle(name, h @ W2 + b2, yb)
            total += loss_sum
            g = grad / len(xb)  # d mean loss / d outputs
            gh = (g @ W2.T) * (1.0 - h ** 2)
            W2, b2 = W2 - lr * h.T @ g, b2 - lr * g.sum(axis=0)
            W0, b0 = W0 - lr * xb.T @ gh, b0 - lr * gh.sum(axis=0)
        losses.append(total / len(X))
    return {"0.weight": W0, "0.bias": b0, "2.weight": W2, "2.bias": b2}, losses


@pytest.mark.parametrize("name", ["mse", "mse-1-output", "huber", "bce-multilabel", "bce-binary",
                                  "ce-weighted-smoothed"])
def test_fit_trains_as_the_numpy_loop_on_every_device(device, dtype, name):
    require_dtype(device, dtype)
    loss, k, _, y, checked = _case(name, n=24, seed=8)
    X = np.random.default_rng(9).standard_normal((24, 4)).astype(dtype)
    model = pn.mlp([4, 5, k], activation="tanh", seed=2, dtype=dtype)
    initial = model.state_dict()
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.2), loss=loss, epochs=3, batch_size=10, shuffle=False,
                     device=device)
    expected, losses = _np_fit(initial, X.astype(np.float64), checked, name, 0.2, 3, 10)
    assert_state_close(model.state_dict(), expected, dtype, factor=100, err_msg=f"{name} on {device.name}")
    assert_close(history["loss"], losses, dtype, factor=100)
    assert history["loss"][-1] < history["loss"][0]


def test_fit_with_mean_squared_error_runs_and_reports_rmse_and_r2():
    """``fit(model, X, y, loss=MeanSquaredError(), optimizer=SGD(0.1))``; in one full-batch epoch the metrics
    are those of the initial weights: rmse ** 2 is the reported loss, r2 = 1 - SSE / SST."""
    rng = np.random.default_rng(10)
    X = rng.standard_normal((50, 3))
    y = X @ rng.standard_normal((3, 2)) + 0.1 * rng.standard_normal((50, 2))
    model = pn.mlp([3, 8, 2], seed=1, dtype="float64")
    before = model.forward(X)
    history = pn.fit(model, X, y, loss=MeanSquaredError(), optimizer=pn.SGD(0.1), batch_size=None)
    assert history["loss"][0] == pytest.approx(np.mean((before - y) ** 2), rel=1e-12)
    history = pn.fit(model, X, y, loss=MeanSquaredError(), optimizer=pn.SGD(0.1), epochs=20, batch_size=10)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    record = history.records[0]
    if "rmse" not in record:
        pytest.skip(f"History does not report the loss's metrics yet (fields {sorted(record)}): train.py/history.py "
                    f"are being wired to Loss.metrics by the lead")
    model = pn.mlp([3, 8, 2], seed=1, dtype="float64")
    history = pn.fit(model, X, y, loss=MeanSquaredError(), optimizer=pn.SGD(0.1), batch_size=None,
                     validation=(X[:20], y[:20]))
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert history["rmse"][0] == pytest.approx(math.sqrt(history["loss"][0]), rel=1e-12)
    assert history["r2"][0] == pytest.approx(sklearn_metrics.r2_score(y, before, multioutput="variance_weighted"),
                                             rel=1e-12)
    after = model.forward(X[:20])
    assert history["val_r2"][0] == pytest.approx(
        sklearn_metrics.r2_score(y[:20], after, multioutput="variance_weighted"), rel=1e-12)


def test_a_recorded_step_trains_with_class_weights_and_smoothing_as_the_plain_one():
    """graph=True gathers the (labels, target rows) encoding as it gathers one-hot rows: same weights."""
    rng = np.random.default_rng(11)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    loss = SoftmaxCrossEntropy(class_weight=[1.0, 2.0, 0.5], label_smoothing=0.1)
    plain, recorded = (pn.mlp([4, 6, 3], seed=3, dtype="float64") for _ in range(2))
    pn.fit(plain, X, y, optimizer=pn.SGD(0.1), loss=loss, epochs=3, batch_size=8, seed=4)
    pn.fit(recorded, X, y, optimizer=pn.SGD(0.1), loss=loss, epochs=3, batch_size=8, seed=4, graph=True)
    assert_state_close(recorded.state_dict(), plain.state_dict(), "float64")
