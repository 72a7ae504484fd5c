"""The registry: a layer is one class and one entry, and checkpoints, configs, the PyTorch interop, ONNX
export, ``mlp`` and the command line's ``--activation`` all find it there; train and eval modes."""
import numpy as np
import pytest

import portablenn as pn
from portablenn import checkpoint, registry
from portablenn.layers import Module
from portablenn.registry import ACTIVATIONS, LAYERS, Registry

from _support import host


class Softplus(Module):
    """``log(1 + exp(beta x)) / beta`` elementwise (stable form); a layer defined only in this test."""

    config_keys = ("beta",)
    torch_class = "Softplus"

    def __init__(self, beta=1.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x):  # (batch, n) -> (batch, n)
        self._x = x
        z = self.beta * x
        return (self.xp.maximum(z, 0.0) + self.xp.log(1.0 + self.xp.exp(-self.xp.abs(z)))) / self.beta

    def backward(self, grad_output, input_grad=True):
        # d softplus/dx = sigmoid(beta x), as (tanh(beta x / 2) + 1) / 2
        return grad_output * (0.5 * (self.xp.tanh(0.5 * self.beta * self._x) + 1.0)) if input_grad else None


class Spy(Module):
    """Identity that records the mode it ran in."""

    seen = []

    def forward(self, x):
        Spy.seen.append(self.training)
        return x

    def backward(self, grad_output, input_grad=True):
        return grad_output if input_grad else None


@pytest.fixture
def softplus():
    registry.register_activation("softplus", init="xavier")(Softplus)
    yield Softplus
    LAYERS.unregister("Softplus")
    ACTIVATIONS.unregister("softplus")


def _model(dtype="float64"):
    return pn.Sequential(pn.Linear(3, 5, init="xavier", rng=1, dtype=dtype), Softplus(beta=2.0),
                         pn.Linear(5, 2, init="xavier", rng=2, dtype=dtype))


def test_registry_names_classes_and_refuses_a_second_class_under_one_name():
    reg = Registry("thing")
    reg.register(Softplus)
    assert reg.get("Softplus") is Softplus and reg.name_of(Softplus(1.0)) == "Softplus" and "Softplus" in reg
    reg.register(Softplus)  # the same class again: fine
    with pytest.raises(ValueError, match="another thing is already registered as 'Softplus'"):
        reg.register(Spy, name="Softplus")
    with pytest.raises(ValueError, match=r"unknown thing 'Nope'; expected one of Softplus"):
        reg.get("Nope")
    with pytest.raises(ValueError, match="Spy is not a registered thing"):
        reg.to_config(Spy())


def test_builtin_layers_round_trip_through_their_configs():
    model = pn.mlp([4, 6, 5, 3], activation="tanh", bias=False)
    config = model.to_config()
    assert config["layers"][0] == {"type": "Linear", "in_features": 4, "out_features": 6, "bias": False}
    assert [c["type"] for c in config["layers"]] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    rebuilt = pn.Sequential.from_config(config, dtype="float64")
    assert rebuilt.to_config() == config and rebuilt.dtype == "float64"
    with pytest.raises(ValueError, match="Linear in_features must be a positive integer"):
        LAYERS.from_config({"type": "Linear", "in_features": 0, "out_features": 2, "bias": True})
    with pytest.raises(ValueError, match=r"ReLU takes no entries; unknown \['inplace'\]"):
        LAYERS.from_config({"type": "ReLU", "inplace": True})


def test_a_registered_layer_trains_saves_loads_and_builds_from_its_name(softplus, tmp_path):
    model = _model()
    X = np.random.default_rng(0).standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    pn.fit(model, X, y, optimizer=pn.SGD(0.5), epochs=3, batch_size=10)
    path = tmp_path / "softplus.safetensors"
    pn.save(model, path)
    assert checkpoint.load_checkpoint(path).architecture[1] == {"type": "Softplus", "beta": 2.0}
    loaded = pn.load(path)
    assert isinstance(loaded[1], Softplus) and loaded[1].beta == 2.0
    np.testing.assert_array_equal(pn.predict_proba(loaded, X), pn.predict_proba(model, X))
    # mlp and the CLI's --activation read the same registry
    assert isinstance(pn.mlp([3, 4, 2], activation="softplus")[1], Softplus)
    from portablenn.cli import build_parser
    assert build_parser().parse_args(["train", "--activation", "softplus"]).activation == "softplus"


def test_a_checkpoint_naming_an_unregistered_layer_is_refused_in_one_line(softplus, tmp_path):
    path = tmp_path / "softplus.safetensors"
    pn.save(_model(), path)
    LAYERS.unregister("Softplus")
    with pytest.raises(pn.CheckpointError, match=r"cannot build: layer 1 is .*Softplus.*; expected one of the "
                                                 r"layers Linear, ReLU, Sigmoid, Tanh"):
        pn.load(path)


def test_a_registered_layer_exports_to_onnx(softplus, tmp_path):
    pytest.importorskip("ndonnx")
    ort = pytest.importorskip("onnxruntime")
    from portablenn.onnx import export_onnx

    model = _model()
    export_onnx(model, tmp_path / "m.onnx")
    X = np.random.default_rng(1).standard_normal((7, 3))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    logits = session.run(["logits"], {"input": X})[0]
    np.testing.assert_allclose(logits, host(model.device, model.forward(model.device.asarray(X))), rtol=1e-12)


def test_a_registered_layer_converts_to_and_from_pytorch(softplus):
    torch = pytest.importorskip("torch")
    from portablenn.interop import from_torch, to_torch

    model = _model()
    module = to_torch(model)
    assert isinstance(module[1], torch.nn.Softplus) and module[1].beta == 2.0
    X = np.random.default_rng(2).standard_normal((6, 3))
    np.testing.assert_allclose(module(torch.from_numpy(X)).detach().numpy(),
                               host(model.device, model.forward(model.device.asarray(X))), rtol=1e-12)
    back = from_torch(module)
    assert back.to_config() == model.to_config() and not hasattr(back, "config")  # not what mlp builds
