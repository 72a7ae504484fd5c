"""Safetensors checkpoints: round trips on every device, metadata, optimizer resume, atomic writes, bad files."""
import json
import os
import stat
import struct

import numpy as np
import pytest

pytest.importorskip("safetensors")

import portablenn as pn
from portablenn import checkpoint
from portablenn.checkpoint import CheckpointError

from _durability import ABSENT, SUPPORTED, Journal, crash_states
from _support import classification_data
from _tolerances import assert_close

KW = dict(batch_size=10, shuffle=False, l2=1e-3)


def _trained(dtype="float64", device="numpy", **kw):
    X, y = classification_data(n=40, features=4)
    model = pn.mlp([4, 7, 5, 3], dtype=dtype, seed=3, **kw).to(device)
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=2, **KW)
    return model, X, y


def _leftovers(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name != name)


# -- round trips -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_on_every_device(device, dtype, tmp_path):
    if not device.supports(dtype):
        pytest.skip(f"{device.name} does not support {dtype}")
    model, X, _ = _trained(dtype, device)
    expected = model.state_dict()
    path = checkpoint.save(model, tmp_path / "m.safetensors")
    assert path == tmp_path / "m.safetensors" and path.stat().st_size > 0

    loaded = checkpoint.load(path)
    assert loaded.device == pn.device("numpy") and loaded.dtype == dtype
    assert loaded.config == model.config
    state = loaded.state_dict()
    assert list(state) == list(expected) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    for key in expected:
        assert state[key].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)
    # the same forward pass: identical to the original weights on NumPy, close to the original device
    reference = pn.mlp([4, 7, 5, 3], dtype=dtype).load_state_dict(expected)
    np.testing.assert_array_equal(pn.predict_proba(loaded, X), pn.predict_proba(reference, X))
    assert_close(pn.predict_proba(loaded, X), pn.predict_proba(model, X), dtype, factor=10)


def test_load_onto_a_device(device, tmp_path):
    model, X, _ = _trained("float32")
    checkpoint.save(model, tmp_path / "m.safetensors")
    loaded = checkpoint.load(tmp_path / "m.safetensors", device=device)
    assert loaded.device == device
    assert_close(pn.predict_proba(loaded, X), pn.predict_proba(model, X), "float32", factor=10)


def test_checkpoint_from_an_accelerator_stand_in_loads_on_cpu(tmp_path):
    pytest.importorskip("array_api_strict")
    model, X, _ = _trained("float32", "array_api_strict:device1")
    assert model.device.name == "array_api_strict:device1"
    checkpoint.save(model, tmp_path / "m.safetensors")
    loaded = checkpoint.load(tmp_path / "m.safetensors", device="cpu")
    assert loaded.device.name == "numpy"
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    np.testing.assert_array_equal(pn.predict(loaded, X), pn.predict(model, X))


def test_model_without_config_is_described_by_its_layers(tmp_path):
    model = pn.Sequential(pn.Linear(3, 4, bias=False, rng=1), pn.Tanh(), pn.Linear(4, 2, rng=2), pn.Sigmoid(),
                          pn.Linear(2, 2, rng=3))
    assert not hasattr(model, "config")  # a hand-built Sequential
    checkpoint.save(model, tmp_path / "s.safetensors")
    ckpt = checkpoint.load_checkpoint(tmp_path / "s.safetensors")
    assert [layer["type"] for layer in ckpt.architecture] == ["Linear", "Tanh", "Linear", "Sigmoid", "Linear"]
    assert ckpt.architecture[0] == {"type": "Linear", "in_features": 3, "out_features": 4, "bias": False}
    loaded = checkpoint.load(tmp_path / "s.safetensors")
    assert [type(l).__name__ for l in loaded.layers] == ["Linear", "Tanh", "Linear", "Sigmoid", "Linear"]
    X = np.random.default_rng(0).standard_normal((6, 3))
    np.testing.assert_array_equal(pn.predict_proba(loaded, X), pn.predict_proba(model, X))


def test_metadata_and_extra_arrays_are_preserved(tmp_path):
    model, _, _ = _trained()
    rng_state = np.array([1, 2, 2**63 + 5], dtype=np.uint64)
    checkpoint.save(model, tmp_path / "m.safetensors", metadata={"dataset": "spiral", "epoch": 2, "lr": 0.1,
                                                                   "notes": {"a": [1, 2]}},
                    extra={"rng": rng_state, "flags": np.array([True, False])})
    ckpt = checkpoint.load_checkpoint(tmp_path / "m.safetensors")
    meta = ckpt.metadata
    assert meta["dataset"] == "spiral" and meta["epoch"] == "2" and json.loads(meta["lr"]) == 0.1
    assert json.loads(meta["notes"]) == {"a": [1, 2]}
    assert meta["format_version"] == str(checkpoint.FORMAT_VERSION) == "1"
    assert meta["portablenn_version"] == pn.__version__
    assert meta["dtype"] == "float64" == ckpt.dtype
    assert ckpt.architecture == {"sizes": [4, 7, 5, 3], "activation": "relu", "bias": True}
    assert all(isinstance(v, str) for v in meta.values())
    assert sorted(ckpt.extra) == ["flags", "rng"]
    np.testing.assert_array_equal(ckpt.extra["rng"], rng_state)
    assert ckpt.extra["rng"].dtype == np.uint64 and ckpt.extra["flags"].dtype == np.bool_
    assert ckpt.optimizer_config is None and ckpt.optimizer_state == {}
    assert list(ckpt.state_dict) == list(model.state_dict())  # the model's order, not alphabetical


def test_bad_metadata_is_refused(tmp_path):
    model, _, _ = _trained()
    with pytest.raises(CheckpointError, match="reserved"):
        checkpoint.save(model, tmp_path / "m.safetensors", metadata={"dtype": "float16"})
    with pytest.raises(CheckpointError, match="JSON"):
        checkpoint.save(model, tmp_path / "m.safetensors", metadata={"x": object()})
    with pytest.raises(CheckpointError, match="object"):
        checkpoint.save(model, tmp_path / "m.safetensors", extra={"x": np.array([None])})
    assert list(tmp_path.iterdir()) == []


