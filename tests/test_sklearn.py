"""portablenn.sklearn.MLPClassifier: scikit-learn's estimator checks, labels, pipelines, array in = array out;
every hyper-parameter changes what is trained as the NumPy oracle (tests/_oracle.py) says, and the
training equals scikit-learn's own MLPClassifier where their definitions agree."""
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from array_api_compat import array_namespace  # noqa: E402
from array_api_compat import device as array_device  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import portablenn as pn  # noqa: E402
from portablenn import backend  # noqa: E402
from portablenn.datasets import spiral  # noqa: E402
from portablenn.sklearn import MLPClassifier  # noqa: E402

import _oracle as oracle  # noqa: E402
from _support import classification_data  # noqa: E402
from _tolerances import assert_close, assert_state_close  # noqa: E402
from conftest import HAS_TORCH, make_device  # noqa: E402

# Checks that cannot apply to MLPClassifier, {check name: reason}; parametrize_with_checks marks
# them xfail. None today: with scikit-learn 1.9.1 every check passes for both estimators below.
# Two are skipped by scikit-learn itself, not by us, when their optional dependency is missing:
# check_dataframe_column_names_consistency (needs pandas) and check_array_api_input (needs
# SCIPY_ARRAY_API=1 set before SciPy is imported); both pass when it is present.
EXPECTED_FAILED_CHECKS = {}

# Small enough to be quick, large enough for check_classifiers_train's accuracy > 0.83.
CHECKED = [MLPClassifier(max_iter=50, random_state=0),
           MLPClassifier(solver="sgd", max_iter=20, learning_rate_init=0.1, random_state=0)]


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _spiral():
    X, y = spiral()
    return (X - X.mean(axis=0)) / X.std(axis=0), y


# -- labels, attributes, parameters -----------------------------------------------------------------
def test_string_labels_round_trip():
    X, y = _spiral()
    names = np.array(["red", "green", "blue"])[y]
    clf = MLPClassifier(max_iter=100, learning_rate_init=0.01, random_state=0, device="cpu").fit(X, names)
    assert list(clf.classes_) == ["blue", "green", "red"]
    pred = clf.predict(X)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    proba = clf.predict_proba(X)
    assert proba.shape == (300, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pred, clf.classes_[np.argmax(proba, axis=1)])
    assert clf.score(X, names) > 0.8


def test_any_numeric_label_values_and_fitted_attributes():
    X, y = _spiral()
    labels = np.array([-1.0, 7.0, 100.0])[y]  # non-integer floats are "continuous" to scikit-learn
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=7, random_state=0, device="cpu").fit(X, labels)
    np.testing.assert_array_equal(clf.classes_, [-1.0, 7.0, 100.0])
    assert clf.predict(X).dtype == np.float64 and set(clf.predict(X)) <= {-1.0, 7.0, 100.0}
    assert clf.n_features_in_ == 2 and clf.n_iter_ == 7 and len(clf.loss_curve_) == 7
    assert all(isinstance(v, float) for v in clf.loss_curve_) and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.device_ == "numpy" and clf.model_.config["sizes"] == [2, 16, 3]


def test_numpy_input_trains_on_the_device_parameter():
    X, y = _spiral()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                        device="array_api_strict:device1").fit(X, y)
    assert clf.device_ == "array_api_strict:device1"
    assert isinstance(clf.predict_proba(X), np.ndarray) and isinstance(clf.predict(X), np.ndarray)


def test_same_random_state_same_model_and_clone_is_unfitted():
    X, y = _spiral()
    a = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=3).fit(X, y)
    b = clone(a)
    assert b.get_params() == a.get_params() and not hasattr(b, "model_")
    b.fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    b.set_params(random_state=4).fit(X, y)
    assert not np.array_equal(a.predict_proba(X), b.predict_proba(X))


def test_pickle_keeps_the_weights_not_the_device():
    X, y = _spiral()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    assert "model_" in vars(clf)  # pickling did not strip the original


