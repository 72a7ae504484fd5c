"""fit / evaluate / predict / predict_proba: API behaviour on every device, state dicts, host syncs,
and input validation."""
import warnings

import numpy as np
import pytest

import portablenn as pn
from portablenn.backend import Device

import _oracle as oracle
from _support import (classification_data, copy_state, host_forward, host_softmax, host_xent,
                      require_dtype)
from _tolerances import assert_close, assert_state_close

FIELDS = ["epoch", "loss", "error", "seconds"]
VAL_FIELDS = FIELDS + ["val_loss", "val_error"]


def _model(dtype="float32", sizes=(4, 6, 3), **kw):
    return pn.mlp(list(sizes), dtype=dtype, seed=kw.pop("seed", 0), **kw)


# -- History ---------------------------------------------------------------------------------------
def test_history_fields_and_length(device, dtype):
    X, y = classification_data(n=30, features=4)
    Xv, yv = classification_data(n=10, features=4, seed=1)
    model = _model(dtype).to(device)
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=3, batch_size=8, validation=(Xv, yv))
    assert isinstance(history, pn.History) and len(history) == 3
    assert [r["epoch"] for r in history] == [1, 2, 3] == history["epoch"]
    for record in history.records:
        assert sorted(record) == sorted(VAL_FIELDS)
        assert all(type(record[k]) is float for k in VAL_FIELDS if k != "epoch")
        assert type(record["epoch"]) is int
        assert record["seconds"] >= 0 and record["loss"] > 0 and record["val_loss"] > 0
        assert 0 <= record["error"] <= 1 and 0 <= record["val_error"] <= 1
        # error rates are counts over n
        assert record["error"] * 30 == pytest.approx(round(record["error"] * 30), abs=1e-4)
        assert record["val_error"] * 10 == pytest.approx(round(record["val_error"] * 10), abs=1e-4)
    assert history["loss"] == [r["loss"] for r in history.records]
    assert "3 epochs" in repr(history)
    plain = pn.fit(_model(dtype).to(device), X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=8)
    assert all(sorted(r) == sorted(FIELDS) for r in plain)
    with pytest.raises(KeyError):
        plain["val_loss"]


def test_first_full_batch_epoch_reports_the_initial_loss(device, dtype):
    """Running averages are taken over the minibatches as trained: full batch -> the pre-step loss."""
    X, y = classification_data(n=30, features=4)
    model = _model(dtype).to(device)
    loss0, error0 = pn.evaluate(model, X, y, l2=0.01)
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=None, l2=0.01)
    assert_close(history.records[0]["loss"], loss0, dtype, factor=10)
    assert_close(history.records[0]["error"], error0, dtype, factor=10)
    # host check of the initial value
    state = _model(dtype).state_dict()
    logits = host_forward(state, X)
    penalty = 0.5 * 0.01 * sum(float(np.sum(v.astype(np.float64) ** 2)) for k, v in state.items() if "weight" in k)
    assert_close(loss0, host_xent(logits, y) + penalty, dtype, factor=10)
    assert error0 == pytest.approx(np.mean(np.argmax(logits, axis=1) != y), abs=1e-6)


def test_validation_metrics_are_measured_after_the_epoch(device, dtype):
    X, y = classification_data(n=30, features=4)
    Xv, yv = classification_data(n=11, features=4, seed=2)
    model = _model(dtype).to(device)
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.2, momentum=0.5), epochs=3, batch_size=7, l2=1e-3,
                     validation=(Xv, yv))
    val_loss, val_error = pn.evaluate(model, Xv, yv, l2=1e-3)
    assert_close(history.records[-1]["val_loss"], val_loss, dtype, factor=10)
    assert history.records[-1]["val_error"] == pytest.approx(val_error, abs=1e-6)


@pytest.mark.parametrize("batch_size, n, per_epoch", [(None, 30, 1), (30, 30, 1), (10, 35, 4), (1, 5, 5),
                                                       (7, 21, 3), ("auto", 30, 1), ("auto", 250, 3)])
def test_steps_per_epoch(device, batch_size, n, per_epoch):
    X, y = classification_data(n=n, features=4)
    opt = pn.SGD(0.1)
    pn.fit(_model().to(device), X, y, optimizer=opt, epochs=3, batch_size=batch_size)
    assert opt.steps == 3 * per_epoch