# -- optimizer state --------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd-momentum": lambda: pn.SGD(0.1, momentum=0.9),
    "sgd-nesterov": lambda: pn.SGD(0.1, momentum=0.5, nesterov=True),
    "sgd": lambda: pn.SGD(0.1),
    "adam": lambda: pn.Adam(0.01, beta1=0.8),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_is_bit_identical_to_an_uninterrupted_run(name, tmp_path):
    X, y = classification_data(n=50, features=4)
    make = lambda: pn.mlp([4, 8, 3], dtype="float64", seed=1)  # noqa: E731
    straight, opt = make(), OPTIMIZERS[name]()
    pn.fit(straight, X, y, optimizer=opt, epochs=3, **KW)

    first, opt1 = make(), OPTIMIZERS[name]()
    pn.fit(first, X, y, optimizer=opt1, epochs=2, **KW)
    checkpoint.save(first, tmp_path / "c.safetensors", optimizer=opt1, metadata={"epoch": 2})
    del first, opt1

    ckpt = checkpoint.load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.optimizer_config["class"] == type(opt).__name__
    assert ckpt.optimizer_config["steps"] == 10 and ckpt.optimizer_config["lr"] == opt.lr
    assert ckpt.optimizer_config["l2"] == KW["l2"]
    buffers = {"sgd": 0, "sgd-momentum": 1, "sgd-nesterov": 1, "adam": 2}[name]
    assert {k: len(v) for k, v in ckpt.optimizer_state.items()} == (
        {k: buffers for k in ["0.weight", "0.bias", "2.weight", "2.bias"]} if buffers else {})
    resumed = checkpoint.load(tmp_path / "c.safetensors")
    opt2 = checkpoint.restore_optimizer(OPTIMIZERS[name](), ckpt, resumed)
    assert opt2.steps == 10
    pn.fit(resumed, X, y, optimizer=opt2, epochs=1, **KW)
    assert opt2.steps == opt.steps == 15
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    # and the restore mattered: a fresh optimizer diverges (plain SGD has no state to lose)
    if buffers:
        fresh = checkpoint.load(tmp_path / "c.safetensors")
        pn.fit(fresh, X, y, optimizer=OPTIMIZERS[name](), epochs=1, **KW)
        assert not np.array_equal(fresh.state_dict()["0.weight"], straight.state_dict()["0.weight"])


# -- learning-rate schedules: saved with the optimizer, restored by restore_schedule ------------------------------
SCHEDULED = {  # name -> (optimizer, schedule, fit's extra arguments)
    "cosine": lambda: (pn.SGD(0.2, momentum=0.9), pn.CosineWarmup(warmup=1.5, epochs=5), {}),
    "step": lambda: (pn.Adam(0.02), pn.StepDecay(step_size=2, gamma=0.5), {}),
    # patience 0 and a threshold no epoch meets: the lr is cut after every epoch, so the state matters
    "plateau": lambda: (pn.AdamW(0.02), pn.ReduceOnPlateau("val_loss", factor=0.5, patience=0, threshold=0.5),
                        {"validation_fraction": 0.2}),
}


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_a_resumed_schedule_continues_bit_for_bit(name, device, tmp_path):
    """fit 2 epochs, save, load, fit to 5 with initial_epoch=2 and the restored schedule == fit 5 straight."""
    if not device.supports("float64"):
        pytest.skip(f"{device.name} has no float64")
    X, y = classification_data(n=50, features=4)
    make = lambda: pn.mlp([4, 8, 3], dtype="float64", seed=1, dropout=0.25).to(device)  # noqa: E731
    kw = dict(batch_size=8, shuffle=True, seed=5, l2=1e-3)
    straight, (opt, schedule, extra) = make(), SCHEDULED[name]()
    pn.fit(straight, X, y, optimizer=opt, epochs=5, schedule=schedule, **kw, **extra)

    first, (opt1, schedule1, extra) = make(), SCHEDULED[name]()
    pn.fit(first, X, y, optimizer=opt1, epochs=2, schedule=schedule1, **kw, **extra)
    checkpoint.save(first, tmp_path / "c.safetensors", optimizer=opt1, metadata={"epoch": 2})
    ckpt = checkpoint.load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.schedule == {"config": pn.registry.SCHEDULES.to_config(schedule1), "state": schedule1.state_dict()}
    resumed = checkpoint.load(tmp_path / "c.safetensors", device=device)
    opt2 = checkpoint.restore_optimizer(SCHEDULED[name]()[0], ckpt, resumed)
    schedule2 = checkpoint.restore_schedule(ckpt)
    assert type(schedule2) is type(schedule1) and schedule2 is not schedule1
    assert schedule2.to_config() == schedule1.to_config() and schedule2.state_dict() == schedule1.state_dict()
    pn.fit(resumed, X, y, optimizer=opt2, epochs=5, initial_epoch=2, schedule=schedule2, **kw, **extra)
    assert opt2.steps == opt.steps and schedule2.state_dict() == schedule.state_dict()
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    if name == "plateau":  # the learned state mattered: a fresh plateau schedule trains otherwise
        assert schedule1.scale < 1.0
        fresh = checkpoint.load(tmp_path / "c.safetensors", device=device)
        opt3 = checkpoint.restore_optimizer(SCHEDULED[name]()[0], ckpt, fresh)
        pn.fit(fresh, X, y, optimizer=opt3, epochs=5, initial_epoch=2, schedule=SCHEDULED[name]()[1], **kw, **extra)
        assert not np.array_equal(fresh.state_dict()["0.weight"], straight.state_dict()["0.weight"])