@pytest.mark.parametrize("params, message", [
    ({"activation": "softplus"}, "activation"),
    ({"solver": "lbfgs"}, "solver"),
    ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes"),
    ({"max_iter": 0}, "max_iter"),
    ({"batch_size": "big"}, "batch_size"),
    ({"dtype": "float16"}, "dtype"),
    ({"device": "tpu"}, "unknown device"),
])
def test_bad_parameters_are_one_sentence_errors(params, message):
    X, y = _spiral()
    with pytest.raises(ValueError, match=message):
        MLPClassifier(**{"max_iter": 1, **params}).fit(X, y)


def test_batch_size_is_clipped_with_a_warning():
    X, y = _spiral()
    with pytest.warns(UserWarning, match="clipped"):
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, batch_size=1000).fit(X, y)


# -- ecosystem ---------------------------------------------------------------------------------------
def test_pipeline_and_grid_search_over_hidden_layer_sizes():
    X, y = spiral()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=150, learning_rate_init=0.01, random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(2,), (64,)]}, cv=3)
    search.fit(X, y)
    assert search.best_params_ == {"mlpclassifier__hidden_layer_sizes": (64,)}
    assert search.best_estimator_.score(X, y) >= 0.9
    assert search.predict(X).shape == (300,)


def test_spiral_accuracy():
    X, y = _spiral()
    clf = MLPClassifier(max_iter=300, learning_rate_init=0.01, random_state=0).fit(X, y)
    assert clf.score(X, y) >= 0.9


