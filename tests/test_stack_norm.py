"""LayerNorm and BatchNorm1d in a stacked model (portablenn.stack): each member's forward, backward and running
statistics against the NumPy oracle of tests/test_normalization.py and central differences; every member of a
stack trained by fit_stack as fit trains it alone (records, parameters and buffers, epoch by epoch, on every
device); the members given back with their own norm layers; eval-mode predictions."""
import numpy as np
import pytest

import portablenn as pn
from _support import central_difference, classification_data, fd_close, fit_with_snapshots, require_dtype
from _tolerances import assert_close, assert_state_close
from portablenn import sweep as sw
from portablenn.normalization import BatchNorm1d, LayerNorm
from portablenn.stack import Stacked, StackedBatchNorm1d, StackedLayerNorm, StackError, architecture_key
from portablenn.sweep import fit_stack
from test_normalization import ref_batch_norm, ref_layer_norm
from test_stack import assert_gradients_match_central_differences

SIZES = [5, 8, 6, 3]  # two hidden blocks: Linear -> norm -> activation (-> Dropout)
SEEDS = [0, 1, 2]
DROPOUT = [0.0, 0.3, 0.0]
NORMS = {"layer": StackedLayerNorm, "batch": StackedBatchNorm1d}
FIELDS = ("loss", "error", "val_loss", "val_error")
FACTOR = {"float64": 1e-2, "float32": 10.0}  # as tests/test_sweep.py: float64 ~1e-12 relative

# name -> (optimizer template, per-member settings, the solo optimizer of member i, extra fit options)
CASES = {
    "sgd": (pn.SGD(0.1, momentum=0.5), dict(lr=[0.05, 0.2, 0.1], l2=[0.0, 1e-2, 1e-3], momentum=[0.0, 0.9, 0.5]),
            lambda s: pn.SGD(s["lr"], momentum=s["momentum"]), dict(batch_size=16)),
    # plain SGD: the step NumPy's kernels would fold into the GEMMs, were it not for the norms' parameters
    "plain_sgd": (pn.SGD(0.1), dict(lr=[0.05, 0.2, 0.1], l2=[1e-3, 1e-2, 0.0]), lambda s: pn.SGD(s["lr"]),
                  dict(batch_size=16)),
    "adam": (pn.Adam(1e-2), dict(lr=[1e-2, 3e-2, 1e-3], l2=[0.0, 1e-3, 0.0]), lambda s: pn.Adam(s["lr"]),
             dict(batch_size=20)),
    "own_orders": (pn.SGD(0.1), dict(lr=[0.05, 0.2, 0.1]), lambda s: pn.SGD(s["lr"]),
                   dict(batch_size=16, member_seeds=[7, 8, 9])),
}


def _data(dtype, features=5):
    X, y = classification_data(n=60, features=features, classes=3, seed=4)
    Xv, yv = classification_data(n=25, features=features, classes=3, seed=5)
    return X.astype(dtype), y, (Xv.astype(dtype), yv)


def _models(norm, dtype="float64", sizes=SIZES, dropout=DROPOUT, **kwargs):
    return [pn.mlp(sizes, seed=s, dtype=dtype, dropout=d, norm=norm, **kwargs) for s, d in zip(SEEDS, dropout)]


def _trained(norm, dtype="float64", **kwargs):
    """Members whose norm layers hold values of their own: weight, bias and (BatchNorm) running statistics
    moved by 2 epochs of 3 minibatches each on different data, so every buffer differs from its default."""
    models = _models(norm, dtype, **kwargs)
    for k, model in enumerate(models):
        X, y = classification_data(n=30, features=SIZES[0], classes=3, seed=10 + k)
        pn.fit(model, X.astype(dtype), y, optimizer=pn.SGD(0.3), epochs=2, batch_size=10, seed=k)
    return models


