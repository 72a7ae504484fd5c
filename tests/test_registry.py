"""The registry: a layer is one class and one entry, a loss too, and checkpoints, configs, the PyTorch
interop, ONNX export, ``mlp``, ``fit`` and the command line all find them there; train and eval modes.

``Softplus`` and ``MeanSquaredError`` below are written by the recipe of docs/architecture.md, in this
file only: training with them on every CPU device, their gradient checks, a checkpoint round trip and an
ONNX export need nothing else from the package.
"""
import numpy as np
import pytest

import portablenn as pn
from portablenn import checkpoint, registry
from portablenn.layers import Module
from portablenn.losses import Loss
from portablenn.registry import ACTIVATIONS, LAYERS, LOSSES, Registry
from portablenn.validation import InputError

from _support import central_difference, fd_close, host, require_dtype
from _tolerances import assert_state_close


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


class MeanSquaredError(Loss):
    """``0.5 * sum((outputs - targets) ** 2)`` per row; the metric sums squared errors (History's "error"
    is then the mean squared error per row). Targets: floats ``(n, outputs)``, or ``(n,)`` for one output."""

    def check_targets(self, y, n, outputs, name="y"):
        y = np.asarray(y, dtype=np.float64)
        y = y[:, None] if y.ndim == 1 else y
        if y.shape != (n, outputs) or not np.isfinite(y).all():
            raise InputError(f"{name} must be {n} rows of {outputs} finite targets, got shape {y.shape}")
        return y

    def encode(self, device, y, outputs, dtype):
        return (device.asarray(y, dtype=dtype),)

    def value_and_grad(self, xp, outputs, targets, scale):
        diff = outputs - targets[0]
        squares = xp.sum(diff * diff)
        return diff * scale, 0.5 * squares, squares


class Spy(Module):
    """Identity that records the mode it ran in."""

    seen = []

    def forward(self, x):
        Spy.seen.append(self.training)
        return x

    def backward(self, grad_output, input_grad=True):
        return grad_output if input_grad else None


@pytest.fixture
def mse():
    registry.register_loss(MeanSquaredError, name="half_squared_error")
    yield MeanSquaredError
    LOSSES.unregister("half_squared_error")


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
                                                 r"layers BatchNorm1d, Dropout, GELU, Identity, LayerNorm, LeakyReLU, Linear, ReLU, "
                                                 r"Sigmoid, Tanh"):
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


def test_train_and_eval_modes_reach_every_layer_and_fit_evaluates_in_eval_mode():
    spy = Spy()
    model = pn.Sequential(pn.Linear(2, 3, rng=0), spy, pn.Linear(3, 2, rng=1))
    assert model.training and spy.training
    assert model.eval() is model and not spy.training and not model.training
    model.train()
    assert spy.training
    X, y = np.random.default_rng(0).standard_normal((8, 2)), np.array([0, 1] * 4)
    Spy.seen = []
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=4, validation=(X, y))
    assert Spy.seen == [True, True, False]  # two training steps, then the validation pass
    Spy.seen = []
    pn.evaluate(model, X, y), pn.predict(model, X)
    assert Spy.seen == [False, False] and model.training  # the mode is restored afterwards