def test_no_schedule_saves_no_entry_and_restores_none(tmp_path):
    model, opt = pn.mlp([4, 3], dtype="float64"), pn.SGD(0.1)
    X, y = classification_data(n=20, features=4)
    pn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=10)
    checkpoint.save(model, tmp_path / "c.safetensors", optimizer=opt)
    ckpt = checkpoint.load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.schedule is None and "schedule" not in ckpt.metadata
    assert checkpoint.restore_schedule(tmp_path / "c.safetensors") is None
    with pytest.raises(CheckpointError, match="'schedule' is reserved"):
        checkpoint.save(model, tmp_path / "d.safetensors", metadata={"schedule": "x"})


def _scheduled(path):
    X, y = classification_data(n=20, features=4)
    model, opt = pn.mlp([4, 5, 3], dtype="float64", seed=3), pn.SGD(0.1)
    pn.fit(model, X, y, optimizer=opt, epochs=2, batch_size=10, validation=(X, y),
           schedule=pn.ReduceOnPlateau("val_loss", patience=0, threshold=0.9))
    checkpoint.save(model, path, optimizer=opt)
    return json.loads(checkpoint.load_checkpoint(path).metadata["schedule"])


@pytest.mark.parametrize("entry, message", [
    ("[]", r"schedule must be an object \{\"config\": ..., \"state\": ...\}"),
    ({"config": {"type": "cosine"}}, "schedule must be an object"),
    ({"config": {"type": "warp"}, "state": {}}, "schedule type must be one of adaptive, cosine"),
    ({"config": {"type": ["step"]}, "state": {}}, "schedule type must be one of"),
    ({"config": "step", "state": {}}, "schedule type must be one of"),
    ({"config": {"type": "step", "step_size": 0}, "state": {}},
     "schedule step: StepDecay step_size must be an integer >= 1"),
    ({"config": {"type": "step", "step_size": 2, "gamma": 0.1, "rm": 1}, "state": {}},
     "schedule step: .*unexpected keyword"),
    ({"config": {"type": "cosine", "warmup": 9, "min_factor": 0, "epochs": 3}, "state": {}}, "warmup .* longer"),
    ({"config": {"type": "cosine", "warmup": 0, "min_factor": 0, "epochs": 10 ** 30}, "state": {}},
     "schedule epochs must be at most"),
    ({"config": {"type": "step", "step_size": 2, "gamma": 0.1}, "state": {"scale": 1.0}},
     "StepDecay state must have the keys"),
    ("plateau-scale", "ReduceOnPlateau state scale must be a finite number in \\(0, 1\\]"),
    ("plateau-best", "ReduceOnPlateau state best must be a number or None"),
    ("plateau-count", "ReduceOnPlateau state num_bad_epochs must be an integer >= 0"),
])
def test_a_damaged_or_crafted_schedule_is_one_checkpoint_error(entry, message, tmp_path):
    """The schedule entry is input: a re-signed file with a bad one is refused by load_checkpoint, naming it,
    and a Checkpoint changed by hand by restore_schedule; never a TypeError or KeyError from deep inside."""
    path = tmp_path / "c.safetensors"
    saved = _scheduled(path)
    if isinstance(entry, str) and entry.startswith("plateau-"):
        field, value = {"scale": ("scale", 0.0), "best": ("best", "low"), "count": ("num_bad_epochs", -1)}[entry[8:]]
        entry = {**saved, "state": {**saved["state"], field: value}}
    text = entry if isinstance(entry, str) else json.dumps(entry)
    _rewrite(path, schedule=text)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_checkpoint(path)
    _rewrite(path, schedule=json.dumps(saved))
    ckpt = checkpoint.load_checkpoint(path)
    ckpt.schedule = json.loads(text)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.restore_schedule(ckpt)


def test_a_schedule_without_an_optimizer_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    _scheduled(path)
    _rewrite(path, optimizer=None)
    with pytest.raises(CheckpointError, match="a schedule without an optimizer"):
        checkpoint.load_checkpoint(path)


def test_optimizer_state_follows_the_model_to_its_device(device, tmp_path):
    X, y = classification_data(n=30, features=4)
    model, opt = pn.mlp([4, 6, 3], seed=2).to(device), pn.Adam(0.01)
    pn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=10, shuffle=False)
    checkpoint.save(model, tmp_path / "c.safetensors", optimizer=opt)
    ckpt = checkpoint.load_checkpoint(tmp_path / "c.safetensors")
    for key, (m, v) in opt.state.items():
        np.testing.assert_array_equal(ckpt.optimizer_state[key][0], device.to_numpy(m))
        np.testing.assert_array_equal(ckpt.optimizer_state[key][1], device.to_numpy(v))
    resumed = checkpoint.load(tmp_path / "c.safetensors", device=device)
    restored = checkpoint.restore_optimizer(pn.Adam(0.01), tmp_path / "c.safetensors", resumed)
    assert restored.steps == 3 and restored.model is resumed
    assert type(restored.state["0.weight"][0]) is type(opt.state["0.weight"][0])
    pn.fit(resumed, X, y, optimizer=restored, epochs=1, batch_size=10, shuffle=False)
    pn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=10, shuffle=False)
    for key, value in model.state_dict().items():
        assert_close(resumed.state_dict()[key], value, "float32", err_msg=key)


def test_restore_optimizer_refuses_a_mismatch(tmp_path):
    model, _, _ = _trained()
    checkpoint.save(model, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="no optimizer state"):
        checkpoint.restore_optimizer(pn.SGD(0.1), checkpoint.load_checkpoint(tmp_path / "plain.safetensors"), model)
    X, y = classification_data(n=40, features=4)
    opt = pn.SGD(0.1, momentum=0.9)
    pn.fit(model, X, y, optimizer=opt, epochs=1, **KW)
    checkpoint.save(model, tmp_path / "sgd.safetensors", optimizer=opt)
    with pytest.raises(CheckpointError, match="holds SGD state but the optimizer is Adam"):
        checkpoint.restore_optimizer(pn.Adam(), tmp_path / "sgd.safetensors", model)
    other = pn.mlp([4, 9, 5, 3], dtype="float64")
    with pytest.raises(CheckpointError, match=r"'0.weight' has shape \(4, 7\), the parameter has \(4, 9\)"):
        checkpoint.restore_optimizer(pn.SGD(0.1, momentum=0.9), tmp_path / "sgd.safetensors", other)


