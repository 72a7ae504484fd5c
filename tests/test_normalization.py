"""LayerNorm and BatchNorm1d: forward and backward against a NumPy oracle written from the formulas and
against finite differences on every device, running statistics and modes, buffers in state dicts and
checkpoints (integer ones included; checkpoints written before buffers existed still load), PyTorch
(parity of forward, gradients and running statistics; conversion both ways) and ONNX Runtime."""
import base64
import json
import zlib

import numpy as np
import pytest

import portablenn as pn
from portablenn.losses import weight_matrices
from portablenn.normalization import BatchNorm1d, LayerNorm

from _support import central_difference, classification_data, copy_state, fd_close, host, require_dtype
from _tolerances import assert_close

EPS = 1e-5


# -- the oracle: the formulas in float64 NumPy -------------------------------------------------------------------
def ref_layer_norm(x, w, b, g, eps=EPS):
    """``(y, dx, dw, db)`` of LayerNorm over the last axis, for the output gradient ``g``."""
    mu = x.mean(axis=1, keepdims=True)
    sd = np.sqrt(((x - mu) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (x - mu) / sd
    n = x.shape[1]
    gx = g * w
    # d xhat_j / d x_k = (delta_jk - 1/n - xhat_j xhat_k / n) / sd
    dx = np.stack([(gx[r] @ ((np.eye(n) - 1 / n - np.outer(xhat[r], xhat[r]) / n) / sd[r]).T) for r in range(len(x))])
    return xhat * w + b, dx, (g * xhat).sum(axis=0), g.sum(axis=0)


def ref_batch_norm(x, w, b, g, running_mean, running_var, training, eps=EPS, momentum=0.1):
    """``(y, dx, dw, db, new running mean, new running var)`` of BatchNorm1d, for the output gradient ``g``."""
    if not training:
        sd = np.sqrt(running_var + eps)
        xhat = (x - running_mean) / sd
        return xhat * w + b, g * w / sd, (g * xhat).sum(axis=0), g.sum(axis=0), running_mean, running_var
    m = len(x)
    mu, var = x.mean(axis=0), x.var(axis=0)
    sd = np.sqrt(var + eps)
    xhat = (x - mu) / sd
    gx = g * w
    # per feature f: d xhat_i / d x_k = (delta_ik - 1/m - xhat_i xhat_k / m) / sd
    dx = np.stack([(np.eye(m) - 1 / m - np.outer(xhat[:, f], xhat[:, f]) / m).T @ gx[:, f] / sd[f]
                   for f in range(x.shape[1])], axis=1)
    return (xhat * w + b, dx, (g * xhat).sum(axis=0), g.sum(axis=0),
            (1 - momentum) * running_mean + momentum * mu,
            (1 - momentum) * running_var + momentum * x.var(axis=0, ddof=1))


def _data(rows=6, n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)) * rng.uniform(0.5, 3.0, n) + rng.uniform(-2, 2, n)
    return x, rng.uniform(0.5, 1.5, n), rng.uniform(-0.5, 0.5, n), rng.standard_normal((rows, n))


def _on(dev, layer, w, b, dtype):
    model = pn.Sequential(layer).to(dev, dtype=dtype)
    model.load_state_dict({**model.state_dict(), "0.weight": w, "0.bias": b})
    return model


def _run(dev, model, x, g, dtype):
    out = model.forward(dev.asarray(x.astype(dtype)))
    dx = model.backward(dev.asarray(g.astype(dtype)))
    layer = model.layers[0]
    return host(dev, out), host(dev, dx), host(dev, layer.grads["weight"]), host(dev, layer.grads["bias"])


def test_layer_norm_matches_the_oracle_on_every_device(device, dtype):
    x, w, b, g = _data()
    model = _on(device, LayerNorm(5), w, b, dtype)
    got = _run(device, model, x, g, dtype)
    want = ref_layer_norm(x.astype(dtype).astype(np.float64), w.astype(dtype), b.astype(dtype), g.astype(dtype))
    for name, a, e in zip(("y", "dx", "dweight", "dbias"), got, want):
        assert a.dtype == np.dtype(dtype)
        assert_close(a, e, dtype, factor=10, err_msg=name)
    model.eval()  # no statistics of its own: the same in eval mode
    assert_close(_run(device, model, x, g, dtype)[0], want[0], dtype, factor=10)


def test_batch_norm_matches_the_oracle_in_train_and_eval_mode_on_every_device(device, dtype):
    x, w, b, g = _data(rows=7)
    model = _on(device, BatchNorm1d(5), w, b, dtype)
    mean, var = np.zeros(5), np.ones(5)
    for step in range(3):  # statistics of three batches, then eval mode with them
        xs = x + step
        got = _run(device, model, xs, g, dtype)
        want = ref_batch_norm(xs.astype(dtype).astype(np.float64), w.astype(dtype), b.astype(dtype), g.astype(dtype),
                              mean, var, True)
        for name, a, e in zip(("y", "dx", "dweight", "dbias"), got, want):
            assert_close(a, e, dtype, factor=10, err_msg=f"step {step} {name}")
        mean, var = want[4], want[5]
        state = model.state_dict()
        assert_close(state["0.running_mean"], mean, dtype, factor=10)
        assert_close(state["0.running_var"], var, dtype, factor=10)
        assert state["0.num_batches_tracked"].dtype == np.int64 and state["0.num_batches_tracked"] == step + 1
        assert state["0.running_mean"].dtype == np.dtype(dtype)
    model.eval()
    got = _run(device, model, x, g, dtype)
    want = ref_batch_norm(x.astype(dtype).astype(np.float64), w.astype(dtype), b.astype(dtype), g.astype(dtype),
                          mean.astype(dtype), var.astype(dtype), False)
    for name, a, e in zip(("y", "dx", "dweight", "dbias"), got, want):
        assert_close(a, e, dtype, factor=10, err_msg=f"eval {name}")
    after = model.state_dict()  # eval mode leaves the statistics alone
    assert after["0.num_batches_tracked"] == 3
    np.testing.assert_array_equal(after["0.running_mean"], state["0.running_mean"])


LAYERS = {"layer": lambda: LayerNorm(4, dtype="float64"), "batch": lambda: BatchNorm1d(4, dtype="float64"),
          "batch-eval": lambda: BatchNorm1d(4, dtype="float64").eval()}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_input_and_parameter_gradients_match_finite_differences(device, kind):
    require_dtype(device, "float64")
    rng = np.random.default_rng(1)
    model = pn.Sequential(LAYERS[kind]()).to(device, dtype="float64")
    if kind == "batch-eval":
        model.eval()
        model.load_state_dict({**model.state_dict(), "0.running_mean": rng.standard_normal(4),
                               "0.running_var": rng.uniform(0.5, 2.0, 4)})
    state = {**model.state_dict(), "0.weight": rng.uniform(0.5, 1.5, 4), "0.bias": rng.standard_normal(4)}
    model.load_state_dict(state)
    x, G = rng.standard_normal((5, 4)) * 2.0 + 1.0, rng.standard_normal((5, 4))

    def loss_of(key):
        def loss(v):
            model.load_state_dict({**copy_state(state), key: v} if key != "x" else copy_state(state))
            xin = v if key == "x" else x
            return float(np.sum(host(device, model.forward(device.asarray(xin.copy()))) * G))
        return loss

    model.load_state_dict(copy_state(state))
    model.forward(device.asarray(x.copy()))
    dx = host(device, model.backward(device.asarray(G.copy())))
    grads = {name: host(device, g) for name, g in model.layers[0].grads.items()}
    fd_close(dx, central_difference(loss_of("x"), x), f"{kind} input")
    for name in ("weight", "bias"):
        fd_close(grads[name], central_difference(loss_of(f"0.{name}"), state[f"0.{name}"]), f"{kind} {name}")


def test_a_training_batch_of_one_row_is_one_clear_error(device):
    model = pn.Sequential(BatchNorm1d(3)).to(device)
    one = device.asarray(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^BatchNorm1d needs at least 2 rows per batch in train mode, got 1 "):
        model.forward(one)
    assert model.state_dict()["0.num_batches_tracked"] == 0
    model.eval()
    np.testing.assert_allclose(host(device, model.forward(one)), np.ones((1, 3)) / np.sqrt(1 + EPS), rtol=1e-6)
    assert BatchNorm1d.couples_rows and not LayerNorm.couples_rows and not pn.Linear.couples_rows
    assert not pn.Dropout.couples_rows


def test_scales_and_shifts_take_neither_l2_nor_weight_decay():
    model = pn.mlp([4, 6, 5, 3], norm="batch")
    assert [name for _, layer, name in model.named_parameters() if name in layer.decayed] == ["weight"] * 3
    assert len(weight_matrices(model)) == 3 and all(w.shape[0] in (4, 6, 5) and w.ndim == 2
                                                    for _, w in weight_matrices(model))
    assert LayerNorm.decayed == BatchNorm1d.decayed == ()


def test_bad_arguments_are_one_clear_error():
    for call, message in [
            (lambda: LayerNorm(0), "LayerNorm normalized_shape must be a positive integer, got 0"),
            (lambda: LayerNorm((4,)), "LayerNorm normalized_shape must be a positive integer"),
            (lambda: LayerNorm(4, eps=0.0), "LayerNorm eps must be a positive finite number"),
            (lambda: BatchNorm1d(4, momentum=1.5), r"BatchNorm1d momentum must be a number in \[0, 1\]"),
            (lambda: BatchNorm1d(4, momentum=None), r"BatchNorm1d momentum must be a number in \[0, 1\]"),
            (lambda: BatchNorm1d(True), "BatchNorm1d num_features must be a positive integer"),
            (lambda: BatchNorm1d(4, dtype="int8"), "BatchNorm1d dtype must be 'float32' or 'float64'"),
            (lambda: pn.mlp([3, 4, 2], norm="group"), "norm must be None, 'layer' or 'batch', got 'group'"),
            (lambda: pn.Sequential(pn.Linear(3, 4), LayerNorm(5)), "layer sizes do not chain: layer 0 gives 4")]:
        with pytest.raises(ValueError, match=message):
            call()


def test_mlp_puts_the_norm_between_each_hidden_linear_and_its_activation():
    model = pn.mlp([4, 8, 6, 3], norm="layer", dropout=0.5, activation="tanh", seed=2)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Linear", "LayerNorm", "Tanh", "Dropout", "Linear", "LayerNorm", "Tanh", "Dropout", "Linear"]
    assert model.layers[1].normalized_shape == 8 and model.layers[5].normalized_shape == 6
    assert model.config == {"sizes": [4, 8, 6, 3], "activation": "tanh", "bias": True, "dropout": 0.5, "seed": 2,
                            "norm": "layer"}
    batch = pn.mlp([4, 8, 3], norm="batch")
    assert [type(layer).__name__ for layer in batch.layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert list(batch.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                        "1.running_var", "1.num_batches_tracked", "3.weight", "3.bias"]
    np.testing.assert_array_equal(batch.state_dict()["1.weight"], np.ones(8, np.float32))
    np.testing.assert_array_equal(batch.state_dict()["1.running_var"], np.ones(8, np.float32))
    # the hidden weights are the ones mlp draws without a norm: the norms take nothing from the generator
    np.testing.assert_array_equal(batch.state_dict()["3.weight"], pn.mlp([4, 8, 3]).state_dict()["2.weight"])


# -- buffers in state dicts, on devices, in checkpoints ---------------------------------------------------------------
def _trained(dtype="float64", device="numpy", **kw):
    X, y = classification_data(n=40, features=4)
    model = pn.mlp([4, 7, 5, 3], dtype=dtype, seed=3, norm="batch", dropout=0.2, **kw).to(device)
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, batch_size=10, shuffle=False)
    return model, X, y


def test_to_moves_buffers_and_keeps_the_integer_ones_int64(device):
    model = pn.mlp([3, 4, 2], norm="batch", dropout=0.5)
    model.forward(np.ones((2, 3), dtype=np.float32))
    model.to(device)
    layer = model.layers[1]
    assert type(layer.buffers["running_mean"]) is type(layer.params["weight"])
    assert layer.buffers["num_batches_tracked"].dtype == device.xp.int64
    assert model.layers[3].buffers["counter"].dtype == device.xp.int64
    if device.supports("float64"):
        model.to(dtype="float64")
        assert layer.buffers["running_var"].dtype == device.xp.float64
        assert layer.buffers["num_batches_tracked"].dtype == device.xp.int64
    state = model.state_dict()
    assert state["1.num_batches_tracked"] == 1 and state["3.counter"] == 1


def test_load_state_dict_checks_buffers():
    model = pn.mlp([3, 4, 2], norm="batch")
    state = model.state_dict()
    with pytest.raises(ValueError, match=r"missing \['1.running_var'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "1.running_var"})
    with pytest.raises(ValueError, match=r"'1.num_batches_tracked' has dtype float32; the model keeps it as integers"):
        model.load_state_dict({**state, "1.num_batches_tracked": np.array(2.0, np.float32)})
    with pytest.raises(ValueError, match=r"'1.running_mean' has shape \(5,\), the model expects \(4,\)"):
        model.load_state_dict({**state, "1.running_mean": np.zeros(5)})
    model.load_state_dict({**state, "1.num_batches_tracked": np.array(7, np.int32), "1.running_mean": np.arange(4.0)})
    assert model.state_dict()["1.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(model.state_dict()["1.running_mean"], np.arange(4.0, dtype=np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_checkpoint_round_trip_with_buffers_on_every_device(device, dtype, tmp_path):
    pytest.importorskip("safetensors")
    from portablenn import checkpoint

    require_dtype(device, dtype)
    model, X, _ = _trained(dtype, device)
    expected = model.state_dict()
    assert expected["1.num_batches_tracked"] == 8 and expected["3.counter"] == 8
    path = checkpoint.save(model, tmp_path / "m.safetensors")
    loaded = checkpoint.load(path)
    assert loaded.config == model.config
    state = loaded.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype == (np.int64 if key.endswith(("tracked", "counter")) else dtype), key
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    assert not np.array_equal(state["1.running_mean"], np.zeros(7))
    # eval mode reads the running statistics: the same predictions as the original
    assert_close(pn.predict_proba(loaded, X), pn.predict_proba(model, X), dtype, factor=10)
    into = pn.mlp([4, 7, 5, 3], dtype=dtype, seed=0, norm="batch", dropout=0.2).to(device)
    checkpoint.load_into(into, path)
    for key, value in expected.items():
        np.testing.assert_array_equal(into.state_dict()[key], value, err_msg=key)


def _tamper(path, edit):
    """Re-serialise a checkpoint after ``edit(tensors, meta)``, with a matching checksum (a buggy writer)."""
    import safetensors.numpy
    from safetensors import safe_open

    from portablenn import checkpoint

    with safe_open(str(path), framework="numpy") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        meta = dict(fh.metadata())
    edit(tensors, meta)
    meta["sha256"] = checkpoint._digest(tensors, meta)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))


def _architecture(meta, **changes):
    meta["architecture"] = json.dumps({**json.loads(meta["architecture"]), **changes})


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: t.pop("1.running_var"), r"it has no buffer '1.running_var' of shape \(7,\)"),
    (lambda t, m: t.update({"1.running_mean": np.zeros((1, 7))}), r"'1.running_mean' has shape \(1, 7\), the "
                                                                  r"architecture needs \(7,\)"),
    (lambda t, m: t.update({"1.num_batches_tracked": np.zeros(1, np.int64)}), r"'1.num_batches_tracked' has shape"),
    (lambda t, m: t.update({"1.num_batches_tracked": np.array(3.0)}), r"buffer '1.num_batches_tracked' has dtype "
                                                                      r"float64, not an integer"),
    (lambda t, m: t.update({"1.running_var": np.ones(7, np.int64)}), r"buffer '1.running_var' has dtype int64, "
                                                                     r"not a float"),
    (lambda t, m: t.update({"3.counter": np.array(1.0)}), r"buffer '3.counter' has dtype float64, not an integer"),
    (lambda t, m: _architecture(m, norm="group"), r"norm must be null, \"layer\" or \"batch\", got 'group'"),
    (lambda t, m: _architecture(m, dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (lambda t, m: _architecture(m, seed=-1), r"seed must be an integer from 0 to"),
    (lambda t, m: _architecture(m, norm="layer"), r"it has parameter '1.num_batches_tracked' that the model lacks"),
    (lambda t, m: _architecture(m, norm=None), r"it has no buffer '2.counter' of shape \(\)"),
    (lambda t, m: _architecture(m, dropout=0.0), r"it has no parameter '3.weight' of shape \(7, 5\)"),
])
def test_checkpoint_buffers_must_be_what_the_architecture_describes(edit, message, tmp_path):
    pytest.importorskip("safetensors")
    from portablenn import checkpoint

    model, _, _ = _trained()
    path = checkpoint.save(model, tmp_path / "m.safetensors")
    _tamper(path, edit)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(path)


def test_a_model_described_by_its_layers_saves_and_loads_its_buffers(tmp_path):
    pytest.importorskip("safetensors")
    from portablenn import checkpoint

    model = pn.Sequential(BatchNorm1d(3, momentum=0.5), pn.Linear(3, 4, rng=1), LayerNorm(4, eps=1e-3), pn.ReLU(),
                          pn.Dropout(0.25, seed=99), pn.Linear(4, 3, rng=2))
    X, y = classification_data(n=20, features=3)
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=5)
    path = checkpoint.save(model, tmp_path / "layers.safetensors")
    assert checkpoint.load_checkpoint(path).architecture[0] == {"type": "BatchNorm1d", "num_features": 3, "eps": 1e-5,
                                                                "momentum": 0.5}
    loaded = checkpoint.load(path)
    assert repr(loaded) == repr(model)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    assert loaded.state_dict()["0.num_batches_tracked"] == 4 == loaded.state_dict()["4.counter"]