def test_the_default_minibatch_is_100_rows_or_every_row_of_less_data():
    """fit's default, "auto": 100 rows (as before), and one full batch for 30 rows where an explicit 100 is
    refused (scikit-learn's "auto" is min(200, n); Keras and PyTorch take a larger batch as all of it)."""
    for n, steps in ((30, 1), (250, 3)):
        X, y = classification_data(n=n, features=4)
        opt = pn.SGD(0.1)
        pn.fit(_model(), X, y, optimizer=opt, epochs=2)
        assert opt.steps == 2 * steps
    with pytest.raises(pn.InputError, match="got 100"):
        pn.fit(_model(), X[:30], y[:30], optimizer=pn.SGD(0.1), batch_size=100)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_the_last_partial_minibatch_steps_by_the_mean_gradient_of_its_rows(device, dtype, graph):
    """10 rows in minibatches of 4: the third step's update is ``lr * (mean gradient of rows 8 and 9 +
    l2 W)`` (the NumPy oracle's gradient from the weights before that step), not that gradient scaled
    as if the step had 4 rows; the steps before it have their 4 rows' mean (with ``graph`` they run
    through the recorded step, the partial one through the ordinary path)."""
    lr, l2 = 0.5, 0.01
    X, y = classification_data(n=10, features=4, classes=3, seed=12)
    model = _model(dtype, seed=13).to(device)
    arch = oracle.architecture(model)
    states = [model.state_dict()]
    pn.fit(model, X, y, optimizer=pn.SGD(lr), epochs=1, batch_size=4, shuffle=False, l2=l2, graph=graph,
           on_step=lambda epoch, step, steps: states.append(model.state_dict()))
    assert len(states) == 4
    Xd = X.astype(dtype)
    for step, rows in enumerate([slice(0, 4), slice(4, 8), slice(8, 10)]):
        before = {k: v.astype(np.float64) for k, v in states[step].items()}
        _, _, grads = oracle.loss_and_grads(before, arch, Xd[rows].astype(np.float64), y[rows])
        expected = {k: before[k] - lr * (grads[k] + (l2 * before[k] if k.endswith(".weight") else 0.0))
                    for k in before}
        moved = {k: states[step + 1][k].astype(np.float64) - before[k] for k in before}
        # the update itself (a difference of parameters) to the dtype's tolerance of the parameters
        for key in before:
            assert_close(moved[key], expected[key] - before[key], dtype, factor=10,
                         scale=float(np.max(np.abs(before[key]))) + 1.0, err_msg=f"step {step + 1} {key}")
        assert float(np.max(np.abs(moved["2.bias"]))) > 1e-3  # each step moved the parameters