# -- atomic writes ---------------------------------------------------------------------------------
def test_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    old, _, _ = _trained()
    path = checkpoint.save(old, tmp_path / "m.safetensors")
    before = path.read_bytes()
    new = pn.mlp([4, 7, 5, 3], dtype="float64", seed=99)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*No space left on device"):
        checkpoint.save(new, path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, "m.safetensors") == []


def test_failed_serialisation_leaves_the_old_file(tmp_path, monkeypatch):
    import safetensors.numpy

    old, _, _ = _trained()
    path = checkpoint.save(old, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise RuntimeError("serialiser crashed")

    monkeypatch.setattr(safetensors.numpy, "save", broken_save)
    with pytest.raises(RuntimeError, match="serialiser crashed"):
        checkpoint.save(pn.mlp([4, 7, 5, 3], dtype="float64", seed=5), path)
    assert path.read_bytes() == before and _leftovers(tmp_path, "m.safetensors") == []


def test_failed_write_midway_removes_the_temporary(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "fsync", broken_fsync)
    with pytest.raises(CheckpointError, match="Input/output error"):
        checkpoint.save(_trained()[0], tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_and_keeps_the_file_mode(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(_trained()[0], path)
    os.chmod(path, 0o640)
    checkpoint.save(pn.mlp([2, 3], dtype="float64"), path)
    assert (path.stat().st_mode & 0o777) == 0o640
    assert checkpoint.load_checkpoint(path).architecture["sizes"] == [2, 3]
    assert _leftovers(tmp_path, "m.safetensors") == []


# -- durability: what a power cut leaves (tests/_durability.py models fsync(2)) -------------------------------
def _small():
    """A model whose checkpoint (< 8 KiB) stays in Python's file buffer until flushed."""
    return pn.mlp([2, 3, 2], seed=4)


def _recording(monkeypatch, events):
    """Record every write, flush and close of the files ``os.fdopen`` opens, in order with ``events``."""
    real_fdopen = os.fdopen

    class Recorded:
        def __init__(self, fh):
            self._fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def fileno(self):
            return self._fh.fileno()

        def write(self, data):
            events.append(("write", {"size": len(data)}))
            return self._fh.write(data)

        def flush(self):
            events.append(("flush", {}))
            self._fh.flush()

        def close(self):
            events.append(("close", {}))
            self._fh.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: Recorded(real_fdopen(fd, *args, **kwargs)))


@pytest.mark.skipif(not SUPPORTED, reason="reads fsynced descriptors through /proc/self/fd")
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_save_fsyncs_a_flushed_temporary_beside_the_target_then_renames_then_fsyncs_the_directory(
        where, tmp_path, monkeypatch):
    """The order that makes a save durable: write the whole file to a temporary in the target's own directory
    (a rename is atomic only within one file system), flush it, fsync it, rename it over the target, fsync the
    directory (which makes the rename itself durable)."""
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "m.safetensors"
    checkpoint.save(_trained()[0], target)  # an old file to replace
    if where == "relative":
        monkeypatch.chdir(folder)
    journal = Journal(folder, tmp_path / "journal").install(monkeypatch.setattr)
    _recording(monkeypatch, journal.events)
    checkpoint.save(_small(), "m.safetensors" if where == "relative" else target)
    journal.close()
    size, inode = target.stat().st_size, target.stat().st_ino
    kinds = [kind for kind, _ in journal.events]
    assert kinds == ["write", "flush", "fsync-file", "close", "rename", "fsync-dir"], kinds
    details = dict(journal.events)
    assert details["write"]["size"] == size
    # the file fsynced held every byte (flushed first), and it is the file that became the target
    assert details["fsync-file"]["size"] == size and details["fsync-file"]["inode"] == inode
    assert os.path.samefile(details["fsync-file"]["folder"], folder)
    src, dst = details["rename"]["src"], details["rename"]["dst"]
    assert os.path.samefile(src.parent if str(src.parent) else ".", folder), f"temporary {src} is not in {folder}"
    assert src.name.startswith(".m.safetensors.portablenn-") and src.name.endswith(".tmp")
    assert dst.name == "m.safetensors" and os.path.samefile(dst, target)
    assert details["fsync-dir"]["watched"], "the directory fsynced is not the target's"
    assert checkpoint.load_checkpoint(target).architecture["sizes"] == [2, 3, 2]


@pytest.mark.skipif(not SUPPORTED, reason="reads fsynced descriptors through /proc/self/fd")
@pytest.mark.parametrize("before", ["an old checkpoint", "nothing"])
def test_a_power_cut_at_any_point_of_a_save_leaves_the_old_or_the_new_checkpoint(before, tmp_path, monkeypatch):
    """Replayed by fsync's rules: at every point of a save a power cut leaves the old file (or none, for a
    first save) or the complete new one, and once ``save`` has returned, only the new one."""
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "m.safetensors"
    old = checkpoint.save(_trained()[0], target).read_bytes() if before == "an old checkpoint" else ABSENT
    journal = Journal(folder, tmp_path / "journal").install(monkeypatch.setattr)
    checkpoint.save(_small(), target)
    journal.close()
    new = target.read_bytes()
    states = crash_states(tmp_path / "journal")
    for event, files in states:
        could = files.get("m.safetensors", {ABSENT})
        assert could <= {old, new}, f"a power cut after {event} could leave " + \
            ", ".join(sorted(str(c)[:40] for c in could - {old, new}))
    assert states[-1][1]["m.safetensors"] == {new}, "a power cut right after save() returned could lose the new file"
    assert len(states) > 2  # the journal saw the save


def test_a_save_closes_every_descriptor_it_opens(tmp_path):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("lists descriptors through /proc/self/fd")
    checkpoint.save(_small(), tmp_path / "m.safetensors")
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        checkpoint.save(_small(), tmp_path / "m.safetensors")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_directory_that_cannot_be_fsynced_still_saves(tmp_path, monkeypatch):
    """Some file systems (and Windows) refuse to open or fsync a directory: the save is complete regardless."""
    real_fsync, real_open = os.fsync, os.open
    refused = []

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            refused.append("fsync")
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    checkpoint.save(_small(), tmp_path / "m.safetensors")
    assert refused == ["fsync"]
    assert checkpoint.load_checkpoint(tmp_path / "m.safetensors").architecture["sizes"] == [2, 3, 2]

    def open_(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            refused.append("open")
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    checkpoint.save(pn.mlp([2, 4, 2]), tmp_path / "m.safetensors")
    assert refused == ["fsync", "open"]
    assert checkpoint.load_checkpoint(tmp_path / "m.safetensors").architecture["sizes"] == [2, 4, 2]
    assert _leftovers(tmp_path, "m.safetensors") == []


# -- bad files -------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "bad-header", "header-too-long"])
def test_damaged_files_raise_checkpoint_error(damage, tmp_path):
    path = checkpoint.save(_trained()[0], tmp_path / "m.safetensors")
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    damaged = {
        "truncated": data[:-17],
        "random": np.random.default_rng(0).bytes(len(data)),
        "empty": b"",
        "bad-header": data[:8] + b"[" + data[9:],
        "header-too-long": struct.pack("<Q", size + 1000) + data[8:],
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="not a valid safetensors checkpoint"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError):
        checkpoint.load_checkpoint(path)


def _rewrite(path, tensor_changes=None, checksum=True, **changes):
    """Re-serialise a checkpoint with some metadata entries (None removes one) or tensors changed, with
    a matching checksum unless ``checksum`` is False (as a buggy or hostile writer might)."""
    import safetensors.numpy
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        meta = {k: v for k, v in {**fh.metadata(), **changes}.items() if v is not None}
    tensors.update(tensor_changes or {})
    if checksum:
        meta["sha256"] = checkpoint._digest(tensors, meta)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))


def test_newer_format_is_refused(tmp_path):
    path = checkpoint.save(_trained()[0], tmp_path / "m.safetensors")
    _rewrite(path, format_version=str(checkpoint.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=r"written by a newer portablenn \(format 2\); upgrade"):
        checkpoint.load(path)


def test_flipped_bytes_are_caught_by_the_checksum(tmp_path):
    path = checkpoint.save(_trained()[0], tmp_path / "m.safetensors", metadata={"epoch": 3})
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    flipped = bytearray(data)
    flipped[-5] ^= 0x10  # inside the last tensor's data: still a well-formed safetensors file
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="is corrupted: its content does not match the SHA-256 checksum"):
        checkpoint.load(path)
    header = data[8:8 + size]
    assert header.count(b'"epoch":"3"') == 1
    path.write_bytes(data[:8] + header.replace(b'"epoch":"3"', b'"epoch":"7"') + data[8 + size:])
    with pytest.raises(CheckpointError, match="checksum"):
        checkpoint.load_checkpoint(path)
    path.write_bytes(data)
    assert checkpoint.load_checkpoint(path).metadata["epoch"] == "3"


def test_a_rewritten_file_without_a_valid_checksum_is_refused(tmp_path):
    path = checkpoint.save(_trained()[0], tmp_path / "m.safetensors")
    _rewrite(path, {"0.bias": np.zeros(7)}, checksum=False)
    with pytest.raises(CheckpointError, match="checksum"):
        checkpoint.load(path)
    _rewrite(path, sha256=None, checksum=False)
    with pytest.raises(CheckpointError, match=r"has no checksum \(sha256\)"):
        checkpoint.load(path)


def _tamper(path, edit, sign=False):
    """Re-serialise a checkpoint after ``edit(tensors, meta)`` changed it in place; keep its old checksum (a
    corrupted or altered file) or, with ``sign``, compute a matching one (a buggy or hostile writer)."""
    import safetensors.numpy
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        meta = dict(fh.metadata())
    edit(tensors, meta)
    if sign:
        meta["sha256"] = checkpoint._digest(tensors, meta)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))


