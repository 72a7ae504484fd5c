"""The same fit from the same initial weights gives the same weights and History on every device as on
the NumPy fast path, after every epoch (full batch: after every step); the NumPy fast path itself is
held to the independent float64 NumPy reference of tests/_oracle.py, not to itself."""
import numpy as np
import pytest

import portablenn as pn
from portablenn.models import ACTIVATIONS

import _oracle as oracle
from _support import classification_data, fit_with_snapshots, require_dtype
from _tolerances import assert_close, assert_state_close

# id -> (model kwargs, optimizer factory, fit kwargs, n_samples)
SCENARIOS = {
    "fullbatch-sgd-relu": (dict(sizes=[6, 8, 3]), lambda: pn.SGD(0.5),
                           dict(epochs=20, batch_size=None), 48),
    "fullbatch-nesterov-l2-tanh": (dict(sizes=[6, 8, 3], activation="tanh"),
                                   lambda: pn.SGD(0.2, momentum=0.9, nesterov=True),
                                   dict(epochs=20, batch_size=None, l2=1e-3), 48),
    "fullbatch-adam-2hidden": (dict(sizes=[6, 8, 5, 3]), lambda: pn.Adam(0.01),
                               dict(epochs=20, batch_size=None), 48),
    "shuffle-sgd-l2-val": (dict(sizes=[6, 8, 3]), lambda: pn.SGD(0.1),
                           dict(epochs=5, batch_size=16, shuffle=True, seed=3, l2=1e-3, validation=True), 64),
    "shuffle-momentum-val": (dict(sizes=[6, 8, 3], activation="tanh"), lambda: pn.SGD(0.05, momentum=0.9),
                             dict(epochs=4, batch_size=10, shuffle=True, seed=4, validation=True), 50),
    "shuffle-adam-sigmoid-nobias-val": (dict(sizes=[6, 8, 3], activation="sigmoid", bias=False),
                                        lambda: pn.Adam(0.01),
                                        dict(epochs=5, batch_size=16, shuffle=True, seed=5, l2=1e-4,
                                             validation=True), 64),
    "inorder-uneven-last-batch": (dict(sizes=[6, 8, 3]), lambda: pn.SGD(0.2),
                                  dict(epochs=5, batch_size=16, shuffle=False), 50),
    # an activation after the last Linear: backward reads the very array the loss kernel is handed
    "inorder-sgd-ends-in-relu": (dict(sizes=[6, 8, 3], then="relu"), lambda: pn.SGD(0.2),
                                 dict(epochs=5, batch_size=16, shuffle=False), 64),
    "shuffle-momentum-ends-in-sigmoid": (dict(sizes=[6, 8, 3], then="sigmoid"), lambda: pn.SGD(0.5, momentum=0.9),
                                         dict(epochs=5, batch_size=16, shuffle=True, seed=6), 64),
    "shuffle-sgd-leaky-relu-val": (dict(sizes=[6, 8, 3], activation="leaky_relu"), lambda: pn.SGD(0.2),
                                   dict(epochs=5, batch_size=16, shuffle=True, seed=7, validation=True), 64),
    "fullbatch-adam-gelu-l2": (dict(sizes=[6, 8, 5, 3], activation="gelu"), lambda: pn.Adam(0.01),
                               dict(epochs=20, batch_size=None, l2=1e-3), 48),
    "inorder-nesterov-identity": (dict(sizes=[6, 8, 3], activation="identity"),
                                  lambda: pn.SGD(0.1, momentum=0.9, nesterov=True),
                                  dict(epochs=5, batch_size=16, shuffle=False), 50),
}

_REFERENCE = {}


def _data(n):
    X, y = classification_data(n=n, features=6, classes=3, seed=n)
    Xv, yv = classification_data(n=25, features=6, classes=3, seed=n + 1)
    return X, y, Xv, yv


def _run(dev, scenario, dtype):
    model_kwargs, make_opt, fit_kwargs, n = SCENARIOS[scenario]
    X, y, Xv, yv = _data(n)
    kwargs = dict(fit_kwargs)
    if kwargs.pop("validation", False):
        kwargs["validation"] = (Xv, yv)
    model_kwargs = dict(model_kwargs)
    then = model_kwargs.pop("then", None)
    model = pn.mlp(dtype=dtype, seed=11, **model_kwargs)
    if then is not None:
        model = pn.Sequential(model.layers + [ACTIVATIONS[then]()])
    initial = model.state_dict()
    history, states, records = fit_with_snapshots(model, X, y, optimizer=make_opt(), device=dev, **kwargs)
    return model, initial, history, states, records


def _reference(scenario, dtype):
    if (scenario, dtype) not in _REFERENCE:
        _, initial, history, states, _ = _run(pn.device("numpy"), scenario, dtype)
        _REFERENCE[scenario, dtype] = (initial, history, states)
    return _REFERENCE[scenario, dtype]