# -- array in = array out ----------------------------------------------------------------------------
ARRAY_DEVICES = ["array_api_strict:device1"] + (["torch:cpu"] if HAS_TORCH else []) + [
    pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("spec", ARRAY_DEVICES)
def test_array_in_array_out(spec):
    dev = make_device(spec)
    X, y = _spiral()
    params = dict(hidden_layer_sizes=(32,), max_iter=20, learning_rate_init=0.01, random_state=0, device="cpu")
    reference = MLPClassifier(**params).fit(X, y)
    Xd, yd = dev.asarray(X, dtype="float32"), dev.asarray(y.astype(np.int64))
    clf = MLPClassifier(**params).fit(Xd, yd)
    assert clf.device_ == dev.name and isinstance(clf.classes_, np.ndarray)
    proba, pred = clf.predict_proba(Xd), clf.predict(Xd)
    for out in (proba, pred):
        assert array_namespace(out) is array_namespace(Xd) and array_device(out) == array_device(Xd)
    assert tuple(proba.shape) == (300, 3) and tuple(pred.shape) == (300,)
    assert proba.dtype == dev.dtype("float32")
    # 20 epochs x 2 Adam steps in float32: the two runs drift by rounding only
    assert_close(dev.to_numpy(proba), reference.predict_proba(X), "float32", factor=100)
    assert_close(clf.loss_curve_, reference.loss_curve_, "float32", factor=100)
    np.testing.assert_array_equal(dev.to_numpy(pred), clf.classes_[np.argmax(dev.to_numpy(proba), axis=1)])
    assert clf.score(Xd, yd) == pytest.approx(reference.score(X, y), abs=0.02)


def test_array_input_with_string_labels_predicts_probabilities_but_not_labels():
    dev = pn.device("array_api_strict:device1")
    X, y = _spiral()
    names = np.array(["a", "b", "c"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(dev.asarray(X), names)
    assert array_device(clf.predict_proba(dev.asarray(X))) == dev.native
    with pytest.raises(ValueError, match="cannot return labels of dtype <U1 as array_api_strict arrays"):
        clf.predict(dev.asarray(X))
    proba = backend._host(clf.predict_proba(dev.asarray(X)))
    hits = clf.classes_[np.argmax(proba, axis=1)] == names
    assert 0 < np.mean(hits) < 1  # two epochs: neither all right nor all wrong, so the score can tell
    assert clf.score(dev.asarray(X), names) == pytest.approx(np.mean(hits), abs=1e-12)
    weights = np.linspace(0.0, 2.0, len(names))
    assert clf.score(dev.asarray(X), names, sample_weight=dev.asarray(weights)) == pytest.approx(
        np.sum(weights * hits) / np.sum(weights), abs=1e-12)


def test_model_follows_the_input_between_calls():
    dev = pn.device("array_api_strict:device1")
    X, y = _spiral()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0, device="cpu").fit(X, y)
    on_device = backend._host(clf.predict_proba(dev.asarray(X, dtype="float32")))
    np.testing.assert_allclose(on_device, clf.predict_proba(X), rtol=1e-6, atol=1e-7)


def test_array_input_is_validated():
    dev = pn.device("array_api_strict:device1")
    X, y = _spiral()
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(dev.asarray(bad), y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clf.fit(dev.asarray(X), y[:-1])
    clf.fit(dev.asarray(X), y)
    with pytest.raises(ValueError, match="3 features"):
        clf.predict(dev.asarray(np.ones((2, 3))))


def test_unsupported_array_library_is_refused():
    ndx = pytest.importorskip("ndonnx")
    X, y = _spiral()
    with pytest.raises(ValueError, match="cannot train on ndonnx"):
        MLPClassifier(max_iter=1).fit(ndx.asarray(X), y)


# -- every hyper-parameter changes what is trained, as the NumPy oracle says ---------------------------
BASE = dict(hidden_layer_sizes=(6,), max_iter=3, batch_size=10, shuffle=False, random_state=0, device="cpu",
            dtype="float64", learning_rate_init=0.05, alpha=1e-3)


def _problem(n=40):
    X, y = classification_data(n=n, features=4, classes=3, seed=21)
    return X, np.array([10, 20, 30])[y]  # labels that are not 0..k-1: encoded through classes_


def _fit_capturing(X, y, **params):
    """``MLPClassifier(**params).fit(X, y)`` and the initial state dict of the network it built."""
    import portablenn.sklearn as pn_sklearn

    real, made = pn_sklearn.mlp, []

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        made.append(model.state_dict())
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pn_sklearn, "mlp", spy)
        clf = MLPClassifier(**params).fit(X, y)
    assert len(made) == 1
    return clf, made[0]


def _oracle_fit(params, initial, X, y, *, batch):
    """What ``MLPClassifier(**params)`` (``shuffle=False``) must train from ``initial`` with minibatches of
    ``batch`` rows, by the scikit-learn documentation of each parameter and the NumPy oracle."""
    p = {**MLPClassifier().get_params(), **params}
    hidden = p["hidden_layer_sizes"]
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    activation = {"logistic": "sigmoid"}.get(p["activation"], p["activation"])
    if p["solver"] == "sgd":
        opt = oracle.SGD(p["learning_rate_init"], p["momentum"], nesterov=p["nesterovs_momentum"] and p["momentum"] > 0,
                         weight_decay=p["alpha"])
    else:
        opt = oracle.Adam(p["learning_rate_init"], p["beta_1"], p["beta_2"], p["epsilon"], weight_decay=p["alpha"])
    _, encoded = np.unique(y, return_inverse=True)
    return oracle.train(initial, oracle.mlp_architecture(len(hidden) + 1, activation), np.asarray(X, p["dtype"]),
                        encoded, opt, epochs=p["max_iter"], batch=batch, l2=p["alpha"])


def _assert_trained_as(clf, expected, dtype, label):
    assert_state_close(clf.model_.state_dict(), expected.params, dtype, factor=10, err_msg=label)
    assert_close(clf.loss_curve_, expected.loss, dtype, factor=10, err_msg=f"{label} loss_curve_")


# (parameter, the other parameters it needs, two values); BASE trains in order (shuffle=False)
PARAMETERS = [
    ("alpha", {}, 0.0, 0.5),
    ("learning_rate_init", {}, 0.01, 0.1),
    ("solver", {}, "adam", "sgd"),
    ("momentum", {"solver": "sgd", "nesterovs_momentum": False}, 0.0, 0.9),
    ("nesterovs_momentum", {"solver": "sgd", "momentum": 0.9}, False, True),
    ("beta_1", {"solver": "adam"}, 0.9, 0.5),
    ("beta_2", {"solver": "adam"}, 0.999, 0.9),
    ("epsilon", {"solver": "adam"}, 1e-8, 0.05),
    ("batch_size", {}, 10, 7),
    ("max_iter", {}, 2, 4),
    ("activation", {}, "relu", "tanh"),
    ("activation", {}, "relu", "logistic"),
    ("activation", {}, "relu", "identity"),
    ("hidden_layer_sizes", {}, (6,), (5, 4)),
    ("dtype", {}, "float64", "float32"),
]


@pytest.mark.parametrize("name, needs, a, b", PARAMETERS,
                         ids=[f"{name}={a}-vs-{b}" for name, _, a, b in PARAMETERS])
def test_each_parameter_trains_what_the_oracle_trains(name, needs, a, b):
    """The same fit with two values of one parameter: both equal the NumPy oracle with that value (so
    neither is ignored, swapped with another or half applied) and they differ from each other."""
    X, y = _problem()
    results = []
    for value in (a, b):
        params = {**BASE, **needs, name: value}
        clf, initial = _fit_capturing(X, y, **params)
        batch = params["batch_size"]
        _assert_trained_as(clf, _oracle_fit(params, initial, X, y, batch=batch), params["dtype"], f"{name}={value}")
        results.append(clf)
    first, second = (clf.model_.state_dict() for clf in results)
    if name == "dtype":
        assert [clf.model_.dtype for clf in results] == [a, b]
        assert [clf.predict_proba(X).dtype for clf in results] == [np.dtype(a), np.dtype(b)]
    elif sorted(first) == sorted(second) and all(first[k].shape == second[k].shape for k in first):
        assert not all(np.allclose(first[k], second[k], rtol=1e-4, atol=1e-6) for k in first), name


def test_larger_alpha_gives_smaller_weights():
    X, y = _problem()
    norms = []
    for alpha in (0.0, 0.1, 1.0):
        clf = MLPClassifier(**{**BASE, "alpha": alpha, "max_iter": 10}).fit(X, y)
        norms.append(sum(float(np.sum(v ** 2)) for k, v in clf.model_.state_dict().items() if k.endswith("weight")))
    assert norms[0] > norms[1] > norms[2]


def test_random_state_seeds_the_shuffling():
    """With the initial weights held fixed, ``random_state`` still changes a shuffled fit (the order of
    the rows) and leaves an in-order fit alone; the same seed repeats it; shuffling changes the result."""
    import portablenn.sklearn as pn_sklearn

    X, y = _problem()
    real = pn_sklearn.mlp

    def run(**params):
        with pytest.MonkeyPatch.context() as mp:  # every seed builds the same network
            mp.setattr(pn_sklearn, "mlp", lambda *args, **kwargs: real(*args, **{**kwargs, "seed": 7}))
            return MLPClassifier(**{**BASE, **params}).fit(X, y).model_.state_dict()["0.weight"]

    shuffled = {seed: run(shuffle=True, random_state=seed) for seed in (1, 2)}
    assert not np.allclose(shuffled[1], shuffled[2], rtol=1e-6)
    np.testing.assert_array_equal(run(shuffle=True, random_state=1), shuffled[1])
    in_order = run(shuffle=False, random_state=1)
    np.testing.assert_array_equal(run(shuffle=False, random_state=2), in_order)
    assert not np.allclose(in_order, shuffled[1], rtol=1e-6)


@pytest.mark.parametrize("n, batch", [(250, 200), (40, 40)])
def test_auto_batch_size_is_at_most_200(n, batch):
    X, y = _problem(n)
    params = {**BASE, "batch_size": "auto", "max_iter": 2}
    clf, initial = _fit_capturing(X, y, **params)
    _assert_trained_as(clf, _oracle_fit(params, initial, X, y, batch=batch), "float64", f"auto, n={n}")


@pytest.mark.parametrize("given, used", [(1000, 40), (41, 40), (0, 1), (-3, 1)])
def test_batch_size_outside_1_to_n_is_clipped_with_a_warning(given, used):
    X, y = _problem()
    params = {**BASE, "batch_size": given, "max_iter": 2}
    with pytest.warns(UserWarning, match="clipped"):
        clf, initial = _fit_capturing(X, y, **params)
    _assert_trained_as(clf, _oracle_fit(params, initial, X, y, batch=used), "float64", f"batch_size={given}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a batch size in range: no warning
        MLPClassifier(**{**BASE, "batch_size": 40, "max_iter": 1}).fit(X, y)


@pytest.mark.parametrize("activation", ["tanh", "logistic"])
def test_unpickled_model_keeps_its_activation(activation):
    X, y = _spiral()
    clf = MLPClassifier(hidden_layer_sizes=(8,), activation=activation, max_iter=5, random_state=0,
                        device="cpu").fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))


def test_predict_refuses_features_beyond_the_models_dtype():
    """float64 features beyond float32's range: a float32 model refuses them in predict, predict_proba and
    score (they would become infinities); a float64 model takes them."""
    X, y = _spiral()
    big = X.copy()
    big[5, 1] = 1e39
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0, device="cpu").fit(X, y)
    for call in (clf.predict, clf.predict_proba, lambda Z: clf.score(Z, y)):
        with pytest.raises(ValueError, match="too large for float32"):
            call(big)
    wide = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0, device="cpu", dtype="float64").fit(X, y)
    assert wide.predict(big).shape == (300,)


