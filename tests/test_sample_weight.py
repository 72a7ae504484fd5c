"""``fit(sample_weight=...)``: each row's loss and gradient times its weight, the weights scaled to average 1.

The oracles run in CI: the NumPy training loop of ``_oracle.py`` (written from the formulas, with the weights as
``fit`` documents them), and, for every loss, the rule that makes weights meaningful: in full-batch training a row
of integer weight k trains exactly as k copies of it (0: as if it were not there).
"""
import numpy as np
import pytest

import _oracle as oracle
import portablenn as pn
from _support import classification_data, fit_with_snapshots, require_dtype
from _tolerances import assert_close, assert_state_close
from portablenn.losses import MeanSquaredError
from portablenn.validation import InputError

# loss -> (its outputs, targets from (rng, X)): classification labels, 0/1 columns, real columns
LOSSES = {
    "softmax_cross_entropy": (3, lambda rng, X: classification_data(len(X), 4, 3, seed=2)[1]),
    "binary_cross_entropy": (2, lambda rng, X: (rng.random((len(X), 2)) < 0.4).astype(float)),
    "mse": (2, lambda rng, X: np.tanh(X[:, :2]) + 0.1 * rng.standard_normal((len(X), 2))),
    "huber": (1, lambda rng, X: 2 * X[:, 0] + rng.standard_normal(len(X))),
}


