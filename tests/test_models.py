"""What ``mlp``, ``Sequential`` and the initialisers build, checked against their documented formulas."""
import numpy as np
import pytest

import portablenn as pn
from portablenn import init

FAN_IN, FAN_OUT = 400, 100  # apart, so that a formula using the wrong fan shows


@pytest.mark.parametrize("name, std", [
    ("he", np.sqrt(2.0 / FAN_IN)),
    ("xavier_normal", np.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    ("small", 0.01),
    ("cmu", 1.0 / np.sqrt(FAN_OUT)),
])
def test_normal_initialisers_have_their_documented_spread(name, std):
    w = init.initial_weight(name, init.generator(0), FAN_IN, FAN_OUT)
    assert w.shape == (FAN_IN, FAN_OUT) and w.dtype == np.float64
    assert abs(w.std() / std - 1) < 0.02 and abs(w.mean()) < 0.02 * std  # 40 000 draws: ~0.4% and ~0.5% noise


@pytest.mark.parametrize("name", ["xavier", "glorot"])
def test_uniform_xavier_fills_its_documented_interval(name):
    bound = np.sqrt(6.0 / (FAN_IN + FAN_OUT))
    w = init.initial_weight(name, init.generator(0), FAN_IN, FAN_OUT)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    assert abs(w.std() / (bound / np.sqrt(3.0)) - 1) < 0.02


def test_an_initialiser_is_a_seeded_draw_and_a_callable_must_give_the_shape():
    np.testing.assert_array_equal(init.initial_weight("he", init.generator(3), 5, 4),
                                  init.initial_weight("he", init.generator(3), 5, 4))
    assert not np.array_equal(init.initial_weight("he", init.generator(3), 5, 4),
                              init.initial_weight("he", init.generator(4), 5, 4))
    with pytest.raises(ValueError, match=r"returned shape \(4, 5\), expected \(5, 4\)"):
        init.initial_weight(lambda rng, fan_in, fan_out: np.zeros((fan_out, fan_in)), init.generator(0), 5, 4)
    with pytest.raises(ValueError, match="unknown init 'uniform'"):
        init.initial_weight("uniform", init.generator(0), 5, 4)


@pytest.mark.parametrize("activation, expected", [("relu", "he"), ("sigmoid", "xavier"), ("tanh", "xavier")])
def test_mlp_draws_each_layer_in_turn_from_one_generator_with_the_activations_initialiser(activation, expected):
    model = pn.mlp([6, 5, 4, 3], activation=activation, seed=11, dtype="float64")
    rng = init.generator(11)
    for key, (fan_in, fan_out) in zip(["0.weight", "2.weight", "4.weight"], [(6, 5), (5, 4), (4, 3)]):
        np.testing.assert_array_equal(model.state_dict()[key], init.INITS[expected](rng, fan_in, fan_out))
    assert all(not b.any() for k, b in model.state_dict().items() if k.endswith(".bias"))
    assert [type(layer).__name__ for layer in model.layers] == ["Linear", {"relu": "ReLU", "sigmoid": "Sigmoid",
                                                                           "tanh": "Tanh"}[activation]] * 2 + ["Linear"]


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_config_describes_the_model(bias):
    model = pn.mlp([3, 4, 2], activation="tanh", bias=bias)
    assert model.config == {"sizes": [3, 4, 2], "activation": "tanh", "bias": bias}
    assert sorted(model.state_dict()) == (["0.bias", "0.weight", "2.bias", "2.weight"] if bias else
                                          ["0.weight", "2.weight"])


@pytest.mark.parametrize("first, second", [((4, 6), (5, 3)), ((4, 5), (6, 3))])  # a layer too wide, and too narrow
def test_sequential_refuses_layers_whose_sizes_do_not_chain(first, second):
    with pytest.raises(ValueError, match=f"layer 0 gives {first[1]} features but layer 2 expects {second[0]}"):
        pn.Sequential(pn.Linear(*first), pn.ReLU(), pn.Linear(*second))


def test_evaluate_a_single_row(device):
    """The evaluation loop's chunks cover every row, down to a dataset of one."""
    X = np.array([[0.5, -1.0]], dtype=np.float32)
    model = pn.mlp([2, 3], seed=0).to(device)
    W = model.state_dict()["0.weight"].astype(np.float64)
    logits = X.astype(np.float64) @ W
    expected = float(np.log(np.exp(logits).sum()) - logits[0, 1])
    loss, error = pn.evaluate(model, X, np.array([1]))
    assert loss == pytest.approx(expected, rel=1e-5) and error == float(np.argmax(logits) != 1)


def test_load_state_dict_makes_parameters_c_ordered():
    """A transposed weight (PyTorch's (out, in) read as .T) loads as a C-ordered copy, so the model computes
    bit for bit what the same values loaded C-ordered compute (a column-major weight changes GEMM rounding).
    Regression: from_torch's float64 round trip differed by 1e-15, seen only where torch is installed."""
    rng = np.random.default_rng(0)
    state = {"0.weight": rng.standard_normal((5, 300)).T, "2.weight": rng.standard_normal((7, 5)).T}
    assert not state["0.weight"].flags.c_contiguous
    fortran = pn.Sequential(pn.Linear(300, 5, bias=False, dtype="float64"), pn.ReLU(),
                            pn.Linear(5, 7, bias=False, dtype="float64")).load_state_dict(state)
    c_order = pn.Sequential(pn.Linear(300, 5, bias=False, dtype="float64"), pn.ReLU(),
                            pn.Linear(5, 7, bias=False, dtype="float64"))
    c_order.load_state_dict({k: np.ascontiguousarray(v) for k, v in state.items()})
    assert all(layer.params["weight"].flags.c_contiguous for layer in fortran.linears)
    X = rng.standard_normal((64, 300))
    np.testing.assert_array_equal(fortran.forward(X), c_order.forward(X))