@pytest.mark.parametrize("epochs, log_every", [(7, 3), (7, 1), (3, 10), (4, 4)])
def test_callback_receives_every_record_when_metrics_are_read(device, epochs, log_every):
    """Metrics are read every ``log_every`` epochs and after the last: the callback then gets the
    records of the epochs since the previous read, in order."""
    X, y = classification_data(n=20, features=4)
    opt = pn.SGD(0.1)
    calls = []
    history = pn.fit(_model().to(device), X, y, optimizer=opt, epochs=epochs, batch_size=10, log_every=log_every,
                     callback=lambda record: calls.append((record["epoch"], opt.steps, record)))
    every = log_every
    assert [e for e, _, _ in calls] == list(range(1, epochs + 1))
    expected_steps = [2 * min(epochs, ((e - 1) // every + 1) * every) for e in range(1, epochs + 1)]
    assert [s for _, s, _ in calls] == expected_steps
    assert [r for _, _, r in calls] == history.records


@pytest.mark.parametrize("log_every", [1, 2, 5])
def test_divergence_names_the_epoch_and_step_where_the_loss_went_bad(device, log_every):
    """Poisoning the weights after step 2 of epoch 3 makes step 3 the first non-finite loss; the
    DivergenceError must say so whether that epoch's metrics are read at once or in a later block,
    and the epochs before it must have reached the callback."""
    X, y = classification_data(n=40, features=4)
    model = _model().to(device)
    layer = model.layers[0]
    records = []

    def poison(epoch, step, steps):  # the next step reads the model's arrays, in place or rebound
        if (epoch, step) == (3, 2):
            layer.params["weight"] = layer.params["weight"] * float("nan")

    with pytest.raises(pn.train.DivergenceError) as error:
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=5, batch_size=10, shuffle=False, log_every=log_every,
               on_step=poison, callback=records.append)
    assert (error.value.epoch, error.value.step) == (3, 3)
    assert "epoch 3, step 3 of 4" in str(error.value)
    assert [r["epoch"] for r in records] == [1, 2]  # read in the same block or earlier, they were good


def test_epochs_zero_returns_empty_history(device):
    X, y = classification_data(n=20, features=4)
    model = _model().to(device)
    before = model.state_dict()
    calls, opt = [], pn.SGD(0.1)
    history = pn.fit(model, X, y, optimizer=opt, epochs=0, batch_size=5, callback=calls.append)
    assert len(history) == 0 and history.records == [] and history["loss"] == []
    assert calls == [] and opt.steps == 0
    assert_state_close(model.state_dict(), before, "float32", factor=0)


# -- devices ---------------------------------------------------------------------------------------
def test_fit_without_device_trains_where_the_model_is(device):
    X, y = classification_data(n=20, features=4)
    model = _model().to(device)
    assert model.device == device
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=10)
    assert model.device == device
    for _, layer, name in model.named_parameters():
        assert layer.device == device
        assert type(layer.params[name]).__module__.split(".")[0] == type(device.zeros((1,), "float32")).__module__.split(".")[0]
        if device.library == "array_api_strict":
            assert layer.params[name].device == device.native


def test_fit_with_device_moves_the_model(device):
    X, y = classification_data(n=20, features=4)
    model = _model()
    assert model.device.name == "numpy"
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=10, device=device)
    assert model.device == device
    loss, error = pn.evaluate(model, X, y)  # evaluates where the model is
    assert model.device == device and np.isfinite(loss) and 0 <= error <= 1


def test_fit_accepts_data_already_on_the_device(device, dtype):
    X, y = classification_data(n=20, features=4)
    a, b = _model(dtype).to(device), _model(dtype).to(device)
    ha = pn.fit(a, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=5, seed=1)
    hb = pn.fit(b, device.asarray(X, dtype=dtype), device.asarray(y, dtype=device.index_dtype),
                optimizer=pn.SGD(0.1), epochs=2, batch_size=5, seed=1)
    assert_state_close(b.state_dict(), a.state_dict(), dtype, factor=10)
    assert_close(hb["loss"], ha["loss"], dtype, factor=10)


@pytest.mark.parametrize("labels", ["uint8", "int32", "int64", "float64-integral", "list"])
def test_label_types_accepted(labels):
    X, y = classification_data(n=20, features=4)
    ref = _model("float64")
    pn.fit(ref, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=None)
    yy = y.tolist() if labels == "list" else y.astype(labels.split("-")[0])
    model = _model("float64")
    pn.fit(model, X.tolist() if labels == "list" else X, yy, optimizer=pn.SGD(0.1), epochs=1, batch_size=None)
    assert_state_close(model.state_dict(), ref.state_dict(), "float64")


def test_bool_labels_for_two_classes():
    X, y = classification_data(n=20, features=4, classes=2)
    a, b = _model("float64", sizes=(4, 2)), _model("float64", sizes=(4, 2))
    pn.fit(a, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=None)
    pn.fit(b, X, y.astype(bool), optimizer=pn.SGD(0.1), epochs=1, batch_size=None)
    assert_state_close(b.state_dict(), a.state_dict(), "float64")


# -- state dicts -----------------------------------------------------------------------------------
def test_state_dict_keys_shapes_and_copies(device):
    model = pn.mlp([4, 5, 6, 3], seed=1).to(device)
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert [state[k].shape for k in state] == [(4, 5), (5,), (5, 6), (6,), (6, 3), (3,)]
    assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in state.values())
    state["0.weight"][:] = 123.0
    assert not np.any(model.state_dict()["0.weight"] == 123.0)
    assert list(pn.mlp([4, 5, 3], bias=False).to(device).state_dict()) == ["0.weight", "2.weight"]
    assert list(pn.mlp([4, 3]).state_dict()) == ["0.weight", "0.bias"]


