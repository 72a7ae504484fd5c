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
