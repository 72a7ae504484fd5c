"""Dropout: the counter-based hash against NumPy uint32 and Python-int references, the same masks on every
device, the drop rate and a new mask every step, eval mode, gradients, and training with Dropout (and
BatchNorm1d): a float64 NumPy oracle step by step, every device against NumPy, checkpoints that resume bit
for bit, and the recorded step (graph=True) bit for bit on the CPU."""
import numpy as np
import pytest

import portablenn as pn
from portablenn import counter_rng
from portablenn.dropout import Dropout

from _support import central_difference, classification_data, fd_close, host, require_dtype
from _tolerances import assert_close, assert_state_close

M32 = 2**32


# -- references: the hash in NumPy uint32 (wrapping natively) and in Python ints (mod 2**32) ------------------
def np_lowbias32(x):
    x = np.array(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def py_lowbias32(x):
    x ^= x >> 16
    x = (x * 0x7FEB352D) % M32
    x ^= x >> 15
    x = (x * 0x846CA68B) % M32
    return x ^ (x >> 16)


def ref_keep(seed, counter, shape, p):
    """The mask ``Dropout(p, seed)`` draws at ``counter`` for ``shape``, from the documented formula in uint32."""
    key = np_lowbias32(np_lowbias32(seed) ^ np.uint32(counter % M32))
    bits = np_lowbias32(np_lowbias32(np.arange(int(np.prod(shape)), dtype=np.uint32)) ^ key)
    return (bits.astype(np.int64) >= min(round(p * 2.0**32), M32 - 1)).reshape(shape)


EDGES = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, M32 - 2, M32 - 1]


def test_the_hash_is_lowbias32_on_python_ints_and_numpy_int64():
    values = EDGES + list(np.random.default_rng(0).integers(0, M32, 2000))
    expected = np_lowbias32(values)
    assert [py_lowbias32(int(v)) for v in values] == expected.tolist()  # the two references agree
    assert [counter_rng.lowbias32(int(v)) for v in values] == expected.tolist()
    ours = counter_rng.lowbias32(np.array(values, dtype=np.int64))
    assert ours.dtype == np.int64 and ours.tolist() == expected.tolist()
    assert counter_rng.lowbias32(0) == 0 and counter_rng.lowbias32(1) == py_lowbias32(1) != 1
    assert len(set(expected.tolist())) == len(set(values))  # a bijection: no collisions


class _Bounded(int):
    """An int whose every operation's result must stay in [0, 2**49): the hash never needs more of int64."""

    def _check(self, value):
        assert 0 <= value < 2**49, f"intermediate {value:#x} leaves [0, 2**49)"
        return _Bounded(value)

    for _name in ("and", "xor", "rshift", "lshift", "mul", "add"):
        locals()[f"__{_name}__"] = (lambda op: lambda self, other: self._check(op(int(self), int(other))))(
            getattr(int, f"__{_name}__"))
        locals()[f"__r{_name}__"] = (lambda op: lambda self, other: self._check(op(int(other), int(self))))(
            getattr(int, f"__{_name}__"))


def test_no_intermediate_of_the_hash_overflows_int64():
    """Signed overflow is unspecified in the Array API: every product is split so that none exceeds 2**48."""
    for v in EDGES + list(np.random.default_rng(5).integers(0, M32, 300)):
        assert counter_rng.lowbias32(_Bounded(int(v))) == py_lowbias32(int(v))
        key = counter_rng.draw_key(counter_rng.lowbias32(_Bounded(int(v))), _Bounded(int(v) * 7))
        assert counter_rng.element_bits(_Bounded(int(v)), key) < M32


def test_the_hash_is_the_same_on_every_device(device):
    values = np.array(EDGES + list(np.random.default_rng(1).integers(0, M32, 500)), dtype=np.int64)
    x = device.asarray(values)
    out = counter_rng.element_bits(counter_rng.lowbias32(x), counter_rng.draw_key(counter_rng.lowbias32(9), x[3]))
    key = np_lowbias32(np_lowbias32(9) ^ np.uint32(values[3]))
    np.testing.assert_array_equal(host(device, out), np_lowbias32(np_lowbias32(values) ^ key).astype(np.int64))