def test_load_state_dict_round_trip_and_row_biases(device, dtype):
    model = _model(dtype, seed=1).to(device)
    other = _model(dtype, seed=2)
    state = other.state_dict()
    state["0.bias"] = np.arange(6, dtype=np.float64).reshape(1, 6)  # (1, out) accepted
    state["2.bias"] = np.array([0.5, -0.5, 0.25])
    assert model.load_state_dict(copy_state(state)) is model
    loaded = model.state_dict()
    assert loaded["0.bias"].shape == (6,) and loaded["0.bias"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded["0.bias"], np.arange(6))
    np.testing.assert_array_equal(loaded["0.weight"], state["0.weight"])
    assert model.device == device
    X = classification_data(n=5, features=4)[0]
    assert_close(pn.evaluate(model, X, np.zeros(5, dtype=int))[0],
                 host_xent(host_forward({k: np.reshape(v, loaded[k].shape) for k, v in state.items()}, X),
                           np.zeros(5, dtype=int)), dtype, factor=10)


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s.pop("2.bias"), "missing ['2.bias']"),
    (lambda s: s.update({"4.weight": np.zeros((3, 3))}), "unexpected ['4.weight']"),
    (lambda s: s.update({"0.weight": np.zeros((6, 4))}), "'0.weight' has shape (6, 4), the model expects (4, 6)"),
    (lambda s: s.update({"2.bias": np.zeros((3, 1))}), "'2.bias' has shape (3, 1)"),
    (lambda s: s.update({"0.bias": np.zeros(5)}), "'0.bias' has shape (5,)"),
])
def test_load_state_dict_errors(device, change, fragment):
    model = _model(seed=1).to(device)
    before = model.state_dict()
    state = _model(seed=2).state_dict()
    state["2.bias"] = np.ones(3, dtype=np.float32)  # a valid entry that must not be applied
    change(state)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    assert fragment in str(info.value)
    assert_state_close(model.state_dict(), before, "float32", factor=0)  # nothing half-loaded


@pytest.mark.parametrize("readonly", [False, True], ids=["writeable", "readonly"])
def test_load_state_dict_copies_the_arrays(readonly):
    """Regression (found in e1515e6): on NumPy the parameters aliased the caller's arrays, so training
    mutated the caller's state dict in place and a read-only array made fit crash."""
    X, y = classification_data(n=20, features=4)
    state = _model("float64", seed=1).state_dict()
    for v in state.values():
        v.flags.writeable = not readonly
    saved = copy_state(state)
    model = _model("float64", seed=2)
    model.load_state_dict(state)
    pn.fit(model, X, y, optimizer=pn.SGD(0.5), epochs=2, batch_size=None)
    assert not np.array_equal(model.state_dict()["0.weight"], saved["0.weight"])
    for key in saved:
        np.testing.assert_array_equal(state[key], saved[key], err_msg=key)


def test_state_moves_between_devices(device):
    X, y = classification_data(n=16, features=4)
    src = _model("float32", seed=3)
    pn.fit(src, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=None)
    trained = src.state_dict()
    dst = _model("float32", seed=4).to(device)
    dst.load_state_dict(trained)  # host state into a model on the device
    assert_state_close(dst.state_dict(), trained, "float32", factor=0)
    src.to(device)  # the model itself moved
    assert src.device == device
    assert_state_close(src.state_dict(), trained, "float32", factor=0)


def test_to_casts_dtype(device):
    require_dtype(device, "float64")
    model = _model("float32", seed=1)
    state = model.state_dict()
    model.to(device, dtype="float64")
    assert model.dtype == "float64"
    out = model.state_dict()
    assert all(v.dtype == np.float64 for v in out.values())
    assert_state_close(out, state, "float32", factor=0)


