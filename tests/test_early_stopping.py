"""Early stopping: where it stops, which weights it keeps, on every device, with no extra host read."""
import json

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


# -- its state across a checkpoint: state_dict, load_state_dict ------------------------------------------------
_SETTINGS = dict(monitor="val_loss", patience=3)


@pytest.mark.parametrize("cut", [1, 3])
@pytest.mark.parametrize("layers", [{}, {"dropout": 0.2, "norm": "batch"}], ids=["plain", "dropout-batchnorm"])
def test_a_fit_resumed_from_its_state_stops_and_restores_as_the_uninterrupted_one(device, layers, cut):
    """Fit ``cut`` epochs, take the stopper's state and the weights there (as a checkpoint does), fit on with a
    fresh EarlyStopping loaded from that state and ``initial_epoch=cut``: the same best and stop epochs and,
    bit for bit, the same final weights (the restored best ones) as one fit straight through."""
    X, y, val = _data()
    full, whole = pn.mlp([5, 16, 3], seed=2, **layers), pn.EarlyStopping(**_SETTINGS)
    pn.fit(full, X, y, optimizer=pn.SGD(0.05, momentum=0.9), epochs=40, batch_size=10, device=device, validation=val,
           seed=1, early_stopping=whole)
    assert whole.stopped_epoch is not None and whole.stopped_epoch > cut  # the stop comes after the resume

    part, first, optimizer = pn.mlp([5, 16, 3], seed=2, **layers), pn.EarlyStopping(**_SETTINGS), pn.SGD(0.05, momentum=0.9)
    taken = {}

    def at_cut(record):  # the state and weights a checkpoint after epoch `cut` holds
        if record["epoch"] == cut:
            taken["state"], taken["weights"] = first.state_dict(part), copy_state(part.state_dict())
    pn.fit(part, X, y, optimizer=optimizer, epochs=cut, batch_size=10, device=device, validation=val, seed=1,
           early_stopping=first, callback=at_cut)
    state, best = taken["state"]
    assert state == {"best": state["best"], "best_epoch": state["best_epoch"], "wait": cut - state["best_epoch"],
                     "stopped_epoch": None}
    assert list(best) == [k for k, _, _ in part.named_parameters()] + [k for k, _, _ in part.named_buffers()]
    # after fit, the same state, its best weights now the model's own (fit put them back)
    after_state, after_best = first.state_dict(part)
    assert after_state == state and list(after_best) == list(best)
    for key, value in best.items():
        np.testing.assert_array_equal(after_best[key], value, err_msg=key)
        np.testing.assert_array_equal(part.state_dict()[key], value, err_msg=key)

    part.load_state_dict(taken["weights"])  # the weights after epoch `cut`, as the checkpoint holds them
    resumed = pn.EarlyStopping(**_SETTINGS).load_state_dict(json.loads(json.dumps(state)), best)
    history = pn.fit(part, X, y, optimizer=optimizer, epochs=40, batch_size=10, device=device, validation=val,
                     seed=1, initial_epoch=cut, early_stopping=resumed)
    assert history["epoch"][0] == cut + 1
    assert (resumed.best_epoch, resumed.stopped_epoch, resumed.best) == \
        (whole.best_epoch, whole.stopped_epoch, whole.best)
    for key, value in full.state_dict().items():
        np.testing.assert_array_equal(part.state_dict()[key], value, err_msg=key)


def test_loaded_state_applies_to_the_next_fit_only():
    """A loaded best no epoch can beat: the first fit stops after patience - wait epochs and puts back the loaded
    best weights; the next fit with the same stopper starts afresh and runs to its end."""
    X, y, val = _data()
    model = pn.mlp([5, 16, 3], seed=2)
    start = copy_state(model.state_dict())
    stopper = pn.EarlyStopping(patience=3).load_state_dict({"best": 0.0, "best_epoch": 4, "wait": 1,
                                                            "stopped_epoch": None}, start)
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.01), epochs=20, batch_size=10, validation=val, initial_epoch=4,
                     early_stopping=stopper)
    assert len(history) == 2 and (stopper.best_epoch, stopper.stopped_epoch, stopper.best) == (4, 6, 0.0)
    for key, value in start.items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.01), epochs=5, batch_size=10, validation=val,
                     early_stopping=stopper)
    assert len(history) == 5 and stopper.stopped_epoch is None and stopper.best_epoch == 5
    for key, value in pn.mlp([5, 16, 3], seed=2).state_dict().items():  # training never wrote into the caller's
        np.testing.assert_array_equal(start[key], value, err_msg=key)


def test_a_stopper_before_any_fit_or_improvement_has_no_best_weights():
    model = pn.mlp([5, 16, 3], seed=2)
    stopper = pn.EarlyStopping()
    assert stopper.state_dict(model) == ({"best": None, "best_epoch": None, "wait": 0, "stopped_epoch": None}, {})
    stopper.start(model, None)
    assert stopper.state_dict(model) == ({"best": float("inf"), "best_epoch": None, "wait": 0,
                                          "stopped_epoch": None}, {})
    state, _ = stopper.state_dict(model)
    pn.EarlyStopping().load_state_dict(state)  # it loads back, with no tensors


