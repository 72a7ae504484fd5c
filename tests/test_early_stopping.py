"""Early stopping: where it stops, which weights it keeps, on every device, with no extra host read."""
import numpy as np
import pytest

import portablenn as pn

from _support import classification_data, copy_state, require_dtype


def _data():
    X, y = classification_data(n=60, features=5, classes=3, seed=4)
    Xv, yv = classification_data(n=30, features=5, classes=3, seed=9)
    return X, y, (Xv, yv)


def _stop_epoch(values, patience, min_delta):
    """An independent reading of the rule: (epoch of the best value, epoch it stops at or None)."""
    best, best_epoch, wait = np.inf, None, 0
    for epoch, value in enumerate(values, start=1):
        if value < best - min_delta:
            best, best_epoch, wait = value, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return best_epoch, epoch
    return best_epoch, None


@pytest.mark.parametrize("monitor, patience, min_delta", [("val_loss", 3, 0.0), ("val_error", 2, 0.0),
                                                          ("loss", 2, 0.05)])
def test_it_stops_where_the_rule_says_and_keeps_the_best_weights(device, dtype, monitor, patience, min_delta):
    """A learning rate so high that validation loss turns back up: the run stops where an independent
    reading of the History says, and ends with the weights a plain run had at the best epoch."""
    require_dtype(device, dtype)
    X, y, val = _data()
    X, val = X.astype(dtype), (val[0].astype(dtype), val[1])
    stopper = pn.EarlyStopping(monitor=monitor, patience=patience, min_delta=min_delta)
    model = pn.mlp([5, 16, 3], seed=2, dtype=dtype)
    history = pn.fit(model, X, y, optimizer=pn.SGD(2.0, momentum=0.9), epochs=40, batch_size=10, device=device,
                     validation=val, early_stopping=stopper)
    best_epoch, stopped = _stop_epoch(history[monitor], patience, min_delta)
    assert stopper.best_epoch == best_epoch and stopper.stopped_epoch == stopped
    assert len(history) == (stopped or 40)
    # the weights are those of a plain run after best_epoch epochs
    plain = pn.mlp([5, 16, 3], seed=2, dtype=dtype)
    snapshots = []
    pn.fit(plain, X, y, optimizer=pn.SGD(2.0, momentum=0.9), epochs=best_epoch, batch_size=10, device=device,
           validation=val, callback=lambda record: snapshots.append(copy_state(plain.state_dict())))
    for key, value in snapshots[best_epoch - 1].items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)


def test_a_run_that_keeps_improving_runs_to_the_end_and_keeps_its_last_weights():
    X, y, val = _data()
    stopper = pn.EarlyStopping(patience=50)
    model = pn.mlp([5, 16, 3], seed=2)
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.01), epochs=6, batch_size=10, validation=val,
                     early_stopping=stopper)
    assert len(history) == 6 and stopper.stopped_epoch is None
    assert stopper.best_epoch == int(np.argmin(history["val_loss"])) + 1


def test_without_restore_the_last_weights_stay():
    X, y, val = _data()
    kept, last = pn.mlp([5, 16, 3], seed=2), pn.mlp([5, 16, 3], seed=2)
    for model, restore in ((kept, True), (last, False)):
        pn.fit(model, X, y, optimizer=pn.SGD(2.0, momentum=0.9), epochs=40, batch_size=10, validation=val,
               early_stopping=pn.EarlyStopping(patience=3, restore_best=restore))
    assert any(not np.array_equal(kept.state_dict()[k], last.state_dict()[k]) for k in kept.state_dict())


def test_it_reads_nothing_more_from_the_device(monkeypatch):
    """One read per epoch, as log_every=1 does anyway: the best weights are copied on the device."""
    from test_train import _SyncCounter

    dev = pn.device("array_api_strict:device1")
    X, y, val = _data()
    counter = _SyncCounter(monkeypatch)

    def run(**kw):
        return counter.during(lambda: pn.fit(pn.mlp([5, 16, 3], seed=2).to(dev), X, y, optimizer=pn.SGD(0.05),
                                             epochs=5, batch_size=10, validation=val, **kw))
    assert run(early_stopping=pn.EarlyStopping(patience=10)) == run()


def test_bad_settings_are_one_clear_line():
    X, y, val = _data()
    model = pn.mlp([5, 3])
    for kwargs, words in (({"monitor": ""}, "monitor must name a History field"), ({"monitor": "epoch"}, "monitor"),
                          ({"patience": 0}, "patience"), ({"min_delta": -1.0}, "min_delta"), ({"mode": "up"}, "mode")):
        with pytest.raises(pn.InputError, match=words):
            pn.EarlyStopping(**kwargs)
    with pytest.raises(pn.InputError, match="monitors 'accuracy', which this fit does not record; it records "
                                            "loss, error, val_loss, val_error"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), validation=val, early_stopping=pn.EarlyStopping("accuracy"))
    with pytest.raises(pn.InputError, match="needs validation data"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), batch_size=10, early_stopping=pn.EarlyStopping())
    with pytest.raises(pn.InputError, match="use log_every=1, not 2"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), validation=val, log_every=2, early_stopping=pn.EarlyStopping())