def _oracle_reference(scenario, dtype):
    """What ``_run`` must give, from tests/_oracle.py (float64 from the dtype-rounded weights and data):
    ``(initial, history columns, state after each epoch)``."""
    model_kwargs, make_opt, fit_kwargs, n = SCENARIOS[scenario]
    X, y, Xv, yv = _data(n)
    model_kwargs = dict(model_kwargs)
    then = model_kwargs.pop("then", None)
    model = pn.mlp(dtype=dtype, seed=11, **model_kwargs)
    if then is not None:
        model = pn.Sequential(model.layers + [ACTIVATIONS[then]()])
    ours = make_opt()
    kind = "adam" if isinstance(ours, pn.Adam) else "sgd"
    kwargs = ({"lr": ours.lr, "beta1": ours.beta1, "beta2": ours.beta2, "eps": ours.eps} if kind == "adam"
              else {"lr": ours.lr, "momentum": ours.momentum, "nesterov": ours.nesterov})
    epochs, batch, l2 = fit_kwargs["epochs"], fit_kwargs["batch_size"] or n, fit_kwargs.get("l2", 0.0)
    shuffled = fit_kwargs.get("shuffle", True) and batch < n  # fit's default; a full batch keeps the order
    orders = oracle.shuffled_orders(n, fit_kwargs.get("seed", 0), epochs) if shuffled else None
    validation = (Xv.astype(dtype), yv) if fit_kwargs.get("validation") else None
    initial = model.state_dict()
    result = oracle.train(initial, oracle.architecture(model), X.astype(dtype), y, oracle.make(kind, kwargs, l2),
                          epochs=epochs, batch=batch, l2=l2, orders=orders, validation=validation)
    per_epoch = -(-n // batch)
    history = {"loss": result.loss, "error": result.error, "val_loss": result.val_loss, "val_error": result.val_error}
    return initial, history, result.steps[per_epoch - 1::per_epoch]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fit_matches_numpy_fast_epoch_by_epoch(device, dtype, scenario):
    """Every device against the NumPy fast path; the NumPy fast path against the float64 oracle (in
    float32 too: the float32 run stays within 7e-7 relative of it here, the tolerance is 1.2e-5)."""
    if device == pn.device("numpy"):
        ref_initial, ref_history, ref_states = _oracle_reference(scenario, dtype)
    else:
        ref_initial, ref_history, ref_states = _reference(scenario, dtype)
    model, initial, history, states, records = _run(device, scenario, dtype)
    epochs = SCENARIOS[scenario][2]["epochs"]

    assert model.device == device
    assert_state_close(initial, ref_initial, dtype, factor=0)  # identical starting points
    assert len(states) == len(ref_states) == len(history) == epochs
    assert records == history.records
    for epoch, (state, ref) in enumerate(zip(states, ref_states), start=1):
        assert_state_close(state, ref, dtype, factor=1, err_msg=f"{device.name} {scenario} epoch {epoch}")
    fields = ["loss", "error"] + (["val_loss", "val_error"] if "validation" in SCENARIOS[scenario][2] else [])
    assert sorted(history.records[0]) == sorted(["epoch", "seconds"] + fields)
    for field in fields:
        assert_close(history[field], ref_history[field], dtype, factor=1, err_msg=f"{scenario} {field}")
    # training did something: the weights moved and the loss went down
    assert not np.allclose(states[-1]["0.weight"], initial["0.weight"], rtol=1e-4)
    assert history["loss"][-1] < history["loss"][0]


def test_shuffle_permutation_comes_from_the_seed():
    """Shuffled runs differ from in-order runs and between seeds, and repeat exactly for one seed."""
    X, y, _, _ = _data(64)

    def run(**kw):
        model = pn.mlp([6, 8, 3], dtype="float64", seed=11)
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=16, **kw)
        return model.state_dict()["0.weight"]

    a, b = run(shuffle=True, seed=1), run(shuffle=True, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, run(shuffle=True, seed=2), rtol=1e-6)
    assert not np.allclose(a, run(shuffle=False), rtol=1e-6)