@pytest.mark.parametrize("state, tensors, words", [
    ([], None, "state must be a dict with the keys best, best_epoch, wait, stopped_epoch"),
    ({"best": 1.0, "best_epoch": 2, "wait": 0}, None, "state must be a dict with the keys"),
    ({"best": "x", "best_epoch": 2, "wait": 0, "stopped_epoch": None}, {}, "best must be a number or None"),
    ({"best": float("nan"), "best_epoch": 2, "wait": 0, "stopped_epoch": None}, {}, "best must be a number"),
    ({"best": 1.0, "best_epoch": 0, "wait": 0, "stopped_epoch": None}, {}, "best_epoch must be an integer >= 1"),
    ({"best": 1.0, "best_epoch": 2, "wait": -1, "stopped_epoch": None}, {}, "wait must be an integer >= 0"),
    ({"best": 1.0, "best_epoch": 2, "wait": 0, "stopped_epoch": True}, {}, "stopped_epoch must be an integer"),
    ({"best": 1.0, "best_epoch": None, "wait": 0, "stopped_epoch": None}, None, "does not go with best_epoch"),
    ({"best": None, "best_epoch": 2, "wait": 0, "stopped_epoch": None}, None, "does not go with best_epoch"),
    ({"best": 1.0, "best_epoch": 2, "wait": 0, "stopped_epoch": None}, None, "needs the best weights"),
    ({"best": 1.0, "best_epoch": 2, "wait": 0, "stopped_epoch": None}, [1.0], "tensors must be a dict"),
    ({"best": float("inf"), "best_epoch": None, "wait": 0, "stopped_epoch": None}, {"0.weight": 1.0},
     "no best epoch but tensors"),
])
def test_bad_state_is_one_clear_line(state, tensors, words):
    with pytest.raises(pn.InputError, match=words):
        pn.EarlyStopping().load_state_dict(state, tensors)


def test_best_weights_that_do_not_fit_the_model_are_refused_when_the_fit_starts():
    X, y, val = _data()
    model = pn.mlp([5, 16, 3], seed=2)
    state = {"best": 1.0, "best_epoch": 2, "wait": 0, "stopped_epoch": None}
    good = model.state_dict()
    for tensors, words in (({k: v for k, v in good.items() if k != "2.bias"}, "'2.bias' is missing"),
                           ({**good, "9.weight": good["0.weight"]}, "'9.weight' is not a parameter or buffer"),
                           ({**good, "0.weight": good["0.weight"].T}, "'0.weight' has shape \\(16, 5\\), the model's "
                                                                      "has \\(5, 16\\)")):
        stopper = pn.EarlyStopping().load_state_dict(state, tensors)
        with pytest.raises(pn.InputError, match=words):
            pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=10, validation=val,
                   early_stopping=stopper)
    # without restore_best no weights are needed, and any given are not kept
    stopper = pn.EarlyStopping(restore_best=False).load_state_dict(state)
    pn.fit(model, X, y, optimizer=pn.SGD(0.01), epochs=2, initial_epoch=1, batch_size=10, validation=val,
           early_stopping=stopper)
    assert stopper.state_dict(model)[1] == {}


def _stops(stopper, values, key="loss"):
    """Feed made-up records to ``stopper`` (no model: restore_best=False); the epochs it improved at and stopped."""
    stopper.start(None, None)
    improved, stopped = [], None
    for epoch, value in enumerate(values, start=1):
        before = stopper.best_epoch
        if stopper.update({"epoch": epoch, key: value}, None):
            stopped = epoch
            break
        if stopper.best_epoch != before:
            improved.append(epoch)
    return improved, stopped


def test_min_delta_and_the_modes_on_made_up_records():
    # an improvement must beat the best by more than min_delta: 0.97 and 0.96 are within 0.05 of 1.0
    assert _stops(pn.EarlyStopping("loss", 2, 0.05, restore_best=False), [1.0, 0.97, 0.96, 0.9]) == ([1], 3)
    assert _stops(pn.EarlyStopping("loss", 2, 0.0, restore_best=False), [1.0, 0.97, 0.96, 0.9]) == ([1, 2, 3, 4], None)
    # mode="max" on a lower-is-better name, mode="min" on r2: the mode given wins over the name
    assert _stops(pn.EarlyStopping("loss", 2, 0.0, restore_best=False, mode="max"), [1.0, 2.0, 1.5, 1.0]) == ([1, 2], 4)
    assert _stops(pn.EarlyStopping("r2", 2, 0.0, restore_best=False, mode="min"), [0.5, 0.4, 0.6, 0.7], "r2") == ([1, 2], 4)
    assert _stops(pn.EarlyStopping("r2", 2, 0.0, restore_best=False), [0.5, 0.4, 0.6, 0.7], "r2") == ([1, 3, 4], None)