# A checkpoint written by portablenn before buffers existed (commit b6d9161): mlp([2, 3, 2], seed=4), SGD with
# momentum 0.9 for two epochs, saved with its optimizer and metadata epoch=2 (zlib-compressed, base64).
OLD_CHECKPOINT = (
    "eNqVUz2LE0EYDnqlhSAoNrIOYjWE3ZnNZBOSSyMnKNjYmQ1hdvdds7AfYXeSwwsRBQ+ut/EXyGFzqIXF5QMLDyy1FRTsFK611ZndCx64GhyY4n3eeZ7n"
    "/WD2zlbyM0H9fgSCe1zwfh81J4in7iAQ4IpRCqiJJjbKgh3IbNTUugRrFGukhzUbcVcEYy6CJFYpG6UQjmykMk7A8+ciHcEUYeSJB0Ml5YcJF5RIZJik"
    "gjshxHF/DGkmNWRarxpVXSaToQgiaZkW7m7Is6ywuHvzRuEQpgqQhDwgRaCrIEoiiMUoKqCGgmLIBKTJWEE+DzNQoISGuaqpKoRh4g6knaotG3BSYzKo"
    "U8pc4pu+Dp5lcWKBA8xi4Hl63TDrDZf7Lq03CGUcauBzgzomuL7jcM9ihNWklp+kERenejTQFMtG1YTUrFeT2aInzirq0p6cmdpH4vsZCPmyq2OD9HLq"
    "NgT3B+LvZIJL6IZEmeKTNdbkTy5l2DQL7jpvikv4pomZpfj5XqtF83LR/9M+s7Cln9YoKvmXSukcLDlH3fwtRNYWU9KQVMBGsY6VyvpySkcjVbChFjPV"
    "vuO3c/Ufn+x6h+8/XV9e+kYWzzc+d24/O9+5c/nj8nH4rrV1pbkp70L78WExvvemVbmwvzy6dmvTfPq6bZ171Xmx8bWlNI529g8rJ+fizy+zFf4ojmdn"
    "ru7O5W1PD45nDw+OW6t3ey9RW975LzMSRoI=")