def _rename(tensors, old, new):
    tensors[new] = tensors.pop(old)


def _saved_with_everything(path, dtype="float64"):
    """A checkpoint with parameters, Adam's two buffers per parameter, extra arrays and run metadata."""
    X, y = classification_data(n=20, features=4)
    model, opt = pn.mlp([4, 7, 3], dtype=dtype, seed=3), pn.Adam(0.01)
    pn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=10, shuffle=False, l2=1e-3)
    checkpoint.save(model, path, optimizer=opt, extra={"a": np.arange(3, dtype=np.uint64)},
                    metadata={"epoch": 1, "note": "x"})
    return model, opt


# Each alteration keeps the saved checksum; the bytes of every tensor, in the order they are hashed, stay the same
# unless the alteration is to bytes, so only a checksum over names, dtypes and shapes tells.
ALTERED = {
    "a parameter renamed": lambda t, m: _rename(t, "2.bias", "2.biaz"),
    "an extra array renamed": lambda t, m: _rename(t, "extra.a", "extra.b"),
    "an optimizer buffer renamed": lambda t, m: _rename(t, "optim.2.bias.1", "optim.2.bias.2"),
    "a parameter's dtype (float64 bytes as int64)": lambda t, m: t.update({"0.weight": t["0.weight"].view(np.int64)}),
    "an extra array's dtype (uint64 as int64)": lambda t, m: t.update({"extra.a": t["extra.a"].view(np.int64)}),
    "a buffer's dtype (float64 as int64)": lambda t, m: t.update({"optim.0.bias.0": t["optim.0.bias.0"].view("i8")}),
    "a weight transposed in shape only": lambda t, m: t.update({"0.weight": t["0.weight"].reshape(7, 4)}),
    "a bias reshaped (7,) -> (1, 7)": lambda t, m: t.update({"0.bias": t["0.bias"].reshape(1, 7)}),
    "a buffer reshaped": lambda t, m: t.update({"optim.0.weight.0": t["optim.0.weight.0"].reshape(7, 4)}),
    "one byte of a weight": lambda t, m: t.update({"2.weight": t["2.weight"] + 2.0 ** -40}),
    "one byte of a buffer": lambda t, m: t.update({"optim.2.weight.1": t["optim.2.weight.1"] * 2}),
    "a tensor removed": lambda t, m: t.pop("extra.a"),
    "a tensor added": lambda t, m: t.update({"extra.z": np.zeros(1)}),
    "a metadata value": lambda t, m: m.update(epoch="2"),
    "a metadata key renamed": lambda t, m: m.update(notf=m.pop("note")),
    "a metadata entry removed": lambda t, m: m.pop("portablenn_version"),
    "a metadata entry added": lambda t, m: m.update(extra="1"),
    "the optimizer's steps": lambda t, m: m.update(optimizer=m["optimizer"].replace('"steps": 2', '"steps": 3')),
}


