"""fit(validation_fraction=...): a seeded split, stratified by class, that trains as the explicit split does."""
import numpy as np
import pytest

import portablenn as pn
from portablenn.split import split_indices

from _support import classification_data, require_dtype


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_the_split_partitions_the_rows_and_keeps_each_class_share(fraction):
    y = np.repeat([0, 1, 2, 3, 4], [40, 20, 8, 2, 1])
    train, val = split_indices(len(y), fraction, seed=3, labels=y)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))  # disjoint, complete
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # each in the original order
    for c, count in enumerate([40, 20, 8, 2, 1]):
        got = int(np.sum(y[val] == c))
        assert got == min(int(np.floor(fraction * count + 0.5)), count - 1), (c, got)
        assert np.sum(y[train] == c) >= 1  # every class still trains
    again, _ = split_indices(len(y), fraction, seed=3, labels=y)
    other, _ = split_indices(len(y), fraction, seed=4, labels=y)
    assert np.array_equal(again, train) and not np.array_equal(other, train)


def test_an_unstratified_split_takes_the_share_of_all_rows():
    train, val = split_indices(10, 0.3, seed=0)
    assert len(val) == 3 and len(train) == 7
    assert len(split_indices(10, 0.01, seed=0)[1]) == 1  # at least one validation row


def test_fit_with_a_fraction_equals_fit_with_that_split_given(device, dtype):
    """Bit for bit, on every device, with the data given on that device."""
    require_dtype(device, dtype)
    X, y = classification_data(n=50, features=4, classes=3, seed=2)
    X = X.astype(dtype)
    train, val = split_indices(50, 0.2, seed=7, labels=y)
    a, b = pn.mlp([4, 6, 3], seed=1, dtype=dtype), pn.mlp([4, 6, 3], seed=1, dtype=dtype)
    ha = pn.fit(a, device.asarray(X), device.asarray(y, dtype=device.index_dtype), optimizer=pn.SGD(0.1), epochs=3,
                batch_size=8, seed=7, device=device, validation_fraction=0.2)
    hb = pn.fit(b, X[train], y[train], optimizer=pn.SGD(0.1), epochs=3, batch_size=8, seed=7, device=device,
                validation=(X[val], y[val]))
    assert ha["val_loss"] == hb["val_loss"] and ha["loss"] == hb["loss"]
    for key, value in b.state_dict().items():
        np.testing.assert_array_equal(a.state_dict()[key], value, err_msg=key)


def test_bad_fractions_and_both_validations_are_refused():
    X, y = classification_data(n=20, features=4, classes=3)
    for bad in (0, 1, 1.5, -0.1, "0.2", True):
        with pytest.raises(pn.InputError, match="validation_fraction must be a number strictly between 0 and 1"):
            pn.fit(pn.mlp([4, 3]), X, y, optimizer=pn.SGD(0.1), batch_size=4, validation_fraction=bad)
    with pytest.raises(pn.InputError, match="either validation or validation_fraction"):
        pn.fit(pn.mlp([4, 3]), X, y, optimizer=pn.SGD(0.1), validation=(X, y), validation_fraction=0.2)


def _fit_bce(X, y, **kwargs):
    history = pn.fit(pn.mlp([3, 4, y.shape[1] if y.ndim == 2 else 1], seed=1, dtype="float64"), X, y,
                     loss="binary_cross_entropy", optimizer=pn.SGD(0.1), epochs=2, batch_size=10, seed=0, **kwargs)
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_binary_cross_entropy_stratifies_a_single_column_of_labels_and_not_several():
    """One 0/1 column is split by class (the loss's ``strata``); multi-label rows are split unstratified."""
    X = np.random.default_rng(3).standard_normal((40, 3))
    y = (np.arange(40) < 8).astype(np.int64)  # 8 positives: a stratified split keeps 2 of them out
    train, val = split_indices(40, 0.25, 0, y)
    assert y[val].sum() == 2
    assert _fit_bce(X, y, validation_fraction=0.25) == _fit_bce(X[train], y[train], validation=(X[val], y[val]))
    labels = np.stack([y, 1 - y], axis=1)
    train, val = split_indices(40, 0.25, 0, None)
    assert _fit_bce(X, labels, validation_fraction=0.25) == _fit_bce(X[train], labels[train],
                                                                      validation=(X[val], labels[val]))