OLD_STATE = {"0.weight": [[-0.6517911553382874, -0.17471729218959808, 1.7345168590545654],
                          [0.5648238062858582, -1.64139723777771, 0.02409959025681019]],
             "0.bias": [-0.09432394802570343, 0.0, -0.0034869620576500893],
             "2.weight": [[-0.4100809097290039, 0.02238200232386589], [-1.313079833984375, 0.19740590453147888],
                          [0.08768311142921448, 1.3909978866577148]],
             "2.bias": [0.18175610899925232, -0.18175610899925232]}


def test_a_checkpoint_written_before_buffers_existed_still_loads_and_resumes(tmp_path):
    pytest.importorskip("safetensors")
    from portablenn import checkpoint

    path = tmp_path / "old.safetensors"
    path.write_bytes(zlib.decompress(base64.b64decode(OLD_CHECKPOINT)))
    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt.architecture == {"sizes": [2, 3, 2], "activation": "relu", "bias": True}
    model = checkpoint.load(path)
    assert model.config == ckpt.architecture and model.named_buffers() == []
    state = model.state_dict()
    assert list(state) == list(OLD_STATE)
    for key, value in OLD_STATE.items():
        np.testing.assert_array_equal(state[key], np.array(value, dtype=np.float32), err_msg=key)
    optimizer = checkpoint.restore_optimizer(pn.SGD(0.1, momentum=0.9), ckpt, model)
    assert optimizer.steps == 4 and sorted(optimizer.state) == sorted(OLD_STATE)
    X, y = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), np.array([0, 1, 1, 0])
    pn.fit(model, X, y, optimizer=optimizer, epochs=3, initial_epoch=2, batch_size=2, shuffle=False)
    assert optimizer.steps == 6


