"""Optimizers: SGD, momentum, Nesterov and Adam, step by step on every device against the plain NumPy
reference of tests/_oracle.py (written from PyTorch's documented algorithms, run in CI), against
torch.optim itself when PyTorch is installed, plus checks that need no oracle: one manual SGD step,
Adam's first step size, argument validation."""
import math

import numpy as np
import pytest

import portablenn as pn

import _oracle as oracle
from _support import classification_data, copy_state, host, require_dtype
from _tolerances import assert_close, assert_state_close

OPTIMIZERS = [
    pytest.param("sgd", dict(lr=0.3), id="sgd"),
    pytest.param("sgd", dict(lr=0.1, momentum=0.9), id="momentum"),
    pytest.param("sgd", dict(lr=0.1, momentum=0.8, nesterov=True), id="nesterov"),
    pytest.param("adam", dict(lr=0.01), id="adam"),
    pytest.param("adam", dict(lr=0.02, beta1=0.8, beta2=0.99, eps=1e-6), id="adam-custom"),
    pytest.param("adamw", dict(lr=0.01, weight_decay=0.5), id="adamw"),
]


def _ours(kind, kwargs):
    return {"sgd": pn.SGD, "adam": pn.Adam, "adamw": pn.AdamW}[kind](**kwargs)


def _torch_optimizer(torch, kind, kwargs, groups):
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=kwargs["lr"], momentum=kwargs.get("momentum", 0.0),
                               nesterov=kwargs.get("nesterov", False))
    adam = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return adam(groups, lr=kwargs["lr"], betas=(kwargs.get("beta1", 0.9), kwargs.get("beta2", 0.999)),
                eps=kwargs.get("eps", 1e-8))


_TORCH_CACHE = {}


def _torch_reference(state, X, y, kind, kwargs, *, bias, l2, epochs, batch):
    """Train torch's ``Linear -> ReLU -> Linear`` from ``state``; returns (state, per-epoch mean losses)."""
    torch = pytest.importorskip("torch")
    key = (kind, tuple(sorted(kwargs.items())), bias, l2, epochs, batch,
           tuple((k, v.tobytes()) for k, v in sorted(state.items())), X.tobytes(), y.tobytes())
    if key not in _TORCH_CACHE:
        _TORCH_CACHE[key] = _train_torch(torch, state, X, y, kind, kwargs, bias=bias, l2=l2, epochs=epochs,
                                         batch=batch)
    result, losses = _TORCH_CACHE[key]
    return {k: v.copy() for k, v in result.items()}, list(losses)


def _train_torch(torch, state, X, y, kind, kwargs, *, bias, l2, epochs, batch):
    nn = torch.nn
    w0, w2 = state["0.weight"], state["2.weight"]
    net = nn.Sequential(nn.Linear(w0.shape[0], w0.shape[1], bias=bias), nn.ReLU(),
                        nn.Linear(w2.shape[0], w2.shape[1], bias=bias)).double()
    with torch.no_grad():
        for i in (0, 2):  # torch stores (out, in)
            net[i].weight.copy_(torch.from_numpy(state[f"{i}.weight"].T.copy()))
            if bias:
                net[i].bias.copy_(torch.from_numpy(state[f"{i}.bias"].copy()))
    weights = [net[0].weight, net[2].weight]
    biases = [net[0].bias, net[2].bias] if bias else []
    # torch's weight_decay would also hit biases; AdamW's is decoupled, so there the L2 term joins the loss
    decay = kwargs.get("weight_decay", 0.01) if kind == "adamw" else l2
    groups = [{"params": weights, "weight_decay": decay}]
    if biases:
        groups.append({"params": biases, "weight_decay": 0.0})
    opt = _torch_optimizer(torch, kind, kwargs, groups)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, len(X), batch):
            xb, yb = Xt[start:start + batch], yt[start:start + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xb), yb)
            if kind == "adamw" and l2:
                (loss + 0.5 * l2 * sum((w ** 2).sum() for w in weights)).backward()
            else:
                loss.backward()
            penalty = 0.5 * l2 * sum(float((w.detach() ** 2).sum()) for w in weights)
            total += (float(loss.detach()) + penalty) * len(xb)
            opt.step()
        losses.append(total / len(X))
    out = {}
    for i in (0, 2):
        out[f"{i}.weight"] = net[i].weight.detach().numpy().T.copy()
        if bias:
            out[f"{i}.bias"] = net[i].bias.detach().numpy().copy()
    return out, losses


