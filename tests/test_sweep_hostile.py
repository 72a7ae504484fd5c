"""A hostile review of the sweeps' controls and speed paths (#20): the lazy decay scale of a side-by-side first
layer, the joined bias of a narrow one, per-member schedules and early stopping, chunks, JAX, the command line.

Every test holds a stack's member to what ``portablenn.fit`` makes of it alone (float64, ~1e-12 relative). Seven
of them exposed a bug each when written (an early-stopped member's optimizer state and step count, its restored
shared counters, a continued optimizer after a device move, a schedule passed twice, a warmup past lr l2 = 1 with a
lazy scale held, a stopped member's BatchNorm statistics drifting); the others pin down behaviour that held up."""
import numpy as np
import pytest

import portablenn as pn
from _support import classification_data, cli_run as _cli, fit_with_snapshots
from _tolerances import assert_close, assert_state_close
from portablenn import sweep as sw
from portablenn.sweep import StackedOptimizer, evaluate_stack, fit_stack, grid, predict_stack, stack_mlp

SIZES = [5, 8, 3]  # 5 inputs: a narrow first layer (NumPy: weight and bias views of one joint array)
WIDE = [40, 8, 3]  # 40 inputs: side by side (NumPy: the lazy decay scale during the fused SGD step)
F64 = 1e-2  # float64: 1e-12 relative


def _data(features=5):
    X, y = classification_data(n=60, features=features, classes=3, seed=4)
    Xv, yv = classification_data(n=25, features=features, classes=3, seed=5)
    return X, y, (Xv, yv)


def _counters(state):
    """Without the shared integer counters (Dropout's mask counter, BatchNorm's num_batches_tracked)."""
    return {k: v for k, v in state.items() if not k.endswith(("counter", "num_batches_tracked"))}


def _same_state(actual, desired, err_msg):
    """Equal float states (1e-12 relative; an array near zero, such as the bias of a Linear layer before a
    BatchNorm, whose gradient is rounding noise, against 1)."""
    actual, desired = _counters(actual), _counters(desired)
    assert sorted(actual) == sorted(desired), err_msg
    for key, value in desired.items():
        assert np.shape(actual[key]) == np.shape(value), f"{err_msg} [{key}]"
        assert_close(actual[key], value, "float64", factor=F64, scale=max(1.0, float(np.max(np.abs(value)))),
                     err_msg=f"{err_msg} [{key}]")


# -- the lazy decay scale: W = scale * V during the fused SGD step of a side-by-side first layer ------------------
def test_a_warmup_taking_lr_l2_past_one_while_a_decay_scale_is_held_trains_as_fit():
    """Warmup raises the lr step by step: member 1's keep = 1 - lr f l2 is > 0 for the first steps (the decay held
    lazily, keeps differing), then <= 0 (the one-pass branch): that branch multiplies V, not W = scale * V, and
    then updates V with the gradient not divided by the scale."""
    X, y, _ = _data(40)
    lrs, l2s = [1.0, 1.0], [0.0, 1.5]
    stacked = stack_mlp(WIDE, [0, 1], dtype="float64")
    history = fit_stack(stacked, X, y, lr=lrs, l2=l2s, epochs=2, batch_size=10, log_every=2,
                        schedule=pn.schedules.CosineWarmup(warmup=1, min_factor=0.5))
    first = stacked.layers[0]
    assert first.side_by_side(first.params["weight"]) is not None  # the path under test
    for i in range(2):
        model = pn.mlp(WIDE, seed=i, dtype="float64")
        solo = pn.fit(model, X, y, optimizer=pn.SGD(lrs[i]), l2=l2s[i], epochs=2, batch_size=10, log_every=2,
                      schedule=pn.schedules.CosineWarmup(warmup=1, min_factor=0.5))
        assert_close(history[i].records[-1]["loss"], solo.records[-1]["loss"], "float64", factor=F64)
        _same_state(stacked.member(i).state_dict(), model.state_dict(), f"member {i}")


