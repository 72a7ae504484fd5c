"""portablenn.sklearn.MLPClassifier: scikit-learn's estimator checks, labels, pipelines, array in = array out."""
import pickle

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

from _tolerances import assert_close  # noqa: E402
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
    ({"activation": "identity"}, "activation"),
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
    assert 0 <= clf.score(dev.asarray(X), names) <= 1


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