def _biased_model(dtype, sizes=(4, 6, 3), seed=2):
    """An mlp whose biases are not zero, so that a bias wrongly decayed by L2 moves from the first step."""
    model = pn.mlp(list(sizes), dtype=dtype, seed=seed)
    state = model.state_dict()
    for key in state:
        if key.endswith(".bias"):
            state[key] = np.linspace(-0.5, 0.4, state[key].shape[0]).astype(dtype)
    return model.load_state_dict(state)


def _oracle_run(model, X, y, kind, kwargs, *, l2, epochs, batch, dtype):
    """The NumPy reference from ``model``'s current weights, in float64 from the same (dtype-rounded) data."""
    return oracle.train(model.state_dict(), oracle.architecture(model), X.astype(dtype), y,
                        oracle.make(kind, kwargs, l2), epochs=epochs, batch=batch, l2=l2)


@pytest.mark.parametrize("l2", [0.0, 0.05], ids=["l2=0", "l2=0.05"])
@pytest.mark.parametrize("kind, kwargs", OPTIMIZERS)
def test_optimizer_matches_the_numpy_oracle_step_by_step(device, dtype, kind, kwargs, l2):
    """Every optimizer on every device, after every one of 6 steps (10 rows in minibatches of 4, 4 and 2,
    two epochs), equals the float64 NumPy reference that computes the gradients of softmax
    cross-entropy through the MLP itself and applies PyTorch's documented update (L2 on weights only);
    the epoch losses too. This oracle needs no PyTorch, so it runs in CI."""
    X, y = classification_data(n=10, features=4, classes=3, seed=1)
    model = _biased_model(dtype).to(device)
    expected = _oracle_run(model, X, y, kind, kwargs, l2=l2, epochs=2, batch=4, dtype=dtype)
    states = []
    history = pn.fit(model, X, y, optimizer=_ours(kind, kwargs), epochs=2, batch_size=4, shuffle=False, l2=l2,
                     on_step=lambda epoch, step, steps: states.append(model.state_dict()))
    assert len(states) == len(expected.steps) == 6
    for i, (state, want) in enumerate(zip(states, expected.steps), start=1):
        assert_state_close(state, want, dtype, err_msg=f"{device.name} {kind} {kwargs} l2={l2} after step {i}")
    assert_close(history["loss"], expected.loss, dtype, err_msg="epoch losses")
    assert_close(history["error"], expected.error, dtype, err_msg="epoch errors")


def test_oracle_optimizers_follow_the_documented_recurrences():
    """The reference itself, on a scalar with a constant gradient, against the sums its recurrences
    give by hand: a check of the oracle that does not go through any network."""
    g, w0 = 0.5, 2.0
    for momentum, nesterov in ((0.9, False), (0.9, True)):
        opt = oracle.SGD(0.1, momentum=momentum, nesterov=nesterov)
        params = {"0.weight": np.array(w0)}
        for _ in range(3):
            opt.step(params, {"0.weight": np.array(g)})
        buffers = [g * sum(momentum ** j for j in range(t)) for t in (1, 2, 3)]  # b_t = g (1 + mu + ... + mu^(t-1))
        moves = [g + momentum * b for b in buffers] if nesterov else buffers
        assert params["0.weight"] == pytest.approx(w0 - 0.1 * sum(moves), rel=1e-14)
    opt = oracle.SGD(0.1, weight_decay=0.5)
    params = {"0.weight": np.array(w0), "0.bias": np.array(w0)}
    opt.step(params, {"0.weight": np.array(g), "0.bias": np.array(g)})
    assert params["0.weight"] == pytest.approx(w0 - 0.1 * (g + 0.5 * w0)) and params["0.bias"] == w0 - 0.1 * g
    opt = oracle.Adam(0.01, beta1=0.8, beta2=0.9, eps=0.0)
    params = {"0.weight": np.array(w0)}
    for _ in range(4):  # a constant gradient: m_hat = v_hat ** 0.5 = |g| at every step, each step moves lr
        opt.step(params, {"0.weight": np.array(-g)})
    assert params["0.weight"] == pytest.approx(w0 + 4 * 0.01, rel=1e-14)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("l2", [0.0, 0.01], ids=["l2=0", "l2=0.01"])