# -- predict / predict_proba / evaluate ------------------------------------------------------------
def test_predict_proba_is_finite_and_exact_for_huge_logits(device, dtype):
    """``softmax`` shifts each row by its maximum: logits of 1e4 (float64) or 80 (float32: exp overflows
    past 88) still give exact probabilities, never NaN."""
    big = 1e4 if dtype == "float64" else 80.0
    model = pn.Sequential(pn.Linear(2, 3, bias=False, init="zeros", dtype=dtype)).to(device)
    model.load_state_dict({"0.weight": np.array([[big, 0.0, big - 1.0], [0.0, big, 0.0]])})
    proba = pn.predict_proba(model, np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=dtype))
    e = np.exp([[0.0, -big, -1.0], [-big, 0.0, -big], [0.0, -2 * big, -2.0]])
    assert np.isfinite(proba).all()
    assert_close(proba, e / e.sum(axis=1, keepdims=True), dtype, factor=10)


@pytest.mark.parametrize("n", [13, 8192 + 9], ids=["small", "more-than-one-chunk"])
def test_predict_and_predict_proba(device, dtype, n):
    """Regression: on array_api_strict, predict sliced past the end of X (not in the Array API standard)
    and raised IndexError for every n that is not a multiple of the 8192-row chunk."""
    X = np.random.default_rng(3).standard_normal((n, 4))
    model = _model(dtype, seed=5).to(device)
    state = model.state_dict()
    expected = host_softmax(host_forward(state, X))
    labels = pn.predict(model, X)
    proba = pn.predict_proba(model, X)
    assert type(labels) is np.ndarray and labels.dtype == np.int64 and labels.shape == (n,)
    assert type(proba) is np.ndarray and proba.shape == (n, 3) and proba.dtype == np.dtype(dtype)
    assert_close(proba.sum(axis=1), np.ones(n), dtype, factor=10)
    assert np.all(proba >= 0)
    assert_close(proba, expected, dtype, factor=100, scale=1.0)
    margin = np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2]
    sure = margin > 1e-3  # rows whose arg-max cannot flip with float32 rounding
    np.testing.assert_array_equal(labels[sure], np.argmax(expected, axis=1)[sure])
    np.testing.assert_array_equal(labels, np.argmax(proba, axis=1))


def test_predict_with_device_argument_moves_the_model(device):
    X = np.random.default_rng(4).standard_normal((9, 4))
    model = _model()
    expected = pn.predict(model, X)
    np.testing.assert_array_equal(pn.predict(model, X, device=device), expected)
    assert model.device == device


def test_evaluate_matches_host_maths(device, dtype):
    X, y = classification_data(n=8192 + 5, features=4, seed=6)  # crosses the evaluation chunk size
    model = _model(dtype, seed=7).to(device)
    logits = host_forward(model.state_dict(), X)
    loss, error = pn.evaluate(model, X, y)
    assert type(loss) is float and type(error) is float
    assert_close(loss, host_xent(logits, y), dtype, factor=100)
    assert error == pytest.approx(np.mean(np.argmax(logits, axis=1) != y), abs=2e-4)
    loss_l2, error_l2 = pn.evaluate(model, X, y, l2=0.5)
    penalty = 0.25 * sum(float(np.sum(v.astype(np.float64) ** 2)) for k, v in model.state_dict().items() if "weight" in k)
    assert_close(loss_l2 - loss, penalty, dtype, factor=100, scale=loss_l2)
    assert error_l2 == error


def test_prediction_does_not_modify_the_callers_data():
    X = np.random.default_rng(5).standard_normal((10, 2))
    saved = X.copy()
    model = pn.Sequential(pn.ReLU(), pn.Linear(2, 3, dtype="float64"))
    pn.predict(model, X)
    np.testing.assert_array_equal(X, saved)


def test_fit_and_evaluate_do_not_modify_the_callers_data(device):
    X, y = classification_data(n=20, features=4)
    Xv, yv = classification_data(n=10, features=4, seed=1)
    saved = [a.copy() for a in (X, y, Xv, yv)]
    dtype = "float64" if device.supports("float64") else "float32"
    model = _model(dtype).to(device)
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=10, validation=(Xv, yv))
    pn.evaluate(model, X, y)
    for a, b in zip((X, y, Xv, yv), saved):
        np.testing.assert_array_equal(a, b)


