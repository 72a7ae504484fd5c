"""Nothing lost, nothing let in: checkpoints under SIGKILL, bad input through API and CLI (fuzzed readers:
``test_fuzz.py``)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import portablenn as pn
from portablenn import checkpoint

from _durability import SUPPORTED, crash_states


# -- checkpoints under SIGKILL: the file on disk is always one complete saved state --------------------------
# The writer also journals what a power cut at the kill would have left (tests/_durability.py): a kill alone
# cannot reveal a missing flush or fsync, since the page cache outlives the process.
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from _durability import Journal
    import portablenn as pn
    from portablenn import checkpoint
    path, journal = sys.argv[1], sys.argv[2]
    from pathlib import Path
    Journal(Path(path).parent, journal).install()
    models = [pn.mlp([50, 200, 10], seed=0), pn.mlp([4, 8, 3], seed=0)]  # 48 KiB; 0.5 KiB, under the file buffer
    for i in range(100000):
        model = models[i % 2]
        model.load_state_dict({k: np.full_like(v, i) for k, v in model.state_dict().items()})
        checkpoint.save(model, path, metadata={"i": i})
        print(i, flush=True)
""")


def _one_saved_state(data, where):
    """The checkpoint ``data`` loads, and all its tensors hold the one value its metadata names; returns it."""
    path = where / "check.safetensors"
    path.write_bytes(data)
    ckpt = checkpoint.load_checkpoint(path)  # must load: old or new, never partial
    i = int(ckpt.metadata["i"])
    for value in ckpt.state_dict.values():
        assert np.all(value == i), "a checkpoint mixes two saved states"
    return i


@pytest.mark.skipif(not SUPPORTED, reason="the power-cut journal reads descriptors through /proc/self/fd")
def test_sigkill_during_saves_never_leaves_a_broken_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "out"
    out.mkdir()
    path = out / "model.safetensors"
    tests = os.path.dirname(os.path.abspath(__file__))
    rng = np.random.default_rng(0)
    trials = 0
    for trial in range(25):
        journal = tmp_path / f"journal-{trial}"
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(journal), tests], stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()  # one save done: from now on a complete file exists
        time.sleep(float(rng.uniform(0, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last = int(([0] + proc.stdout.read().split())[-1])  # the last save that returned before the kill
        i = _one_saved_state(path.read_bytes(), tmp_path)  # what the killed process left
        assert last <= i <= last + 1
        # and what a power cut at the kill could have left: the last save that returned, or the one under way
        could = crash_states(journal)[-1][1].get("model.safetensors", set())
        assert could, f"trial {trial}: after a power cut no checkpoint would survive"
        for durable in could:
            assert isinstance(durable, bytes), f"trial {trial}: after a power cut the checkpoint could be {durable}"
            assert last <= _one_saved_state(durable, tmp_path) <= i, f"trial {trial}: a power cut loses save {last}"
        trials += 1
    leftovers = [p.name for p in out.iterdir() if p.name != "model.safetensors"]
    assert trials == 25
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)  # only temp files can remain
    # the next save into the folder removes the temporary files the killed writers left, and only those
    (out / ".notes.tmp").write_text("a user's hidden file")
    checkpoint.save(pn.mlp([50, 200, 10], seed=1), path)
    assert sorted(p.name for p in out.iterdir()) == [".notes.tmp", "model.safetensors"]


# -- the temporary files of a save: removed when their writer is gone, never while it lives ------------------
def _temporary(directory, target, host, pid, age, now):
    path = directory / f".{target}.portablenn-{host}-{pid}-{len(list(directory.iterdir())):08d}.tmp"
    path.write_bytes(b"partial")
    os.utime(path, (now - age, now - age))
    return path.name


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id until the kernel reuses it


def test_a_save_sweeps_only_abandoned_temporaries_of_its_own_naming(tmp_path):
    from portablenn import outputs

    now = time.time()
    here, elsewhere, dead = outputs._HOST, "0123abcd" if outputs._HOST != "0123abcd" else "fedc4321", _dead_pid()
    removed = {  # (target, host, pid, age in seconds): name
        "killed here": _temporary(tmp_path, "m.safetensors", here, dead, 1, now),
        "killed, another target": _temporary(tmp_path, "other.safetensors", here, dead, 1, now),
        "an hour old, another host": _temporary(tmp_path, "m.safetensors", elsewhere, 4242, 2 * 3600, now),
        "an hour old, pid reused": _temporary(tmp_path, "m.safetensors", here, os.getppid(), 2 * 3600, now),
    }
    kept = {
        "this process, writing": _temporary(tmp_path, "m.safetensors", here, os.getpid(), 1, now),
        "a live process here": _temporary(tmp_path, "m.safetensors", here, os.getppid(), 60, now),
        "fresh, another host": _temporary(tmp_path, "m.safetensors", elsewhere, dead, 60, now),
    }
    foreign = [".m.safetensors.k3j2h1g0.tmp", "notes.tmp", ".m.portablenn-xyz.tmp", "m.portablenn-0123abcd-1-x.tmp"]
    for name in foreign:  # the naming of earlier versions and of others: never touched
        (tmp_path / name).write_text("someone's")
        os.utime(tmp_path / name, (now - 10 * 3600, now - 10 * 3600))
    checkpoint.save(pn.mlp([2, 3]), tmp_path / "m.safetensors")
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(removed.values()), sorted(left & set(removed.values()))
    assert set(kept.values()) | set(foreign) | {"m.safetensors"} == left


CONCURRENT_WRITER = textwrap.dedent("""
    import sys
    import portablenn as pn
    from portablenn import checkpoint
    folder, name = sys.argv[1], sys.argv[2]
    model = pn.mlp([20, 300, 10], seed=0)
    for i in range(150):
        checkpoint.save(model, f"{folder}/{name}.safetensors", metadata={"i": i})
""")


def test_concurrent_saves_into_one_folder_never_remove_each_others_temporaries(tmp_path):
    """Two processes saving into the same folder: each save sweeps the folder, and neither loses a write."""
    script = tmp_path / "writer.py"
    script.write_text(CONCURRENT_WRITER)
    (tmp_path / "out").mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), name], stderr=subprocess.PIPE,
                              text=True) for name in ("a", "b", "a")]  # two of them even write the same file
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.safetensors", "b.safetensors"]