@pytest.mark.parametrize("kind, kwargs", OPTIMIZERS)
def test_optimizer_matches_torch(device, kind, kwargs, l2, bias):
    require_dtype(device, "float64")
    X, y = classification_data(n=40, features=5, classes=3, seed=1)
    model = pn.mlp([5, 7, 3], bias=bias, dtype="float64", seed=2)
    if bias:  # non-zero biases so that a wrongly decayed bias would show
        state = model.state_dict()
        state["0.bias"] = np.linspace(-0.5, 0.5, 7)
        state["2.bias"] = np.array([0.3, -0.2, 0.1])
        model.load_state_dict(copy_state(state))
    initial = model.state_dict()
    expected, losses = _torch_reference(initial, X, y, kind, kwargs, bias=bias, l2=l2, epochs=2, batch=10)

    opt = _ours(kind, kwargs)
    history = pn.fit(model, X, y, optimizer=opt, epochs=2, batch_size=10, shuffle=False, l2=l2, device=device)
    assert opt.steps == 8
    assert_state_close(model.state_dict(), expected, "float64", err_msg=f"{kind} {kwargs}")
    assert_close(history["loss"], losses, "float64")
    # the update really moved the weights (the comparison is not vacuous)
    assert not np.allclose(model.state_dict()["0.weight"], initial["0.weight"], rtol=1e-3)


def test_one_sgd_step_is_a_gradient_step(device, dtype):
    """Full batch, one epoch: ``W1 = W0 - lr (dL/dW + l2 W0)``, ``b1 = b0 - lr dL/db`` (no oracle needed)."""
    dev = device
    lr, l2 = 0.5, 0.02
    X, y = classification_data(n=12, features=4, classes=3, seed=3)
    model = pn.mlp([4, 6, 3], dtype=dtype, seed=4).to(dev)
    state = model.state_dict()
    probe = pn.mlp([4, 6, 3], dtype="float64", seed=4)
    probe.load_state_dict(copy_state(state))
    logits = probe.forward(X.copy())
    probe.backward(pn.softmax_cross_entropy_grad(logits, y), input_grad=False)
    expected = {}
    for key, layer, name in probe.named_parameters():
        g = layer.grads[name] + (l2 * state[key] if name == "weight" else 0.0)
        expected[key] = state[key] - lr * g
    pn.fit(model, X, y, optimizer=pn.SGD(lr), epochs=1, batch_size=None, l2=l2)
    assert_state_close(model.state_dict(), expected, dtype, factor=10)


def test_adam_first_step_moves_each_weight_by_lr(device, dtype):
    """Adam's first step is ``lr * g / (|g| + eps)``: every parameter with a gradient moves by ~lr."""
    dev, lr = device, 1e-3
    X, y = classification_data(n=12, features=4, classes=3, seed=5)
    model = pn.mlp([4, 3], dtype=dtype, seed=6).to(dev)
    before = model.state_dict()
    pn.fit(model, X, y, optimizer=pn.Adam(lr), epochs=1, batch_size=None)
    after = model.state_dict()
    for key in before:
        step = np.abs(after[key].astype(np.float64) - before[key])
        np.testing.assert_allclose(step, lr, rtol=1e-3 if dtype == "float32" else 1e-6, err_msg=key)


def test_momentum_state_follows_the_model_to_another_device():
    """One epoch on NumPy then one on array_api_strict:device1 with the same optimizer == two on NumPy."""
    X, y = classification_data(n=30, features=4, classes=3, seed=7)
    for make in (lambda: pn.SGD(0.1, momentum=0.9), lambda: pn.Adam(0.01)):
        a, b = pn.mlp([4, 5, 3], dtype="float64", seed=8), pn.mlp([4, 5, 3], dtype="float64", seed=8)
        pn.fit(a, X, y, optimizer=make(), epochs=2, batch_size=10, shuffle=False)
        opt = make()
        pn.fit(b, X, y, optimizer=opt, epochs=1, batch_size=10, shuffle=False)
        pn.fit(b, X, y, optimizer=opt, epochs=1, batch_size=10, shuffle=False, device="array_api_strict:device1")
        assert b.device.name == "array_api_strict:device1" and opt.steps == 6
        assert_state_close(b.state_dict(), a.state_dict(), "float64", err_msg=repr(opt))