# -- PyTorch ----------------------------------------------------------------------------------------------------
def _torch_pair(kind, dtype):
    torch = pytest.importorskip("torch")
    ours = pn.Sequential(BatchNorm1d(5, momentum=0.3, dtype=dtype) if kind == "batch"
                         else LayerNorm(5, eps=1e-4, dtype=dtype))
    x, w, b, g = _data(rows=8)
    ours.load_state_dict({**ours.state_dict(), "0.weight": w, "0.bias": b})
    module = (torch.nn.BatchNorm1d(5, momentum=0.3) if kind == "batch" else torch.nn.LayerNorm(5, eps=1e-4))
    module = module.to(getattr(torch, dtype))
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w)), module.bias.copy_(torch.from_numpy(b))
    return torch, ours, module, x.astype(dtype), g.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_forward_gradients_and_running_statistics_match_pytorch(kind, dtype):
    torch, ours, module, x, g = _torch_pair(kind, dtype)
    for step, mode in enumerate(("train", "train", "eval")):  # two training steps (the statistics move), then eval
        ours.train(mode == "train"), module.train(mode == "train")
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = module(xt)
        yt.backward(torch.from_numpy(g))
        y = ours.forward(x)
        dx = ours.backward(g)
        layer = ours.layers[0]
        assert_close(y, yt.detach().numpy(), dtype, factor=10, err_msg=f"{kind} {mode} forward")
        assert_close(dx, xt.grad.numpy(), dtype, factor=100, err_msg=f"{kind} {mode} input gradient")
        assert_close(layer.grads["weight"], module.weight.grad.numpy(), dtype, factor=10, err_msg="weight gradient")
        assert_close(layer.grads["bias"], module.bias.grad.numpy(), dtype, factor=10, err_msg="bias gradient")
        module.zero_grad()
        if kind == "batch":
            for name, value in module.named_buffers():
                assert_close(layer.buffers[name], value.numpy(), dtype, factor=10, err_msg=name)
            assert int(layer.buffers["num_batches_tracked"]) == int(module.num_batches_tracked) == min(step + 1, 2)
        x = x * 1.5 + 0.25