@pytest.mark.parametrize("layout", ["fortran", "row-strided", "column-strided", "float32-input", "readonly"])
def test_fit_does_not_depend_on_the_memory_layout_of_X(layout, dtype):
    """The NumPy fast path (out= buffers, in-place BLAS) on inputs that are not plain C-contiguous."""
    n = 50
    X, y, _, _ = _data(n)
    big = np.zeros((2 * n, 12))
    if layout == "fortran":
        Xin = np.asfortranarray(X)
    elif layout == "row-strided":
        big[::2, :6] = X
        Xin = big[::2, :6]
    elif layout == "column-strided":
        big[:n, ::2] = X
        Xin = big[:n, ::2]
    elif layout == "float32-input":  # float32 data, and as reference the same values in a float64 array
        Xin = X.astype(np.float32)
        X = Xin.astype(np.float64)
    else:
        Xin = X.copy()
        Xin.flags.writeable = False
    np.testing.assert_array_equal(Xin, X)

    def run(data):
        model = pn.mlp([6, 8, 3], dtype=dtype, seed=11)
        h = pn.fit(model, data, y, optimizer=pn.SGD(0.2), epochs=3, batch_size=16, shuffle=False, l2=1e-3)
        return model.state_dict(), h["loss"]

    state, losses = run(Xin)
    reference = np.ascontiguousarray(X)
    assert reference is not Xin and reference.dtype == np.float64 and reference.flags.c_contiguous
    ref_state, ref_losses = run(reference)
    # the same values cast to the model's dtype are the same data: bit for bit the same training
    exact = layout in ("float32-input", "readonly")
    assert_state_close(state, ref_state, dtype, factor=0 if exact else 1, err_msg=layout)
    assert_close(losses, ref_losses, dtype, factor=0 if exact else 1)
    np.testing.assert_array_equal(Xin, X)  # the caller's data is untouched


def test_evaluate_of_a_confident_model_agrees_with_float64_host_maths(device, dtype):
    """A linear classifier that is right with margin everywhere (mean loss ~2e-3): every device reports
    the loss to its dtype's tolerance (regression: the NumPy fast kernel was off by 1e-4 in float32)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 20))
    teacher = rng.standard_normal((20, 10))
    scores = np.sort(X @ teacher, axis=1)
    X = X[scores[:, -1] - scores[:, -2] > 1.0]
    y = np.argmax(X @ teacher, axis=1)
    model = pn.mlp([20, 10], dtype=dtype)
    state = model.state_dict()
    state["0.weight"] = 4.0 * teacher
    model.load_state_dict(state)
    model.to(device)
    Xd, W = X.astype(dtype).astype(np.float64), state["0.weight"].astype(dtype).astype(np.float64)
    z = Xd @ W
    z -= z.max(axis=1, keepdims=True)
    exact = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
    loss, error = pn.evaluate(model, X, y)
    assert error == 0.0
    assert_close(loss, exact, dtype)


def test_fast_path_without_the_blas_update_gives_the_same_result(monkeypatch, dtype):
    """The NumPy fast path updates weights with an in-place BLAS GEMM where it finds NumPy's BLAS; the
    fallback (GEMM into a temporary) must give the same weights."""
    blas = pytest.importorskip("portablenn._blas")
    if not hasattr(blas, "_GEMM"):
        pytest.skip("portablenn._blas has no _GEMM table to disable")
    from portablenn.backends.numpy import NumpyKernels

    X, y, _, _ = _data(64)
    calls = []
    update = blas.gemm_update
    monkeypatch.setattr(blas, "gemm_update", lambda *args: calls.append(args) or update(*args))
    monkeypatch.setattr(NumpyKernels, "blas_update_min", 0)  # small weights take BLAS too, for the comparison

    def run():
        model = pn.mlp([6, 8, 3], dtype=dtype, seed=11)
        history = pn.fit(model, X, y, optimizer=pn.SGD(0.2), epochs=3, batch_size=16, l2=1e-3)
        return model.state_dict(), history["loss"]

    with_blas = run()
    assert len(calls) == 2 * 3 * 4  # two weights, three epochs of four steps: every update went through BLAS
    monkeypatch.setattr(blas, "_GEMM", {})
    assert not blas.available()
    without = run()
    assert_state_close(without[0], with_blas[0], dtype)
    assert_close(without[1], with_blas[1], dtype)


def test_parameters_loaded_from_transposed_arrays_train_identically(dtype):
    """Weights given as Fortran-ordered views (e.g. ``torch_weight.T``) must train like C-ordered ones."""
    X, y, _, _ = _data(64)
    reference = pn.mlp([6, 8, 3], dtype=dtype, seed=11)
    state = reference.state_dict()
    transposed = {k: (np.ascontiguousarray(v.T).T if v.ndim == 2 else v.copy()) for k, v in state.items()}
    assert not transposed["0.weight"].flags.c_contiguous
    model = pn.mlp([6, 8, 3], dtype=dtype, seed=99)
    model.load_state_dict(transposed)
    for m in (reference, model):
        pn.fit(m, X, y, optimizer=pn.SGD(0.2), epochs=3, batch_size=16, l2=1e-3)
    assert_state_close(model.state_dict(), reference.state_dict(), dtype)


def _random_setup(seed):
    """A random small training run: architecture, final activation or not, batch, optimizer, L2, order, graph."""
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 6))
    sizes = [int(s) for s in rng.integers(1, 10, int(rng.integers(1, 4)))] + [classes]
    n = int(rng.integers(1, 41))
    optimizer = str(rng.choice(["sgd", "momentum", "nesterov", "adam"]))
    setup = dict(sizes=sizes, activation=str(rng.choice(list(ACTIVATIONS))), bias=bool(rng.random() < 0.6),
                 then=[None, "relu", "sigmoid", "tanh"][int(rng.integers(0, 4))], optimizer=optimizer,
                 fit=dict(batch_size=[None, 1, int(rng.integers(1, n + 1))][int(rng.integers(0, 3))], epochs=3,
                          l2=float(rng.choice([0.0, 1e-2])), shuffle=bool(rng.random() < 0.5), seed=seed,
                          graph=bool(rng.random() < 0.3) and optimizer != "adam"))
    X, y = rng.standard_normal((n, sizes[0])), rng.integers(0, classes, n)
    return setup, X, y


def _random_run(dev, seed):
    setup, X, y = _random_setup(seed)
    optimizer = {"sgd": lambda: pn.SGD(0.3), "momentum": lambda: pn.SGD(0.1, momentum=0.9),
                 "nesterov": lambda: pn.SGD(0.1, momentum=0.9, nesterov=True),
                 "adam": lambda: pn.Adam(0.01)}[setup["optimizer"]]()
    model = pn.mlp(setup["sizes"], activation=setup["activation"], bias=setup["bias"], dtype="float64", seed=seed)
    if setup["then"] is not None:
        model = pn.Sequential(model.layers + [ACTIVATIONS[setup["then"]]()])
    history = pn.fit(model, X, y, optimizer=optimizer, device=dev, **setup["fit"])
    after = (pn.evaluate(model, X, y, l2=setup["fit"]["l2"]), pn.predict_proba(model, X))
    return setup, model.state_dict(), history["loss"], after


def _random_oracle(seed):
    """``_random_run``'s results from tests/_oracle.py: (state, epoch losses, (loss, error), probabilities)."""
    setup, X, y = _random_setup(seed)
    model = pn.mlp(setup["sizes"], activation=setup["activation"], bias=setup["bias"], dtype="float64", seed=seed)
    if setup["then"] is not None:
        model = pn.Sequential(model.layers + [ACTIVATIONS[setup["then"]]()])
    kind, kwargs = {"sgd": ("sgd", dict(lr=0.3)), "momentum": ("sgd", dict(lr=0.1, momentum=0.9)),
                    "nesterov": ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
                    "adam": ("adam", dict(lr=0.01))}[setup["optimizer"]]
    fit_kwargs, n = setup["fit"], len(y)
    batch, l2 = fit_kwargs["batch_size"] or n, fit_kwargs["l2"]
    orders = oracle.shuffled_orders(n, seed, fit_kwargs["epochs"]) if fit_kwargs["shuffle"] and batch < n else None
    arch = oracle.architecture(model)
    result = oracle.train(model.state_dict(), arch, X, y, oracle.make(kind, kwargs, l2), epochs=fit_kwargs["epochs"],
                          batch=batch, l2=l2, orders=orders)
    return (result.params, result.loss, oracle.metrics(result.params, arch, X, y, l2=l2),
            oracle.probabilities(result.params, arch, X))