# -- the layers: the member axis, the members' own state ---------------------------------------------------------
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_norm_layers_stack_each_members_current_state_and_give_it_back(norm, tmp_path):
    models = _trained(norm)
    stacked = Stacked(models)
    assert [type(layer) for layer in stacked.layers[1::4]] == [NORMS[norm]] * 2
    state = stacked.state_dict()
    expected_keys = ["weight", "bias"] + (["running_mean", "running_var", "num_batches_tracked"]
                                          if norm == "batch" else [])
    assert sorted(k for k in state if k.startswith("1.")) == sorted(f"1.{k}" for k in expected_keys)
    for key in ("1.weight", "1.bias") + (("1.running_mean", "1.running_var") if norm == "batch" else ()):
        assert state[key].shape == (3, 1, 8), key
        for i, model in enumerate(models):
            np.testing.assert_array_equal(state[key][i, 0], model.state_dict()[key], err_msg=key)
    if norm == "batch":
        assert state["1.num_batches_tracked"].shape == () and int(state["1.num_batches_tracked"]) == 6
        assert state["1.num_batches_tracked"].dtype == np.int64 and state["1.running_var"].dtype == np.float64
        assert not np.allclose(state["1.running_mean"], 0.0) and not np.allclose(state["1.running_var"], 1.0)
    assert "3 x 8" in repr(stacked.layers[1])
    for i, model in enumerate(models):
        back = stacked.member(i)
        assert back.to_config() == model.to_config() and back.config == model.config
        assert architecture_key(back) == architecture_key(model)
        assert_state_close(back.state_dict(), model.state_dict(), "float64", factor=0, err_msg=f"member {i}")
        path = pn.save(back, tmp_path / f"{norm}{i}.safetensors")
        assert_state_close(pn.load(path).state_dict(), model.state_dict(), "float64", factor=0)
    assert [m.state_dict().keys() for m in stacked.models()] == [m.state_dict().keys() for m in models]


def test_norms_that_differ_cannot_share_a_stack():
    with pytest.raises(StackError, match="member 1 has another architecture"):
        Stacked([pn.mlp([2, 4, 3], norm="layer"), pn.mlp([2, 4, 3], norm="batch")])
    with pytest.raises(StackError, match="member 1 has another architecture"):
        Stacked([pn.mlp([2, 4, 3], norm="layer"), pn.mlp([2, 4, 3])])
    for layer in (LayerNorm(4, eps=1e-3), BatchNorm1d(4, momentum=0.2), BatchNorm1d(4, eps=1e-3)):
        other = pn.mlp([2, 4, 3], norm="batch" if isinstance(layer, BatchNorm1d) else "layer")
        changed = pn.Sequential(other.layers[0], layer, *other.layers[2:])
        assert architecture_key(changed) != architecture_key(other)
        with pytest.raises(StackError, match="member 1 has another architecture"):
            Stacked([other, changed])
    a, b = pn.mlp([2, 4, 3], norm="batch"), pn.mlp([2, 4, 3], norm="batch", seed=1)
    a.forward(np.ones((3, 2), dtype="float32"))  # one update of a's running statistics, none of b's
    with pytest.raises(StackError, match=r"different num_batches_tracked \(\[0, 1\]\)"):
        Stacked([a, b])


def _norm_stack(kind, device, dtype, rng, n=5):
    """Three one-layer members ``Sequential(norm)`` with their own weight, bias and running statistics."""
    models = []
    for _ in range(3):
        model = pn.Sequential(LayerNorm(n, dtype=dtype) if kind == "layer" else BatchNorm1d(n, momentum=0.3,
                                                                                             dtype=dtype))
        state = {"0.weight": rng.uniform(0.5, 1.5, n), "0.bias": rng.uniform(-0.5, 0.5, n)}
        if kind == "batch":
            state.update({"0.running_mean": rng.uniform(-1, 1, n), "0.running_var": rng.uniform(0.5, 2.0, n),
                          "0.num_batches_tracked": np.asarray(4)})
        models.append(model.load_state_dict(state))
    return models, Stacked(models).to(device)