# -- bad input: the Python API raises the documented type, the CLI says one line and exits 2 ----------------
def _model():
    return pn.mlp([2, 4, 3])


X_OK = np.zeros((6, 2), dtype=np.float32)
Y_OK = np.array([0, 1, 2, 0, 1, 2])
BAD_INPUTS = [
    ("X not 2-D", dict(X=np.zeros(6)), "2-D"),
    ("length mismatch", dict(y=Y_OK[:5]), "labels"),
    ("non-numeric X", dict(X=np.array([["a", "b"]] * 6)), "real numbers"),
    ("NaN in X", dict(X=np.where(np.eye(6, 2) > 0, np.nan, 0.0)), "NaN"),
    ("inf in X", dict(X=np.where(np.eye(6, 2) > 0, np.inf, 0.0)), "infinite"),
    ("negative label", dict(y=np.array([0, 1, -1, 0, 1, 2])), "negative"),
    ("label too large", dict(y=np.array([0, 1, 3, 0, 1, 2])), "label 3"),
    ("non-integer label", dict(y=np.array([0, 1, 0.5, 0, 1, 2])), "integer"),
    ("empty dataset", dict(X=np.zeros((0, 2)), y=np.zeros(0, dtype=int)), "empty"),
    ("batch size 0", dict(batch_size=0), "batch_size"),
    ("batch size > n", dict(batch_size=7), "batch_size"),
    ("epochs < 0", dict(epochs=-1), "epochs"),
    ("lr <= 0", dict(lr=0.0), "learning rate"),
    ("lr not finite", dict(lr=float("nan")), "learning rate"),
    ("wrong feature count", dict(X=np.zeros((6, 3))), "features"),
]


