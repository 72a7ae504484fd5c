"""Sweeps trained as one stack (portablenn.sweep): every member trains as ``fit`` trains it alone, a diverged
member stops alone, memory refusals and chunks, predictions of members and of the ensemble."""
import json
import math

import numpy as np
import pytest

import portablenn as pn
from _support import classification_data, cli_run as _cli, fit_with_snapshots, require_dtype, table_rows as _table
from _tolerances import assert_close, assert_state_close
from portablenn import stack_fit
from portablenn import sweep as sw
from portablenn.sweep import StackedOptimizer, fit_stack, grid, stack_mlp

SIZES = [5, 8, 3]
FIELDS = ("loss", "error", "val_loss", "val_error")
# float64: the "about 1e-12 relative"; float32: the dtype's tolerance
FACTOR = {"float64": 1e-2, "float32": 10.0}

# name -> (optimizer template, its per-member settings, the solo optimizer of member i, extra fit options)
CASES = {
    "sgd": (pn.SGD(0.1, momentum=0.5), dict(lr=[0.05, 0.2, 0.1], l2=[0.0, 1e-2, 1e-3], momentum=[0.0, 0.9, 0.5]),
            lambda s: pn.SGD(s["lr"], momentum=s["momentum"]), dict(batch_size=16)),
    "nesterov": (pn.SGD(0.1, momentum=0.5, nesterov=True), dict(lr=[0.05, 0.2, 0.1], momentum=[0.3, 0.9, 0.5]),
                 lambda s: pn.SGD(s["lr"], momentum=s["momentum"], nesterov=True), dict(batch_size=16)),
    "full_batch": (pn.SGD(0.5), dict(lr=[0.5, 1.0, 0.25], l2=[1e-3, 0.0, 1e-2]),
                   lambda s: pn.SGD(s["lr"]), dict(batch_size=None)),
    "adam": (pn.Adam(1e-2), dict(lr=[1e-2, 3e-2, 1e-3], l2=[0.0, 1e-3, 0.0]),
             lambda s: pn.Adam(s["lr"]), dict(batch_size=20)),
    "adamw": (pn.AdamW(1e-2), dict(lr=[1e-2, 3e-2, 1e-3], weight_decay=[0.0, 0.1, 0.01], l2=[1e-3, 0.0, 0.0]),
              lambda s: pn.AdamW(s["lr"], weight_decay=s["weight_decay"]), dict(batch_size=20)),
    "own_orders": (pn.SGD(0.1), dict(lr=[0.05, 0.2, 0.1]), lambda s: pn.SGD(s["lr"]),
                   dict(batch_size=16, member_seeds=[7, 8, 9])),
}
SEEDS = [0, 1, 2]
DROPOUT = [0.0, 0.3, 0.0]


def _data(dtype):
    X, y = classification_data(n=60, features=5, classes=3, seed=4)
    Xv, yv = classification_data(n=25, features=5, classes=3, seed=5)
    return X.astype(dtype), y, (Xv.astype(dtype), yv)


def _settings(case, i):
    _, per_member, _, _ = CASES[case]
    return {key: values[i] for key, values in per_member.items()}


def _solo(case, i, device, dtype, X, y, val, epochs, dropout=DROPOUT):
    template, per_member, make, extra = CASES[case]
    s = _settings(case, i)
    model = pn.mlp(SIZES, seed=SEEDS[i], dtype=dtype, dropout=dropout[i])
    order = extra.get("member_seeds", [3] * 3)[i]
    options = {k: v for k, v in extra.items() if k != "member_seeds"}
    return model, fit_with_snapshots(model, X, y, optimizer=make(s), l2=s.get("l2", 0.0), epochs=epochs,
                                     seed=order, device=device, validation=val, **options)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_member_trains_as_fit_trains_it_alone(device, dtype, case):
    """Step by step (after every epoch; full batch: every step) each member's records and weights are its solo
    fit's, from the same initial weights and minibatch order."""
    require_dtype(device, dtype)
    X, y, val = _data(dtype)
    template, per_member, _, extra = CASES[case]
    epochs = 4
    stacked = stack_mlp(SIZES, SEEDS, dtype=dtype, dropout=DROPOUT).to(device)
    snapshots = {i: [] for i in range(3)}

    def callback(i, record):
        snapshots[i].append((dict(record), stacked.member(i).state_dict()))
    history = fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=epochs, seed=3, validation=val,
                        callback=callback, **extra)
    assert not history.diverged
    for i in range(3):
        _, (solo_history, states, records) = _solo(case, i, device, dtype, X, y, val, epochs)
        assert len(history[i]) == len(solo_history) == epochs
        for epoch, ((record, state), solo_record, solo_state) in enumerate(zip(snapshots[i], records, states), 1):
            for field in FIELDS:
                assert_close(record[field], solo_record[field], dtype, factor=FACTOR[dtype],
                             err_msg=f"member {i} epoch {epoch} {field}")
            for key in solo_state:
                assert_close(state[key], solo_state[key], dtype, factor=FACTOR[dtype],
                             err_msg=f"member {i} epoch {epoch} {key}")
        assert history[i].records == [r for r, _ in snapshots[i]]