@pytest.mark.parametrize("name", sorted(ALTERED))
def test_the_checksum_covers_every_name_dtype_shape_byte_and_metadata_entry(name, tmp_path):
    path = tmp_path / "m.safetensors"
    _saved_with_everything(path)
    before = path.read_bytes()
    _tamper(path, ALTERED[name])
    assert path.read_bytes() != before
    with pytest.raises(CheckpointError, match="is corrupted: its content does not match the SHA-256 checksum"):
        checkpoint.load_checkpoint(path)
    _tamper(path, lambda t, m: None, sign=True)  # the same content re-signed: the checksum alone refused it
    try:
        checkpoint.load_checkpoint(path)
    except CheckpointError as exc:
        assert "SHA-256" not in str(exc), exc


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: t.pop("optim.0.weight.0"), r"lacks some optimizer buffers of '0.weight' \(has \[1\]\)"),
    (lambda t, m: _rename(t, "optim.0.bias.1", "optim.0.bias.2"), r"lacks some optimizer buffers of '0.bias' "
                                                                  r"\(has \[0, 2\]\)"),
    (lambda t, m: _rename(t, "optim.2.weight.0", "optim.2.weight.3"), r"of '2.weight' \(has \[1, 3\]\)"),
    (lambda t, m: _rename(t, "optim.0.bias.1", "optim.0.bias.x"), r"malformed optimizer tensor name "
                                                                  r"'optim.0.bias.x'"),
    (lambda t, m: _rename(t, "optim.0.bias.1", "optim.0.bias.00001"), r"malformed optimizer tensor name"),
    (lambda t, m: _rename(t, "optim.0.bias.1", "optim.0.bias."), r"malformed optimizer tensor name"),
    (lambda t, m: t.update({"optim.2.bias.1": np.zeros(3, np.int64)}), r"optimizer buffer optim.2.bias.1 has dtype "
                                                                       r"int64, not a float"),
    (lambda t, m: t.update({"optim.2.bias.0": np.zeros(3, np.bool_)}), r"optim.2.bias.0 has dtype bool, not a float"),
    (lambda t, m: t.update({"2.bias": np.zeros(3, np.int64)}), r"parameter '2.bias' has dtype int64, not a float"),
])
def test_optimizer_buffers_numbered_from_zero_without_gaps_and_float(edit, message, tmp_path):
    """Checksum-valid files (a buggy writer) whose optimizer buffers have gaps, odd names or integer dtypes."""
    path = tmp_path / "m.safetensors"
    _saved_with_everything(path)
    _tamper(path, edit, sign=True)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: t.update({"0.weight": t["0.weight"].reshape(1, 4, 7)}), r"'0.weight' has shape \(1, 4, 7\), the "
                                                                          r"architecture needs \(4, 7\)"),
    (lambda t, m: t.update({"0.bias": t["0.bias"].reshape(7, 1)}), r"'0.bias' has shape \(7, 1\), the architecture "
                                                                   r"needs \(7,\)"),
    (lambda t, m: t.update({"0.bias": np.zeros((1, 1, 7))}), r"'0.bias' has shape \(1, 1, 7\)"),
    (lambda t, m: t.pop("2.bias"), r"it has no parameter '2.bias' of shape \(3,\)"),
    (lambda t, m: t.update({"4.weight": np.zeros((3, 3))}), r"it has parameter '4.weight' that the model lacks"),
])
def test_parameters_must_be_exactly_what_the_architecture_describes(edit, message, tmp_path):
    path = tmp_path / "m.safetensors"
    _saved_with_everything(path)
    _tamper(path, edit, sign=True)
    with pytest.raises(CheckpointError, match=r"does not match the model its architecture describes: " + message):
        checkpoint.load_checkpoint(path)