# -- against scikit-learn's own MLPClassifier ----------------------------------------------------------------
SKLEARN_CASES = [
    pytest.param(dict(solver="sgd", momentum=0.0), 40, 1e-10, id="sgd-full-batch"),
    pytest.param(dict(solver="sgd", momentum=0.0), 10, 1e-10, id="sgd-in-order-minibatches"),
    pytest.param(dict(solver="sgd", momentum=0.9, nesterovs_momentum=False), 10, 1e-10, id="momentum"),
    pytest.param(dict(solver="sgd", momentum=0.9, nesterovs_momentum=True), 10, 1e-10, id="nesterov"),
    # scikit-learn's Adam adds epsilon to sqrt(v) before its bias correction, PyTorch's (and ours) after:
    # with epsilon 1e-8 the two differ by 1.3e-7 relative here (measured)
    pytest.param(dict(solver="adam", beta_1=0.8, beta_2=0.95), 10, 1e-6, id="adam"),
]


@pytest.mark.parametrize("params, batch, rtol", SKLEARN_CASES)
def test_matches_scikit_learns_mlpclassifier(params, batch, rtol):
    """Same initial weights (scikit-learn's coefs_/intercepts_ set from ours), in-order minibatches that
    divide the data, 3 epochs: the same weights and loss curve. scikit-learn adds
    ``alpha * W / batch_rows`` to the mean gradient where we add ``alpha * W``, so its alpha is ours
    times the batch size."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    X, y = _problem()
    ours_params = {**BASE, **params, "batch_size": batch, "alpha": 0.02}
    ours, initial = _fit_capturing(X, y, **ours_params)
    theirs = SklearnMLP(**{k: v for k, v in ours_params.items() if k not in ("device", "dtype")},
                        learning_rate="constant", n_iter_no_change=10**6)
    theirs.set_params(alpha=ours_params["alpha"] * batch, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs.fit(X, y)  # sets up its attributes; the weights are replaced next
        theirs.coefs_ = [initial["0.weight"].copy(), initial["2.weight"].copy()]
        theirs.intercepts_ = [initial["0.bias"].copy(), initial["2.bias"].copy()]
        theirs.set_params(warm_start=True, max_iter=ours_params["max_iter"])
        theirs.fit(X, y)
    assert theirs.n_iter_ == ours.n_iter_ == 3
    state = ours.model_.state_dict()
    for i, key in enumerate(("0", "2")):
        for mine, other, name in ((state[f"{key}.weight"], theirs.coefs_[i], "weight"),
                                  (state[f"{key}.bias"], theirs.intercepts_[i], "bias")):
            np.testing.assert_allclose(mine, other, rtol=rtol, atol=rtol * np.max(np.abs(other)),
                                       err_msg=f"{key}.{name}")
    assert not np.allclose(state["0.weight"], initial["0.weight"], rtol=1e-3)  # training moved the weights
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_[1:], rtol=rtol)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