@pytest.mark.parametrize("name, change, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_through_the_api(name, change, words):
    args = {**dict(X=X_OK, y=Y_OK, batch_size=2, epochs=1, lr=0.1), **change}
    with pytest.raises(ValueError, match=words):  # InputError is a ValueError
        pn.fit(_model(), args["X"], args["y"], optimizer=pn.SGD(args["lr"]), batch_size=args["batch_size"],
               epochs=args["epochs"])


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "portablenn", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PORTABLENN_DISABLE_CUDA": "1"}, timeout=120)


def test_bad_files_through_the_cli(tmp_path):
    """Each broken input file: exit 2, one line naming the problem, never a traceback."""
    (tmp_path / "ragged.csv").write_text("1,2,0\n3,0\n")
    (tmp_path / "nan.csv").write_text("1,nan,0\n3,4,1\n")
    (tmp_path / "label.csv").write_text("1,2,0.5\n3,4,1\n")
    (tmp_path / "empty.csv").write_text("")
    np.savez(tmp_path / "noy.npz", X=np.zeros((3, 2)))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    model = pn.mlp([3, 4, 2])
    checkpoint.save(model, tmp_path / "other.safetensors", metadata={"dataset": "spiral"})
    good = tmp_path / "good.safetensors"
    checkpoint.save(model, good)
    (tmp_path / "truncated.safetensors").write_bytes(good.read_bytes()[:-7])
    mnist_dir = tmp_path / "mnist"
    mnist_dir.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (mnist_dir / name).write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"short")
    cases = [
        (["train", "--dataset", "csv:ragged.csv"], "line"),
        (["train", "--dataset", "csv:nan.csv"], "NaN"),
        (["train", "--dataset", "csv:label.csv"], "integer"),
        (["train", "--dataset", "csv:empty.csv"], "empty"),
        (["train", "--dataset", "csv:missing.csv"], "missing.csv"),
        (["train", "--dataset", "npz:noy.npz"], "y"),
        (["train", "--dataset", "npz:bad.npz"], "bad.npz"),
        (["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--no-download"], "bytes"),
        (["eval", "--checkpoint", "bad.safetensors"], "bad.safetensors"),
        (["eval", "--checkpoint", "truncated.safetensors"], "truncated.safetensors"),
        (["eval", "--checkpoint", "other.safetensors", "--dataset", "spiral"], "features"),
        (["train", "--resume", "good.safetensors"], "good.safetensors"),
    ]
    for args, word in cases:
        result = _cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("portablenn: error:"), (args, result.stderr)
        assert word in lines[0], (args, lines[0])


# -- the input checks at their boundaries (portablenn.validation) ---------------------------------------------
F32 = float(np.finfo(np.float32).max)


def test_check_range_allows_float32s_largest_magnitude_and_nothing_beyond():
    from portablenn.validation import InputError, check_range

    beyond = float(np.nextafter(F32, np.inf))
    check_range(np.array([[F32, -F32], [0.0, 1.0]]), np.float32)
    for value in (beyond, -beyond, 1e39, -1e39):
        with pytest.raises(InputError, match=r"X has values too large for float32 \(magnitude above 3\.403e\+38\)"):
            check_range(np.array([[0.0, value]]), np.float32)
    check_range(np.array([[1e39, -1e300]]), np.float64)  # nothing to lose in float64
    check_range(np.array([[2**62]], dtype=np.int64), np.float32)  # integers always fit
    check_range(np.array([[1e38]], dtype=np.float32), np.float32)


@pytest.mark.parametrize("X, message", [
    (np.array([[1.0, np.nan]]), r"contains 1 NaN or infinite value"),
    (np.array([[np.inf, -np.inf]]), r"contains 2 NaN or infinite value"),
    (np.array([[1e308, 1e308]]), None),  # a sum that overflows, of finite values
    (np.array([[1e308, 1e308], [1.0, np.nan]]), r"contains 1 NaN"),
    (np.zeros((0, 3)), r"X is empty \(0 samples\)"),
    (np.zeros((2, 3, 1)), r"X must be 2-D"),
    (np.array([[True, False]]), r"must hold real numbers, got dtype bool"),
    (np.array([[1, 2]], dtype=np.int8), None),
])
def test_check_features(X, message):
    from portablenn.validation import InputError, check_features

    if message is None:
        assert check_features(X) == X.shape[0]
    else:
        with pytest.raises(InputError, match=message):
            check_features(X)