def test_optimizer_buffers_come_back_complete_in_their_order(tmp_path):
    """Adam's (m, v) in that order for every parameter, in the model's order; restored with the L2 and steps."""
    path = tmp_path / "m.safetensors"
    model, opt = _saved_with_everything(path)
    ckpt = checkpoint.load_checkpoint(path)
    assert list(ckpt.optimizer_state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for key, (m, v) in opt.state.items():
        assert len(ckpt.optimizer_state[key]) == 2
        np.testing.assert_array_equal(ckpt.optimizer_state[key][0], m)
        np.testing.assert_array_equal(ckpt.optimizer_state[key][1], v)
        assert not np.array_equal(m, v)  # the order is visible
    restored = checkpoint.restore_optimizer(pn.Adam(0.01), ckpt, model)
    assert restored.l2 == 1e-3 and restored.steps == opt.steps == 2
    for key, (m, v) in opt.state.items():
        np.testing.assert_array_equal(restored.state[key][0], m)
        np.testing.assert_array_equal(restored.state[key][1], v)


@pytest.mark.parametrize("edit, optimizer, message", [
    (lambda t, m: t.pop("optim.2.weight.1"), "Adam", r"state for '2.weight' has 1 buffers, Adam needs 2"),
    (lambda t, m: t.update({"optim.0.bias.2": np.zeros(7)}), "Adam", r"state for '0.bias' has 3 buffers, Adam needs 2"),
    (lambda t, m: t.update({"optim.4.weight.0": np.zeros((3, 3))}), "Adam",
     r"state for '4.weight' has no parameter in the model"),
    (lambda t, m: t.update({"optim.0.bias.0": np.zeros(8)}), "Adam",
     r"state for '0.bias' has shape \(8,\), the parameter has \(7,\)"),
    (lambda t, m: t.update({"optim.2.weight.1": np.zeros((3, 7))}), "Adam",
     r"state for '2.weight' has shape \(3, 7\), the parameter has \(7, 3\)"),
])
def test_restore_optimizer_refuses_buffers_that_do_not_fit(edit, optimizer, message, tmp_path):
    path = tmp_path / "m.safetensors"
    model, _ = _saved_with_everything(path)
    _tamper(path, edit, sign=True)
    ckpt = checkpoint.load_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.restore_optimizer(getattr(pn, optimizer)(0.01), ckpt, model)


def test_momentum_needs_exactly_one_buffer(tmp_path):
    X, y = classification_data(n=20, features=4)
    model, opt = pn.mlp([4, 5, 3], seed=1), pn.SGD(0.1, momentum=0.9)
    pn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=10, shuffle=False)
    path = checkpoint.save(model, tmp_path / "m.safetensors", optimizer=opt)
    _tamper(path, lambda t, m: t.update({"optim.0.weight.1": t["optim.0.weight.0"]}), sign=True)
    with pytest.raises(CheckpointError, match=r"state for '0.weight' has 2 buffers, SGD needs 1"):
        checkpoint.restore_optimizer(pn.SGD(0.1, momentum=0.9), tmp_path / "m.safetensors", model)


@pytest.mark.parametrize("saved, buffers, model_dtype", [
    ("float64", None, "float32"),  # a float64 run resumed in float32
    ("float32", "float64", "float32"),  # a writer that stored wider buffers than the parameters
    ("float32", "float16", "float32"),
    ("float32", None, "float64"),
])
def test_restored_buffers_take_the_models_dtype(saved, buffers, model_dtype, tmp_path, device):
    """Buffers are restored in the dtype of the model they train, on its device, whatever the file holds."""
    if not device.supports(model_dtype) or not device.supports(saved):
        pytest.skip(f"{device.name} lacks a dtype")
    path = tmp_path / "m.safetensors"
    _, opt = _saved_with_everything(path, dtype=saved)
    if buffers:
        _tamper(path, lambda t, m: t.update({k: v.astype(buffers) for k, v in t.items() if k.startswith("optim.")}),
                sign=True)
    model = pn.mlp([4, 7, 3], dtype=model_dtype).to(device)
    checkpoint.load_into(model, path)
    restored = checkpoint.restore_optimizer(pn.Adam(0.01), path, model)
    for key, pair in restored.state.items():
        for i, buffer in enumerate(pair):
            assert device.to_numpy(buffer).dtype == np.dtype(model_dtype), (key, i)
            assert str(buffer.dtype).endswith(model_dtype), (key, i, buffer.dtype)
            np.testing.assert_allclose(device.to_numpy(buffer), opt.state[key][i], rtol=1e-3, atol=1e-6)
    X, y = classification_data(n=20, features=4)
    pn.fit(model, X.astype(model_dtype), y, optimizer=restored, epochs=1, batch_size=10, shuffle=False)
    assert all(str(b.dtype).endswith(model_dtype) for pair in restored.state.values() for b in pair)


def test_a_bias_stored_as_a_row_loads(tmp_path):
    """Biases of shape (1, out), as some writers keep them, fit the architecture and the model."""
    path = tmp_path / "m.safetensors"
    model, _ = _saved_with_everything(path)
    _tamper(path, lambda t, m: t.update({k: t[k].reshape(1, -1) for k in ("0.bias", "2.bias")}), sign=True)
    target = pn.mlp([4, 7, 3], dtype="float64")
    checkpoint.load_into(target, path)
    for loaded in (checkpoint.load(path), target):
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)


def test_save_refuses_optimizer_state_of_another_model(tmp_path):
    X, y = classification_data(n=20, features=4)
    other, opt = pn.mlp([4, 6, 2, 3], seed=0), pn.SGD(0.1, momentum=0.5)
    pn.fit(other, X, y, optimizer=opt, epochs=1, batch_size=10, shuffle=False)
    with pytest.raises(CheckpointError, match=r"optimizer state entry '4.weight' is not a parameter of the model"):
        checkpoint.save(pn.mlp([4, 6, 3]), tmp_path / "m.safetensors", optimizer=opt)
    assert list(tmp_path.iterdir()) == []


def test_foreign_safetensors_file_is_refused(tmp_path):
    import safetensors.numpy

    path = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({"embedding": np.zeros((3, 2), dtype=np.float32)}, path)
    with pytest.raises(CheckpointError, match="not a portablenn checkpoint"):
        checkpoint.load(path)