LAZY = {  # name -> (lr, l2, fit_stack options); 3 members whose decays differ: the scale is held between reads
    "reads_every_3_epochs_with_validation": ([0.1, 0.2, 0.3], [0.0, 1e-2, 0.1], dict(epochs=6, log_every=3)),
    "lr_l2_at_least_one": ([0.5, 1.0, 0.3], [0.0, 1.5, 0.1], dict(epochs=4, log_every=2)),
    "a_decay_folded_many_times": ([1.0, 1.0, 0.3], [0.9, 0.5, 0.0], dict(epochs=12, log_every=6, batch_size=10)),
    "a_step_schedule": ([0.1, 0.2, 0.3], [0.0, 1e-2, 0.1],
                        dict(epochs=6, log_every=3, schedule=pn.schedules.StepDecay(1, 0.5))),
}


@pytest.mark.parametrize("case", sorted(LAZY))
def test_a_lazy_decay_scale_is_never_seen_by_reads_predictions_or_validation(case):
    """A side-by-side first layer with different decays per member: the validation figures of the epochs between
    reads, the members and the stack's state dict read by on_read, and predict/evaluate right after the fit are
    all the members' own weights, equal to their solo fits epoch by epoch."""
    X, y, val = _data(40)
    lrs, l2s, options = LAZY[case]
    options = {"batch_size": 16, **options}
    schedule = options.pop("schedule", None)
    stacked = stack_mlp(WIDE, [0, 1, 2], dtype="float64")
    reads = []

    def on_read(epoch, history):
        whole = stacked.state_dict()
        reads.append((epoch, [stacked.member(i).state_dict() for i in range(3)], whole))
    history = fit_stack(stacked, X, y, lr=lrs, l2=l2s, validation=val, on_read=on_read, schedule=schedule, **options)
    first = stacked.layers[0]
    assert first.side_by_side(first.params["weight"]) is not None and first._scale is None
    assert not history.diverged
    predictions, scores = predict_stack(stacked, val[0]), evaluate_stack(stacked, *val)
    for i in range(3):
        model = pn.mlp(WIDE, seed=i, dtype="float64")
        solo_schedule = None if schedule is None else pn.schedules.StepDecay(1, 0.5)
        _, states, records = fit_with_snapshots(model, X, y, optimizer=pn.SGD(lrs[i]), l2=l2s[i], validation=val,
                                                schedule=solo_schedule, **{k: v for k, v in options.items()
                                                                           if k != "log_every"})
        for record, solo in zip(history[i].records, records):
            for field in ("loss", "error", "val_loss", "val_error"):
                assert_close(record[field], solo[field], "float64", factor=F64, err_msg=f"{i} {record['epoch']}")
        for epoch, members, whole in reads:
            _same_state(members[i], states[epoch - 1], f"member {i} read at epoch {epoch}")
            assert_close(whole["0.weight"][i], states[epoch - 1]["0.weight"], "float64", factor=F64)
        np.testing.assert_array_equal(predictions[i], pn.predict(model, val[0]))
        loss, error = pn.evaluate(model, *val)
        assert_close(scores[i]["loss"], loss, "float64", factor=F64)
        assert scores[i]["error"] == error