def test_concurrent_fits_in_threads_do_not_interfere(device):
    """Training models of the same shape in threads gives what training them one after the other gives
    (NumPy and most array libraries release the GIL, so this is how people run small sweeps).

    Regression: with one cached Device per device, NumPy's softmax_xent scratch buffer was shared by all
    models of a shape, and concurrent fits overwrote each other's gradients (weights off by up to 500)."""
    import threading

    X, y = classification_data(n=1000, features=30, classes=10)

    def run(seed, out):
        model = pn.mlp([30, 32, 10], dtype="float32", seed=seed).to(device)
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=4, batch_size=50, seed=seed)
        out[seed] = model.state_dict()

    sequential = {}
    for seed in range(4):
        run(seed, sequential)
    for _ in range(3):
        threaded = {}
        threads = [threading.Thread(target=run, args=(seed, threaded)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for seed in range(4):
            assert_state_close(threaded[seed], sequential[seed], "float32", err_msg=f"model {seed}")


# -- host syncs ------------------------------------------------------------------------------------
class _SyncCounter:
    """Counts Device.to_numpy calls and implicit scalar reads of array_api_strict arrays."""

    SCALAR_READS = ("__bool__", "__float__", "__int__", "__index__", "__complex__")

    def __init__(self, monkeypatch):
        import array_api_strict._array_object as ao

        self.to_numpy = 0
        self.scalar = 0
        original = Device.to_numpy

        def to_numpy(dev, array):
            self.to_numpy += 1
            return original(dev, array)

        monkeypatch.setattr(Device, "to_numpy", to_numpy)
        for name in self.SCALAR_READS:
            if hasattr(ao.Array, name):
                monkeypatch.setattr(ao.Array, name, self._counting(getattr(ao.Array, name)))

    def _counting(self, method):
        def wrapper(array, *args, **kwargs):
            self.scalar += 1
            return method(array, *args, **kwargs)
        return wrapper

    def during(self, fn):
        self.to_numpy = self.scalar = 0
        fn()
        return self.to_numpy, self.scalar


def test_no_host_sync_inside_the_training_loop(monkeypatch):
    dev = pn.device("array_api_strict:device1")
    X, y = classification_data(n=40, features=4)
    Xv, yv = classification_data(n=10, features=4, seed=1)
    counter = _SyncCounter(monkeypatch)

    def run(batch_size, epochs, log_every, optimizer=None, **kw):
        model = _model().to(dev)
        return counter.during(lambda: pn.fit(model, X, y, optimizer=optimizer or pn.SGD(0.1), epochs=epochs,
                                             batch_size=batch_size, log_every=log_every, l2=1e-3, **kw))

    ten, forty = run(4, 1, 1), run(1, 1, 1)  # one epoch of 10 steps vs one epoch of 40 steps
    assert ten == forty
    assert ten[1] == 0, "implicit scalar reads (bool()/float()/int()) of device arrays during fit"
    constant = ten[0]
    assert constant <= 2
    assert run(4, 5, 5) == (constant, 0)  # E epochs, log_every=E: one read
    assert run(4, 5, 5, validation=(Xv, yv)) == (constant, 0)
    assert run(4, 5, 5, optimizer=pn.Adam(0.01), validation=(Xv, yv)) == (constant, 0)
    assert run(4, 5, 5, optimizer=pn.SGD(0.1, momentum=0.9)) == (constant, 0)
    assert run(4, 5, 5, clip_norm=0.1) == (constant, 0)  # the global norm stays on the device
    assert run(4, 5, 5, clip_norm=0.1, graph=True) == (constant, 0)
    assert run(4, 1, 1, graph=True) == ten  # the recorded step counts its minibatches on the device
    assert run(3, 5, 5, graph=True, validation=(Xv, yv)) == (constant, 0)  # 13 full steps and a partial one
    # log_every=1: exactly one read per epoch (plus the same constant overhead)
    assert run(4, 5, 1) == (constant - 1 + 5, 0)
    assert run(4, 6, 2) == (constant - 1 + 3, 0)
    assert run(4, 6, 4) == (constant - 1 + 2, 0)  # epoch 4 and the last


def test_evaluate_and_predict_read_once(monkeypatch):
    dev = pn.device("array_api_strict:device1")
    X, y = classification_data(n=8192 * 2, features=4)
    model = _model().to(dev)
    counter = _SyncCounter(monkeypatch)
    to_numpy, scalar = counter.during(lambda: pn.evaluate(model, X, y, l2=0.1))
    assert (to_numpy, scalar) == (1, 0)


# -- bad inputs ------------------------------------------------------------------------------------
def _bad_cases():
    X, y = classification_data(n=30, features=4)
    nan_X = X.copy()
    nan_X[3, 2] = np.nan
    inf_X = X.copy()
    inf_X[0, 0] = -np.inf
    big_X = X.copy()
    big_X[4, 1] = -1e39  # finite in float64, -inf in the float32 model
    return [
        ("X-1d", dict(X=X[:, 0]), "X must be 2-D (n_samples, n_features), got shape (30,)"),
        ("X-3d", dict(X=X.reshape(30, 2, 2)), "X must be 2-D"),
        ("X-empty", dict(X=X[:0], y=y[:0]), "X is empty"),
        ("X-strings", dict(X=X.astype(str)), "X must hold real numbers"),
        ("length-mismatch", dict(y=y[:29]), "X has 30 samples but y has 29 labels"),
        ("nan", dict(X=nan_X), "X contains 1 NaN or infinite value(s)"),
        ("inf", dict(X=inf_X), "X contains 1 NaN or infinite value(s)"),
        ("beyond-float32", dict(X=big_X), "X has values too large for float32 (magnitude above 3.403e+38)"),
        ("val-beyond-float32", dict(validation=(big_X, y)), "validation X has values too large for float32"),
        ("negative-label", dict(y=np.where(np.arange(30) == 5, -1, y)), "y has a negative label (-1)"),
        ("label-too-big", dict(y=np.where(np.arange(30) == 5, 3, y)), "y has label 3 but the model has only 3 classes"),
        ("float-labels", dict(y=y + 0.5), "y must hold integer class indices; found non-integer values"),
        ("nan-labels", dict(y=np.where(np.arange(30) == 5, np.nan, y)), "non-integer"),
        ("labels-2d", dict(y=y[:, None]), "y must be 1-D"),
        ("label-strings", dict(y=y.astype(str)), "y must hold integer class indices"),
        ("batch-0", dict(batch_size=0), "batch_size must be between 1 and the number of samples (30), got 0"),
        ("batch-too-big", dict(batch_size=31), "batch_size must be between 1 and the number of samples (30), got 31"),
        ("batch-float", dict(batch_size=2.5), "batch_size must be a positive integer, None (full batch) or \"auto\""),
        ("batch-bool", dict(batch_size=True), "batch_size must be a positive integer, None"),
        ("batch-word", dict(batch_size="full"), "batch_size must be a positive integer, None"),
        ("epochs-negative", dict(epochs=-1), "epochs must be a non-negative integer, got -1"),
        ("epochs-float", dict(epochs=1.5), "epochs must be a non-negative integer"),
        ("features", dict(X=X[:, :3]), "X has 3 features per sample, the model expects 4"),
        ("l2-negative", dict(l2=-0.1), "l2 must be a finite number >= 0"),
        ("l2-nan", dict(l2=float("nan")), "l2 must be a finite number >= 0"),
        ("l2-inf", dict(l2=float("inf")), "l2 must be a finite number >= 0, got inf"),
        ("val-features", dict(validation=(X[:, :3], y)), "validation X has 3 features per sample"),
        ("val-labels", dict(validation=(X, np.full(30, 7))), "validation X labels has label 7"),
        ("val-nan", dict(validation=(nan_X, y)), "validation X contains 1 NaN"),
    ]


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("dev_spec", ["numpy", "array_api_strict:device1"])
@pytest.mark.parametrize("case, change, message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_fit_inputs_raise_input_error(dev_spec, case, change, message):
    X, y = classification_data(n=30, features=4)
    kwargs = dict(X=X, y=y, epochs=1, batch_size=10)
    kwargs.update(change)
    model = _model().to(dev_spec)
    before = model.state_dict()
    with pytest.raises(pn.InputError) as info:
        pn.fit(model, kwargs.pop("X"), kwargs.pop("y"), optimizer=pn.SGD(0.1), **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)
    assert_state_close(model.state_dict(), before, "float32", factor=0)  # nothing trained


def test_bad_inputs_given_as_device_arrays(device):
    X, y = classification_data(n=30, features=4)
    X[2, 1] = np.nan
    model = _model().to(device)
    with pytest.raises(pn.InputError, match="X contains 1 NaN or infinite value"):
        pn.fit(model, device.asarray(X, dtype="float32"), y, optimizer=pn.SGD(0.1))
    y_bad = np.where(np.arange(30) == 0, 5, y)
    with pytest.raises(pn.InputError, match="y has label 5"):
        pn.fit(model, np.nan_to_num(X), device.asarray(y_bad, dtype=device.index_dtype), optimizer=pn.SGD(0.1))


def test_huge_but_finite_X_is_accepted():
    """Values whose sum overflows are still finite: no spurious NaN/inf error; float64 holds them."""
    X, y = classification_data(n=20, features=4)
    X[:, 0] = 1e308
    from portablenn.validation import check_features
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor an overflow warning from the check's sum
        assert check_features(X, 4) == 20
        assert check_features(X, 4, dtype="float64") == 20
        with pytest.raises(pn.InputError, match="too large for float32"):
            check_features(X, 4, dtype="float32")
    assert check_features(np.full((3, 4), 2**62, np.int64), 4, dtype="float32") == 3  # integers always fit


def test_values_beyond_float32_train_in_float64():
    """What a float32 model refuses, a float64 one takes (one full-batch step: the loss is finite)."""
    X, y = classification_data(n=20, features=4)
    X[3, 2] = 1e39
    history = pn.fit(pn.mlp([4, 5, 3], dtype="float64"), X, y, optimizer=pn.SGD(1e-3), epochs=1, batch_size=None)
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize("fn", ["evaluate", "predict", "predict_proba"])
def test_bad_inputs_to_evaluate_and_predict(fn):
    X, y = classification_data(n=10, features=4)
    model = _model()
    call = (lambda X, y: getattr(pn, fn)(model, X, y)) if fn == "evaluate" else (lambda X, y: getattr(pn, fn)(model, X))
    with pytest.raises(pn.InputError, match="X has 5 features per sample, the model expects 4"):
        call(np.zeros((10, 5)), y)
    with pytest.raises(pn.InputError, match="X must be 2-D"):
        call(X[0], y)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(pn.InputError, match="NaN"):
        call(bad, y)
    bad[0, 0] = 1e39
    with pytest.raises(pn.InputError, match="X has values too large for float32"):
        call(bad, y)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(activation="softplus"), "unknown activation 'softplus'; expected one of gelu, identity, leaky_relu, relu, sigmoid, tanh"),
    (dict(dtype="float16"), "dtype must be 'float32' or 'float64'"),
    (dict(init="orthogonal"), "unknown init 'orthogonal'"),
    (dict(sizes=[4]), "sizes must be a list of at least two positive integers"),
    (dict(sizes=[4, 0, 3]), "sizes must be a list"),
    (dict(sizes=[4, 2.5, 3]), "sizes must be a list"),
    (dict(sizes="43"), "sizes must be a list"),
])
def test_mlp_argument_errors(kwargs, fragment):
    args = dict(sizes=[4, 5, 3])
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        pn.mlp(args.pop("sizes"), **args)
    assert fragment in str(info.value)


def test_float64_model_on_no_float64_device_raises_device_error():
    X, y = classification_data(n=10, features=4)
    model = _model("float64")
    with pytest.raises(pn.DeviceError, match="does not support float64"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), device="array_api_strict:no_float64")
    with pytest.raises(pn.DeviceError, match="does not support float64"):
        model.to("array_api_strict:no_float64")
    assert model.device.name == "numpy" and model.dtype == "float64"
    # float32 trains there
    model32 = _model("float32")
    pn.fit(model32, X, y, optimizer=pn.SGD(0.1), device="array_api_strict:no_float64", epochs=1, batch_size=None)
    assert model32.device.name == "array_api_strict:no_float64"


def test_fit_leaves_a_model_in_the_mode_it_was_given():
    """Train mode for the steps, and the caller's mode after: a model in eval mode stays there."""
    X, y = classification_data(n=20, features=3, classes=2, seed=0)
    model = pn.mlp([3, 4, 2], dropout=0.5).eval()
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=10)
    assert not model.training and not any(layer.training for layer in model.layers)
    model.train()
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=10)
    assert model.training