@pytest.mark.parametrize("shared", [False, True], ids=["own_rows", "shared_rows"])
@pytest.mark.parametrize("kind", ["layer", "batch", "batch_eval"])
def test_each_member_is_normalised_as_the_oracle_normalises_it_alone(device, dtype, kind, shared):
    """Output, input gradient, parameter gradients and (train mode) running statistics of every member, from the
    formulas; the input ``(M, batch, n)`` (each member its own rows) or ``(batch, n)`` shared by all."""
    require_dtype(device, dtype)
    rng = np.random.default_rng(7)
    models, stacked = _norm_stack(kind.split("_")[0], device, dtype, rng)
    training = kind != "batch_eval"
    stacked.train(training)
    x = (rng.standard_normal((3, 6, 5)) * rng.uniform(0.5, 3.0, 5) + rng.uniform(-2, 2, 5)).astype(dtype)
    if shared:
        x = x[0]
    g = rng.standard_normal((3, 6, 5)).astype(dtype)
    layer = stacked.layers[0]
    out = device.to_numpy(stacked.forward(device.asarray(x)))
    dx = device.to_numpy(stacked.backward(device.asarray(g), input_grad=True))
    assert out.shape == dx.shape == (3, 6, 5) and out.dtype == np.dtype(dtype)
    after = stacked.state_dict()
    for i, model in enumerate(models):
        own = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
        xi = (x if shared else x[i]).astype(np.float64)
        if kind == "layer":
            want = ref_layer_norm(xi, own["0.weight"], own["0.bias"], g[i].astype(np.float64))
        else:
            want = ref_batch_norm(xi, own["0.weight"], own["0.bias"], g[i].astype(np.float64), own["0.running_mean"],
                                  own["0.running_var"], training, momentum=0.3)
            assert_close(after["0.running_mean"][i, 0], want[4], dtype, factor=10, err_msg=f"member {i} running mean")
            assert_close(after["0.running_var"][i, 0], want[5], dtype, factor=10, err_msg=f"member {i} running var")
        got = (out[i], dx[i], device.to_numpy(layer.grads["weight"])[i, 0], device.to_numpy(layer.grads["bias"])[i, 0])
        for name, a, e in zip(("y", "dx", "dweight", "dbias"), got, want):
            assert_close(a, e, dtype, factor=10, err_msg=f"member {i} {name}")
    if kind.startswith("batch"):
        assert int(after["0.num_batches_tracked"]) == 4 + training


@pytest.mark.parametrize("kind", ["layer", "batch", "batch_eval"])
def test_backward_matches_central_differences(kind):
    """``d sum(outputs * R) / d`` every parameter of a stack with norms, and the norm layer's input gradient."""
    dev = pn.device("numpy")
    rng = np.random.default_rng(1)
    models = _trained(kind.split("_")[0], dropout=[0.0] * 3, activation="tanh")  # running statistics of their own
    stacked = Stacked(models)
    stacked.train(kind != "batch_eval")
    X, R = rng.standard_normal((6, SIZES[0])), rng.standard_normal((3, 6, SIZES[-1]))
    assert_gradients_match_central_differences(stacked, X, R, err_msg=kind)
    _, norms = _norm_stack(kind.split("_")[0], dev, "float64", rng)
    norms.train(kind != "batch_eval")
    x, g = rng.standard_normal((3, 6, 5)) * 2.0 + 1.0, rng.standard_normal((3, 6, 5))
    norms.forward(x)
    dx = norms.backward(g, input_grad=True)
    fd_close(dx, central_difference(lambda v: float(np.sum(norms.forward(v) * g)), x), err_msg=f"{kind} input")