def _problem(loss, n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    outputs, targets = LOSSES[loss]
    return X, targets(rng, X), outputs, rng.integers(0, 4, n)  # weights 0..3: some rows left out


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_an_integer_weight_trains_as_that_many_copies_of_the_row_on_every_device(device, loss):
    """Full batch, float64: weights k (0 included) against the data with each row repeated k times, the same
    weights, loss curve and validation figures, with L2 and momentum; on every CPU device."""
    require_dtype(device, "float64")
    X, y, outputs, w = _problem(loss)
    runs = []
    for data, weights in (((X, y), w), ((np.repeat(X, w, axis=0), np.repeat(y, w, axis=0)), None)):
        model = pn.mlp([4, 7, outputs], seed=3, dtype="float64")
        history = pn.fit(model, *data, optimizer=pn.SGD(0.2, momentum=0.9), loss=loss, epochs=4, batch_size=None,
                         l2=1e-3, device=device, sample_weight=weights, validation=(X[:9], y[:9]))
        runs.append((model.state_dict(), history))
    (state, history), (reference, expected) = runs
    assert_state_close(state, reference, "float64", factor=10)
    for field in ("loss", "val_loss") + tuple(f for f in history.records[0] if f.startswith("val_")):
        assert_close(history[field], expected[field], "float64", factor=10, err_msg=field)


def test_minibatches_with_weights_train_as_the_numpy_oracle_step_by_step(device, dtype):
    """Shuffled minibatches of 7 rows (a short last one), SGD with momentum and L2: each epoch's weights and
    figures against the oracle's loop, whose minibatch mean of weighted rows is over the rows."""
    require_dtype(device, dtype)
    X, y = classification_data(n=40, features=5, classes=3, seed=6)
    w = np.random.default_rng(1).uniform(0.0, 5.0, 40)
    model = pn.mlp([5, 8, 3], seed=4, dtype=dtype)
    initial = model.state_dict()
    history, states, _ = fit_with_snapshots(model, X, y, optimizer=pn.SGD(0.3, momentum=0.5), epochs=3,
                                            batch_size=7, l2=1e-3, seed=9, device=device, sample_weight=w)
    result = oracle.train(initial, oracle.architecture(model), X.astype(dtype), y, oracle.make(
        "sgd", {"lr": 0.3, "momentum": 0.5}, 1e-3), epochs=3, batch=7, l2=1e-3, orders=oracle.shuffled_orders(
        40, 9, 3), dtype=dtype, sample_weight=w)
    for epoch, (state, expected) in enumerate(zip(states, result.steps[5::6]), start=1):
        assert_state_close(state, expected, dtype, factor=10, err_msg=f"epoch {epoch}")
    assert_close(history["loss"], result.loss, dtype, factor=10)
    assert_close(history["error"], result.error, dtype, factor=10)  # the error rate stays unweighted
    unweighted = pn.mlp([5, 8, 3], seed=4, dtype=dtype)
    pn.fit(unweighted, X, y, optimizer=pn.SGD(0.3, momentum=0.5), epochs=3, batch_size=7, l2=1e-3, seed=9,
           device=device)
    assert not np.allclose(pn.backend._host(unweighted.state_dict()["0.weight"]), states[-1]["0.weight"])


def test_the_scale_of_the_weights_changes_nothing_and_ones_change_nothing():
    X, y = classification_data(n=30, features=4, classes=3, seed=2)
    w = np.random.default_rng(0).uniform(0.1, 2.0, 30)

    def run(weights):
        model = pn.mlp([4, 6, 3], seed=1, dtype="float64")
        history = pn.fit(model, X, y, optimizer=pn.Adam(0.01), epochs=3, batch_size=8, sample_weight=weights)
        return model.state_dict(), history["loss"]

    state, loss = run(w)
    for scaled in (w * 1e6, w * 1e-6, list(w)):
        other, other_loss = run(scaled)
        assert_state_close(other, state, "float64", factor=10)
        assert_close(other_loss, loss, "float64", factor=10)
    plain, plain_loss = run(None)
    ones, ones_loss = run(np.ones(30))
    assert_state_close(ones, plain, "float64", factor=1)
    assert ones_loss == plain_loss


def test_validation_fraction_splits_the_weights_with_the_rows():
    """The split's training rows keep their weights (scaled to average 1 over them), the validation rows are
    unweighted: as fitting the split by hand."""
    from portablenn.split import split_indices, validation_split

    X, y = classification_data(n=50, features=4, classes=3, seed=3)
    w = np.random.default_rng(2).uniform(0.0, 3.0, 50)
    model = pn.mlp([4, 6, 3], seed=2, dtype="float64")
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.2), epochs=3, batch_size=10, validation_fraction=0.2, seed=4,
                     sample_weight=w)
    X_train, y_train, validation, w_train = validation_split(X, y, 0.2, 4, True, w)
    rows, _ = split_indices(50, 0.2, 4, y)
    assert np.array_equal(w_train, w[rows]) and np.array_equal(y_train, y[rows])  # each row keeps its own weight
    by_hand = pn.mlp([4, 6, 3], seed=2, dtype="float64")
    expected = pn.fit(by_hand, X_train, y_train, optimizer=pn.SGD(0.2), epochs=3, batch_size=10, seed=4,
                      validation=validation, sample_weight=w_train)
    assert_state_close(model.state_dict(), by_hand.state_dict(), "float64", factor=10)
    assert_close(history["val_loss"], expected["val_loss"], "float64", factor=10)


def test_weighted_steps_use_the_losses_own_code_not_the_fused_twin():
    """The fused softmax twin knows plain one-hot targets only: with weights the step takes the loss's code."""
    model = pn.mlp([4, 6, 3], seed=1)
    dev = pn.device("numpy")
    assert pn.make_step(model, pn.SoftmaxCrossEntropy(), pn.SGD(0.1).bind(model), dev).fused[0] == "loss"
    step = pn.make_step(model, pn.SoftmaxCrossEntropy(), pn.SGD(0.1).bind(model), dev, weighted=True)
    assert "loss" not in step.fused


class Unweighted(MeanSquaredError):
    """A user's loss that rewrites ``value_and_grad`` and does not say it takes sample weights."""

    def value_and_grad(self, xp, outputs, targets, scale):
        return super().value_and_grad(xp, outputs, targets[:1], scale)