# -- a new layer and a new loss, defined above, on every device -------------------------------------------
def _regression(n=48, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y = np.stack([np.sin(X[:, 0]) + 0.5 * X[:, 1], X[:, 2] ** 2 - 0.3], axis=1)
    return X, y


def test_new_layer_and_loss_pass_gradient_checks_on_every_device(device, softplus, mse):
    """Backpropagation through Softplus and MSE (the step's own calls: forward, the loss's value_and_grad,
    backward) against central differences of the loss, for every parameter, in float64."""
    require_dtype(device, "float64")
    dev, loss = device, MeanSquaredError()
    X, y = _regression(n=5)
    model = _model().to(dev)
    Xd, targets = dev.asarray(X, dtype="float64"), loss.encode(dev, y, 2, "float64")
    grad, _, _ = loss.value_and_grad(dev.xp, model.forward(Xd), targets, 1.0)
    model.backward(grad, input_grad=False)
    state = model.state_dict()

    def loss_at(key, value):
        trial = _model().to(dev)
        trial.load_state_dict({**state, key: value})
        return float(host(dev, loss.value(dev.xp, trial.forward(Xd), targets)[0]))

    for key, layer, name in model.named_parameters():
        fd_close(host(dev, layer.grads[name]), central_difference(lambda v: loss_at(key, v), state[key]), err_msg=key)


@pytest.mark.parametrize("optimizer", [lambda: pn.SGD(0.05, momentum=0.9), lambda: pn.Adam(0.01)],
                         ids=["momentum", "adam"])
def test_new_layer_and_loss_train_alike_on_every_device(device, dtype, softplus, mse, optimizer):
    """fit(loss="half_squared_error") with Softplus: the loss falls, and every device ends where NumPy does."""
    require_dtype(device, dtype)
    X, y = _regression()

    def trained(dev):
        model = _model(dtype)
        history = pn.fit(model, X.astype(dtype), y, optimizer=optimizer(), loss="half_squared_error", epochs=5, batch_size=16,
                         l2=1e-3, device=dev, validation=(X[:16].astype(dtype), y[:16]))
        return model.state_dict(), history

    state, history = trained(device)
    reference, expected = trained(pn.device("cpu"))
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert_state_close(state, reference, dtype, factor=100, err_msg=device.name)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-3 if dtype == "float32" else 1e-9)


def test_new_loss_metrics_and_evaluate(softplus, mse):
    X, y = _regression()
    model = _model()
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.05), loss="half_squared_error", epochs=1, batch_size=48, shuffle=False)
    # full batch, no L2: the epoch's loss is half its mean squared error, both from the weights before the step
    assert history["loss"][0] == pytest.approx(0.5 * history["error"][0], rel=1e-12)
    loss, error = pn.evaluate(model, X, y, loss="half_squared_error")
    outputs = model.forward(X)
    assert error == pytest.approx(np.mean(np.sum((outputs - y) ** 2, axis=1)), rel=1e-12)
    assert loss == pytest.approx(0.5 * error, rel=1e-12)
    with pytest.raises(InputError, match=r"y must be 48 rows of 2 finite targets, got shape \(48, 3\)"):
        pn.fit(model, X, np.zeros((48, 3)), optimizer=pn.SGD(0.1), loss="half_squared_error")
    with pytest.raises(ValueError, match="unknown loss 'mae'; expected one of binary_cross_entropy, half_squared_error, huber, mse, "
                                         "softmax_cross_entropy"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), loss="mae")


def test_new_layer_and_loss_checkpoint_round_trip_and_resume(softplus, mse, tmp_path):
    """Save mid-training with the optimizer, load into a fresh process's view, continue: bit-identical to
    training straight through."""
    X, y = _regression()
    straight = _model()
    pn.fit(straight, X, y, optimizer=pn.Adam(0.01), loss="half_squared_error", epochs=4, batch_size=16, seed=5)
    first, opt = _model(), pn.Adam(0.01)
    pn.fit(first, X, y, optimizer=opt, loss="half_squared_error", epochs=2, batch_size=16, seed=5)
    pn.save(first, tmp_path / "m.safetensors", optimizer=opt)
    resumed = pn.load(tmp_path / "m.safetensors")
    assert isinstance(resumed[1], Softplus) and resumed[1].beta == 2.0
    opt2 = checkpoint.restore_optimizer(pn.Adam(0.01), checkpoint.load_checkpoint(tmp_path / "m.safetensors"),
                                        resumed)
    pn.fit(resumed, X, y, optimizer=opt2, loss="half_squared_error", epochs=4, initial_epoch=2, batch_size=16, seed=5)
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)


def test_new_layer_trained_on_a_new_loss_exports_to_onnx(softplus, mse, tmp_path):
    pytest.importorskip("ndonnx")
    ort = pytest.importorskip("onnxruntime")
    from portablenn.onnx import export_onnx

    X, y = _regression()
    model = _model()
    pn.fit(model, X, y, optimizer=pn.SGD(0.05), loss="half_squared_error", epochs=2, batch_size=16)
    export_onnx(model, tmp_path / "regression.onnx")
    session = ort.InferenceSession(str(tmp_path / "regression.onnx"))
    np.testing.assert_allclose(session.run(["logits"], {"input": X})[0], model.forward(X), rtol=1e-12)