def test_to_torch_and_back_carry_running_statistics_modes_and_the_mlp_config():
    torch = pytest.importorskip("torch")
    from portablenn.interop import from_torch, to_torch

    model, X, _ = _trained("float64")
    model.eval()
    module = to_torch(model)
    assert [type(m).__name__ for m in module] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d",
                                                  "ReLU", "Dropout", "Linear"]
    assert not module.training and module[3].p == 0.2
    assert int(module[1].num_batches_tracked) == 8
    np.testing.assert_array_equal(module[1].running_var.numpy(), model.state_dict()["1.running_var"])
    with torch.no_grad():
        assert_close(module(torch.from_numpy(X)).numpy(), model.forward(X), "float64")
    back = from_torch(module)
    assert not back.training
    state, original = back.state_dict(), model.state_dict()
    for key, value in original.items():
        if key.endswith(".counter"):  # torch draws from its own generator: the counters start afresh
            assert state[key] == 0
        else:
            np.testing.assert_array_equal(state[key], value, err_msg=key)
    assert_close(back.forward(X), model.forward(X), "float64", factor=0)
    # the seeds mlp(seed=0) gives: the converted model is that mlp's
    assert back.config == {**model.config, "seed": 0}
    assert [layer.seed for layer in back.layers if isinstance(layer, pn.Dropout)] == [
        pn.Dropout.seed_for(0, 0), pn.Dropout.seed_for(0, 1)]
    assert module.training is False and to_torch(back.train()).training


