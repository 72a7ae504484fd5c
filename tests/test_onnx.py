"""portablenn.onnx.export_onnx: onnxruntime runs the exported file like portablenn's NumPy forward pass."""
import numpy as np
import pytest

ndx = pytest.importorskip("ndonnx")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import portablenn as pn  # noqa: E402
from portablenn.onnx import export_onnx  # noqa: E402

from _tolerances import assert_close  # noqa: E402

# (sizes, activation, bias, dtype); tracing costs ~0.4 s per Linear layer (ndonnx wraps every
# matmul in an If node and propagates values through it), so the cases stay few and small.
CASES = [
    ([4, 3], "relu", True, "float32"),
    ([5, 16, 3], "relu", False, "float32"),
    ([5, 16, 8, 4], "sigmoid", True, "float32"),
    ([3, 12, 2], "sigmoid", False, "float32"),
    ([6, 10, 10, 5], "tanh", True, "float32"),
    ([6, 10, 5], "tanh", False, "float32"),
    ([5, 9, 4], "relu", True, "float64"),
    ([4, 7, 3], "leaky_relu", True, "float32"),
    ([4, 7, 3], "gelu", True, "float64"),
    ([4, 7, 3], "identity", False, "float32"),
]


def _model(sizes, activation, bias, dtype, seed=0):
    model = pn.mlp(sizes, activation=activation, bias=bias, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for layer in model.linears:  # non-zero biases, so a dropped bias would show
        if bias:
            layer.params["bias"][...] = rng.standard_normal(layer.out_features)
    return model


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("sizes, activation, bias, dtype", CASES,
                         ids=[f"{'-'.join(map(str, c[0]))}-{c[1]}-{'bias' if c[2] else 'nobias'}-{c[3]}"
                              for c in CASES])
def test_onnxruntime_matches_numpy_forward_for_any_batch(tmp_path, sizes, activation, bias, dtype):
    model = _model(sizes, activation, bias, dtype)
    before = model.state_dict()
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, path)
    assert path.is_file() and isinstance(proto, onnx.ModelProto)
    session = _session(path)
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape == ["N", sizes[0]]  # symbolic batch dimension
    assert inp.type == f"tensor({'float' if dtype == 'float32' else 'double'})"
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    for batch in (1, 1000):  # one file, two batch sizes
        X = np.random.default_rng(batch).standard_normal((batch, sizes[0])).astype(dtype)
        logits, probabilities = session.run(None, {"input": X})
        assert logits.shape == probabilities.shape == (batch, sizes[-1])
        assert logits.dtype == probabilities.dtype == np.dtype(dtype)
        assert_close(logits, model.forward(X), dtype, factor=10)
        assert_close(probabilities, pn.predict_proba(model, X), dtype, factor=10)
    after = model.state_dict()  # the model itself is untouched
    assert model.device == pn.device("cpu") and all(np.array_equal(before[k], after[k]) for k in before)


def test_exports_a_model_living_on_another_device(tmp_path):
    model = _model([4, 6, 3], "relu", True, "float32").to("array_api_strict:device1")
    export_onnx(model, tmp_path / "m.onnx")
    assert model.device.name == "array_api_strict:device1"  # not moved by the export
    X = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    (logits, _) = _session(tmp_path / "m.onnx").run(None, {"input": X})
    assert_close(logits, model.to("cpu").forward(X), "float32", factor=10)


def test_opset_conversion(tmp_path):
    model = _model([4, 3], "relu", True, "float32")
    X = np.ones((2, 4), dtype=np.float32)
    proto = export_onnx(model, tmp_path / "m.onnx", opset=20)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert_close(_session(tmp_path / "m.onnx").run(None, {"input": X})[0], model.forward(X), "float32")
    with pytest.raises(ValueError, match="cannot convert the model from opset 21 to opset 13"):
        export_onnx(model, tmp_path / "old.onnx", opset=13)
    with pytest.raises(ValueError, match="opset must be a positive integer"):
        export_onnx(model, tmp_path / "bad.onnx", opset="21")