# -- training: every member as its solo fit ------------------------------------------------------------------------
def _fit_stack_and_solos(case, norm, device, dtype, epochs=3, features=5, dropout=DROPOUT, **model):
    """``fit_stack`` of three members and each member's solo ``fit``: ``(snapshots, solos, history, stacked)``,
    ``snapshots[i]`` the stack's (record, member state) after every epoch, ``solos[i]`` ``(records, states)``."""
    template, per_member, make, extra = CASES[case]
    X, y, val = _data(dtype, features)
    sizes = [features] + SIZES[1:]
    stacked = Stacked(_models(norm, dtype, sizes, dropout, **model)).to(device)
    snapshots = {i: [] for i in range(3)}
    history = fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=epochs, seed=3, validation=val,
                        callback=lambda i, r: snapshots[i].append((dict(r), stacked.member(i).state_dict())),
                        **extra)
    solos = []
    for i, model in enumerate(_models(norm, dtype, sizes, dropout, **model)):
        s = {key: values[i] for key, values in per_member.items()}
        _, states, records = fit_with_snapshots(
            model, X, y, optimizer=make(s), l2=s.get("l2", 0.0), epochs=epochs, seed=extra.get("member_seeds",
                                                                                                [3] * 3)[i],
            device=device, validation=val, **{k: v for k, v in extra.items() if k != "member_seeds"})
        solos.append((records, states, model))
    return snapshots, solos, history, stacked


def _assert_state_close(actual, desired, dtype, err_msg):
    """``assert_state_close``, each entry judged against the magnitude of its layer's whole state: a Linear's
    bias before BatchNorm has a zero gradient (the batch mean removes it), so it holds only rounding noise
    (~1e-18), which two summation orders make differently."""
    assert sorted(actual) == sorted(desired), err_msg
    scale = {}
    for key, value in desired.items():
        layer = key.split(".")[0]
        scale[layer] = max(scale.get(layer, 0.0), float(np.max(np.abs(value))))
    for key, value in desired.items():
        assert np.shape(actual[key]) == np.shape(value), f"{err_msg} {key}"
        assert_close(actual[key], value, dtype, factor=FACTOR[dtype], scale=scale[key.split(".")[0]],
                     err_msg=f"{err_msg} [{key}]")


def _assert_members_train_as_alone(snapshots, solos, history, dtype, epochs):
    assert not history.diverged
    for i, (records, states, _) in enumerate(solos):
        assert len(snapshots[i]) == len(records) == epochs
        for epoch, ((record, state), solo_record, solo_state) in enumerate(zip(snapshots[i], records, states), 1):
            for field in FIELDS:
                assert_close(record[field], solo_record[field], dtype, factor=FACTOR[dtype],
                             err_msg=f"member {i} epoch {epoch} {field}")
            # parameters and the BatchNorm buffers (running statistics, num_batches_tracked), Dropout's counter
            _assert_state_close(state, solo_state, dtype, err_msg=f"member {i} epoch {epoch}")
        assert history[i].records == [r for r, _ in snapshots[i]]


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_member_with_norms_trains_as_fit_trains_it_alone(device, dtype, norm):
    """SGD with momentum, lr, l2 and momentum differing per member, minibatches, validation (eval mode: the running
    statistics), Dropout in the same net; records and state dicts epoch by epoch."""
    require_dtype(device, dtype)
    snapshots, solos, history, _ = _fit_stack_and_solos("sgd", norm, device, dtype)
    _assert_members_train_as_alone(snapshots, solos, history, dtype, 3)
    if norm == "batch":
        assert int(snapshots[0][-1][1]["1.num_batches_tracked"]) == 3 * 4  # 4 minibatches an epoch


@pytest.mark.parametrize("case, norm", [("adam", "layer"), ("adam", "batch"), ("own_orders", "batch")])
def test_adam_and_own_minibatches_train_norm_members_as_fit(device, case, norm):
    """Adam; each member shuffling by its own seed (each normalises its own rows). Adam with BatchNorm runs
    without biases (as a Linear before BatchNorm usually is): such a bias has a zero gradient, rounding noise
    (~1e-18) whose Adam step is about lr g / eps, different for two summation orders; the running mean carries it
    into the eval-mode outputs, and val_loss then differs by ~1e-11, above the 1e-12 compared here."""
    require_dtype(device, "float64")
    snapshots, solos, history, _ = _fit_stack_and_solos(case, norm, device, "float64",
                                                        bias=not (case == "adam" and norm == "batch"))
    _assert_members_train_as_alone(snapshots, solos, history, "float64", 3)