def test_continuing_fit_with_the_same_optimizer_equals_one_longer_fit(device, dtype):
    X, y = classification_data(n=30, features=4, classes=3, seed=9)
    a = pn.mlp([4, 5, 3], dtype=dtype, seed=10).to(device)
    b = pn.mlp([4, 5, 3], dtype=dtype, seed=10).to(device)
    pn.fit(a, X, y, optimizer=pn.SGD(0.1, momentum=0.5), epochs=3, batch_size=None, l2=1e-3)
    opt = pn.SGD(0.1, momentum=0.5)
    for _ in range(3):
        pn.fit(b, X, y, optimizer=opt, epochs=1, batch_size=None, l2=1e-3)
    assert_state_close(b.state_dict(), a.state_dict(), dtype, factor=10)


def test_adam_reused_on_a_new_model_behaves_like_a_fresh_adam():
    X, y = classification_data(n=20, features=4, classes=3, seed=11)
    opt = pn.Adam(0.01)
    pn.fit(pn.mlp([4, 3], dtype="float64", seed=1), X, y, optimizer=opt, epochs=1, batch_size=None)
    reused, fresh = pn.mlp([4, 3], dtype="float64", seed=2), pn.mlp([4, 3], dtype="float64", seed=2)
    pn.fit(reused, X, y, optimizer=opt, epochs=1, batch_size=None)
    pn.fit(fresh, X, y, optimizer=pn.Adam(0.01), epochs=1, batch_size=None)
    assert_state_close(reused.state_dict(), fresh.state_dict(), "float64")


# -- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [0, 0.0, -0.1, -1, float("nan"), float("inf"), -float("inf"), "nan"])
@pytest.mark.parametrize("make", [pn.SGD, pn.Adam, lambda lr: pn.SGD(lr, momentum=0.9)],
                         ids=["SGD", "Adam", "SGD-momentum"])
def test_invalid_learning_rate_raises(make, lr):
    with pytest.raises(ValueError, match="learning rate must be a positive finite number"):
        make(lr)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(momentum=1.0), "momentum must be in"),
    (dict(momentum=-0.1), "momentum must be in"),
    (dict(momentum=float("nan")), "momentum must be in"),
    (dict(nesterov=True), "nesterov momentum needs momentum > 0"),
])
def test_invalid_sgd_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        pn.SGD(0.1, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(beta1=1.0), dict(beta2=1.0), dict(beta1=-0.1), dict(eps=0.0),
                                    dict(eps=-1e-8)])
def test_invalid_adam_arguments(kwargs):
    with pytest.raises(ValueError, match="Adam needs"):
        pn.Adam(0.01, **kwargs)


def test_valid_learning_rates_are_stored_as_float():
    assert pn.SGD(1).lr == 1.0 and isinstance(pn.SGD(1).lr, float)
    assert pn.Adam("0.5").lr == 0.5
    assert math.isclose(pn.Adam().lr, 1e-3)
    assert "lr=0.1" in repr(pn.SGD(0.1, momentum=0.9)) and "momentum=0.9" in repr(pn.SGD(0.1, momentum=0.9))


def test_host_helper_reads_device_arrays(device):
    """Sanity check of the helper the tests use to read device arrays."""
    arr = device.asarray(np.array([1.5, 2.5], dtype=np.float32))
    np.testing.assert_array_equal(host(device, arr), [1.5, 2.5])