@pytest.mark.parametrize("kernels", ["fast", "generic"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wide_first_layer_side_by_side_trains_as_fit(case, kernels):
    """40 inputs: on NumPy's kernels the first weight lies (in, M, out) and every member's product and update is
    one GEMM (the hidden layer's ReLU in place, its arrays reused from step to step); each member still trains
    as its solo fit, epoch by epoch, float64, and the layout survives every update rule (generic kernels: the twin).
    """
    device = pn.device("numpy", kernels=kernels)
    sizes = [40, 8, 3]
    X, y = classification_data(n=60, features=40, classes=3, seed=4)
    Xv, yv = classification_data(n=25, features=40, classes=3, seed=5)
    template, per_member, make, extra = CASES[case]
    per_member = {**per_member, "l2": [1e-3, 1e-2, 0.0]} if case != "adamw" else per_member
    stacked = stack_mlp(sizes, SEEDS, dtype="float64").to(device)
    snapshots = {i: [] for i in range(3)}
    history = fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=3, seed=3, validation=(Xv, yv),
                        callback=lambda i, r: snapshots[i].append((dict(r), stacked.member(i).state_dict())), **extra)
    assert not history.diverged
    first = stacked.layers[0]
    assert (first.side_by_side(first.params["weight"]) is not None) == (kernels == "fast")
    for i in range(3):
        s = {key: values[i] for key, values in per_member.items()}
        model = pn.mlp(sizes, seed=SEEDS[i], dtype="float64")
        order = extra.get("member_seeds", [3] * 3)[i]
        _, states, records = fit_with_snapshots(model, X, y, optimizer=make(s), l2=s.get("l2", 0.0), epochs=3,
                                                seed=order, device=device, validation=(Xv, yv),
                                                **{k: v for k, v in extra.items() if k != "member_seeds"})
        for epoch, ((record, state), solo_record, solo_state) in enumerate(zip(snapshots[i], records, states), 1):
            for field in FIELDS:
                assert_close(record[field], solo_record[field], "float64", factor=FACTOR["float64"],
                             err_msg=f"member {i} epoch {epoch} {field}")
            assert_state_close(state, solo_state, "float64", factor=FACTOR["float64"], err_msg=f"member {i}")


# name -> (optimizer, per-member settings, solo optimizer of member i, fit options made fresh per fit, epochs)
READERS = {
    "cosine": (pn.SGD(0.1, momentum=0.5), dict(lr=[0.05, 0.2, 0.1], l2=[0.0, 1e-2, 1e-3], momentum=[0.0, 0.9, 0.5]),
               lambda s: pn.SGD(s["lr"], momentum=s["momentum"]),
               lambda: dict(schedule=pn.schedules.CosineWarmup(warmup=1, min_factor=0.1)), 4),
    "step_fused": (pn.SGD(0.1), dict(lr=[0.05, 0.2, 0.1], l2=[1e-3, 1e-2, 0.0]), lambda s: pn.SGD(s["lr"]),
                   lambda: dict(schedule=pn.schedules.StepDecay(1, gamma=0.5)), 3),
    "plateau": (pn.SGD(0.1), dict(lr=[0.5, 2.0, 0.1], l2=[1e-3, 0.0, 1e-2]), lambda s: pn.SGD(s["lr"]),
                lambda: dict(schedule=pn.schedules.ReduceOnPlateau(monitor="val_loss", factor=0.5, patience=1)), 8),
    "adaptive": (pn.SGD(0.1), dict(lr=[0.05, 0.2, 0.1]), lambda s: pn.SGD(s["lr"]),
                 lambda: dict(schedule=pn.schedules.Adaptive(monitor="loss", tol=10.0, n_iter_no_change=1)), 25),
    "clip_sgd": (pn.SGD(0.1), dict(lr=[0.5, 2.0, 0.1], l2=[1e-3, 0.0, 1e-2]), lambda s: pn.SGD(s["lr"]),
                 lambda: dict(clip_norm=0.1), 3),
    "clip_adam": (pn.Adam(1e-2), dict(lr=[1e-2, 3e-2, 1e-3], l2=[0.0, 1e-3, 0.0]), lambda s: pn.Adam(s["lr"]),
                  lambda: dict(clip_norm=0.05), 3),
    "early": (pn.SGD(0.1, momentum=0.5), dict(lr=[0.5, 3.0, 0.05], momentum=[0.9, 0.9, 0.0]),
              lambda s: pn.SGD(s["lr"], momentum=s["momentum"]),
              lambda: dict(early_stopping=pn.EarlyStopping(monitor="val_loss", patience=2)), 15),
    "early_kept": (pn.SGD(0.1), dict(lr=[0.5, 3.0, 0.05]), lambda s: pn.SGD(s["lr"]),
                   lambda: dict(early_stopping=pn.EarlyStopping(monitor="val_error", patience=2, restore_best=False),
                                schedule=pn.schedules.StepDecay(3, gamma=0.5)), 15),
}


def _no_counters(state):
    """A state dict without Dropout's mask counters (a stack's is shared: a member stopped early keeps counting)."""
    return {k: v for k, v in state.items() if not k.endswith("counter")}


@pytest.mark.parametrize("case", sorted(READERS))
def test_schedules_clipping_and_early_stopping_act_per_member_as_in_fit(device, case):
    """A schedule, gradient clipping and early stopping in a stack: each member gets its own (a metric-reading
    schedule reads the member's figures, early stopping stops the member alone and restores its best epoch), and
    every member's records, their number (where it stopped) and its final weights are its solo fit's (float64)."""
    require_dtype(device, "float64")
    X, y, val = _data("float64")
    template, per_member, make, options, epochs = READERS[case]
    stacked = stack_mlp(SIZES, SEEDS, dtype="float64", dropout=[0.0, 0.2, 0.0]).to(device)
    after_stop = []  # a stopped member's weights at the reads after its stop: frozen, never zeroed

    def on_read(epoch, history):
        after_stop.extend((i, _no_counters(stacked.member(i).state_dict())) for i in history.stopped)
    history = fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=epochs, seed=3, validation=val,
                        batch_size=16, on_read=on_read, **options())
    assert not history.diverged
    if case == "early_kept":  # without restore_best, a stopped member's weights at the stop are its final ones
        assert after_stop
        for i, state in after_stop:
            assert_state_close(state, _no_counters(stacked.member(i).state_dict()), "float64", factor=0.0,
                               err_msg=f"member {i}")
    lengths = set()
    for i in range(3):
        s = {key: values[i] for key, values in per_member.items()}
        model = pn.mlp(SIZES, seed=SEEDS[i], dtype="float64", dropout=[0.0, 0.2, 0.0][i])
        solo = pn.fit(model, X, y, optimizer=make(s), l2=s.get("l2", 0.0), epochs=epochs, seed=3, device=device,
                      validation=val, batch_size=16, **options())
        assert len(history[i]) == len(solo), f"member {i} stopped after {len(history[i])} epochs, alone {len(solo)}"
        lengths.add(len(solo))
        assert (i in history.stopped) == (len(solo) < epochs)
        for epoch, (record, solo_record) in enumerate(zip(history[i].records, solo.records), 1):
            for field in FIELDS:
                assert_close(record[field], solo_record[field], "float64", factor=FACTOR["float64"],
                             err_msg=f"member {i} epoch {epoch} {field}")
        assert_state_close(_no_counters(stacked.member(i).state_dict()), _no_counters(model.state_dict()),
                           "float64", factor=FACTOR["float64"], err_msg=f"member {i}")
    if case.startswith(("early", "adaptive")):
        assert len(lengths) > 1, f"the members should stop at different epochs: {lengths}"