def test_corrupted_architecture_metadata(tmp_path):
    path = checkpoint.save(_trained()[0], tmp_path / "m.safetensors")
    _rewrite(path, architecture="{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        checkpoint.load(path)
    _rewrite(path, architecture=json.dumps({"sizes": [4, 7, 5, 3], "activation": "mish"}))
    with pytest.raises(CheckpointError, match="cannot build.*mish"):
        checkpoint.load(path)


def test_weights_that_do_not_fit_the_saved_architecture(tmp_path):
    path = checkpoint.save(_trained()[0], tmp_path / "m.safetensors")
    _rewrite(path, architecture=json.dumps({"sizes": [4, 7, 5], "activation": "relu", "bias": True}))
    with pytest.raises(CheckpointError, match=r"does not match the model (its architecture describes)?: it has parameter '4.bias'"):
        checkpoint.load(path)


@pytest.mark.parametrize("sizes, bias, message", [
    ([4, 7, 5, 3], False, r"it has parameter '0.bias' that the model lacks"),
    ([4, 8, 5, 3], True, r"'0.weight' has shape \(4, 7\), the model expects \(4, 8\)"),
    ([4, 7, 3], True, r"'2.weight' has shape \(7, 5\), the model expects \(7, 3\)"),
    ([4, 7, 5], True, r"it has parameter '4.bias' that the model lacks"),
    ([4, 7, 5, 3, 2], True, r"it has no parameter '6.weight'"),
])
def test_load_into_a_mismatched_model(sizes, bias, message, tmp_path):
    path = checkpoint.save(_trained()[0], tmp_path / "m.safetensors")
    other = pn.mlp(sizes, bias=bias, dtype="float64")
    before = other.state_dict()
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_into(other, path)
    for key, value in other.state_dict().items():  # untouched
        np.testing.assert_array_equal(value, before[key])


def test_load_into_a_matching_model_on_a_device(device, tmp_path):
    model, X, _ = _trained("float32")
    path = checkpoint.save(model, tmp_path / "m.safetensors", metadata={"epoch": 7})
    target = pn.mlp([4, 7, 5, 3], seed=42).to(device)
    ckpt = checkpoint.load_into(target, path)
    assert ckpt.metadata["epoch"] == "7" and target.device == device
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key], value)


# -- the training options portablenn train writes (#18's): checked where present, absent in older files --------------
def _with_train_options(path, **options):
    model, opt = pn.mlp([4, 3], dtype="float64"), pn.SGD(0.1)
    base = {"dataset": "spiral", "seed": 0, "lr": 0.1, "l2": 0.0, "batch_size": 0, "shuffle": True, "epochs": 3,
            "log_every": 1}
    checkpoint.save(model, path, optimizer=opt, metadata={"train": {**base, **options}})


GOOD_TRAIN_OPTIONS = dict(loss="mse", targets=2, clip_grad=0.5, val_fraction=0.25,
                          early_stopping={"monitor": "val_r2", "patience": 3, "min_delta": 0.0},
                          early_stopping_state={"best": float("-inf"), "best_epoch": None, "wait": 0,
                                                "stopped_epoch": None})


@pytest.mark.parametrize("key, value, message", [
    ("loss", "hinge", "train loss must be one of binary_cross_entropy, huber, mse, softmax_cross_entropy"),
    ("loss", 3, "train loss must be one of"),
    ("targets", 0, "train targets must be an integer from 1"),
    ("targets", 1.5, "train targets must be an integer"),
    ("clip_grad", 0, "train clip_grad must be a finite number > 0"),
    ("clip_grad", "1", "train clip_grad must be a finite number"),
    ("val_fraction", 1.0, r"train val_fraction must be a finite number in \(0, 1\)"),
    ("early_stopping", {"monitor": "loss", "patience": 0, "min_delta": 0}, "train early_stopping patience must be"),
    ("early_stopping", {"monitor": "loss", "patience": 1}, "train early_stopping must be an object"),
    ("early_stopping", {"monitor": "", "patience": 1, "min_delta": 0}, "train early_stopping monitor must be a line"),
    ("early_stopping", {"monitor": "loss", "patience": 1, "min_delta": -1}, "train early_stopping min_delta must be"),
    ("early_stopping_state", {"best": None, "best_epoch": None, "wait": 0}, "train early_stopping_state must be an"),
    ("early_stopping_state", {"best": "x", "best_epoch": None, "wait": 0, "stopped_epoch": None},
     "train early_stopping_state best must be a number or null"),
    ("early_stopping_state", {"best": 1.0, "best_epoch": 0, "wait": 0, "stopped_epoch": None},
     "train early_stopping_state best_epoch must be an integer from 1"),
    ("early_stopping_state", {"best": 1.0, "best_epoch": 2, "wait": -1, "stopped_epoch": None},
     "train early_stopping_state wait must be an integer from 0"),
    ("early_stopping_state", {"best": 1.0, "best_epoch": 2, "wait": 0, "stopped_epoch": True},
     "train early_stopping_state stopped_epoch must be an integer"),
])
def test_new_training_options_are_checked(key, value, message, tmp_path):
    _with_train_options(tmp_path / "good.safetensors", **GOOD_TRAIN_OPTIONS)
    checkpoint.load_checkpoint(tmp_path / "good.safetensors")
    _with_train_options(tmp_path / "old.safetensors")  # none of them: a file from before they existed
    checkpoint.load_checkpoint(tmp_path / "old.safetensors")
    _with_train_options(tmp_path / "bad.safetensors", **{**GOOD_TRAIN_OPTIONS, key: value})
    with pytest.raises(CheckpointError, match=f"has corrupted metadata: {message}"):
        checkpoint.load_checkpoint(tmp_path / "bad.safetensors")


def test_weight_decay_is_checked(tmp_path):
    path = tmp_path / "c.safetensors"
    X, y = classification_data(n=20, features=4)
    model, opt = pn.mlp([4, 3], dtype="float64"), pn.AdamW(0.01, weight_decay=0.2)
    pn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=10)
    checkpoint.save(model, path, optimizer=opt)
    assert checkpoint.load_checkpoint(path).optimizer_config["weight_decay"] == 0.2
    _tamper(path, lambda t, m: m.update(optimizer=m["optimizer"].replace('"weight_decay": 0.2', '"weight_decay": -1')),
            sign=True)
    with pytest.raises(CheckpointError, match="optimizer weight_decay must be a finite number >= 0"):
        checkpoint.load_checkpoint(path)