@pytest.mark.parametrize("kind, kwargs", OPTIMIZERS)
@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_the_functional_and_in_place_forms_of_a_rule_agree(device, dtype, kind, kwargs, decay):
    """``update`` (new arrays, for immutable backends) and ``update_`` (in place, through the kernels, fast
    twins included) are the same rule: three steps from the same parameter, gradients and state."""
    require_dtype(device, dtype)
    dev, rng = device, np.random.default_rng(11)
    opt = _ours(kind, kwargs)
    param = rng.standard_normal((4, 3)).astype(dtype)
    grads = [rng.standard_normal((4, 3)).astype(dtype) for _ in range(3)]
    at = dev if dev.backend.mutable else pn.device("numpy")  # where arrays cannot change, against NumPy's in place
    p_new, p_in = dev.asarray(param), at.asarray(param.copy())
    state_new = tuple(dev.zeros((4, 3), dtype) for _ in range(opt.slots))
    state_in = tuple(at.zeros((4, 3), dtype) for _ in range(opt.slots))
    for step, g in enumerate(grads, start=1):
        hyper = opt.hyper(step)
        p_new, state_new = opt.update(dev.xp, p_new, dev.asarray(g), state_new, decay, hyper)
        opt.update_(at.kernels, p_in, at.asarray(g), state_in, decay, hyper)
        assert_close(host(at, p_in), host(dev, p_new), dtype, factor=10)
        for a, b in zip(state_in, state_new):
            assert_close(host(at, a), host(dev, b), dtype, factor=10)
    assert not np.allclose(host(dev, p_new), param)  # it moved


def test_gradients_are_true_gradients_after_a_step():
    """The loss gradient carries no learning rate: after a step, ``layer.grads`` of a momentum SGD fit are
    those of the loss alone (the first-wave folded ``lr`` into them)."""
    X, y = classification_data(n=12, features=4, classes=3)
    for lr in (0.1, 0.7):
        model = pn.mlp([4, 3], init="xavier", seed=1, dtype="float64")
        start = copy_state(model.state_dict())
        pn.fit(model, X, y, optimizer=pn.SGD(lr, momentum=0.5), epochs=1, batch_size=12, shuffle=False)
        _, _, expected = oracle.loss_and_grads(start, oracle.architecture(model), X.astype(np.float64), y)
        for key, layer, name in model.named_parameters():
            np.testing.assert_allclose(host(model.device, layer.grads[name]), expected[key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("clip_norm", [0.05, 1e3], ids=["clipping", "not-reached"])
@pytest.mark.parametrize("kind, kwargs", [OPTIMIZERS[0], OPTIMIZERS[2], OPTIMIZERS[3]])
def test_gradient_clipping_matches_the_numpy_oracle_step_by_step(device, dtype, kind, kwargs, clip_norm):
    """``fit(clip_norm=c)`` is ``torch.nn.utils.clip_grad_norm_(c)`` before each step (the global 2-norm of
    all gradients, L2 added after by the optimizer), on every device, after each of 6 steps."""
    X, y = classification_data(n=10, features=4, classes=3, seed=1)
    model = _biased_model(dtype).to(device)
    expected = oracle.train(model.state_dict(), oracle.architecture(model), X.astype(dtype), y,
                            oracle.make(kind, kwargs, 0.05), epochs=2, batch=4, l2=0.05, clip_norm=clip_norm)
    unclipped = oracle.train(model.state_dict(), oracle.architecture(model), X.astype(dtype), y,
                             oracle.make(kind, kwargs, 0.05), epochs=2, batch=4, l2=0.05)
    states = []
    pn.fit(model, X, y, optimizer=_ours(kind, kwargs), epochs=2, batch_size=4, shuffle=False, l2=0.05,
           clip_norm=clip_norm, on_step=lambda epoch, step, steps: states.append(model.state_dict()))
    for i, (state, want) in enumerate(zip(states, expected.steps), start=1):
        assert_state_close(state, want, dtype, err_msg=f"{device.name} {kind} clip {clip_norm} after step {i}")
    moved = max(float(np.max(np.abs(expected.params[k] - unclipped.params[k]))) for k in expected.params)
    assert (moved > 1e-3) == (clip_norm < 1), moved  # the clip bites in one case and not in the other


def test_clip_norm_is_checked():
    X, y = classification_data(n=10, features=4, classes=3)
    for bad in (0, -1.0, float("inf"), float("nan"), "1", True):
        with pytest.raises(pn.InputError, match="clip_norm must be a positive finite number"):
            pn.fit(pn.mlp([4, 3]), X, y, optimizer=pn.SGD(0.1), clip_norm=bad)