def test_derived_seeds_are_distinct_32_bit_words():
    seeds = [counter_rng.derive_seed(s, k) for s in (0, 1, 2**32, 2**40 + 5) for k in range(4)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < M32 for s in seeds)
    assert counter_rng.derive_seed(7, 2) == counter_rng.derive_seed(7, 2) == Dropout.seed_for(7, 2)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        counter_rng.derive_seed(-1, 0)


# -- the layer -------------------------------------------------------------------------------------------------
def _dropout(dev, p=0.3, seed=7, dtype="float32"):
    return pn.Sequential(Dropout(p, seed=seed)).to(dev, dtype=dtype)


def _set_counter(model, value, index=0):
    model.load_state_dict({**model.state_dict(), f"{index}.counter": np.array(value, dtype=np.int64)})


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_masks_are_the_reference_bit_for_bit_on_every_device(device, dtype, p):
    model = _dropout(device, p, seed=0xC0FFEE, dtype=dtype)
    x = np.random.default_rng(2).uniform(0.5, 2.0, (7, 37)).astype(dtype)
    for counter in (0, 1, 2, M32 - 1, M32, 5 * M32 + 3):  # the counter wraps mod 2**32 in the key, not in int64
        _set_counter(model, counter)
        out = host(device, model.forward(device.asarray(x)))
        keep = ref_keep(0xC0FFEE, counter, x.shape, p)
        np.testing.assert_array_equal(out != 0, keep, err_msg=f"counter {counter}")
        expected = np.where(keep, x * np.asarray(1.0 / (1.0 - p), dtype=dtype), 0)
        np.testing.assert_array_equal(out, expected.astype(dtype))  # x * (1 / (1 - p)), rounded once
        state = model.state_dict()
        assert state["0.counter"].dtype == np.int64 and state["0.counter"] == counter + 1


def test_a_part_of_the_batch_draws_its_rows_of_the_whole_batchs_mask(device):
    """``row_offset``: a data-parallel worker holding rows lo:hi draws exactly those rows of the one-process mask."""
    x = np.ones((10, 6), dtype=np.float32)
    whole = host(device, _dropout(device, 0.5, seed=4).forward(device.asarray(x))) != 0
    for lo, hi in ((0, 3), (3, 7), (7, 10)):
        part = _dropout(device, 0.5, seed=4)
        part.layers[0].row_offset = lo
        np.testing.assert_array_equal(host(device, part.forward(device.asarray(x[lo:hi]))) != 0, whole[lo:hi])
    assert whole.any() and not whole.all()


def test_the_drop_rate_is_p_and_every_step_draws_a_new_mask():
    for p in (0.1, 0.5, 0.8):
        model = _dropout("numpy", p, seed=3)
        x = np.ones((1000, 300), dtype=np.float32)
        masks = [model.forward(x) == 0 for _ in range(4)]
        n = x.size
        sigma = np.sqrt(p * (1 - p) / n)
        for mask in masks:
            assert abs(mask.mean() - p) < 6 * sigma, (p, mask.mean())
            assert abs((mask[:, 1:] & mask[:, :-1]).mean() - p * p) < 6 * np.sqrt(p * p * (1 - p * p) / n)  # neighbours
            assert abs((mask[1:] & mask[:-1]).mean() - p * p) < 6 * np.sqrt(p * p * (1 - p * p) / n)
        for a, b in zip(masks, masks[1:]):
            assert not np.array_equal(a, b)
            assert abs((a & b).mean() - p * p) < 6 * np.sqrt(p * p * (1 - p * p) / n)  # consecutive steps independent
        # inverted scaling keeps the mean
        assert abs(model.forward(x).mean() - 1.0) < 6 * np.sqrt(p / (1 - p) / n)


def test_two_seeds_draw_different_masks():
    x = np.ones((50, 40), dtype=np.float32)
    a, b = _dropout("numpy", 0.5, seed=1).forward(x), _dropout("numpy", 0.5, seed=2).forward(x)
    assert 0.4 < np.mean((a == 0) != (b == 0)) < 0.6