def test_refuses_what_is_not_a_sequential(tmp_path):
    with pytest.raises(TypeError, match="needs a portablenn Sequential"):
        export_onnx(pn.Linear(3, 2), tmp_path / "m.onnx")


# (loss, output names): the outputs follow the task the loss names
TASKS = [
    ("softmax_cross_entropy", ["logits", "probabilities"]),
    ("binary_cross_entropy", ["logits", "probabilities"]),
    ("mse", ["outputs"]),
    ("huber", ["outputs"]),
]


def _numpy_probabilities(loss, logits):
    """The oracle, from the formulas: softmax rows, or elementwise sigmoids."""
    if loss == "softmax_cross_entropy":
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss, names", TASKS, ids=[t[0] for t in TASKS])
def test_outputs_follow_the_task_and_match_predict(tmp_path, loss, names, dtype):
    model = _model([4, 6, 3], "tanh", True, dtype)
    path = tmp_path / f"{loss}.onnx"
    proto = export_onnx(model, path, loss=loss)
    assert [o.name for o in proto.graph.output] == names
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == names
    assert all(o.shape[1:] == [3] for o in session.get_outputs())  # ndonnx leaves the batch dimension unnamed
    X = (5 * np.random.default_rng(3).standard_normal((200, 4))).astype(dtype)  # logits of both signs, large ones
    results = session.run(None, {"input": X})
    assert all(r.dtype == np.dtype(dtype) and r.shape == (200, 3) for r in results)
    assert_close(results[0], model.forward(X), dtype, factor=10)
    if loss in ("mse", "huber"):  # the predictions are the outputs themselves
        assert_close(results[0], pn.predict(model, X, loss=loss), dtype, factor=10)
        return
    logits, probabilities = results
    assert_close(probabilities, pn.predict_proba(model, X, loss=loss), dtype, factor=10)
    assert_close(probabilities, _numpy_probabilities(loss, model.forward(X).astype(np.float64)), dtype, factor=10)
    labels = np.argmax(logits, axis=1) if loss == "softmax_cross_entropy" else (logits > 0).astype(np.int64)
    np.testing.assert_array_equal(labels, pn.predict(model, X, loss=loss))


def test_default_loss_is_softmax_cross_entropy_byte_for_byte(tmp_path):
    model = _model([4, 5, 3], "relu", True, "float32")
    export_onnx(model, tmp_path / "default.onnx")
    export_onnx(model, tmp_path / "named.onnx", loss="softmax_cross_entropy")
    export_onnx(model, tmp_path / "object.onnx", loss=pn.losses.SoftmaxCrossEntropy(label_smoothing=0.1))
    default = (tmp_path / "default.onnx").read_bytes()
    assert default == (tmp_path / "named.onnx").read_bytes() == (tmp_path / "object.onnx").read_bytes()
    assert default != export_onnx(model, tmp_path / "bce.onnx", loss="binary_cross_entropy").SerializeToString()


def test_loss_objects_and_a_loss_without_probabilities(tmp_path):
    from portablenn.losses import Huber, Loss

    class Custom(Loss):  # no task said, no probabilities defined: the outputs alone
        pass

    model = _model([3, 2], "identity", True, "float64")
    assert [o.name for o in export_onnx(model, tmp_path / "h.onnx", loss=Huber(delta=0.5)).graph.output] == ["outputs"]
    assert [o.name for o in export_onnx(model, tmp_path / "c.onnx", loss=Custom()).graph.output] == ["outputs"]
    with pytest.raises(TypeError, match="loss must be a portablenn Loss or the name of one"):
        export_onnx(model, tmp_path / "bad.onnx", loss=3)


def test_binary_cross_entropy_converts_to_opset_20(tmp_path):
    model = _model([4, 2], "relu", True, "float32")
    export_onnx(model, tmp_path / "m.onnx", loss="binary_cross_entropy", opset=20)
    X = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    _, probabilities = _session(tmp_path / "m.onnx").run(None, {"input": X})
    assert_close(probabilities, pn.predict_proba(model, X, loss="binary_cross_entropy"), "float32", factor=10)