@pytest.mark.parametrize("kernels", ["fast", "generic"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_a_wide_first_layer_and_plain_sgd_train_norm_members_as_fit(kernels, norm):
    """40 inputs (NumPy's fast kernels: the first weight side by side) and plain SGD (which they would fold into
    the GEMMs for Linear layers alone): the norms' parameters are updated too, each member as its solo fit."""
    device = pn.device("numpy", kernels=kernels)
    snapshots, solos, history, stacked = _fit_stack_and_solos("plain_sgd", norm, device, "float64", features=40)
    first = stacked.layers[0]
    assert (first.side_by_side(first.params["weight"]) is not None) == (kernels == "fast")
    assert not history.optimizer.fuses_sgd
    _assert_members_train_as_alone(snapshots, solos, history, "float64", 3)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_eval_mode_predictions_are_each_solo_models(device, norm):
    """After training, the stack's eval-mode outputs (BatchNorm: each member's running statistics) are each solo
    model's: probabilities, labels and evaluate's figures."""
    require_dtype(device, "float64")
    _, solos, _, stacked = _fit_stack_and_solos("sgd", norm, device, "float64", epochs=2)
    _, _, (Xv, yv) = _data("float64")
    probabilities = sw.predict_proba_stack(stacked, Xv)
    labels = sw.predict_stack(stacked, Xv)
    scores = sw.evaluate_stack(stacked, Xv, yv)
    assert stacked.training  # back in train mode
    for i, (_, _, model) in enumerate(solos):
        assert_close(probabilities[i], pn.predict_proba(model, Xv), "float64", factor=FACTOR["float64"])
        np.testing.assert_array_equal(labels[i], pn.predict(model, Xv))
        solo = pn.evaluate(model, Xv, yv, return_dict=True)
        for key in solo:
            assert_close(scores[i][key], solo[key], "float64", factor=FACTOR["float64"], err_msg=key)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_in_place_and_functional_updates_agree_bit_for_bit(monkeypatch, norm):
    """Where arrays cannot change in place (JAX), the running statistics are rebound, not written into: the same
    numbers (NumPy's generic kernels, mutable or not)."""
    X, y, _ = _data("float64")
    dev = pn.device("numpy", kernels="generic")
    results = []
    for mutable in (True, False):
        monkeypatch.setattr(dev.backend, "mutable", mutable)
        stacked = Stacked(_models(norm)).to(dev)
        template, per_member, _, extra = CASES["sgd"]
        fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=2, **extra)
        results.append(stacked.state_dict())
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_a_minibatch_of_one_row_is_refused_for_batch_norm():
    X, y, _ = _data("float64")
    stacked = Stacked(_models("batch"))
    with pytest.raises(ValueError, match="at least 2 rows"):  # 60 rows in minibatches of 59: the last has 1 row
        fit_stack(stacked, X, y, epochs=1, batch_size=59)


def test_the_optimizer_state_of_a_norm_member_is_its_solo_fits():
    X, y, _ = _data("float64")
    template, per_member, make, extra = CASES["sgd"]
    stacked = Stacked(_models("batch")).to("numpy")
    history = fit_stack(stacked, X, y, optimizer=template, **per_member, epochs=1, seed=3, **extra)
    for i, model in enumerate(_models("batch")):
        s = {key: values[i] for key, values in per_member.items()}
        solo = make(s)
        pn.fit(model, X, y, optimizer=solo, l2=s["l2"], epochs=1, seed=3, **extra)
        mine = history.optimizer.member(i)
        assert sorted(mine.state) == sorted(k for k, v in solo.state.items() if v)
        _assert_state_close({key: velocity for key, (velocity,) in mine.state.items()},
                            {key: np.asarray(solo.state[key][0]) for key in mine.state}, "float64", f"member {i}")
