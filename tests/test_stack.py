"""The stacked model (portablenn.stack): M members' forward, backward and Dropout masks against NumPy
references written from the formulas, central differences, and the members given back as ordinary models."""
import numpy as np
import pytest

import portablenn as pn
from _support import central_difference, fd_close, host_forward, require_dtype
from _tolerances import assert_close, assert_state_close
from portablenn.stack import Stacked, StackError, StackedDropout, StackedLinear, architecture_key
from portablenn.sweep import stack_mlp


def _members(sizes, seeds, dtype="float64", **kwargs):
    return [pn.mlp(sizes, seed=s, dtype=dtype, **kwargs) for s in seeds]


def test_parameters_carry_the_member_axis_in_the_seeds_layout():
    models = _members([3, 5, 2], [0, 1, 2])
    stacked = Stacked(models)
    assert stacked.members == len(stacked) == 3
    state = stacked.state_dict()
    assert state["0.weight"].shape == (3, 3, 5) and state["0.bias"].shape == (3, 1, 5)
    assert state["2.weight"].shape == (3, 5, 2) and state["2.bias"].shape == (3, 1, 2)
    for i, model in enumerate(models):
        own = model.state_dict()
        np.testing.assert_array_equal(state["0.weight"][i], own["0.weight"])
        np.testing.assert_array_equal(state["2.bias"][i, 0], own["2.bias"])
    assert stacked.in_features == 3 and stacked.out_features == 2
    assert [type(layer).__name__ for layer in stacked.layers] == ["StackedLinear", "ReLU", "StackedLinear"]


def _side_by_side(stacked):
    """Whether the first layer's weight is laid out (in, M, out): NumPy's fast kernels, 32 inputs or more."""
    first = stacked.layers[0]
    return first.side_by_side(first.params["weight"]) is not None


# (inputs, activation): 40 inputs lay the first weight side by side on NumPy's kernels (one GEMM for every
# member, ReLU in place, the hidden layer's arrays reused); 4 keep the broadcast matmul everywhere
WIDTHS = [(4, "tanh"), (40, "relu")]


@pytest.mark.parametrize("features, activation", WIDTHS)
def test_forward_is_each_members_forward_on_every_device(device, dtype, features, activation):
    require_dtype(device, dtype)
    rng = np.random.default_rng(0)
    models = _members([features, 6, 5, 3], [3, 4], dtype=dtype, activation=activation)
    states = [m.state_dict() for m in models]
    stacked = Stacked(models).to(device)
    assert _side_by_side(stacked) == (features >= 32 and hasattr(device.kernels, "side_by_side"))
    X = rng.standard_normal((7, features)).astype(dtype)
    shared = device.to_numpy(stacked.forward(device.asarray(X))).copy()
    assert shared.shape == (2, 7, 3)
    own_rows = rng.standard_normal((2, 7, features)).astype(dtype)  # each member its own rows
    separate = device.to_numpy(stacked.forward(device.asarray(own_rows)))
    for i, state in enumerate(states):
        assert_close(shared[i], host_forward(state, X, activation), dtype, factor=10)
        assert_close(separate[i], host_forward(state, own_rows[i], activation), dtype, factor=10)
    np.testing.assert_array_equal(stacked.state_dict()["0.weight"], np.stack([s["0.weight"] for s in states]))
    assert_state_close(stacked.member(1).state_dict(), states[1], dtype)


def assert_gradients_match_central_differences(stacked, X, R, err_msg=""):
    """Every member's gradient of ``sum(outputs * R)``, for each parameter of the NumPy ``stacked``, by central
    differences (the forward in the stack's current mode)."""
    stacked.forward(X)
    stacked.backward(R)
    for key, layer, name in stacked.named_parameters():
        start = layer.params[name].copy()

        def objective(value):
            layer.params[name] = value
            return float(np.sum(stacked.forward(X) * R))
        numeric = central_difference(objective, start)
        layer.params[name] = start
        fd_close(layer.grads[name], numeric, err_msg=f"{err_msg} {key}")


def test_backward_matches_central_differences():
    """Every member's gradient of ``sum(outputs * R)``, for each parameter of the stack, by central differences."""
    rng = np.random.default_rng(1)
    stacked = Stacked(_members([3, 4, 2], [0, 1, 2], activation="tanh"))
    X = rng.standard_normal((5, 3))
    R = rng.standard_normal((3, 5, 2))
    assert_gradients_match_central_differences(stacked, X, R)


@pytest.mark.parametrize("features", [3, 40])
def test_backward_of_each_member_is_its_own_models_backward(device, features):
    require_dtype(device, "float64")
    rng = np.random.default_rng(2)
    models = _members([features, 4, 2], [5, 6])
    stacked = Stacked(models).to(device)
    X, R = rng.standard_normal((5, features)), rng.standard_normal((2, 5, 2))
    stacked.forward(device.asarray(X))
    stacked.backward(device.asarray(R))
    for i, model in enumerate(models):
        model.to(device)
        model.forward(device.asarray(X))
        model.backward(device.asarray(R[i]))
        for (key, layer, name), (_, own, _) in zip(stacked.named_parameters(), model.named_parameters()):
            got = device.to_numpy(layer.grads[name])[i]
            assert_close(got.reshape(np.shape(device.to_numpy(own.grads[name]))), device.to_numpy(own.grads[name]),
                         "float64", err_msg=key)