def test_eval_mode_is_the_identity_and_draws_nothing(device):
    model = _dropout(device, 0.5).eval()
    x = device.asarray(np.random.default_rng(3).standard_normal((6, 5)).astype("float32"))
    out = model.forward(x)
    np.testing.assert_array_equal(host(device, out), host(device, x))
    g = device.asarray(np.ones((6, 5), dtype="float32"))
    np.testing.assert_array_equal(host(device, model.backward(g)), np.ones((6, 5)))
    assert model.state_dict()["0.counter"] == 0
    zero = _dropout(device, 0.0)  # p = 0: the identity in train mode too
    np.testing.assert_array_equal(host(device, zero.forward(x)), host(device, x))


def test_backward_is_the_mask_times_the_scale_and_matches_finite_differences(device):
    require_dtype(device, "float64")
    p, rng = 0.4, np.random.default_rng(4)
    model = _dropout(device, p, seed=11, dtype="float64")
    x, G = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))

    def loss(x_host):
        _set_counter(model, 5)  # the same mask for every evaluation
        return float(np.sum(host(device, model.forward(device.asarray(x_host.copy()))) * G))

    _set_counter(model, 5)
    model.forward(device.asarray(x.copy()))
    dx = host(device, model.backward(device.asarray(G.copy())))
    np.testing.assert_allclose(dx, np.where(ref_keep(11, 5, x.shape, p), G / (1 - p), 0.0), rtol=1e-15)
    fd_close(dx, central_difference(loss, x))
    assert model.backward(device.asarray(G.copy()), input_grad=False) is None


def test_the_counter_advances_in_place_where_arrays_are_mutable_and_is_rebound_where_not(monkeypatch):
    dev = pn.device("array_api_strict")
    model = _dropout(dev)
    layer, x = model.layers[0], dev.asarray(np.ones((2, 3), dtype=np.float32))
    counter = layer.buffers["counter"]
    model.forward(x)
    assert layer.buffers["counter"] is counter and int(counter) == 1  # the same memory: a CUDA graph sees it
    monkeypatch.setattr(dev.backend, "mutable", False)
    model.forward(x)
    assert layer.buffers["counter"] is not counter and int(counter) == 1 and int(layer.buffers["counter"]) == 2


def test_bad_arguments_are_one_clear_error():
    for p in (1.0, -0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"Dropout p must be a number in \[0, 1\)"):
            Dropout(p)
    for seed in (-1, M32, 0.5, True):
        with pytest.raises(ValueError, match="Dropout seed must be an integer"):
            Dropout(0.5, seed=seed)
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        pn.mlp([3, 4, 2], dropout=1.0)
    d = Dropout(0.5)
    with pytest.raises(ValueError, match="a layer with buffers can appear only once"):
        pn.Sequential(pn.Linear(3, 3), d, pn.Linear(3, 3), d)


def test_mlp_puts_dropout_after_each_hidden_activation_with_seeds_from_its_own():
    model = pn.mlp([4, 8, 6, 3], dropout=0.25, seed=9)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [layer.seed for layer in model.layers if isinstance(layer, Dropout)] == [
        Dropout.seed_for(9, 0), Dropout.seed_for(9, 1)]
    assert model.layers[2].p == 0.25 and model.layers[2].seed != model.layers[5].seed
    assert model.config == {"sizes": [4, 8, 6, 3], "activation": "relu", "bias": True, "dropout": 0.25, "seed": 9}
    assert pn.mlp([4, 8, 3], dropout=0.25, seed=10).layers[2].seed != model.layers[2].seed
    assert pn.mlp([4, 8, 3]).config == {"sizes": [4, 8, 3], "activation": "relu", "bias": True}  # as before
    assert [type(layer).__name__ for layer in pn.mlp([4, 3], dropout=0.5).layers] == ["Linear"]
    assert model.named_buffers() == [("2.counter", model.layers[2], "counter"),
                                     ("5.counter", model.layers[5], "counter")]