@pytest.mark.parametrize("seed", range(16))
def test_random_small_runs_train_alike_on_every_device(device, seed):
    """Random architectures (one to three layers, widths 1-9, any activation, with or without a final
    one), batches (1, odd, full), optimizers, L2, order and graph, float64: each device's weights,
    losses, and then ``evaluate`` and ``predict_proba``, equal the generic Array API kernels' on NumPy,
    and those equal the NumPy oracle's. A final activation once trained the NumPy fast path on wrong
    gradients (its loss kernel overwrote the logits the activation still reads)."""
    require_dtype(device, "float64")
    reference = pn.device("numpy", fast=False)
    if device == reference:  # the reference itself: against the NumPy oracle
        setup = _random_setup(seed)[0]
        ref_state, ref_loss, ref_eval, ref_proba = _random_oracle(seed)
    else:
        setup, ref_state, ref_loss, (ref_eval, ref_proba) = _random_run(reference, seed)
    _, state, loss, (evaluated, proba) = _random_run(device, seed)
    assert_state_close(state, ref_state, "float64", factor=10, err_msg=str(setup))
    assert_close(loss, ref_loss, "float64", factor=10, err_msg=str(setup))
    assert_close(evaluated, ref_eval, "float64", factor=10, err_msg=str(setup))  # (loss, error) after training
    assert_close(proba, ref_proba, "float64", factor=10, err_msg=str(setup))