def test_a_member_diverging_while_the_scale_is_held_stops_alone():
    X, y, val = _data(40)
    lrs, l2s = [0.1, 1e30, 0.3], [0.0, 1e-2, 0.1]
    stacked = stack_mlp(WIDE, [0, 1, 2], dtype="float64")
    with np.errstate(all="ignore"):
        history = fit_stack(stacked, X, y, lr=lrs, l2=l2s, epochs=6, batch_size=16, log_every=3, validation=val)
    assert sorted(history.diverged) == [1]
    assert np.all(np.isfinite(stacked.state_dict()["0.weight"]))
    assert not np.any(stacked.member(1).state_dict()["0.weight"])  # the diverged member holds zeros
    for i in (0, 2):
        model = pn.mlp(WIDE, seed=i, dtype="float64")
        pn.fit(model, X, y, optimizer=pn.SGD(lrs[i]), l2=l2s[i], epochs=6, batch_size=16)
        _same_state(stacked.member(i).state_dict(), model.state_dict(), f"member {i}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_interrupt_from_a_callback_leaves_the_members_own_weights(dtype):
    """KeyboardInterrupt raised by a callback mid-fit (the decay held lazily between the steps): the stack holds
    the members' weights of the epochs done, as fit leaves a model it interrupts; it predicts and trains on."""
    X, y, _ = _data(40)
    X = X.astype(dtype)
    lrs, l2s = [0.2, 0.3], [1e-2, 0.1]
    stacked = stack_mlp(WIDE, [0, 1], dtype=dtype)

    def callback(i, record):
        if record["epoch"] == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit_stack(stacked, X, y, lr=lrs, l2=l2s, epochs=6, batch_size=16, callback=callback)
    assert stacked.layers[0]._scale is None
    factor = F64 if dtype == "float64" else 10.0
    for i in range(2):
        model = pn.mlp(WIDE, seed=i, dtype=dtype)
        pn.fit(model, X, y, optimizer=pn.SGD(lrs[i]), l2=l2s[i], epochs=3, batch_size=16)
        assert_state_close(stacked.member(i).state_dict(), model.state_dict(), dtype, factor=factor, err_msg=str(i))
    assert predict_stack(stacked, X).shape == (2, 60)


# -- the joined bias of a narrow first layer -------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "momentum", "plain"])
@pytest.mark.parametrize("bias", [True, False])
def test_a_narrow_first_layer_survives_divergence_freezing_and_a_round_trip_to_another_device(optimizer, bias):
    """Non-fused rules on the joined weight and bias, a member diverging (its parameters replaced by the freeze:
    the joint rebuilt), the stack moved to array_api_strict and back between two fits: every other member is its
    solo fit, and on NumPy the weight and bias are views of one array again."""
    X, y, val = _data()
    make = {"adam": lambda lr: pn.Adam(lr), "momentum": lambda lr: pn.SGD(lr, momentum=0.9),
            "plain": lambda lr: pn.SGD(lr)}[optimizer]
    lrs = [0.01, 1e30, 0.05] if optimizer == "adam" else [0.1, 1e30, 0.05]
    l2s = [0.0, 1e-3, 1e-2]
    if optimizer == "adam":
        lrs[1] = 1e308  # Adam's step is bounded by its lr: only an overflowing one makes NaNs
    stacked = stack_mlp(SIZES, [0, 1, 2], dtype="float64", bias=bias)
    for fit in range(2):
        with np.errstate(all="ignore"):
            history = fit_stack(stacked, X, y, optimizer=make(0.1), lr=lrs, l2=l2s, epochs=3, batch_size=16, seed=fit)
        assert fit == 1 or 1 in history.diverged  # a second fit starts the zeroed member afresh
        if bias and optimizer != "adam":  # Adam's functional rule gives new arrays: the broadcast product then
            assert stacked.layers[0].joint() is not None
        stacked.to("array_api_strict").to("cpu")
        if bias:
            assert stacked.layers[0].joint() is not None
    for i in (0, 2):
        model = pn.mlp(SIZES, seed=i, dtype="float64", bias=bias)
        for fit in range(2):
            pn.fit(model, X, y, optimizer=make(lrs[i]), l2=l2s[i], epochs=3, batch_size=16, seed=fit)
        _same_state(stacked.member(i).state_dict(), model.state_dict(), f"member {i}")


def test_a_stack_of_one_member_is_its_solo_fit():
    X, y, val = _data(40)
    for sizes in (SIZES, WIDE):
        Xs = X[:, :sizes[0]]
        stacked = stack_mlp(sizes, [3], dtype="float64")
        fit_stack(stacked, Xs, y, lr=0.3, l2=0.05, epochs=3, batch_size=16,
                  early_stopping=pn.EarlyStopping("val_loss", patience=1), validation=(val[0][:, :sizes[0]], val[1]))
        model = pn.mlp(sizes, seed=3, dtype="float64")
        pn.fit(model, Xs, y, optimizer=pn.SGD(0.3), l2=0.05, epochs=3, batch_size=16,
               early_stopping=pn.EarlyStopping("val_loss", patience=1), validation=(val[0][:, :sizes[0]], val[1]))
        _same_state(stacked.member(0).state_dict(), model.state_dict(), f"{sizes}")


# -- early stopping, schedules, chunks ------------------------------------------------------------------------------
def test_an_early_stopped_members_optimizer_is_its_solo_fits_at_the_stop():
    X, y, val = _data()
    lrs = [0.01, 0.3]
    stacked = stack_mlp(SIZES, [0, 1], dtype="float64")
    history = fit_stack(stacked, X, y, optimizer=pn.Adam(0.01), lr=lrs, epochs=15, batch_size=16, seed=3,
                        validation=val, early_stopping=pn.EarlyStopping("val_loss", patience=2))
    assert history.stopped and len({len(h) for h in history.histories}) > 1  # they stop at different epochs
    for i in history.stopped:
        model, opt = pn.mlp(SIZES, seed=i, dtype="float64"), pn.Adam(lrs[i])
        pn.fit(model, X, y, optimizer=opt, epochs=15, batch_size=16, seed=3, validation=val,
               early_stopping=pn.EarlyStopping("val_loss", patience=2))
        _same_state(stacked.member(i).state_dict(), model.state_dict(), f"member {i}")
        mine = history.optimizer.member(i)
        assert mine.steps == opt.steps, f"member {i}: {mine.steps} steps, alone {opt.steps}"
        for key in opt.state:
            for a, b in zip(mine.state[key], opt.state[key]):
                assert_close(a, b, "float64", factor=F64, err_msg=f"member {i} {key}")


def test_a_second_fit_stack_with_the_same_schedule_continues_it_as_fit_does():
    X, y, val = _data()
    lrs = [0.5, 2.0]
    stacked = stack_mlp(SIZES, [0, 1], dtype="float64")
    opt = StackedOptimizer(pn.SGD(0.1, momentum=0.5), 2, lr=lrs, momentum=[0.5, 0.5])
    schedule = pn.schedules.ReduceOnPlateau("val_loss", factor=0.5, patience=0)
    for _ in range(2):
        fit_stack(stacked, X, y, optimizer=opt, epochs=4, batch_size=16, seed=3, validation=val, schedule=schedule)
    for i in range(2):
        model, own = pn.mlp(SIZES, seed=i, dtype="float64"), pn.SGD(lrs[i], momentum=0.5)
        solo_schedule = pn.schedules.ReduceOnPlateau("val_loss", factor=0.5, patience=0)
        for _ in range(2):
            pn.fit(model, X, y, optimizer=own, epochs=4, batch_size=16, seed=3, validation=val, schedule=solo_schedule)
        assert opt.schedules[i].state_dict()["scale"] == solo_schedule.state_dict()["scale"]
        _same_state(stacked.member(i).state_dict(), model.state_dict(), f"member {i}")


def test_a_second_fit_stack_continues_momentum_adam_and_a_step_schedule_as_fit_does():
    X, y, val = _data()
    lrs = [0.01, 0.05]
    stacked = stack_mlp(SIZES, [0, 1], dtype="float64", dropout=[0.2, 0.0])
    opt = StackedOptimizer(pn.Adam(0.01), 2, lr=lrs, l2=[0.0, 1e-3])
    for k in range(2):
        fit_stack(stacked, X, y, optimizer=opt, epochs=2 * (k + 1), batch_size=16, seed=3 + k, validation=val,
                  schedule=pn.schedules.CosineWarmup(warmup=1))
    for i in range(2):
        model, own = pn.mlp(SIZES, seed=i, dtype="float64", dropout=[0.2, 0.0][i]), pn.Adam(lrs[i])
        for k in range(2):
            pn.fit(model, X, y, optimizer=own, l2=[0.0, 1e-3][i], epochs=2 * (k + 1), batch_size=16, seed=3 + k,
                   validation=val, schedule=pn.schedules.CosineWarmup(warmup=1))
        assert opt.member(i).steps == own.steps
        assert_state_close(stacked.member(i).state_dict(), model.state_dict(), "float64", factor=F64)


def test_a_stacked_optimizer_follows_its_stack_to_another_device():
    X, y, _ = _data()
    lrs, momenta = [0.1, 0.2], [0.9, 0.5]
    stacked = stack_mlp(SIZES, [0, 1], dtype="float64")
    opt = StackedOptimizer(pn.SGD(0.1, momentum=0.9), 2, lr=lrs, momentum=momenta)
    fit_stack(stacked, X, y, optimizer=opt, epochs=2, batch_size=16)
    fit_stack(stacked, X, y, optimizer=opt, epochs=2, batch_size=16, device="array_api_strict")
    for i in range(2):
        model, own = pn.mlp(SIZES, seed=i, dtype="float64"), pn.SGD(lrs[i], momentum=momenta[i])
        pn.fit(model, X, y, optimizer=own, epochs=2, batch_size=16)
        pn.fit(model, X, y, optimizer=own, epochs=2, batch_size=16, device="array_api_strict")
        _same_state(stacked.member(i, device="cpu").state_dict(), model.to("cpu").state_dict(), f"member {i}")


def test_a_restored_members_dropout_counter_is_its_best_epochs_so_it_trains_on_as_fit_does():
    X, y, val = _data()
    lrs = [0.5, 3.0]
    result = sw.sweep(X, y, grid(lr=lrs, dropout=0.3, hidden=[(8,)]), epochs=12, batch_size=16, validation=val,
                      dtype="float64", early_stopping=pn.EarlyStopping("val_loss", patience=2))
    assert result.restored
    for i, lr in enumerate(lrs):
        model = pn.mlp(SIZES, seed=0, dtype="float64", dropout=0.3)
        pn.fit(model, X, y, optimizer=pn.SGD(lr), epochs=12, batch_size=16, seed=0, validation=val,
               early_stopping=pn.EarlyStopping("val_loss", patience=2))
        mine = result.model(i)
        _same_state(mine.state_dict(), model.state_dict(), f"member {i}")
        for m in (mine, model):  # both train on: the same masks, the same weights
            pn.fit(m, X, y, optimizer=pn.SGD(lr), epochs=2, batch_size=16, seed=5)
        assert_state_close(mine.state_dict(), model.state_dict(), "float64", factor=F64, err_msg=f"member {i}")


def test_a_stopped_members_batchnorm_statistics_do_not_move_after_its_stop():
    X, y, val = _data()
    stacked = stack_mlp(SIZES, [0, 1, 2], dtype="float64", norm="batch")
    seen = []
    history = fit_stack(stacked, X, y, lr=[0.5, 3.0, 0.05], epochs=10, batch_size=16, validation=val,
                        early_stopping=pn.EarlyStopping("val_error", patience=2, restore_best=False),
                        on_read=lambda e, h: seen.extend((e, i, stacked.member(i).state_dict()) for i in h.stopped))
    assert seen and history.stopped
    for epoch, i, state in seen:
        _same_state(state, stacked.member(i).state_dict(), f"member {i} at epoch {epoch}")


def test_early_stopping_and_divergence_in_one_stack_each_stop_their_member_alone():
    X, y, val = _data()
    lrs = [0.5, 1e30, 3.0, 0.05]
    stacked = stack_mlp(SIZES, [0, 1, 2, 3], dtype="float64", dropout=[0.0, 0.2, 0.0, 0.2])
    reads = []
    with np.errstate(all="ignore"):
        history = fit_stack(stacked, X, y, lr=lrs, momentum=0.5, optimizer=pn.SGD(0.1, momentum=0.5), epochs=12,
                            batch_size=16, seed=3, validation=val,
                            early_stopping=pn.EarlyStopping("val_loss", patience=2),
                            schedule=pn.schedules.ReduceOnPlateau("val_loss", factor=0.5, patience=1),
                            on_read=lambda e, h: reads.append((e, sorted(h.stopped), sorted(h.diverged))))
    assert sorted(history.diverged) == [1] and 1 not in history.stopped
    assert not np.any(stacked.member(1).state_dict()["0.weight"])  # zeros, never the best weights before the NaNs
    assert history.stopped and reads[-1][1] == sorted(history.stopped) and reads[-1][2] == [1]
    for i in (0, 2, 3):
        model = pn.mlp(SIZES, seed=i, dtype="float64", dropout=[0.0, 0.2, 0.0, 0.2][i])
        solo = pn.fit(model, X, y, optimizer=pn.SGD(lrs[i], momentum=0.5), epochs=12, batch_size=16, seed=3,
                      validation=val, early_stopping=pn.EarlyStopping("val_loss", patience=2),
                      schedule=pn.schedules.ReduceOnPlateau("val_loss", factor=0.5, patience=1))
        assert len(history[i]) == len(solo) and (i in history.stopped) == (len(solo) < 12)
        _same_state(stacked.member(i).state_dict(), model.state_dict(), f"member {i}")


def test_training_ends_when_every_member_has_stopped_and_on_read_sees_each_stop():
    X, y, val = _data()
    stacked = stack_mlp(SIZES, [0, 1], dtype="float64")
    steps, forward = [], stacked.forward
    stacked.forward = lambda x: (steps.append(x.shape[-2]) if stacked.training else None) or forward(x)
    reads = []
    history = fit_stack(stacked, X, y, lr=[3.0, 2.0], epochs=200, batch_size=16, validation=val,
                        early_stopping=pn.EarlyStopping("val_loss", patience=1),
                        on_read=lambda e, h: reads.append((e, sorted(h.stopped))))
    assert sorted(history.stopped) == [0, 1]
    last = max(info["epoch"] for info in history.stopped.values())
    assert len(steps) == 4 * last and reads[-1] == (last, [0, 1]) and len(reads) == last


def test_chunks_with_early_stopping_and_a_plateau_schedule_train_as_one_stack(monkeypatch):
    X, y, val = _data()
    members = grid(lr=[0.5, 3.0, 0.05], dropout=[0.0, 0.2], hidden=[(8,)])
    kw = dict(epochs=10, batch_size=16, validation=val, dtype="float64", optimizer="sgd",
              early_stopping=pn.EarlyStopping("val_loss", patience=2),
              schedule=pn.schedules.ReduceOnPlateau("val_loss", factor=0.5, patience=0))
    whole = sw.sweep(X, y, members, **kw)
    _, per, shared = sw.stack_memory([5, 8, 3], 1, 8, 60, 16, 0)
    monkeypatch.setattr(sw, "memory_limit", lambda device: (int(shared + 2.5 * per), "this test's memory"))
    chunked = sw.sweep(X, y, members, chunk=True, **kw)
    assert [g[0] for g in chunked.groups] == [[0, 1], [2, 3], [4, 5]]
    assert chunked.restored == whole.restored and sorted(chunked.stopped) == sorted(whole.stopped)
    for i in range(len(members)):
        assert len(chunked.histories[i]) == len(whole.histories[i])
        for r, c in zip(whole.histories[i].records, chunked.histories[i].records):
            for field in ("loss", "error", "val_loss", "val_error"):
                assert_close(c[field], r[field], "float64", factor=F64, err_msg=f"member {i} {field}")
        _same_state(chunked.model(i).state_dict(), whole.model(i).state_dict(), f"member {i}")
        assert_close(chunked.final(i, "val_loss"), whole.final(i, "val_loss"), "float64", factor=F64)


# -- JAX ---------------------------------------------------------------------------------------------------------
def test_jax_a_stack_with_dropout_batchnorm_a_plateau_and_early_stopping_is_each_members_solo_fit():
    pytest.importorskip("jax")
    X, y, val = _data()
    lrs, drops = [0.5, 3.0, 0.05], [0.2, 0.0, 0.3]
    stacked = stack_mlp(SIZES, [0, 1, 2], dtype="float64", dropout=drops, norm="batch").to("jax:cpu")

    def controls():
        return dict(early_stopping=pn.EarlyStopping("val_loss", patience=2),
                    schedule=pn.schedules.ReduceOnPlateau("val_loss", factor=0.5, patience=1))
    history = fit_stack(stacked, X, y, optimizer=pn.SGD(0.1, momentum=0.5), lr=lrs, momentum=0.5, epochs=7,
                        batch_size=16, seed=3, validation=val, **controls())  # 60 rows: a last minibatch of 12
    assert history.stopped
    for i in range(3):
        model = pn.mlp(SIZES, seed=i, dtype="float64", dropout=drops[i], norm="batch")
        solo = pn.fit(model, X, y, optimizer=pn.SGD(lrs[i], momentum=0.5), epochs=7, batch_size=16, seed=3,
                      validation=val, device="jax:cpu", **controls())
        assert len(history[i]) == len(solo)
        for record, solo_record in zip(history[i].records, solo.records):
            assert_close(record["val_loss"], solo_record["val_loss"], "float64", factor=F64)
        _same_state(stacked.member(i, device="cpu").state_dict(), model.to("cpu").state_dict(), f"member {i}")


# -- the command line --------------------------------------------------------------------------------------------
def test_cli_a_saved_member_with_batchnorm_a_plateau_and_early_stopping_resumes_as_trains_own(capsys, tmp_path):
    """portablenn sweep --norm batch --schedule plateau --early-stopping --save-all, and portablenn train of each
    member's settings: the same weights and epoch; train --resume of both continues to the same weights (the
    stack's shared num_batches_tracked aside)."""
    controls = ("--norm", "batch", "--schedule", "plateau", "--plateau-patience", "1", "--factor", "0.5",
                "--early-stopping", "--patience", "3", "--batch-size", "64", "--momentum", "0.9", "--dtype", "float64",
                "--l2", "1e-3", "--seed", "0")
    code, out, err = _cli(capsys, "sweep", "--epochs", "12", "--quiet", "--lr", "0.2,2", "--save-all",
                          str(tmp_path / "all"), *controls)
    assert code == 0, err
    for k, lr in enumerate(["0.2", "2"]):
        alone, mine = tmp_path / f"alone{k}.safetensors", tmp_path / "all" / f"member-{k}.safetensors"
        code, _, err = _cli(capsys, "train", "--epochs", "12", "--quiet", "--lr", lr, "--val-fraction", "0.2",
                            "--save", str(alone), *controls)
        assert code == 0, err
        assert (pn.checkpoint.load_checkpoint(mine).metadata["epoch"]
                == pn.checkpoint.load_checkpoint(alone).metadata["epoch"])
        _same_state(pn.load(mine).state_dict(), pn.load(alone).state_dict(), f"member {k}")
        for path in (mine, alone):
            code, _, err = _cli(capsys, "train", "--resume", str(path), "--epochs", "16", "--quiet")
            assert code == 0, err
        _same_state(pn.load(mine).state_dict(), pn.load(alone).state_dict(), f"member {k} resumed")


def test_cli_a_saved_member_with_dropout_and_early_stopping_is_trains_checkpoint_counters_included(capsys, tmp_path):
    controls = ("--dropout", "0.2", "--norm", "batch", "--early-stopping", "--patience", "3", "--batch-size", "64",
                "--dtype", "float64", "--seed", "0")
    code, out, err = _cli(capsys, "sweep", "--epochs", "12", "--quiet", "--lr", "0.2,4", "--save-all",
                          str(tmp_path / "all"), *controls)
    assert code == 0, err
    assert "stopped: lr=4 after epoch" in out
    for k, lr in enumerate(["0.2", "4"]):
        alone, mine = tmp_path / f"alone{k}.safetensors", tmp_path / "all" / f"member-{k}.safetensors"
        code, _, err = _cli(capsys, "train", "--epochs", "12", "--quiet", "--lr", lr, "--val-fraction", "0.2",
                            "--save", str(alone), *controls)
        assert code == 0, err
        ours, theirs = pn.load(mine).state_dict(), pn.load(alone).state_dict()
        _same_state(ours, theirs, f"member {k}")
        for key in theirs:
            if key.endswith(("counter", "num_batches_tracked")):
                assert int(ours[key]) == int(theirs[key]), f"member {k} {key}: {ours[key]}, train's {theirs[key]}"


@pytest.mark.parametrize("argv, words", [
    (("--patience", "3"), ("--patience", "--early-stopping")),
    (("--min-delta", "0.1"), ("--min-delta", "--early-stopping")),
    (("--warmup", "1"), ("--warmup", "cosine")),
    (("--factor", "0.5"), ("--factor", "plateau")),
    (("--step-size", "2"), ("--step-size", "step")),
    (("--schedule", "cosine", "--warmup", "100"), ("--warmup",)),
    (("--early-stopping", "--monitor", "val_r2"), ("--monitor val_r2",)),
    (("--norm", "batch", "--batch-size", "239"), ("BatchNorm1d", "1 row")),  # 240 rows: a last minibatch of 1
    (("--norm", "batch", "--batch-size", "1"), ("BatchNorm1d", "1 row")),
    (("--clip-grad", "0"), ("--clip-grad",)),
])
def test_cli_contradictory_controls_are_one_clear_line_and_exit_code_2(capsys, argv, words):
    code, out, err = _cli(capsys, "sweep", "--epochs", "2", "--quiet", "--lr", "0.5,1", *argv)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("portablenn: error:") and "Traceback" not in err, err
    for word in words:
        assert word in err, err