def test_no_host_sync_inside_a_stacks_training_loop(monkeypatch):
    """On a stand-in accelerator, reads to the host do not grow with the steps (one transfer per read of the
    metrics), with every control the stack takes; never an implicit scalar read of a device array."""
    from test_train import _SyncCounter

    dev = pn.device("array_api_strict:device1")
    X, y = classification_data(n=40, features=5, classes=3)
    Xv, yv = classification_data(n=10, features=5, classes=3, seed=1)
    counter = _SyncCounter(monkeypatch)

    def run(batch_size, epochs, log_every, optimizer=None, **kw):
        stacked = stack_mlp(SIZES, SEEDS, dropout=DROPOUT).to(dev)
        return counter.during(lambda: fit_stack(stacked, X, y, optimizer=optimizer or pn.SGD(0.1),
                                                lr=[0.05, 0.1, 0.2], l2=[0.0, 1e-3, 1e-2], epochs=epochs,
                                                batch_size=batch_size, log_every=log_every, **kw))

    ten, forty = run(4, 1, 1), run(1, 1, 1)
    assert ten == forty and ten[1] == 0
    constant = ten[0]
    assert run(4, 5, 5) == (constant, 0)
    assert run(4, 5, 5, validation=(Xv, yv)) == (constant, 0)
    assert run(4, 5, 5, optimizer=pn.Adam(0.01), validation=(Xv, yv)) == (constant, 0)
    assert run(4, 5, 5, optimizer=pn.SGD(0.1, momentum=0.9), clip_norm=0.1) == (constant, 0)
    assert run(4, 5, 5, schedule=pn.schedules.CosineWarmup(warmup=1)) == (constant, 0)
    assert run(4, 5, 1) == (constant - 1 + 5, 0)  # one read per epoch
    reads = run(4, 5, 1, validation=(Xv, yv), early_stopping=pn.EarlyStopping("val_loss", patience=10),
                schedule=pn.schedules.ReduceOnPlateau("val_loss", patience=1))
    assert reads == (constant - 1 + 5, 0)