# -- training: a float64 NumPy oracle of fit, step by step ------------------------------------------------------
def _oracle_fit(model, X, y, *, lr, l2, batch, epochs):
    """Plain SGD on softmax cross-entropy, minibatches in order, from the formulas in float64: the states after
    every step (parameters and buffers, keyed as ``state_dict``)."""
    state = {k: np.array(v, dtype=np.float64 if v.dtype.kind == "f" else np.int64)
             for k, v in model.state_dict().items()}
    kinds = [(type(layer).__name__, layer) for layer in model.layers]
    states, n, classes = [], len(X), model.out_features
    for _ in range(epochs):
        for start in range(0, n, batch):
            a, yb = X[start:start + batch].astype(np.float64), y[start:start + batch]
            rows, caches = len(a), []
            for i, (kind, layer) in enumerate(kinds):
                if kind == "Linear":
                    caches.append(a)
                    a = a @ state[f"{i}.weight"] + state.get(f"{i}.bias", 0.0)
                elif kind == "ReLU":
                    caches.append(a > 0)
                    a = np.where(a > 0, a, 0.0)
                elif kind == "Dropout":
                    keep = ref_keep(layer.seed, int(state[f"{i}.counter"]), a.shape, layer.p)
                    state[f"{i}.counter"] = state[f"{i}.counter"] + 1
                    caches.append(keep)
                    a = np.where(keep, a / (1 - layer.p), 0.0)
                elif kind == "BatchNorm1d":
                    mean, var = a.mean(axis=0), a.var(axis=0)
                    m = layer.momentum
                    state[f"{i}.running_mean"] = (1 - m) * state[f"{i}.running_mean"] + m * mean
                    state[f"{i}.running_var"] = (1 - m) * state[f"{i}.running_var"] + m * a.var(axis=0, ddof=1)
                    state[f"{i}.num_batches_tracked"] = state[f"{i}.num_batches_tracked"] + 1
                    xhat = (a - mean) / np.sqrt(var + layer.eps)
                    caches.append((xhat, np.sqrt(var + layer.eps)))
                    a = xhat * state[f"{i}.weight"] + state[f"{i}.bias"]
                else:
                    raise AssertionError(kind)
            z = a - a.max(axis=1, keepdims=True)
            g = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) - np.eye(classes)[yb]) / rows
            grads = {}
            for i in range(len(kinds) - 1, -1, -1):
                (kind, layer), cache = kinds[i], caches[i]
                if kind == "Linear":
                    grads[f"{i}.weight"] = cache.T @ g + l2 * state[f"{i}.weight"]
                    if f"{i}.bias" in state:
                        grads[f"{i}.bias"] = g.sum(axis=0)
                    g = g @ state[f"{i}.weight"].T
                elif kind == "ReLU":
                    g = np.where(cache, g, 0.0)
                elif kind == "Dropout":
                    g = np.where(cache, g / (1 - layer.p), 0.0)
                else:  # BatchNorm1d, batch statistics (the textbook backward)
                    xhat, std = cache
                    grads[f"{i}.weight"], grads[f"{i}.bias"] = (g * xhat).sum(axis=0), g.sum(axis=0)
                    gx = g * state[f"{i}.weight"]
                    g = (gx - gx.mean(axis=0) - xhat * (gx * xhat).mean(axis=0)) / std
            for key, grad in grads.items():
                state[key] = state[key] - lr * grad
            states.append({k: v.copy() for k, v in state.items()})
    return states


def _fit_steps(model, X, y, **kwargs):
    """``fit`` with the state after every step (the test reads the model on the host; fit itself does not)."""
    states = []
    history = pn.fit(model, X, y, on_step=lambda *_: states.append(model.state_dict()), **kwargs)
    return history, states


# no bias before BatchNorm1d: its gradient is zero but for rounding, which no relative tolerance can judge
ORACLE_CASES = {"dropout": dict(dropout=0.3), "dropout-batchnorm": dict(dropout=0.3, norm="batch", bias=False)}


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_fit_with_dropout_follows_the_numpy_oracle_step_by_step(case):
    """On NumPy (dropout alone: plain SGD folded into the GEMMs) and its generic kernels, L2 on the Linear weights
    only, against the oracle's states, buffers included (the counters and statistics exactly as counted)."""
    X, y = classification_data(n=40, features=5)
    for fast in (True, False):
        model = pn.mlp([5, 9, 7, 3], dtype="float64", seed=2, **ORACLE_CASES[case])
        expected = _oracle_fit(model, X, y, lr=0.3, l2=1e-3, batch=10, epochs=3)
        _, states = _fit_steps(model, X, y, optimizer=pn.SGD(0.3), l2=1e-3, epochs=3, batch_size=10, shuffle=False,
                               device=pn.device("numpy", fast=fast))
        assert len(states) == len(expected) == 12
        for step, (state, ref) in enumerate(zip(states, expected), start=1):
            assert_state_close(state, ref, "float64", factor=10, err_msg=f"{case} fast={fast} step {step}")
            for key in ref:
                if ref[key].dtype == np.int64:
                    assert state[key].dtype == np.int64 and state[key] == ref[key] == step, key
        assert not np.allclose(states[-1]["0.weight"], states[0]["0.weight"])


