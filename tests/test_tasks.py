"""Every task through fit, evaluate and predict: regression (MSE, Huber) and binary cross-entropy next to
softmax classification. The History's metrics, ``evaluate`` and ``predict`` are checked against the same
figures computed here in plain NumPy from the trained model's outputs."""
import numpy as np
import pytest

import portablenn as pn

from _support import require_dtype
from _tolerances import assert_close


def _regression(n=48, features=4, outputs=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features))
    W = rng.standard_normal((features, outputs))
    y = np.tanh(X @ W) + 0.1 * rng.standard_normal((n, outputs))
    return X, y


def _outputs(model, X):
    """The model's outputs for ``X`` in float64 on the host, from its weights (an independent forward)."""
    h = np.asarray(X, dtype=np.float64)
    for layer in model.layers:
        if isinstance(layer, pn.Linear):
            state = {k: np.asarray(layer.device.to_numpy(v), dtype=np.float64) for k, v in layer.params.items()}
            h = h @ state["weight"] + state.get("bias", 0.0)
        elif isinstance(layer, pn.ReLU):
            h = np.maximum(h, 0.0)
        elif isinstance(layer, pn.Tanh):
            h = np.tanh(h)
    return h


def _r2(y, p):
    """Variance-weighted R^2 over every output (one figure): 1 - SSE / SST."""
    y = y.reshape(p.shape)
    return 1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean(axis=0)) ** 2)


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_history_evaluate_and_predict_agree_with_numpy(device, dtype, outputs):
    require_dtype(device, dtype)
    X, y = _regression(outputs=outputs)
    Xv, yv = _regression(n=20, outputs=outputs, seed=5)
    if outputs == 1:
        y, yv = y[:, 0], yv[:, 0]  # a 1-D target for a model of one output
    X, Xv = X.astype(dtype), Xv.astype(dtype)
    model = pn.mlp([4, 8, outputs], activation="tanh", seed=1, dtype=dtype)
    history = pn.fit(model, X, y, loss="mse", optimizer=pn.SGD(0.05), epochs=4, batch_size=16, device=device,
                     validation=(Xv, yv))
    assert set(history.records[-1]) == {"epoch", "loss", "rmse", "r2", "val_loss", "val_rmse", "val_r2", "seconds"}
    p = _outputs(model, Xv)
    err = p - yv.reshape(p.shape)
    last = history.records[-1]
    assert_close(last["val_loss"], np.mean(err ** 2), dtype, factor=10)
    assert_close(last["val_rmse"], np.sqrt(np.mean(err ** 2)), dtype, factor=10)
    assert_close(last["val_r2"], _r2(yv, p), dtype, factor=10)
    figures = pn.evaluate(model, Xv, yv, loss="mse", return_dict=True)
    assert set(figures) == {"loss", "rmse", "r2"}
    for key in figures:
        assert_close(figures[key], last[f"val_{key}"], dtype, factor=10, err_msg=key)
    assert pn.evaluate(model, Xv, yv, loss="mse") == (figures["loss"], figures["rmse"])
    predicted = pn.predict(model, Xv, loss="mse")
    assert predicted.shape == (20, outputs) and predicted.dtype.kind == "f"
    assert_close(predicted, p, dtype, factor=10)
    with pytest.raises(TypeError):
        pn.predict_proba(model, Xv, loss="mse")


def test_training_rmse_is_the_running_figure_of_the_epoch():
    """Full-batch: the training figures of epoch k are those of the weights before its one step."""
    X, y = _regression(outputs=2)
    model = pn.mlp([4, 8, 2], seed=3, dtype="float64")
    before = _outputs(model, X)
    history = pn.fit(model, X, y, loss="mse", optimizer=pn.SGD(0.1), epochs=1, batch_size=None)
    err = before - y
    np.testing.assert_allclose(history["loss"][0], np.mean(err ** 2), rtol=1e-12)
    np.testing.assert_allclose(history["rmse"][0], np.sqrt(np.mean(err ** 2)), rtol=1e-12)
    np.testing.assert_allclose(history["r2"][0], _r2(y, before), rtol=1e-12)


def test_binary_cross_entropy_predicts_labels_and_probabilities(device):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 3)).astype("float32")
    y = (X[:, :2] > 0).astype(np.int64)  # two labels per row (multi-label)
    model = pn.mlp([3, 8, 2], seed=0)
    history = pn.fit(model, X, y, loss="binary_cross_entropy", optimizer=pn.SGD(0.5), epochs=3, batch_size=10,
                     device=device, validation=(X, y))
    logits = _outputs(model, X)
    assert_close(history["val_error"][-1], np.mean((logits > 0) != (y == 1)), "float32", factor=10)
    np.testing.assert_array_equal(pn.predict(model, X, loss="binary_cross_entropy"), (logits > 0).astype(np.int64))
    assert_close(pn.predict_proba(model, X, loss="binary_cross_entropy"), 1 / (1 + np.exp(-logits)), "float32",
                 factor=10)


def test_early_stopping_on_r2_looks_for_a_maximum():
    """``val_r2`` improves upwards: the best epoch is the arg-max of the History's figures."""
    X, y = _regression(outputs=1)
    Xv, yv = _regression(n=20, outputs=1, seed=5)
    stopper = pn.EarlyStopping(monitor="val_r2", patience=3)
    history = pn.fit(pn.mlp([4, 8, 1], seed=1), X, y, loss="mse", optimizer=pn.SGD(0.1, momentum=0.9),
                     epochs=30, batch_size=8, validation=(Xv, yv), early_stopping=stopper)
    assert stopper.best_epoch == int(np.argmax(history["val_r2"])) + 1
    assert stopper.best == max(history["val_r2"])


def test_a_monitor_the_task_does_not_record_is_one_clear_line():
    X, y = _regression(outputs=1)
    with pytest.raises(pn.InputError, match="monitors 'val_error', which this fit does not record"):
        pn.fit(pn.mlp([4, 1]), X, y, loss="mse", optimizer=pn.SGD(0.1), validation=(X, y),
               early_stopping=pn.EarlyStopping("val_error"))
