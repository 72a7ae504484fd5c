"""Hand-written backward passes against central finite differences (float64, tiny shapes), the fused
loss kernel against the reference loss functions, and numerical stability of the softmax."""
import numpy as np
import pytest

import portablenn as pn
from portablenn.losses import SoftmaxCrossEntropy
from portablenn.step import loss_function

from _support import central_difference, copy_state, fd_close, host, host_softmax, host_xent, require_dtype
from _tolerances import assert_close, assert_state_close


def _fused_xent(dev, logits, onehot, y, scale):
    """Softmax cross-entropy as a built step runs it on ``dev``: the kernels' fused twin, or the loss's own."""
    return loss_function(SoftmaxCrossEntropy(), dev.kernels)(dev.xp, logits, (y, onehot), scale)


def _away_from_zero(rng, shape, low=0.2, high=1.5):
    """Random values with |v| in [low, high]: no ReLU kink within a finite-difference step."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


LAYERS = {
    "linear": lambda: pn.Linear(4, 3, bias=True, init="xavier", rng=1, dtype="float64"),
    "linear-nobias": lambda: pn.Linear(4, 3, bias=False, init="xavier", rng=2, dtype="float64"),
    "relu": pn.ReLU,
    "sigmoid": pn.Sigmoid,
    "tanh": pn.Tanh,
    "leaky_relu": lambda: pn.LeakyReLU(0.1),
    "gelu": pn.GELU,
    "identity": pn.Identity,
    "layer_norm": lambda: pn.LayerNorm(4, dtype="float64"),  # parameter gradients: tests/test_normalization.py
    "batch_norm": lambda: pn.BatchNorm1d(4, dtype="float64"),  # train mode: the batch's statistics
}


def _layer_on(device, kind):
    seq = pn.Sequential(LAYERS[kind]())
    seq.to(device, dtype="float64")
    return seq


@pytest.fixture
def device64(device):
    require_dtype(device, "float64")
    return device


# -- layers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_input_gradient(device64, kind):
    dev, rng = device64, np.random.default_rng(0)
    seq = _layer_on(dev, kind)
    x = _away_from_zero(rng, (3, 4))
    out = host(dev, seq.forward(dev.asarray(x.copy())))
    G = rng.standard_normal(out.shape)

    def loss(x_host):
        return float(np.sum(host(dev, seq.forward(dev.asarray(x_host.copy()))) * G))

    seq.forward(dev.asarray(x.copy()))
    dx = host(dev, seq.backward(dev.asarray(G.copy())))
    assert dx.shape == x.shape
    fd_close(dx, central_difference(loss, x), kind)


@pytest.mark.parametrize("kind", ["linear", "linear-nobias"])
def test_linear_parameter_gradients(device64, kind):
    dev, rng = device64, np.random.default_rng(1)
    seq = _layer_on(dev, kind)
    x = rng.standard_normal((5, 4))
    G = rng.standard_normal((5, 3))
    state = seq.state_dict()
    assert sorted(state) == (["0.bias", "0.weight"] if kind == "linear" else ["0.weight"])

    seq.forward(dev.asarray(x.copy()))
    assert seq.backward(dev.asarray(G.copy()), input_grad=False) is None
    grads = {f"0.{name}": host(dev, g) for name, g in seq.layers[0].grads.items()}
    assert sorted(grads) == sorted(state)
    # the closed forms, as a second oracle
    np.testing.assert_allclose(grads["0.weight"], x.T @ G, rtol=1e-12)
    if kind == "linear":
        np.testing.assert_allclose(grads["0.bias"], G.sum(axis=0), rtol=1e-12)

    for key, value in state.items():
        def loss(v, key=key):
            perturbed = copy_state(state)
            perturbed[key] = v
            seq.load_state_dict(perturbed)
            return float(np.sum(host(dev, seq.forward(dev.asarray(x.copy()))) * G))
        fd_close(grads[key], central_difference(loss, value), key)


def test_backward_without_input_grad_fills_the_same_gradients(device64):
    dev, rng = device64, np.random.default_rng(2)
    model = pn.mlp([4, 5, 3], dtype="float64", seed=3).to(dev)
    X = rng.standard_normal((6, 4))
    G = rng.standard_normal((6, 3))
    model.forward(dev.asarray(X.copy()))
    dx = model.backward(dev.asarray(G.copy()), input_grad=True)
    with_input = {(i, n): host(dev, g).copy() for i, l in enumerate(model.layers) for n, g in l.grads.items()}
    model.forward(dev.asarray(X.copy()))
    assert model.backward(dev.asarray(G.copy()), input_grad=False) is None
    without = {(i, n): host(dev, g) for i, l in enumerate(model.layers) for n, g in l.grads.items()}
    assert sorted(with_input) == sorted(without) == [(0, "bias"), (0, "weight"), (2, "bias"), (2, "weight")]
    for key in with_input:
        np.testing.assert_array_equal(with_input[key], without[key])
    assert host(dev, dx).shape == (6, 4)


# -- loss ------------------------------------------------------------------------------------------
def test_softmax_cross_entropy_gradient(device64):
    dev, rng = device64, np.random.default_rng(3)
    logits = 2.0 * rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    y = dev.asarray(labels, dtype=dev.index_dtype)

    def loss(z):
        return float(host(dev, pn.softmax_cross_entropy(dev.asarray(z.copy()), y)))

    assert loss(logits) == pytest.approx(host_xent(logits, labels), rel=1e-12)
    grad = host(dev, pn.softmax_cross_entropy_grad(dev.asarray(logits.copy()), y))
    np.testing.assert_allclose(grad, (host_softmax(logits) - np.eye(4)[labels]) / 5, rtol=1e-12, atol=1e-15)
    fd_close(grad, central_difference(loss, logits))


@pytest.mark.parametrize("classes", [4, 300])  # CuPy: a thread per row up to 256 classes, seven kernels beyond
@pytest.mark.parametrize("scale", [1.0, 0.37, 1 / 7])
def test_fused_softmax_xent_matches_reference(device, dtype, scale, classes):
    """The fused loss (fast twin, or the loss object's own code) == the separate loss and gradient functions."""
    dev, rng = device, np.random.default_rng(4)
    batch = 7
    logits = (3.0 * rng.standard_normal((batch, classes))).astype(dtype)
    labels = rng.integers(0, classes, batch)
    labels[:2] = np.argmax(logits[:2], axis=1)  # at least two rows right, and (almost surely) some wrong
    y = dev.asarray(labels, dtype=dev.index_dtype)
    onehot = dev.asarray(np.eye(classes)[labels], dtype=dtype)

    ref_mean = float(host(dev, pn.softmax_cross_entropy(dev.asarray(logits.copy()), y)))
    ref_grad = host(dev, pn.softmax_cross_entropy_grad(dev.asarray(logits.copy()), y))
    grad, loss_sum, wrong = _fused_xent(dev, dev.asarray(logits.copy()), onehot, y, scale)
    grad, loss_sum, wrong = host(dev, grad).copy(), host(dev, loss_sum), host(dev, wrong)

    assert grad.shape == (batch, classes) and grad.dtype == np.dtype(dtype)
    assert loss_sum.shape == () and wrong.shape == ()
    assert wrong.dtype == np.dtype(dtype), "wrong is documented to be in logits.dtype"
    assert_close(grad, ref_grad * batch * scale, dtype, factor=10)
    assert_close(loss_sum, ref_mean * batch, dtype, factor=10)
    assert int(wrong) == int(np.sum(np.argmax(logits, axis=1) != labels))
    assert 0 < int(wrong) < batch
    # and against the float64 host maths
    host_grad = (host_softmax(logits.astype(np.float64)) - np.eye(classes)[labels]) * scale
    assert_close(grad, host_grad, dtype, factor=10)
    assert_close(loss_sum, host_xent(logits.astype(np.float64), labels) * batch, dtype, factor=10)


def test_fused_softmax_xent_all_right_and_all_wrong(device, dtype):
    dev = device
    logits = np.array([[5.0, 0.0, -5.0], [0.0, 6.0, 1.0], [-1.0, 0.0, 4.0]], dtype=dtype)
    onehot_of = lambda labels: dev.asarray(np.eye(3)[labels], dtype=dtype)  # noqa: E731
    for labels, expected in (([0, 1, 2], 0), ([1, 2, 0], 3)):
        labels = np.array(labels)
        _, _, wrong = _fused_xent(dev, dev.asarray(logits.copy()), onehot_of(labels),
                                               dev.asarray(labels, dtype=dev.index_dtype), 1.0)
        assert float(host(dev, wrong)) == expected


# -- whole models ----------------------------------------------------------------------------------
MODELS = [
    pytest.param([4, 3], "relu", True, 0.0, id="linear-softmax"),
    pytest.param([4, 5, 3], "relu", True, 0.0, id="relu-1hidden"),
    pytest.param([4, 5, 3], "relu", False, 0.0, id="relu-nobias"),
    pytest.param([4, 5, 4, 3], "tanh", True, 0.0, id="tanh-2hidden"),
    pytest.param([4, 5, 4, 3], "sigmoid", False, 0.0, id="sigmoid-2hidden-nobias"),
    pytest.param([4, 5, 3], "relu", True, 0.1, id="relu-l2"),
    pytest.param([4, 3, 4, 3, 3], "sigmoid", True, 0.05, id="sigmoid-3hidden-l2"),
]


@pytest.mark.parametrize("sizes, activation, bias, l2", MODELS)
def test_mlp_gradients_against_finite_differences(device64, sizes, activation, bias, l2):
    """Expected gradient built from ``model.backward`` + ``l2 * W``; FD of mean CE + ``l2_penalty``."""
    dev, rng = device64, np.random.default_rng(5)
    model = pn.mlp(sizes, activation=activation, bias=bias, init="xavier", seed=7, dtype="float64").to(dev)
    X = _away_from_zero(rng, (6, sizes[0]))
    labels = rng.integers(0, sizes[-1], 6)
    y = dev.asarray(labels, dtype=dev.index_dtype)
    state = model.state_dict()

    def full_loss(st, Xh=X):
        model.load_state_dict(copy_state(st))
        logits = model.forward(dev.asarray(Xh.copy()))
        return float(host(dev, pn.softmax_cross_entropy(logits, y) + pn.l2_penalty(model, l2)))

    model.load_state_dict(copy_state(state))
    logits = model.forward(dev.asarray(X.copy()))
    g = pn.softmax_cross_entropy_grad(dev.asarray(host(dev, logits).copy()), y)
    dX = host(dev, model.backward(g, input_grad=True))
    analytic = {}
    for key, layer, name in model.named_parameters():
        analytic[key] = host(dev, layer.grads[name]) + (l2 * state[key] if name == "weight" else 0.0)
    assert sorted(analytic) == sorted(state)

    for key, value in state.items():
        def f(v, key=key):
            st = dict(state)
            st[key] = v
            return full_loss(st)
        fd_close(analytic[key], central_difference(f, value), key)
    fd_close(dX, central_difference(lambda Xh: full_loss(state, Xh), X), "input")


def test_one_activation_object_used_twice_trains_as_two(device):
    """``act = ReLU()`` after every Linear (common in PyTorch code): each use must keep its own cached
    output for backward. Before, the second use's cache served both and the gradients were wrong."""
    require_dtype(device, "float64")
    X, y = np.random.default_rng(0).standard_normal((40, 4)), np.arange(40) % 3

    def model(shared):
        act, kw = pn.ReLU(), dict(rng=np.random.default_rng(1), dtype="float64")
        acts = (act, act) if shared else (pn.ReLU(), pn.ReLU())
        return pn.Sequential(pn.Linear(4, 6, **kw), acts[0], pn.Linear(6, 6, **kw), acts[1], pn.Linear(6, 3, **kw))

    shared, separate = model(True), model(False)
    assert shared.layers[1] is not shared.layers[3] and type(shared.layers[3]) is pn.ReLU
    for m in (shared, separate):
        pn.fit(m, X, y, optimizer=pn.SGD(0.3), epochs=3, batch_size=8, shuffle=False, device=device)
    assert_state_close(shared.state_dict(), separate.state_dict(), "float64", factor=0)


def test_a_layer_with_parameters_used_twice_is_refused():
    linear = pn.Linear(5, 5)
    with pytest.raises(ValueError, match=r"layer 2 is layer 0 again \(Linear\(5, 5, bias=True\)\): a layer with "
                                         r"parameters can appear only once"):
        pn.Sequential(linear, pn.ReLU(), linear)


def test_l2_penalty_value(device, dtype):
    dev = device
    model = pn.mlp([3, 4, 2], dtype=dtype, seed=1).to(dev)
    state = model.state_dict()
    expected = 0.5 * 0.3 * sum(float(np.sum(v.astype(np.float64) ** 2)) for k, v in state.items() if k.endswith("weight"))
    assert_close(float(host(dev, pn.l2_penalty(model, 0.3))), expected, dtype, factor=10)
    # biases are not penalised
    state["0.bias"] = np.full(4, 100.0)
    model.load_state_dict(copy_state(state))
    assert_close(float(host(dev, pn.l2_penalty(model, 0.3))), expected, dtype, factor=10)


# -- stability -------------------------------------------------------------------------------------
@pytest.mark.parametrize("offsets", [
    pytest.param([1e4, 1e4, 1e4], id="all-rows-huge"),
    pytest.param([-1e4, -1e4, -1e4], id="all-rows-very-negative"),
    pytest.param([1e4, 0.0, -1e4], id="rows-far-apart"),
    pytest.param([0.0, -60.0, -80.0], id="rows-60-80-apart"),
    pytest.param([0.0, -100.0, -700.0], id="rows-100-700-apart"),
])
def test_softmax_cross_entropy_is_stable_for_huge_logits(device, dtype, offsets):
    dev, rng = device, np.random.default_rng(6)
    base = np.array([[3.0, -2.0, 0.5], [-1.0, 2.0, 1.5], [0.25, 0.0, -4.0]])
    noise = base + 0.01 * rng.standard_normal(base.shape)
    logits = (noise + np.asarray(offsets)[:, None] * np.array([[1.0, 1.0, 1.0]])).astype(dtype)
    # one row with a huge spread within the row as well
    logits[0, 2] = logits[0, 0] - 1e4 if dtype == "float64" else logits[0, 0] - 2e3
    labels = np.array([2, 1, 0])
    y = dev.asarray(labels, dtype=dev.index_dtype)
    exact = host_xent(logits.astype(np.float64), labels)  # shifted per row: exact in float64
    exact_grad = (host_softmax(logits.astype(np.float64)) - np.eye(3)[labels]) / 3

    mean = float(host(dev, pn.softmax_cross_entropy(dev.asarray(logits.copy()), y)))
    grad = host(dev, pn.softmax_cross_entropy_grad(dev.asarray(logits.copy()), y))
    assert np.isfinite(mean) and np.all(np.isfinite(grad))
    assert_close(mean, exact, dtype, factor=10, scale=abs(exact))
    assert_close(grad, exact_grad, dtype, factor=10, scale=1.0)

    onehot = dev.asarray(np.eye(3)[labels], dtype=dtype)
    g, loss_sum, wrong = _fused_xent(dev, dev.asarray(logits.copy()), onehot, y, 1.0)
    g, loss_sum = host(dev, g).copy(), float(host(dev, loss_sum))
    assert np.all(np.isfinite(g)) and np.isfinite(loss_sum)
    assert_close(loss_sum, 3 * exact, dtype, factor=10, scale=abs(3 * exact))
    assert_close(g, exact_grad * 3, dtype, factor=10, scale=1.0)
    assert float(host(dev, wrong)) == float(np.sum(np.argmax(logits, axis=1) != labels))


def test_loss_of_a_confident_right_answer_is_zero_not_nan(device, dtype):
    dev = device
    logits = np.array([[1e4, 0.0], [0.0, 1e4]], dtype=dtype)
    y = dev.asarray(np.array([0, 1]), dtype=dev.index_dtype)
    assert float(host(dev, pn.softmax_cross_entropy(dev.asarray(logits), y))) == 0.0
    wrong_way = float(host(dev, pn.softmax_cross_entropy(dev.asarray(logits[::-1].copy()), y)))
    assert wrong_way == pytest.approx(1e4, rel=1e-6)


@pytest.mark.parametrize("spread", [0.0, 20.0, 40.0])
def test_fused_loss_of_confident_rows_is_accurate(device, dtype, spread):
    """Small losses (a well-trained classifier) with row maxima ``spread`` apart: loss_sum to the dtype's
    relative tolerance of the float64 value, like the per-row-shifted generic kernel.

    Regression: the NumPy twin once shifted by the batch's global maximum, so sum(log(total)) and the
    picked logits became two large sums that cancel; float32 losses lost ~3 digits (rel. error ~1e-3)."""
    dev, rng = device, np.random.default_rng(8)
    batch, classes = 100, 10
    logits = 2.0 * rng.standard_normal((batch, classes)) + rng.uniform(-spread, 0.0, (batch, 1))
    labels = np.argmax(logits, axis=1)
    logits[np.arange(batch), labels] += 8.0
    logits = logits.astype(dtype)
    exact = host_xent(logits.astype(np.float64), labels) * batch
    assert exact < 0.1  # ~1e-3 per row
    _, loss_sum, wrong = _fused_xent(
        dev, dev.asarray(logits.copy()), dev.asarray(np.eye(classes)[labels], dtype=dtype),
        dev.asarray(labels, dtype=dev.index_dtype), 0.01)
    assert float(host(dev, wrong)) == 0.0
    assert_close(float(host(dev, loss_sum)), exact, dtype, factor=10)


def test_fused_gradient_stays_valid_after_another_call(device):
    """The fused loss returns its gradient; a second call (another minibatch or a validation pass of the
    same shape) must not change an array the caller already holds.

    Regression: the NumPy twin once returned a scratch buffer cached per shape (shared by every model on
    the cached Device), which the next call overwrote."""
    dev, rng = device, np.random.default_rng(9)
    labels = np.array([0, 1, 2, 1])
    y = dev.asarray(labels, dtype=dev.index_dtype)
    onehot = dev.asarray(np.eye(3)[labels], dtype="float32")
    first_logits, second_logits = rng.standard_normal((2, 4, 3)).astype(np.float32)
    grad, _, _ = _fused_xent(dev, dev.asarray(first_logits.copy()), onehot, y, 1.0)
    saved = host(dev, grad).copy()
    _fused_xent(dev, dev.asarray(second_logits.copy()), onehot, y, 1.0)
    np.testing.assert_array_equal(host(dev, grad), saved)


def test_fused_loss_leaves_the_logits_as_they_are(device, dtype):
    """The activation before the loss (ReLU, sigmoid, tanh) reads the array it returned in its backward:
    the loss, fused or not, must not write into it.

    Regression: the NumPy twin once overwrote the logits with the gradient, so every caller had to know
    to copy them first (``keeps_output``/``copy_logits``), and one once did not."""
    dev, rng = device, np.random.default_rng(10)
    logits = (3.0 * rng.standard_normal((6, 4))).astype(dtype)
    labels = rng.integers(0, 4, 6)
    given = dev.asarray(logits.copy())
    _fused_xent(dev, given, dev.asarray(np.eye(4)[labels], dtype=dtype), dev.asarray(labels, dtype=dev.index_dtype),
                0.5)
    np.testing.assert_array_equal(host(dev, given), logits)