# -- every device against NumPy, step by step --------------------------------------------------------------------
SCENARIOS = {  # name: (mlp keywords, optimizer, fit keywords); no bias before BatchNorm1d (see ORACLE_CASES)
    "dropout-sgd-shuffle-val": (dict(dropout=0.2), lambda: pn.SGD(0.2),
                                dict(batch_size=16, shuffle=True, seed=3, l2=1e-3, validation=True)),
    "dropout-batchnorm-momentum": (dict(dropout=0.3, norm="batch", bias=False), lambda: pn.SGD(0.1, momentum=0.9),
                                   dict(batch_size=12, shuffle=True, seed=4, validation=True)),
    "dropout-layernorm-adam": (dict(dropout=0.1, norm="layer", activation="tanh"), lambda: pn.Adam(0.01),
                               dict(batch_size=16, shuffle=False, l2=1e-4)),
    "batchnorm-fullbatch-nesterov": (dict(norm="batch", bias=False), lambda: pn.SGD(0.1, momentum=0.9, nesterov=True),
                                     dict(batch_size=None)),
}
_REFERENCE = {}


def _scenario(dev, name, dtype):
    model_kw, make_opt, fit_kw = SCENARIOS[name]
    X, y = classification_data(n=50, features=6, seed=5)
    fit_kw = dict(fit_kw)
    if fit_kw.pop("validation", False):
        fit_kw["validation"] = classification_data(n=20, features=6, seed=6)
    model = pn.mlp([6, 10, 8, 3], dtype=dtype, seed=11, **model_kw)
    return _fit_steps(model, X, y, optimizer=make_opt(), epochs=3, device=dev, **fit_kw)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fit_with_dropout_and_norms_trains_alike_on_every_device(device, dtype, name):
    if (name, dtype) not in _REFERENCE:
        _REFERENCE[name, dtype] = _scenario(pn.device("numpy"), name, dtype)
    ref_history, ref_states = _REFERENCE[name, dtype]
    history, states = _scenario(device, name, dtype)
    assert len(states) == len(ref_states)
    for step, (state, ref) in enumerate(zip(states, ref_states), start=1):
        assert_state_close(state, ref, dtype, factor=10, err_msg=f"{device.name} {name} step {step}")
        for key, value in ref.items():
            if value.dtype == np.int64:  # the draw counters and num_batches_tracked: exactly
                np.testing.assert_array_equal(state[key], value, err_msg=key)
    for field in ref_history.records[0]:
        if field not in ("epoch", "seconds"):
            assert_close(history[field], ref_history[field], dtype, factor=10, err_msg=field)
    assert history["loss"][-1] < history["loss"][0]


# -- checkpoints and resume -------------------------------------------------------------------------------------
RESUME = {"momentum": lambda: pn.SGD(0.1, momentum=0.9), "adam": lambda: pn.Adam(0.01)}