@pytest.mark.parametrize("weights, kwargs, message", [
    (np.ones(5), {}, "X has 12 samples but sample_weight has 5 rows"),
    (-np.ones(12), {}, "must be >= 0; it holds 12 negative"),
    (np.r_[np.ones(11), np.nan], {}, "sample_weight contains 1 NaN or infinite"),
    (np.zeros(12), {}, "zero for every row"),
    (np.ones((12, 2)), {}, "must be 1-D"),
    ("heavy", {}, "must be numbers"),
    (np.ones(12), {"graph": True}, "graph=True records the unweighted step"),
    (np.ones(12), {"loss": Unweighted()}, "Unweighted does not take sample_weight"),
])
def test_bad_weights_are_one_clear_error_before_training(weights, kwargs, message):
    X, y = classification_data(n=12, features=4, classes=2, seed=1)
    model = pn.mlp([4, 5, 2], seed=1)
    before = model.state_dict()
    if isinstance(kwargs.get("loss"), Unweighted):
        y = np.eye(2)[y]
    with pytest.raises(InputError, match=message):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), sample_weight=weights, **kwargs)
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_number_weighs_every_row_alike():
    X, y = classification_data(n=20, features=4, classes=3, seed=1)
    states = []
    for weight in (None, 3.5):
        model = pn.mlp([4, 5, 3], seed=1, dtype="float64")
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=6, sample_weight=weight)
        states.append(model.state_dict())
    assert_state_close(states[0], states[1], "float64", factor=1)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
@pytest.mark.parametrize("own_orders", [False, True], ids=["shared-order", "own-orders"])
def test_every_member_of_a_weighted_stack_trains_as_its_own_weighted_fit(device, loss, own_orders):
    """``fit_stack(sample_weight=...)`` (and so ``sweep``'s): each member equals ``fit`` of that member alone with
    the same weights, float64, each shuffling by the shared seed or its own (its rows bring their own weights)."""
    require_dtype(device, "float64")
    from portablenn.sweep import fit_stack, stack_mlp

    X, y, outputs, _ = _problem(loss, n=36, seed=2)
    w = np.random.default_rng(3).uniform(0.0, 4.0, 36)
    seeds, lrs, orders = [0, 1, 2], [0.05, 0.1, 0.2], [5, 6, 7]
    stacked = stack_mlp([4, 6, outputs], seeds, dtype="float64")
    history = fit_stack(stacked, X, y, lr=lrs, l2=1e-3, loss=loss, epochs=3, batch_size=8, seed=9, device=device,
                        member_seeds=orders if own_orders else None, sample_weight=w, validation=(X[:6], y[:6]))
    for i in range(3):
        solo = pn.mlp([4, 6, outputs], seed=seeds[i], dtype="float64")
        expected = pn.fit(solo, X, y, optimizer=pn.SGD(lrs[i]), l2=1e-3, loss=loss, epochs=3, batch_size=8,
                          seed=orders[i] if own_orders else 9, device=device, sample_weight=w,
                          validation=(X[:6], y[:6]))
        assert_state_close(stacked.member(i).state_dict(), solo.state_dict(), "float64", factor=10,
                           err_msg=f"member {i}")
        for field in ("loss", "val_loss"):
            assert_close(history[i][field], expected[field], "float64", factor=10, err_msg=f"member {i} {field}")


def test_a_sweep_passes_the_weights_to_every_member():
    from portablenn.sweep import grid, sweep

    X, y = classification_data(n=30, features=4, classes=3, seed=2)
    w = np.random.default_rng(1).uniform(0.0, 4.0, 30)
    result = sweep(X, y, grid(lr=[0.1, 0.3], hidden=[(6,)]), dtype="float64", epochs=2, batch_size=8,
                   sample_weight=w)
    solo = pn.mlp([4, 6, 3], seed=0, dtype="float64")
    expected = pn.fit(solo, X, y, optimizer=pn.SGD(0.3), epochs=2, batch_size=8, sample_weight=w)
    assert_close(result.histories[1]["loss"], expected["loss"], "float64", factor=10)