def test_a_stack_on_jax_trains_through_one_compiled_step(monkeypatch):
    """Immutable arrays (JAX): the stack's minibatch step is one pure function, compiled once for the full
    minibatches and once for a partial last one (its calls count the traces), and every member still equals its
    solo fit (the device-parametrised tests above run jax:cpu through it too)."""
    pytest.importorskip("jax")
    calls = []
    original = stack_fit._StackStep.__call__
    monkeypatch.setattr(stack_fit._StackStep, "__call__",
                        lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    X, y, val = _data("float64")
    stacked = stack_mlp(SIZES, SEEDS, dtype="float64").to("jax:cpu")
    history = fit_stack(stacked, X, y, optimizer=pn.Adam(1e-2), lr=[1e-2, 3e-2, 1e-3], epochs=3, batch_size=16,
                        validation=val, schedule=pn.schedules.CosineWarmup(warmup=1))
    assert len(calls) == 2  # 60 rows: 3 minibatches of 16 and one of 12, 3 epochs: 12 steps, 2 traces
    for i, lr in enumerate([1e-2, 3e-2, 1e-3]):
        model = pn.mlp(SIZES, seed=SEEDS[i], dtype="float64")
        solo = pn.fit(model, X, y, optimizer=pn.Adam(lr), epochs=3, batch_size=16, validation=val, seed=0,
                      schedule=pn.schedules.CosineWarmup(warmup=1))
        for record, solo_record in zip(history[i].records, solo.records):
            assert_close(record["loss"], solo_record["loss"], "float64", factor=FACTOR["float64"])
        assert_state_close(stacked.member(i, device="cpu").state_dict(), model.state_dict(), "float64",
                           factor=FACTOR["float64"], err_msg=f"member {i}")


def test_a_narrow_first_layer_holds_its_bias_as_the_weights_last_row_on_numpy():
    """Fewer inputs than NumPy's side-by-side threshold (the spiral's 2): weight and bias are views of one
    (M, in + 1, out) array, so [x, 1] @ joint is the product with the bias and one GEMM gives both gradients;
    the fused step updates it in place (the members' training equals fit's: the tests above). The generic
    kernels keep the two arrays (the twin)."""
    X, y, _ = _data("float64")
    stacked = stack_mlp(SIZES, SEEDS, dtype="float64").to("cpu")
    first = stacked.layers[0]
    joint = first.joint()
    assert joint is not None and joint.shape == (3, SIZES[0] + 1, SIZES[1])
    assert np.shares_memory(first.params["weight"], joint) and np.shares_memory(first.params["bias"], joint)
    fit_stack(stacked, X, y, lr=[0.05, 0.2, 0.1], l2=[0.0, 1e-2, 1e-3], epochs=2, batch_size=16)
    assert first.joint() is joint
    fit_stack(stacked, X, y, optimizer=pn.Adam(1e-2), epochs=1, batch_size=16)  # a rule that makes new arrays
    assert first.joint() is not None  # joined again after every step
    generic = stack_mlp(SIZES, SEEDS, dtype="float64").to(pn.device("numpy", kernels="generic"))
    assert generic.layers[0].joint() is None


def test_a_decay_held_as_a_scale_is_folded_back_before_it_underflows():
    """A side-by-side first layer whose members decay by different factors holds W = scale * V during the fused
    SGD step (StackedLinear.decay_lazily). With lr l2 = 0.5 the scale halves every step: float32 would reach 0
    after ~150 steps; folded into the weight past 2**-20, 200 full-batch steps still train as fit does."""
    X, y = classification_data(n=60, features=40, classes=3, seed=4)
    X = X.astype("float32")
    sizes, lrs, l2s = [40, 8, 3], [1.0, 1.0, 0.5], [0.5, 0.25, 0.0]
    stacked = stack_mlp(sizes, SEEDS, dtype="float32").to("cpu")
    history = fit_stack(stacked, X, y, lr=lrs, l2=l2s, epochs=200, batch_size=None, log_every=200)
    assert not history.diverged
    first = stacked.layers[0]
    assert first.side_by_side(first.params["weight"]) is not None and first._scale is None
    for i in range(3):
        model = pn.mlp(sizes, seed=SEEDS[i], dtype="float32")
        solo = pn.fit(model, X, y, optimizer=pn.SGD(lrs[i]), l2=l2s[i], epochs=200, batch_size=None, log_every=200)
        assert_close(history[i].records[-1]["loss"], solo.records[-1]["loss"], "float32", factor=FACTOR["float32"])
        assert_state_close(stacked.member(i).state_dict(), model.state_dict(), "float32", factor=FACTOR["float32"],
                           err_msg=f"member {i}")


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_other_losses_train_member_by_member_as_fit(loss):
    """Losses without a stacked formula run member by member through their own value_and_grad."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((40, 5))
    y = (X @ rng.standard_normal((5, 2)) > 0).astype(np.float64) if loss != "mse" else X @ rng.standard_normal((5, 2))
    sizes = [5, 6, 2]
    stacked = stack_mlp(sizes, [0, 1], dtype="float64")
    history = fit_stack(stacked, X, y, loss=loss, lr=[0.05, 0.1], l2=[0.0, 1e-3], epochs=3, batch_size=16,
                        validation=(X[:10], y[:10]))
    for i, (lr, l2) in enumerate(((0.05, 0.0), (0.1, 1e-3))):
        model = pn.mlp(sizes, seed=i, dtype="float64")
        solo = pn.fit(model, X, y, loss=loss, optimizer=pn.SGD(lr), l2=l2, epochs=3, batch_size=16,
                      validation=(X[:10], y[:10]))
        for record, solo_record in zip(history[i].records, solo.records):
            for field in solo_record:
                if field not in ("epoch", "seconds"):
                    assert_close(record[field], solo_record[field], "float64", factor=FACTOR["float64"], err_msg=field)
        for key, value in model.state_dict().items():
            assert_close(stacked.member(i).state_dict()[key], value, "float64", factor=FACTOR["float64"])


def test_the_optimizer_state_of_a_member_is_its_solo_fits(device):
    require_dtype(device, "float64")
    X, y, val = _data("float64")
    for case in ("sgd", "adamw"):
        template, per_member, _, extra = CASES[case]
        stacked = stack_mlp(SIZES, SEEDS, dtype="float64", dropout=DROPOUT).to(device)
        history = fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=2, seed=3, **extra)
        for i in range(3):
            model = pn.mlp(SIZES, seed=SEEDS[i], dtype="float64", dropout=DROPOUT[i])
            solo = CASES[case][2](_settings(case, i))
            pn.fit(model, X, y, optimizer=solo, l2=_settings(case, i).get("l2", 0.0), epochs=2, seed=3,
                   device=device, **{k: v for k, v in extra.items() if k != "member_seeds"})
            mine = history.optimizer.member(i)
            assert type(mine) is type(solo) and mine.steps == solo.steps and mine.to_config() == solo.to_config()
            filled = {key for key, buffers in solo.state.items() if buffers}  # plain SGD keeps none
            assert sorted(mine.state) == sorted(filled)
            for key in filled:
                for a, b in zip(mine.state[key], solo.state[key]):
                    assert_close(a, device.to_numpy(b), "float64", factor=FACTOR["float64"], err_msg=f"{case} {key}")


@pytest.mark.parametrize("case", ["sgd", "nesterov", "full_batch"])
def test_in_place_and_functional_updates_agree_bit_for_bit(monkeypatch, case):
    """Where arrays cannot change in place (JAX), the stack updates through new arrays: the same numbers as in
    place (on the generic kernels: NumPy's fast ones fold plain SGD into the GEMMs, equal to rounding)."""
    X, y, val = _data("float64")
    dev = pn.device("numpy", kernels="generic")
    results = []
    for mutable in (True, False):
        monkeypatch.setattr(dev.backend, "mutable", mutable)
        stacked = stack_mlp(SIZES, SEEDS, dtype="float64", dropout=DROPOUT).to(dev)
        template, per_member, _, extra = CASES[case]
        per_member = {**per_member, "l2": [0.0, 1e-3, 1e-2]}
        fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=3, **extra)
        results.append(stacked.state_dict())
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_a_diverging_member_stops_alone_and_is_named(device):
    require_dtype(device, "float64")
    X, y, val = _data("float64")
    stacked = stack_mlp(SIZES, SEEDS, dtype="float64").to(device)
    lrs = [0.1, 1e30, 0.3]
    with np.errstate(all="ignore"):
        history = fit_stack(stacked, X, y, lr=lrs, epochs=6, batch_size=20, seed=3, validation=val, log_every=2,
                            names=["calm", "wild", "brisk"])
    assert sorted(history.diverged) == [1]
    bad = history.diverged[1]
    assert bad["message"].startswith("wild: the training loss became") and "1e+30" in bad["message"]
    assert len(history[1]) == bad["epoch"] - 1 and len(history[0]) == len(history[2]) == 6
    for i in (0, 2):  # the others are their solo fits, untouched by the NaNs beside them
        model = pn.mlp(SIZES, seed=SEEDS[i], dtype="float64")
        solo = pn.fit(model, X, y, optimizer=pn.SGD(lrs[i]), epochs=6, batch_size=20, seed=3, validation=val,
                      device=device)
        for record, solo_record in zip(history[i].records, solo.records):
            for field in FIELDS:
                assert_close(record[field], solo_record[field], "float64", factor=FACTOR["float64"])
        member = stacked.member(i).state_dict()
        for key, value in model.state_dict().items():
            assert_close(member[key], value, "float64", factor=FACTOR["float64"], err_msg=key)
    with np.errstate(all="ignore"), pytest.raises(pn.DivergenceError):  # what the member does alone
        pn.fit(pn.mlp(SIZES, seed=1, dtype="float64"), X, y, optimizer=pn.SGD(1e30), epochs=6, batch_size=20,
               seed=3, device=device)
    assert np.all(np.isfinite(stacked.state_dict()["0.weight"]))  # the stopped member holds zeros, not NaNs


def test_training_stops_when_every_member_has_diverged():
    X, y, _ = _data("float64")
    stacked = stack_mlp(SIZES, [0, 1], dtype="float64")
    steps, forward = [], stacked.forward
    stacked.forward = lambda x: steps.append(1) or forward(x)
    with np.errstate(all="ignore"):
        history = fit_stack(stacked, X, y, lr=[1e30, 1e31], epochs=50, batch_size=None)
    assert sorted(history.diverged) == [0, 1]
    assert len(steps) == max(d["epoch"] for d in history.diverged.values()) < 50


def test_predictions_of_members_and_of_the_ensemble(device):
    X, y, val = _data("float32")
    stacked = stack_mlp(SIZES, SEEDS, dropout=0.2).to(device)
    fit_stack(stacked, X, y, lr=[0.1, 0.2, 0.3], epochs=2, batch_size=20)
    probabilities = sw.predict_proba_stack(stacked, val[0])
    labels = sw.predict_stack(stacked, val[0])
    assert probabilities.shape == (3, 25, 3) and labels.shape == (3, 25) and labels.dtype == np.int64
    for i in range(3):
        model = stacked.member(i)
        assert_close(probabilities[i], pn.predict_proba(model, val[0]), "float32", factor=10)
        np.testing.assert_array_equal(labels[i], pn.predict(model, val[0]))
    mean = sw.predict_proba_stack(stacked, val[0], average=True)
    assert_close(mean, probabilities.mean(axis=0), "float32")
    np.testing.assert_array_equal(sw.predict_stack(stacked, val[0], average=True), np.argmax(mean, axis=1))
    scores = sw.evaluate_stack(stacked, *val, l2=[0.0, 1e-3, 0.0])
    for i, score in enumerate(scores):
        solo = pn.evaluate(stacked.member(i), *val, l2=[0.0, 1e-3, 0.0][i], return_dict=True)
        assert score.keys() == solo.keys()
        for key in solo:
            assert_close(score[key], solo[key], "float32", factor=10, err_msg=key)


def test_bad_settings_are_one_clear_error():
    X, y, _ = _data("float32")
    stacked = stack_mlp(SIZES, SEEDS)
    with pytest.raises(pn.InputError, match="lr has 2 values for 3 members"):
        fit_stack(stacked, X, y, lr=[0.1, 0.2])
    with pytest.raises(pn.InputError, match=r"lr must be a number in \(0, inf\)"):
        fit_stack(stacked, X, y, lr=[0.1, -1.0, 0.2])
    with pytest.raises(pn.InputError, match=r"momentum must be a number in \[0, 1\)"):
        fit_stack(stacked, X, y, momentum=[0.1, 1.0, 0.2])
    with pytest.raises(pn.InputError, match="momentum is SGD's"):
        fit_stack(stacked, X, y, optimizer=pn.Adam(), momentum=0.9)
    with pytest.raises(pn.InputError, match="weight_decay is AdamW's"):
        fit_stack(stacked, X, y, weight_decay=[0.1, 0.0, 0.0])
    with pytest.raises(pn.InputError, match="nesterov momentum needs momentum > 0 for every member"):
        fit_stack(stacked, X, y, optimizer=pn.SGD(0.1, momentum=0.9, nesterov=True), momentum=[0.9, 0.0, 0.9])
    with pytest.raises(pn.InputError, match="member_seeds must be 3 non-negative integers"):
        fit_stack(stacked, X, y, member_seeds=[1, 2])
    with pytest.raises(pn.InputError, match="StackedOptimizer carries its own"):
        fit_stack(stacked, X, y, optimizer=StackedOptimizer(pn.SGD(0.1), 3), lr=0.3)
    with pytest.raises(pn.InputError, match="trains a portablenn.stack.Stacked"):
        fit_stack(pn.mlp(SIZES), X, y)


def test_grid_is_every_combination_in_settings_order():
    members = grid(seed=[0, 1], lr=[0.1, 1.0], hidden=[(4,), (6,)])
    assert len(members) == 8
    assert members[0] == {"hidden": (4,), "lr": 0.1, "seed": 0} and members[1] == {"hidden": (4,), "lr": 0.1,
                                                                                      "seed": 1}
    assert grid(hidden=(4, 3), lr=0.5) == [{"hidden": (4, 3), "lr": 0.5}]  # one two-layer architecture
    with pytest.raises(pn.InputError, match="unknown sweep settings"):
        grid(learning_rate=[0.1])


def test_a_sweep_stacks_each_architecture_and_names_what_varies():
    X, y, val = _data("float64")
    members = grid(hidden=[(4,), (6,)], lr=[0.1, 0.3], seed=[0, 1])
    result = sw.sweep(X, y, members, dtype="float64", epochs=2, batch_size=20, validation=val, seed=3)
    assert len(result.groups) == 2 and [len(g[0]) for g in result.groups] == [4, 4]
    assert result.notes and "2 architectures (4, 6)" in result.notes[0]
    assert result.names[0] == "hidden=4 lr=0.1 seed=0"
    for i in (0, 7):
        m = result.members[i]
        model = pn.mlp([5, *m["hidden"], 3], seed=m["seed"], dtype="float64")
        solo = pn.fit(model, X, y, optimizer=pn.SGD(m["lr"]), epochs=2, batch_size=20, seed=3, validation=val)
        assert_close(result.final(i, "val_error"), solo.records[-1]["val_error"], "float64")
        trained = result.model(i).state_dict()
        for key, value in model.state_dict().items():
            assert_close(trained[key], value, "float64", factor=FACTOR["float64"], err_msg=key)
    ranking = result.ranking("val_loss")
    finals = [result.final(i, "val_loss") for i in ranking]
    assert finals == sorted(finals)
    spread = result.spread("val_error")
    assert len(spread) == 4 and all(len(indices) == 2 for _, indices, _, _ in spread)
    _, indices, mean, std = spread[0]
    values = [result.final(i, "val_error") for i in indices]
    assert math.isclose(mean, np.mean(values)) and math.isclose(std, np.std(values))


def test_a_sweep_too_large_for_memory_is_refused_naming_what_fits_or_run_in_chunks(monkeypatch):
    X, y, val = _data("float64")
    members = grid(lr=[0.05, 0.1, 0.2, 0.3, 0.4], seed=0)
    sizes = [5, 100, 3]
    _, per_member, shared = sw.stack_memory(sizes, 1, 8, 60, 20, 0)
    limit = shared + 2.5 * per_member  # room for 2 members
    monkeypatch.setattr(sw, "memory_limit", lambda device: (int(limit), "this test's memory"))
    with pytest.raises(pn.InputError, match=r"a stack of 5 members .* at most 2 members would fit"):
        sw.sweep(X, y, members, dtype="float64", epochs=1, batch_size=20)
    chunked = sw.sweep(X, y, members, dtype="float64", epochs=2, batch_size=20, chunk=True, validation=val)
    assert [g[0] for g in chunked.groups] == [[0, 1], [2, 3], [4]]
    assert "trained in chunks of 2" in chunked.notes[-1]
    monkeypatch.setattr(sw, "memory_limit", lambda device: (None, None))
    whole = sw.sweep(X, y, members, dtype="float64", epochs=2, batch_size=20, validation=val)
    for i in range(5):
        assert_close(chunked.final(i, "val_loss"), whole.final(i, "val_loss"), "float64", factor=FACTOR["float64"])
    assert sw.largest_stack(sizes, 8, 60, 20, 0, limit=limit) == 2


def test_stack_memory_is_one_models_estimate_per_member_plus_the_shared_data():
    from portablenn.validation import training_memory

    one, _ = training_memory([784, 100, 10], 4, 60000, 100, 1, eval_rows=8192)
    total, per_member, shared = sw.stack_memory([784, 100, 10], 1, 4, 60000, 100, 1)
    assert shared == 60000 * (784 + 10) * 4 and total == one and per_member == one - shared
    total16, _, _ = sw.stack_memory([784, 100, 10], 16, 4, 60000, 100, 1)
    assert total16 < 16 * one  # the data once, not sixteen times


# -- the command line --------------------------------------------------------------------------------------
SMALL = ("sweep", "--epochs", "25", "--log-every", "25", "--quiet")


def test_sweep_prints_the_members_sorted_by_validation_error_and_their_spread_over_seeds(capsys):
    code, out, err = _cli(capsys, *SMALL, "--lr", "0.3,1", "--l2", "1e-4,1e-2", "--seeds", "2")
    assert code == 0, err
    assert "sweep: 8 members (2 lr x 2 l2 x 2 seed)" in out and "spiral: 240 train, 60 val" in out
    rows = _table(out)
    assert rows[0][:4] == ["#", "lr", "l2", "seed"] and "Val Err" in rows[0]
    column = rows[0].index("Val Err")
    errors = [float(r[column]) for r in rows[1:]]
    assert len(errors) == 8 and errors == sorted(errors)
    assert sorted(int(r[0]) for r in rows[1:]) == list(range(8))
    spread = [line for line in out.splitlines() if "over 2 seeds" in line]
    assert len(spread) == 4 and all("+-" in line for line in spread)


def test_the_saved_best_member_is_what_portablenn_train_makes_of_its_settings(capsys, tmp_path):
    best, log = tmp_path / "best.safetensors", tmp_path / "sweep.jsonl"
    code, out, err = _cli(capsys, *SMALL, "--lr", "0.5,1", "--l2", "1e-3", "--seed", "0", "--save", str(best),
                          "--log", str(log), "--dtype", "float64")
    assert code == 0, err
    rows = _table(out)
    winner = rows[1]
    lr = float(winner[1])
    assert f"saved {best}" in out
    code, evaluated, err = _cli(capsys, "eval", "--checkpoint", str(best), "--split", "val")
    assert code == 0, err
    assert f"error {float(winner[rows[0].index('Val Err')]):.5f}" in evaluated
    alone = tmp_path / "alone.safetensors"
    code, _, err = _cli(capsys, "train", "--epochs", "25", "--lr", f"{lr:g}", "--l2", "1e-3", "--seed", "0",
                        "--val-fraction", "0.2", "--dtype", "float64", "--quiet", "--save", str(alone))
    assert code == 0, err
    mine, theirs = pn.load(best).state_dict(), pn.load(alone).state_dict()
    for key in theirs:
        assert_close(mine[key], theirs[key], "float64", factor=FACTOR["float64"], err_msg=key)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2 * 25 and {r["member"] for r in records} == {0, 1}
    assert {"name", "lr", "l2", "seed", "epoch", "loss", "val_error"} <= set(records[0])
    code, _, err = _cli(capsys, *SMALL, "--lr", "0.5,1", "--save", str(best), "--log", str(log))
    assert code == 0, err  # its own files are replaced (the log appended to) without --overwrite


@pytest.mark.parametrize("controls", [
    ("--schedule", "step", "--step-size", "8", "--gamma", "0.5", "--clip-grad", "0.5"),
    ("--early-stopping", "--patience", "2", "--schedule", "plateau", "--plateau-patience", "1", "--factor", "0.5"),
])
def test_train_controls_reach_every_member_and_the_saved_one_resumes_as_train(capsys, tmp_path, controls):
    """train's --schedule, --clip-grad and --early-stopping in a sweep: every member has its own; the saved best
    member is the checkpoint 'portablenn train' writes for its settings (weights, the epoch it stopped at), and
    '--resume' of both continues to the same weights."""
    best, alone = tmp_path / "best.safetensors", tmp_path / "alone.safetensors"
    code, out, err = _cli(capsys, *SMALL, "--lr", "0.5,4", "--l2", "1e-3", "--seed", "0", "--save", str(best),
                          "--dtype", "float64", *controls)
    assert code == 0, err
    rows = _table(out)
    lr = float(rows[1][1])
    code, evaluated, err = _cli(capsys, "eval", "--checkpoint", str(best), "--split", "val")
    assert code == 0, err  # the table's figures are those of the weights the member ends with (restored: its best)
    assert f"error {float(rows[1][rows[0].index('Val Err')]):.5f}" in evaluated
    code, said, err = _cli(capsys, "train", "--epochs", "25", "--lr", f"{lr:g}", "--l2", "1e-3", "--seed", "0",
                           "--val-fraction", "0.2", "--dtype", "float64", "--save", str(alone), *controls)
    assert code == 0, err
    if "--early-stopping" in controls:
        assert "stopped: lr=4 after epoch" in out  # the high rate's member stops early, the other runs on
        assert ("early stopping: stopped after epoch" in said) == (f"stopped: lr={lr:g} after epoch" in out)
    mine, theirs = pn.checkpoint.load_checkpoint(best), pn.checkpoint.load_checkpoint(alone)
    assert mine.metadata["epoch"] == theirs.metadata["epoch"]
    for key, value in pn.load(alone).state_dict().items():
        assert_close(pn.load(best).state_dict()[key], value, "float64", factor=FACTOR["float64"], err_msg=key)
    for path in (best, alone):
        code, _, err = _cli(capsys, "train", "--resume", str(path), "--epochs", "30", "--quiet")
        assert code == 0, err
    for key, value in pn.load(alone).state_dict().items():
        assert_close(pn.load(best).state_dict()[key], value, "float64", factor=FACTOR["float64"], err_msg=key)


def test_a_member_whose_best_epoch_was_restored_reports_that_epochs_figures():
    """With early stopping every member ends with its best epoch's weights: the sweep's final figures (the table,
    the ranking) are that epoch's, which evaluating the member's weights gives again."""
    X, y, val = _data("float64")
    result = sw.sweep(X, y, grid(lr=[0.5, 3.0], hidden=[(8,)]), epochs=15, batch_size=16, validation=val,
                      dtype="float64", early_stopping=pn.EarlyStopping("val_loss", patience=2))
    assert result.restored and any(result.restored[i] < len(result.histories[i]) for i in result.restored)
    for i, epoch in result.restored.items():
        loss, error = pn.evaluate(result.model(i), *val)
        assert_close(result.final(i, "val_loss"), loss, "float64", factor=FACTOR["float64"])
        record = next(r for r in result.histories[i].records if r["epoch"] == epoch)
        assert result.final(i, "val_error") == record["val_error"]


def test_the_results_table_is_the_ranking_with_each_members_final_figures():
    """SweepResult.table: a flat record per member in ranking order, its settings, the final figures (a restored
    member's best epoch's; NaN for a diverged one) and a status; what pandas.DataFrame takes as it is."""
    X, y, val = _data("float64")
    with np.errstate(all="ignore"):
        result = sw.sweep(X, y, grid(lr=[0.5, 3.0, 1e30], hidden=[(8,)]), epochs=15, batch_size=16, validation=val,
                          dtype="float64", early_stopping=pn.EarlyStopping("val_loss", patience=2))
    rows = result.table("val_error")
    assert [r["member"] for r in rows] == result.ranking("val_error")
    assert set(result.diverged) == {2} and rows[-1]["status"] == "diverged" and np.isnan(rows[-1]["val_error"])
    for r in rows:
        i = r["member"]
        assert r["name"] == result.names[i] and r["lr"] == result.members[i]["lr"] and r["hidden"] == (8,)
        for key in ("loss", "error", "val_loss", "val_error"):
            assert r[key] == result.final(i, key) or (np.isnan(r[key]) and i in result.diverged)
        assert r["epochs"] == len(result.histories[i]) and r["best_epoch"] == result.restored.get(i)
        assert r["status"] == ("diverged" if i in result.diverged else "stopped" if i in result.stopped
                               else "trained")
    assert any(r["best_epoch"] is not None and r["best_epoch"] < r["epochs"] for r in rows)
    assert all(set(r) == set(rows[0]) for r in rows)


def test_sweep_refuses_to_overwrite_a_file_portablenn_did_not_write(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for flag in ("--save", "--log"):
        code, out, err = _cli(capsys, *SMALL, "--lr", "0.5,1", flag, str(notes))
        assert code == 2 and err.count("\n") == 1 and flag in err and "--overwrite" in err, err
        assert "Traceback" not in err and not out.strip().startswith("|")
    assert notes.read_text() == "my notes\n"


@pytest.mark.parametrize("argv, words", [
    (("--lr", "0.1,abc"), ("--lr: 'abc' is not a number",)),
    (("--lr", "0.1,-1"), ("--lr: -1 is out of range",)),
    (("--momentum", "0,1.5"), ("--momentum: 1.5 is out of range",)),
    (("--dropout", "0.5,1"), ("--dropout: 1 is out of range",)),
    (("--seed", "0,1.5"), ("--seed: '1.5' is not an integer",)),
    (("--seed", "0,1", "--seeds", "3"), ("either --seed LIST or --seeds N",)),
    (("--seeds", "0",), ("--seeds must be a positive number",)),
    (("--hidden", "10,x"), ("--hidden: 'x' is not an integer",)),
    (("--lr", "0.1,0.1"), ("lists a value twice",)),
    (("--weight-decay", "0.1,0.2"), ("--weight-decay is AdamW's",)),
    (("--optimizer", "adam", "--momentum", "0.9"), ("--momentum 0.9 is SGD's",)),
])
def test_bad_list_values_are_one_clear_line_and_exit_code_2(capsys, argv, words):
    code, out, err = _cli(capsys, *SMALL, *argv)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("portablenn: error:"), err
    for word in words:
        assert word in err, err


def test_a_diverging_member_is_reported_by_name_and_the_others_ranked(capsys):
    code, out, err = _cli(capsys, *SMALL, "--lr", "1,1e30", "--dtype", "float64")
    assert code == 0, err
    assert "diverged: lr=1e+30: the training loss became" in out
    rows = _table(out)
    assert rows[1][1] == "1" and "diverged at epoch" in rows[2][-1]


def test_every_member_diverging_is_a_failed_run(capsys):
    code, out, err = _cli(capsys, *SMALL, "--lr", "1e30,1e31")
    assert code == 1 and "every member diverged" in err


def test_each_architecture_is_its_own_stack_and_said_so(capsys):
    code, out, err = _cli(capsys, *SMALL, "--hidden", "20,40", "--lr", "0.5,1")
    assert code == 0, err
    assert out.count("stack of 2 members") == 2 and "note: 2 architectures (20, 40)" in out
    assert _table(out)[0][:3] == ["#", "hidden", "lr"]


def test_a_sweep_too_large_for_memory_names_what_fits_or_runs_in_chunks(capsys, monkeypatch):
    _, per_member, shared = sw.stack_memory([2, 100, 3], 1, 4, 240, 240, 0)
    monkeypatch.setattr(sw, "memory_limit", lambda device: (int(shared + 3.5 * per_member), "this test's memory"))
    code, out, err = _cli(capsys, *SMALL, "--lr", "0.3,1", "--l2", "1e-4,1e-3")
    assert code == 2 and "at most 3 members would fit" in err and "--chunk" in err, err
    code, out, err = _cli(capsys, *SMALL, "--lr", "0.3,1", "--l2", "1e-4,1e-3", "--chunk")
    assert code == 0, err
    assert "trained in chunks of 3" in out and "stack of 3 members" in out and "stack of 1 member:" in out
    assert len(_table(out)) == 5


def test_plots_draw_the_curves_and_the_heat_map(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = _cli(capsys, *SMALL, "--lr", "0.3,1", "--l2", "1e-4,1e-3", "--plot", str(tmp_path))
    assert code == 0, err
    for name in ("sweep_curves.png", "sweep_heatmap.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_all_writes_every_member_and_the_ensemble_is_reported(capsys, tmp_path):
    code, out, err = _cli(capsys, *SMALL, "--lr", "1", "--seeds", "3", "--save-all", str(tmp_path / "all"),
                          "--ensemble")
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert files == ["member-0.safetensors", "member-1.safetensors", "member-2.safetensors"]
    assert "ensemble of 3 seeds (all): val error" in out
    assert pn.load(tmp_path / "all" / "member-2.safetensors").config["sizes"] == [2, 100, 3]