@pytest.mark.parametrize("norm", [None, "batch"])
@pytest.mark.parametrize("name", sorted(RESUME))
def test_resume_with_dropout_is_bit_identical_to_an_uninterrupted_run(name, norm, tmp_path):
    pytest.importorskip("safetensors")
    from portablenn import checkpoint

    X, y = classification_data(n=44, features=4)
    val = classification_data(n=15, features=4, seed=1)
    kw = dict(batch_size=10, shuffle=True, seed=5, validation=val)
    make = lambda: pn.mlp([4, 8, 6, 3], dtype="float64", seed=1, dropout=0.3, norm=norm)  # noqa: E731
    straight = make()
    whole = pn.fit(straight, X, y, optimizer=RESUME[name](), epochs=4, **kw)

    first, opt1 = make(), RESUME[name]()
    pn.fit(first, X, y, optimizer=opt1, epochs=2, **kw)
    checkpoint.save(first, tmp_path / "c.safetensors", optimizer=opt1)
    resumed = checkpoint.load(tmp_path / "c.safetensors")
    assert resumed.config == first.config
    opt2 = checkpoint.restore_optimizer(RESUME[name](), checkpoint.load_checkpoint(tmp_path / "c.safetensors"),
                                        resumed)
    rest = pn.fit(resumed, X, y, optimizer=opt2, epochs=4, initial_epoch=2, **kw)
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    counters = [v for k, v in straight.state_dict().items() if k.endswith(".counter")]
    assert len(counters) == 2 and all(c == 20 for c in counters)  # 5 steps an epoch
    assert rest["loss"] == whole["loss"][2:] and rest["val_loss"] == whole["val_loss"][2:]
    # and the counter mattered: the same weights with a rewound counter draw other masks
    rewound = checkpoint.load(tmp_path / "c.safetensors")
    state = rewound.state_dict()
    rewound.load_state_dict({**state, **{k: np.zeros((), np.int64) for k in state if k.endswith(".counter")}})
    pn.fit(rewound, X, y, optimizer=checkpoint.restore_optimizer(RESUME[name](), tmp_path / "c.safetensors",
                                                                 rewound), epochs=4, initial_epoch=2, **kw)
    assert not np.array_equal(rewound.state_dict()["0.weight"], straight.state_dict()["0.weight"])


def test_the_counter_is_saved_as_int64_and_checked_on_load(tmp_path):
    pytest.importorskip("safetensors")
    from portablenn import checkpoint

    model = pn.mlp([3, 5, 2], dropout=0.5, seed=4)
    model.forward(np.ones((4, 3), dtype=np.float32))
    checkpoint.save(model, tmp_path / "d.safetensors")
    ckpt = checkpoint.load_checkpoint(tmp_path / "d.safetensors")
    assert ckpt.state_dict["2.counter"].dtype == np.int64 and ckpt.state_dict["2.counter"].shape == ()
    assert ckpt.state_dict["2.counter"] == 1
    loaded = checkpoint.load(tmp_path / "d.safetensors", device="array_api_strict:device1")
    assert loaded.state_dict()["2.counter"].dtype == np.int64 and loaded.state_dict()["2.counter"] == 1
    assert loaded.layers[2].seed == model.layers[2].seed


# -- the recorded step ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [None, "batch"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_graph_step_with_dropout_equals_the_ordinary_loop_bit_for_bit(device, norm, momentum):
    """On the CPU bit for bit; on a GPU (a CUDA graph replayed: a new mask each replay, from the counter on the
    device) within rounding, as a graph's private cuBLAS handle may pick other GEMM algorithms."""
    X, y = classification_data(n=30, features=4)

    def run(graph):
        model = pn.mlp([4, 6, 5, 3], seed=1, dropout=0.4, norm=norm).to(device)
        history = pn.fit(model, X, y, optimizer=pn.SGD(0.2, momentum=momentum), epochs=3, batch_size=7, shuffle=True,
                         graph=graph)
        return model.state_dict(), history

    (state, history), (ref, ref_history) = run(True), run(False)
    factor = 0 if device.kind == "cpu" else 10
    assert_state_close(state, ref, "float32", factor=factor)
    assert state["2.counter" if norm is None else "3.counter"] == 15  # 5 steps an epoch
    assert_close(history["loss"], ref_history["loss"], "float32", factor=factor)


def _lowbias32_reference(x):
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _derive_seed_reference(seed, index):
    """The docstring's formula in plain Python ints: the word count, then each 32-bit word, hashed in turn."""
    words = []
    while True:
        words.append(seed & 0xFFFFFFFF)
        seed >>= 32
        if not seed:
            break
    h = _lowbias32_reference(_lowbias32_reference(index) ^ len(words))
    for word in words:
        h = _lowbias32_reference(h ^ _lowbias32_reference(word ^ 0x9E3779B9))
    return h


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**64 + 5, 2**65 + 5])
def test_derive_seed_is_the_documented_formula_for_seeds_of_any_size(seed):
    from portablenn.counter_rng import derive_seed

    for index in (0, 1, 7):
        assert derive_seed(seed, index) == _derive_seed_reference(seed, index)
    assert derive_seed(2**64 + 5, 1) != derive_seed(2**65 + 5, 1)