def test_check_features_counts_the_models_inputs():
    from portablenn.validation import InputError, check_features

    assert check_features(np.zeros((4, 3)), in_features=3) == 4
    for features in (2, 4):
        with pytest.raises(InputError, match=rf"X has {features} features per sample, the model expects 3"):
            check_features(np.zeros((4, features)), in_features=3)
    with pytest.raises(InputError, match="too large for float32"):
        check_features(np.array([[1e39]]), dtype=np.float32)


@pytest.mark.parametrize("y, ok", [
    ([0, 2, 1], True), ([0.0, 2.0, 1.0], True), ([True, False, True], True), (np.array([0, 2, 1], np.uint8), True),
    ([0, 3, 1], False), ([-1, 0, 1], False), ([0.0, np.inf, 1.0], False), ([0.0, -np.inf, 1.0], False),
    ([0.0, np.nan, 1.0], False), ([0.0, 0.5, 1.0], False), (["a", "b", "c"], False),
])
def test_check_labels_for_three_classes(y, ok):
    from portablenn.validation import InputError, check_labels

    if ok:
        assert check_labels(np.asarray(y), 3, 3).tolist() == np.asarray(y).astype(int).tolist()
    else:
        with pytest.raises(InputError):
            check_labels(np.asarray(y), 3, 3)


def test_check_labels_counts_and_shapes():
    from portablenn.validation import InputError, check_labels

    with pytest.raises(InputError, match=r"X has 4 samples but y has 3 labels"):
        check_labels(np.zeros(3, int), 4, 2)
    with pytest.raises(InputError, match=r"y must be 1-D"):
        check_labels(np.zeros((3, 1), int), 3, 2)
    with pytest.raises(InputError, match=r"y has label 2 but the model has only 2 classes \(labels must be 0\.\.1\)"):
        check_labels(np.array([0, 2, 1]), 3, 2)
    with pytest.raises(InputError, match=r"y has a negative label \(-1\); labels must be 0\.\.1"):
        check_labels(np.array([0, -1, 1]), 3, 2)


def test_batch_size_epochs_and_l2_at_their_limits():
    from portablenn.validation import InputError, check_batch_size, check_epochs, check_l2

    assert [check_batch_size(b, 6) for b in (1, 6, None, np.int64(3))] == [1, 6, 6, 3]
    for bad in (0, 7, -1, True, 2.0, "3"):
        with pytest.raises(InputError, match="batch_size"):
            check_batch_size(bad, 6)
    assert check_epochs(0) == 0 and check_epochs(np.int32(5)) == 5
    for bad in (-1, True, 1.5, None):
        with pytest.raises(InputError, match="epochs must be a non-negative integer"):
            check_epochs(bad)
    assert check_l2(0) == 0.0 and check_l2(1e300) == 1e300
    for bad in (-1e-12, float("inf"), float("nan")):
        with pytest.raises(InputError, match="l2 must be a finite number >= 0"):
            check_l2(bad)


def test_layer_sizes_that_do_not_chain():
    with pytest.raises(ValueError, match="layer 0 gives 3 features but layer 2 expects 4"):
        pn.Sequential(pn.Linear(2, 3), pn.ReLU(), pn.Linear(4, 5))


def test_top_level_save_and_load_round_trip(tmp_path):
    model = pn.mlp([4, 5, 3], seed=3)
    pn.save(model, tmp_path / "m.safetensors")
    again = pn.load(tmp_path / "m.safetensors", device="array_api_strict:device1")
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    np.testing.assert_array_equal(pn.predict_proba(again, x), pn.predict_proba(model, x))
