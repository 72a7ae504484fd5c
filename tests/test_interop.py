"""portablenn.interop: to_torch / from_torch give the same function, both ways, with and without bias."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import portablenn as pn  # noqa: E402
from portablenn.interop import from_torch, to_torch  # noqa: E402

from _tolerances import assert_close  # noqa: E402


def _model(activation="relu", bias=True, dtype="float32", sizes=(6, 20, 11, 4)):
    model = pn.mlp(list(sizes), activation=activation, bias=bias, dtype=dtype, seed=3)
    if bias:  # non-zero biases, so a dropped or misplaced bias would show
        rng = np.random.default_rng(1)
        for layer in model.linears:
            layer.params["bias"][...] = rng.standard_normal(layer.out_features)
    return model


def _X(dtype, n=50, features=6):
    return np.random.default_rng(2).standard_normal((n, features)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu", "gelu", "identity"])
def test_round_trip_gives_the_same_outputs(activation, bias, dtype):
    model = _model(activation, bias, dtype)
    module = to_torch(model)
    X = _X(dtype)
    with torch.no_grad():
        out = module(torch.from_numpy(X))
    assert out.dtype == getattr(torch, dtype)
    assert_close(out.numpy(), model.forward(X), dtype, factor=10)  # two BLAS libraries, same maths
    names = [type(m).__name__ for m in module]
    assert names == ["Linear", {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh", "leaky_relu": "LeakyReLU",
                                "gelu": "GELU", "identity": "Identity"}[activation]] * 2 + ["Linear"]
    assert all((m.bias is not None) == bias for m in module if isinstance(m, torch.nn.Linear))
    state = model.state_dict()
    for key, value in module.state_dict().items():  # same keys; weights transposed to (out, in)
        np.testing.assert_array_equal(value.numpy(), state[key].T if key.endswith("weight") else state[key])
    for back in (from_torch(module), from_torch(module.state_dict(), activation=activation)):
        assert back.dtype == dtype and back.config == model.config
        assert [type(l) for l in back.layers] == [type(l) for l in model.layers]
        np.testing.assert_array_equal(back.forward(X), model.forward(X))  # exact: same weights, same code


def test_from_a_trained_torch_module():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8, bias=False),
                                 torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model = from_torch(module)
    X = _X("float32", features=3)
    with torch.no_grad():
        assert_close(model.forward(X), module(torch.from_numpy(X)).numpy(), "float32", factor=10)
    assert not hasattr(model, "config")  # mixed activations and biases: not an mlp() shape
    assert [type(l).__name__ for l in model.layers] == ["Linear", "Tanh", "Linear", "ReLU", "Linear"]
    assert pn.predict(model, X).shape == (50,)


def test_linear_classifier_and_a_model_on_another_device():
    model = _model(sizes=(6, 4)).to("array_api_strict:device1")
    module = to_torch(model)
    assert len(module) == 1 and model.device.name == "array_api_strict:device1"
    back = from_torch(module.state_dict())  # one Linear layer: no activation needed
    X = _X("float32")
    np.testing.assert_array_equal(back.forward(X), model.to("cpu").forward(X))


def test_the_converted_model_trains():
    model = from_torch(to_torch(_model()))
    X, y = _X("float64", n=60), np.arange(60) % 4
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.05), epochs=5, batch_size=20)
    assert history["loss"][-1] < history["loss"][0]


def test_errors_are_one_sentence():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ELU(), torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"layer 1 \(ELU\) is not Linear, BatchNorm1d, Dropout, GELU, Identity, "
                                        r"LayerNorm, LeakyReLU, ReLU, Sigmoid or Tanh"):
        from_torch(module)
    with pytest.raises(TypeError, match="torch.nn.Sequential or a state dict"):
        from_torch(torch.nn.Linear(3, 2))
    good = to_torch(_model())
    with pytest.raises(ValueError, match="activation is read from the module"):
        from_torch(good, activation="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        from_torch(good.state_dict())
    gap = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"indices 0, 2, 4, \.\.\., got \[0, 3\]"):
        from_torch(gap.state_dict(), activation="relu")
    with pytest.raises(ValueError, match="unexpected state dict keys"):
        from_torch({"fc.weight": np.ones((2, 3))}, activation="relu")
    with pytest.raises(ValueError, match="layer 2 takes 5 features but layer 0 gives 4"):
        from_torch({"0.weight": np.ones((4, 3)), "2.weight": np.ones((2, 5))}, activation="tanh")
    with pytest.raises(ValueError, match="dtype float16"):
        from_torch(torch.nn.Sequential(torch.nn.Linear(3, 2)).half())
    with pytest.raises(TypeError, match="no PyTorch counterpart"):
        to_torch(pn.Sequential(pn.Linear(3, 2), _Square()))


class _Square(pn.Module):
    def forward(self, x):
        return x * x