def test_from_torch_refuses_norms_it_cannot_represent_in_one_sentence():
    torch = pytest.importorskip("torch")
    from portablenn.interop import from_torch

    for bad, what in [(torch.nn.BatchNorm1d(4, affine=False), "learned weight and bias"),
                      (torch.nn.BatchNorm1d(4, momentum=None), "numeric momentum"),
                      (torch.nn.BatchNorm1d(4, track_running_stats=False), "track_running_stats=True"),
                      (torch.nn.LayerNorm((2, 2)), "over one axis")]:
        with pytest.raises(TypeError, match=f"layer 1 \\({type(bad).__name__}\\) cannot be converted: .*{what}"):
            from_torch(torch.nn.Sequential(torch.nn.Linear(3, 4), bad, torch.nn.Linear(4, 2)))


# -- ONNX -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm, dtype", [("batch", "float32"), ("layer", "float64"), (None, "float32")])
def test_onnx_export_runs_eval_mode_without_dropout(norm, dtype, tmp_path):
    pytest.importorskip("ndonnx")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from portablenn.onnx import export_onnx

    model, X, _ = _trained(dtype)  # running statistics of its own (with norm="batch")
    if norm != "batch":
        model = pn.mlp([4, 7, 5, 3], dtype=dtype, seed=3, norm=norm, dropout=0.2)
    before = model.state_dict()
    proto = export_onnx(model, tmp_path / "m.onnx")
    ops = {node.op_type for node in proto.graph.node}
    assert "Dropout" not in ops and ("BatchNormalization" not in ops)
    plain = export_onnx(pn.mlp([4, 7, 5, 3], dtype=dtype, norm=norm), tmp_path / "plain.onnx")
    assert len(proto.graph.node) == len(plain.graph.node)  # Dropout adds no node at all
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for rows in (1, 40):
        logits, probabilities = session.run(None, {"input": X[:rows].astype(dtype)})
        assert_close(probabilities, pn.predict_proba(model, X[:rows]), dtype, factor=10)
        assert_close(logits, model.eval().forward(X[:rows].astype(dtype)), dtype, factor=10)
    assert onnx.checker.check_model(proto) is None
    for key, value in before.items():  # the model itself is untouched
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_fit_refuses_batch_norm_where_a_minibatch_would_have_one_row_or_be_split_over_ranks():
    """One clear line before training: a last minibatch of 1 row (21 rows in tens), a batch size of 1, and
    data-parallel training, whose ranks would each normalise their own slice."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((21, 3)), rng.integers(0, 2, 21)
    model = pn.mlp([3, 4, 2], norm="batch")
    for batch in (10, 1):
        with pytest.raises(pn.InputError, match=f"BatchNorm1d needs at least 2 rows in every minibatch; "
                                                f"batch size {batch} over 21 rows"):
            pn.fit(model, X, y, optimizer=pn.SGD(0.1), batch_size=batch)
    with pytest.raises(pn.InputError, match="BatchNorm1d uses the statistics of the whole minibatch"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), batch_size=7, reducer=pn.train.Reducer())
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), batch_size=7)  # 3 minibatches of 7 rows: trains
    pn.fit(pn.mlp([3, 4, 2], norm="layer"), X, y, optimizer=pn.SGD(0.1), batch_size=10)  # LayerNorm: per row


def test_mlp_builds_the_norm_layers_with_pytorchs_defaults():
    batch = pn.mlp([3, 4, 2], norm="batch").layers[1]
    layer = pn.mlp([3, 4, 2], norm="layer").layers[1]
    assert batch.to_config() == {"num_features": 4, "eps": 1e-5, "momentum": 0.1}
    assert layer.to_config() == {"normalized_shape": 4, "eps": 1e-5}