@pytest.mark.parametrize("ps", [(0.5, 0.2, 0.0), (0.3, 0.3, 0.3)])
def test_dropout_draws_each_members_own_mask(device, ps):
    """Member i drops exactly what its own Dropout(p_i, seed_i) drops at the same draw; p = 0 is a member
    without a Dropout layer (nothing dropped, nothing drawn)."""
    rng = np.random.default_rng(3)
    models = [pn.mlp([4, 6, 3], seed=s, dropout=p, dtype="float32") for s, p in zip((0, 1, 2), ps)]
    stacked = Stacked(models).to(device)
    drop = next(layer for layer in stacked.layers if isinstance(layer, StackedDropout))
    assert drop.p == ps
    x = rng.standard_normal((3, 8, 6)).astype("float32") + 2.0  # no zeros of its own
    own = [[layer for layer in model.to(device).layers if isinstance(layer, pn.Dropout)] for model in models]
    for draw in range(2):
        out = device.to_numpy(drop.forward(device.asarray(x)))
        for i in range(3):
            expected = device.to_numpy(own[i][0].forward(device.asarray(x[i]))) if own[i] else x[i]
            np.testing.assert_array_equal(out[i], expected, err_msg=f"member {i}, draw {draw}")
        assert np.any(out[0] == 0) and not np.any(out[2] == 0) if ps[2] == 0 else True
    assert int(device.to_numpy(drop.buffers["counter"])) == 2


def test_eval_mode_drops_nothing():
    models = [pn.mlp([4, 6, 3], seed=s, dropout=0.5) for s in (0, 1)]
    stacked = Stacked(models).eval()
    x = np.ones((2, 5, 6), dtype="float32")
    drop = stacked.layers[2]
    np.testing.assert_array_equal(drop.forward(x), x)


def test_members_come_back_as_ordinary_models(tmp_path):
    models = [pn.mlp([3, 5, 2], seed=s, dropout=p) for s, p in ((0, 0.0), (1, 0.25))]
    stacked = Stacked(models)
    stacked.forward(np.ones((4, 3), dtype="float32"))  # one draw: the counter moves
    for i, model in enumerate(models):
        back = stacked.member(i)
        assert isinstance(back, pn.Sequential)
        assert back.to_config() == model.to_config() and back.config == model.config
        expected = model.state_dict()
        if "2.counter" in expected:
            expected["2.counter"] = np.asarray(1, dtype=np.int64)
        assert_state_close(back.state_dict(), expected, "float32", factor=0)
        path = pn.save(back, tmp_path / f"m{i}.safetensors")
        assert_state_close(pn.load(path).state_dict(), back.state_dict(), "float32", factor=0)
    with pytest.raises(IndexError, match="from 0 to 1"):
        stacked.member(2)


def test_a_member_is_a_copy_the_stack_does_not_share():
    models = _members([2, 3, 2], [0, 1])
    stacked = Stacked(models)
    stacked.layers[0].params["weight"][...] = 7.0
    assert not np.any(models[0].state_dict()["0.weight"] == 7.0)
    back = stacked.member(0)
    back.layers[0].params["weight"][...] = 9.0
    assert np.all(stacked.state_dict()["0.weight"] == 7.0)


def test_different_architectures_cannot_share_a_stack():
    with pytest.raises(StackError, match="member 1 has another architecture"):
        Stacked([pn.mlp([2, 4, 3]), pn.mlp([2, 5, 3])])
    with pytest.raises(StackError, match="member 1 has another architecture"):
        Stacked([pn.mlp([2, 4, 3], activation="relu"), pn.mlp([2, 4, 3], activation="tanh")])
    with pytest.raises(StackError, match="member 1 has another architecture"):
        Stacked([pn.mlp([2, 4, 3]), pn.mlp([2, 4, 3], dtype="float64")])
    with pytest.raises(StackError, match="cannot be stacked"):  # a layer the stack has no twin for
        Stacked([pn.Sequential(pn.Linear(2, 4), type("Rescale", (pn.Linear,), {})(4, 4), pn.Linear(4, 3))])
    with pytest.raises(StackError, match="at least one"):
        Stacked([])
    # Dropout's p and seed, and whether a member has a Dropout layer at all, may differ
    assert architecture_key(pn.mlp([2, 4, 3], dropout=0.5, seed=3)) == architecture_key(pn.mlp([2, 4, 3]))


def test_stack_mlp_initialises_each_member_by_its_own_seed():
    stacked = stack_mlp([3, 4, 2], [5, 9], init="small", dtype="float64")
    for i, seed in enumerate((5, 9)):
        assert_state_close(stacked.member(i).state_dict(), pn.mlp([3, 4, 2], seed=seed, init="small",
                                                                  dtype="float64").state_dict(), "float64", factor=0)
    assert isinstance(stacked.layers[0], StackedLinear)


def test_to_moves_and_casts():
    stacked = stack_mlp([3, 4, 2], [0, 1], dtype="float64")
    strict = pn.device("array_api_strict:device1")
    stacked.to(strict, "float32")
    assert stacked.dtype == "float32" and stacked.device == strict
    out = stacked.forward(strict.asarray(np.ones((2, 3)), dtype="float32"))
    assert tuple(out.shape) == (2, 2, 2)
    assert stacked.member(1).device == strict