def _zero_d(name, value):
    """``value`` as a 0-d array of the library ``name`` (skipped where it is missing)."""
    if name == "numpy":
        return np.asarray(value)
    if name == "numpy-scalar":
        return np.float32(value)
    library = pytest.importorskip(name)
    return library.asarray(value) if name != "jax" else library.numpy.asarray(value)


@pytest.mark.parametrize("library", ["numpy", "numpy-scalar", "array_api_strict", "torch", "jax"])
def test_a_number_of_any_library_weighs_every_row_alike(library):
    """A NumPy scalar (``w.mean()``, ``np.float64(2)``, a float subclass) or any library's 0-d array is a number,
    as a Python float is: every row weighs the same, the same training as without weights."""
    X, y = classification_data(n=20, features=4, classes=3, seed=1)
    states = []
    for weight in (None, _zero_d(library, 3.5), np.float64(0.25), np.int64(3)):
        model = pn.mlp([4, 5, 3], seed=1, dtype="float64")
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=6, sample_weight=weight)
        states.append(model.state_dict())
    for state in states[1:]:
        assert_state_close(state, states[0], "float64", factor=1)


@pytest.mark.parametrize("weight, message", [
    (np.asarray(-2.0), "must be >= 0"),
    (np.asarray(0.0), "zero for every row"),
    (np.asarray(np.nan), "NaN or infinite"),
    (np.asarray(1 + 2j), "real numbers"),
    (np.ones((12, 1, 1)), "must be 1-D, one weight per row, got shape \\(12, 1, 1\\)"),
])
def test_a_bad_number_or_shape_is_named_as_a_weight(weight, message):
    X, y = classification_data(n=12, features=4, classes=2, seed=1)
    with pytest.raises(InputError, match=message):
        pn.fit(pn.mlp([4, 5, 2], seed=1), X, y, optimizer=pn.SGD(0.1), sample_weight=weight)


@pytest.mark.parametrize("incremental", [False, True], ids=["fit", "partial_fit"])
def test_refused_weights_leave_a_fitted_estimator_as_it_was(incremental):
    """Bad weights are refused before the estimator changes: its classes, outputs and network still agree (a
    classifier fitted on 3 classes refitted on 2 with negative weights still predicts its 3)."""
    pytest.importorskip("sklearn")
    from portablenn.sklearn import MLPClassifier

    X, y = classification_data(n=30, features=4, classes=3, seed=1)
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0)
    with pytest.warns(Warning):
        clf.fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="must be >= 0"):
        if incremental:
            clf.partial_fit(X, y, sample_weight=-np.ones(30))
        else:
            clf.fit(X, y % 2, sample_weight=-np.ones(30))
    assert list(clf.classes_) == [0, 1, 2] and clf.n_outputs_ == 3
    assert np.array_equal(clf.predict_proba(X), before) and set(clf.predict(X)) <= {0, 1, 2}


@pytest.mark.parametrize("alpha", [0.0, 1e-2])
def test_full_batch_matches_scikit_learn_at_any_weight_scale_only_without_alpha(alpha):
    """The sklearn estimators' docstrings: in full batch our weighted training is scikit-learn's where the weights
    sum to the rows; at another scale only without L2, scikit-learn dividing its alpha term by their sum too."""
    pytest.importorskip("sklearn")
    from test_sklearn import CONTROL, MLPClassifier, _assert_same_training, _capture, _problem, _sklearn_from

    X, y = _problem()
    w = np.random.default_rng(4).uniform(0.0, 3.0, len(X)) * 5  # summing to about 5 times the rows
    ours = MLPClassifier(**{**CONTROL, "alpha": alpha, "batch_size": len(X), "momentum": 0.9, "max_iter": 5})
    _, (initial,) = _capture(lambda: ours.fit(X, y, sample_weight=w))
    theirs = _sklearn_from(ours, initial).fit(X, y, sample_weight=w)
    if alpha:
        assert not np.allclose(ours.coefs_[0], theirs.coefs_[0], rtol=1e-6, atol=0)
    else:
        _assert_same_training(ours, theirs)
