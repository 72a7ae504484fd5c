"""Never destroy a file portablenn did not write, and check every output before the first epoch (issue #15,
principles 1 and 2): through the command line as a user runs it, and through the Python API."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import portablenn as pn
from portablenn import checkpoint, outputs
from portablenn.checkpoint import CheckpointError

pytest.importorskip("safetensors")

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # permissions do not stop root


def run(*args, cwd):
    """``python -m portablenn ARGS`` in ``cwd`` -> CompletedProcess (text, never raises)."""
    return subprocess.run([sys.executable, "-m", "portablenn", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PORTABLENN_DISABLE_CUDA": "1"}, timeout=300)


def refused(result, *words):
    """Exit 2, one line on stderr naming the problem, no traceback, and not one epoch trained."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("portablenn: error:"), result.stderr
    assert "| Epoch" not in result.stdout, "refused only after training"
    for word in words:
        assert word in lines[0], (word, lines[0])


def _state(path):
    """What a protected path is: its bytes, a directory's listing, or its file type."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return path.read_bytes()
    if stat.S_ISDIR(st.st_mode):
        return sorted(p.name for p in path.iterdir())
    return stat.S_IFMT(st.st_mode)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The bytes of a checkpoint written by ``portablenn train`` (once for the module)."""
    folder = tmp_path_factory.mktemp("trained")
    assert run("train", "--epochs", "2", "--quiet", "--save", "ours.safetensors", cwd=folder).returncode == 0
    return (folder / "ours.safetensors").read_bytes()


@pytest.fixture
def files(tmp_path, trained):
    """A user's folder: data, notes, a FIFO, a folder, a checkpoint of ours, and a symlink to the data."""
    from portablenn.datasets import spiral

    X, y = spiral()
    (tmp_path / "mydata.csv").write_text("\n".join(f"{a},{b},{int(c)}" for (a, b), c in zip(X, y)) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(f"{a},{b},{int(c)}" for (a, b), c in zip(X[::3], y[::3])) + "\n")
    np.savez(tmp_path / "mydata.npz", X=X, y=y)
    (tmp_path / "notes.txt").write_text("my thesis notes\n")
    (tmp_path / "notes.csv").write_text("name,score\nada,3\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("keep me\n")
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "history.png").write_text("not a picture: a file the user named history.png\n")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "mydata.csv")
    (tmp_path / "ours.safetensors").write_bytes(trained)
    np.save(tmp_path / "x.npy", X[:5])
    np.savetxt(tmp_path / "x.csv", X[:5], delimiter=",")
    return tmp_path


# -- principle 1: an output replaces only portablenn's own file, never an input, a folder or a FIFO ------------
TRAIN = ["train", "--epochs", "3", "--quiet"]
NOT_OURS = [  # (id, arguments, the protected path, words of the message)
    ("save over the dataset", [*TRAIN, "--dataset", "csv:mydata.csv", "--save", "mydata.csv"], "mydata.csv",
     ["--save mydata.csv is the --dataset file"]),
    ("save over the dataset, --overwrite", [*TRAIN, "--dataset", "csv:mydata.csv", "--save", "mydata.csv",
                                            "--overwrite"], "mydata.csv", ["not even with --overwrite"]),
    ("save over the npz dataset", [*TRAIN, "--dataset", "npz:mydata.npz", "--save", "./mydata.npz", "--overwrite"],
     "mydata.npz", ["the --dataset file"]),
    ("save over the dataset by a symlink", [*TRAIN, "--dataset", "csv:mydata.csv", "--save", "link.safetensors",
                                            "--overwrite"], "mydata.csv", ["the --dataset file"]),
    ("save over the --val file", [*TRAIN, "--dataset", "csv:mydata.csv", "--val", "val.csv", "--save", "val.csv",
                                  "--overwrite"], "val.csv", ["the --val file"]),
    ("log into the dataset", [*TRAIN, "--dataset", "csv:mydata.csv", "--log", "mydata.csv"], "mydata.csv",
     ["--log mydata.csv is the --dataset file"]),
    ("log into the resumed checkpoint", ["train", "--resume", "ours.safetensors", "--epochs", "4", "--log",
                                         "ours.safetensors", "--overwrite"], "ours.safetensors",
     ["the --resume checkpoint"]),
    ("save over notes", [*TRAIN, "--save", "notes.txt"], "notes.txt", ["not a portablenn checkpoint", "--overwrite"]),
    ("save over a user's csv", [*TRAIN, "--save", "notes.csv"], "notes.csv", ["not a portablenn checkpoint"]),
    ("log into notes", [*TRAIN, "--log", "notes.txt"], "notes.txt", ["not a portablenn log"]),
    ("log into a checkpoint", [*TRAIN, "--log", "ours.safetensors"], "ours.safetensors", ["not a portablenn log"]),
    ("save over a folder", [*TRAIN, "--save", "folder", "--overwrite"], "folder", ["is a directory"]),
    ("log into a folder", [*TRAIN, "--log", "folder"], "folder", ["is a directory"]),
    ("save over a FIFO", [*TRAIN, "--save", "fifo", "--overwrite"], "fifo", ["a FIFO", "not a regular file"]),
    ("log into a FIFO", [*TRAIN, "--log", "fifo"], "fifo", ["a FIFO"]),
    ("plot into a file", [*TRAIN, "--plot", "notes.txt"], "notes.txt", ["is not a directory"]),
    ("plot over a file named history.png", [*TRAIN, "--plot", "plots"], "plots", ["not a PNG image"]),
    ("save and log into one file", [*TRAIN, "--save", "run.out", "--log", "run.out"], None,
     ["--save and --log both name run.out"]),
    ("predict over its input", ["predict", "--checkpoint", "ours.safetensors", "--input", "x.csv", "--output",
                                "x.csv", "--overwrite"], "x.csv", ["the --input file"]),
    ("predict over notes", ["predict", "--checkpoint", "ours.safetensors", "--input", "x.npy", "--output",
                            "notes.csv"], "notes.csv", ["not a portablenn predictions file", "--overwrite"]),
    ("predict into a folder", ["predict", "--checkpoint", "ours.safetensors", "--input", "x.npy", "--output",
                               "folder.npz", "--overwrite"], "folder.npz", ["is a directory"]),
    ("predict into a FIFO", ["predict", "--checkpoint", "ours.safetensors", "--input", "x.npy", "--output",
                             "fifo.csv"], None, ["a FIFO"]),
    ("export over the checkpoint", ["export", "ours.safetensors", "--onnx", "ours.safetensors", "--overwrite"],
     "ours.safetensors", ["the checkpoint"]),
    ("export over notes", ["export", "ours.safetensors", "--onnx", "notes.txt"], "notes.txt",
     ["not an ONNX model exported by portablenn"]),
]


@pytest.mark.parametrize("name, args, protected, words", NOT_OURS, ids=[c[0] for c in NOT_OURS])
def test_cli_never_writes_a_file_that_is_not_ours(files, name, args, protected, words):
    if "fifo" in " ".join(args):
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        if "fifo.csv" in args:
            os.mkfifo(files / "fifo.csv")
            protected = "fifo.csv"
    if args[0] == "export":
        pytest.importorskip("ndonnx")
    before = _state(files / protected) if protected else None
    refused(run(*args, cwd=files), *words)
    if protected:
        assert _state(files / protected) == before, f"{protected} was changed"
    assert not (files / "run.out").exists()


def _log_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_replaces_its_own_files_and_anything_with_overwrite(files):
    """What may be written: portablenn's own earlier outputs, empty files, and (with --overwrite) a user's."""
    # its own checkpoint, log (appended), plots and predictions
    first = run(*TRAIN, "--save", "ours.safetensors", "--log", "run.jsonl", cwd=files)
    again = run(*TRAIN, "--save", "ours.safetensors", "--log", "run.jsonl", cwd=files)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert [r["epoch"] for r in _log_lines(files / "run.jsonl")] == [1, 2, 3, 1, 2, 3]
    pytest.importorskip("matplotlib")
    for _ in range(2):
        assert run(*TRAIN, "--plot", "pictures", cwd=files).returncode == 0
    for output in ("p.npz", "p.csv"):
        for _ in range(2):
            result = run("predict", "--checkpoint", "ours.safetensors", "--input", "x.npy", "--output", output,
                         cwd=files)
            assert result.returncode == 0 and f"5 predictions -> {output}" in result.stderr, result.stderr
    assert np.load(files / "p.npz")["classes"].shape == (5,)
    assert (files / "p.csv").read_text().startswith("class,p0,p1,p2\n")
    # an empty file holds nothing to lose
    (files / "empty.safetensors").write_bytes(b"")
    assert run(*TRAIN, "--save", "empty.safetensors", cwd=files).returncode == 0
    # --overwrite: the user's own files (a log that is not one is replaced, not appended to)
    assert run(*TRAIN, "--save", "notes.txt", "--log", "notes.csv", "--plot", "plots", "--overwrite",
               cwd=files).returncode == 0
    checkpoint.load_checkpoint(files / "notes.txt")
    assert [r["epoch"] for r in _log_lines(files / "notes.csv")] == [1, 2, 3]
    assert (files / "plots" / "history.png").read_bytes()[:8] == outputs.PNG_MAGIC
    # a resumed run saves back to the checkpoint it read (its own)
    assert run("train", "--resume", "ours.safetensors", "--epochs", "5", "--quiet", cwd=files).returncode == 0
    assert checkpoint.load_checkpoint(files / "ours.safetensors").metadata["epoch"] == "5"


# -- principle 2: every output and what it needs, checked (and its folder made) before the first epoch ----------
BEFORE_TRAINING = [  # (id, arguments, words); each is found before the first epoch
    ("save under a file", ["--save", "notes.txt/model.safetensors"], ["--save notes.txt/model.safetensors"]),
    ("log under a file", ["--log", "notes.txt/log.jsonl"], ["--log notes.txt/log.jsonl"]),
    ("plot under a file", ["--plot", "notes.txt/plots"], ["--plot notes.txt/plots"]),
    ("log is a folder", ["--log", "folder"], ["is a directory"]),
    ("checkpoint every without save", ["--checkpoint-every", "1"], ["--save"]),
]


@pytest.mark.parametrize("name, args, words", BEFORE_TRAINING, ids=[c[0] for c in BEFORE_TRAINING])
def test_cli_bad_outputs_are_found_before_the_first_epoch(files, name, args, words):
    refused(run("train", "--epochs", "3", "--quiet", *args, cwd=files), *words)


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders")
@pytest.mark.parametrize("flag", ["--save", "--log", "--plot"])
def test_cli_an_unwritable_folder_is_found_before_the_first_epoch(tmp_path, flag):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        refused(run("train", "--epochs", "3", "--quiet", flag, "ro/out", cwd=tmp_path), "cannot write in ro")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


@pytest.mark.parametrize("missing, flag, words", [
    ("matplotlib", ["--plot", "p"], ["--plot needs matplotlib", "pip install 'portablenn[plot]'"]),
    ("safetensors", ["--save", "m.safetensors"], ["checkpoints need safetensors"]),
])
def test_cli_a_missing_optional_dependency_is_found_before_the_first_epoch(tmp_path, missing, flag, words):
    code = (f"import sys; sys.modules[{missing!r}] = None; from portablenn.cli import main; "
            f"sys.exit(main(['train', '--epochs', '3', '--quiet', *{flag!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    refused(result, *words)
    assert list(tmp_path.iterdir()) == []


def test_cli_makes_the_output_folders_as_keras_does(tmp_path):
    """mkdir -p of the --save and --log folders and of --plot itself, then training writes there."""
    pytest.importorskip("matplotlib")
    result = run("train", "--epochs", "3", "--quiet", "--save", "a/b/m.safetensors", "--log", "c/d/log.jsonl",
                 "--plot", "e/f", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    checkpoint.load_checkpoint(tmp_path / "a/b/m.safetensors")
    assert len(_log_lines(tmp_path / "c/d/log.jsonl")) == 3
    assert (tmp_path / "e/f/history.png").exists()
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    result = run("predict", "--checkpoint", "a/b/m.safetensors", "--input", "x.npy", "--output", "g/h/p.npz",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "g/h/p.npz")["probabilities"].shape == (4, 3)


# -- the Python API: checkpoint.save and portablenn.outputs ------------------------------------------------------
def test_api_save_refuses_a_directory_and_a_fifo_and_leaves_no_temporary(tmp_path):
    model = pn.mlp([2, 3, 2])
    (tmp_path / "folder").mkdir()
    cases = [tmp_path / "folder"]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        cases.append(tmp_path / "fifo")
    for path in cases:
        kind = stat.S_IFMT(os.lstat(path).st_mode)
        with pytest.raises(CheckpointError, match="directory|FIFO"):
            checkpoint.save(model, path)
        assert stat.S_IFMT(os.lstat(path).st_mode) == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in cases)
    assert list((tmp_path / "folder").iterdir()) == []
    # the library replaces a regular file, as numpy.save does: the command line is the stricter door
    (tmp_path / "notes.txt").write_text("notes")
    checkpoint.save(model, tmp_path / "notes.txt")
    assert checkpoint.load_checkpoint(tmp_path / "notes.txt").architecture["sizes"] == [2, 3, 2]


def _peak_memory(run):
    """``(run(), the most bytes Python allocated meanwhile)``."""
    import tracemalloc

    tracemalloc.start()
    try:
        return run(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _png(metadata=None, late=False):
    """A real PNG's bytes (matplotlib's) with ``metadata`` as its text chunks (None: matplotlib's own Software
    chunk); ``late``: none, and portablenn's Software chunk after the image data, where no reader looks."""
    import io
    import struct
    import zlib

    from portablenn.plots import _figure

    fig, data = _figure(figsize=(1, 1)), io.BytesIO()
    fig.add_subplot().plot([0, 1])
    fig.savefig(data, format="png", metadata={"Software": None} if late else metadata)
    data = data.getvalue()
    if late:
        body = b"Software\0portablenn"
        at = data.index(b"IEND") - 4
        data = data[:at] + struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body)) \
            + data[at:]
    return data


def test_a_png_is_ours_only_with_portablenns_mark_and_plots_write_it(tmp_path):
    """A user's picture named like a plot is not portablenn's, whatever made it (a camera, matplotlib); the
    plots portablenn writes carry its mark in their Software text chunk, so a later run may replace them."""
    history = pn.History()
    history.records.append({"epoch": 1, "loss": 0.5, "error": 0.2, "seconds": 0.1})
    from portablenn.plots import plot_history

    path = plot_history(history, tmp_path / "history.png")
    assert outputs.is_ours(path, "png")
    assert not outputs.is_ours(_write(tmp_path / "photo.png", _png()), "png")
    with pytest.raises(outputs.OutputError, match="not a PNG image portablenn wrote"):
        outputs.check(tmp_path / "photo.png", "png", flag="--plot")
    assert outputs.check(tmp_path / "photo.png", "png", flag="--plot", overwrite=True)
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, none left


def test_api_is_ours_tells_portablenn_files_from_others(tmp_path):
    import io

    from safetensors.numpy import save as st_save

    model = pn.mlp([2, 3, 2])
    record = json.dumps({"epoch": 1, "loss": 0.5, "error": 0.1, "seconds": 0.01, "device": "numpy"})
    buffer = io.BytesIO()
    np.savez(buffer, classes=np.zeros(2, int), probabilities=np.zeros((2, 2)))
    ours = {
        "checkpoint": checkpoint.save(model, tmp_path / "m.safetensors"),
        "log": _write(tmp_path / "a.jsonl", record + "\n" + record + "\n"),
        "png": _write(tmp_path / "h.png", _png({"Software": "portablenn 0.1.0 (matplotlib)"})),
        "predictions-npz": _write(tmp_path / "p.npz", buffer.getvalue()),
        "predictions-csv": _write(tmp_path / "p.csv", "class,p0,p1\n0,0.9,0.1\n"),
    }
    others = {
        "checkpoint": [_write(tmp_path / "foreign.safetensors", st_save({"w": np.zeros(2)}, metadata={"a": "b"})),
                       _write(tmp_path / "c.csv", "1,2,0\n"), _write(tmp_path / "big", b"\xff" * 16)],
        "log": [_write(tmp_path / "b.jsonl", '{"name": "ada"}\n'), _write(tmp_path / "d.csv", "1,2,0\n"),
                _write(tmp_path / "e.jsonl", record + "\nnot json\n" + record + "\n")],
        "png": [_write(tmp_path / "x.png", "text"), _write(tmp_path / "photo.png", _png({"Software": None})),
                _write(tmp_path / "mpl.png", _png()), _write(tmp_path / "late.png", _png(late=True)),
                _write(tmp_path / "cut.png", _png({"Author": "me", "Software": "portablenn"})[:45])],
        "predictions-npz": [_write(tmp_path / "data.npz", b"PK\x03\x04 not really")],
        "predictions-csv": [_write(tmp_path / "q.csv", "x,y,label\n1,2,0\n")],
    }
    np.savez(tmp_path / "dataset.npz", X=np.zeros((2, 2)), y=np.zeros(2))
    others["predictions-npz"].append(tmp_path / "dataset.npz")
    for kind, path in ours.items():
        assert outputs.is_ours(path, kind), kind
    for kind, paths in others.items():
        for path in paths:
            assert not outputs.is_ours(path, kind), (kind, path.name)
    # a log whose last line a kill cut short is still ours
    assert outputs.is_ours(_write(tmp_path / "cut.jsonl", record + "\n" + record[:20]), "log")


def test_api_check_refuses_what_the_cli_refuses(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,0\n")
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data.csv")
    inputs = [(tmp_path / "data.csv", "the --dataset file")]
    cases = [  # (path, overwrite, words)
        (tmp_path / "data.csv", True, "the --dataset file"),
        (tmp_path / "link", True, "the --dataset file"),
        (tmp_path / "notes.txt", False, "not a portablenn checkpoint"),
        (tmp_path / "folder", True, "is a directory"),
        (tmp_path / "notes.txt" / "m", False, "is a file, not a directory"),
        (f"{tmp_path / 'new'}/", True, "ends with a path separator"),  # Path() would drop the / and write "new"
        (f"{tmp_path / 'folder'}/", True, "ends with a path separator"),
    ]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        cases.append((tmp_path / "fifo", True, "a FIFO"))
    if os.path.exists("/dev/null"):  # only checked here: a test through the CLI must never risk it
        cases.append(("/dev/null", True, "a character device"))
    for path, overwrite, words in cases:
        with pytest.raises(outputs.OutputError, match=words):
            outputs.check(path, "checkpoint", flag="--save", overwrite=overwrite, inputs=inputs)
    assert outputs.check(tmp_path / "notes.txt", "checkpoint", flag="--save", overwrite=True) == tmp_path / "notes.txt"
    assert outputs.check(tmp_path / "new" / "m", "checkpoint", flag="--save").name == "m"
    with pytest.raises(outputs.OutputError, match="both name"):
        outputs.check_distinct([("--save", tmp_path / "a"), ("--log", str(tmp_path / "." / "a"))])
    with pytest.raises(outputs.OutputError, match="is not a directory"):
        outputs.check_directory(tmp_path / "notes.txt", flag="--plot")
    with pytest.raises(outputs.OutputError, match="cannot create the directory"):
        outputs.prepare(tmp_path / "notes.txt" / "x" / "m", flag="--save")
    assert outputs.prepare(tmp_path / "made" / "here" / "m", flag="--save") and (tmp_path / "made" / "here").is_dir()
    assert sorted(p.name for p in (tmp_path / "made" / "here").iterdir()) == []


def test_sweep_removes_only_regular_files_of_dead_writers(tmp_path):
    """Only regular files are swept: a FIFO, a folder or a link with a temporary's name (and a dead writer) stay."""
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    name = lambda n: f".m.safetensors.portablenn-{outputs._HOST}-{dead}-{n:08d}.tmp"  # noqa: E731
    (tmp_path / name(1)).write_bytes(b"partial")
    (tmp_path / name(2)).mkdir()
    (tmp_path / "target").write_text("a user's file")
    (tmp_path / name(3)).symlink_to(tmp_path / "target")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / name(4))
    old = time.time() - 10 * outputs.STALE_SECONDS
    for n in (2, 3, 4):
        if os.path.lexists(tmp_path / name(n)):
            os.utime(tmp_path / name(n), (old, old), follow_symlinks=False)
    assert outputs.sweep_temporaries(tmp_path) == [name(1)]
    assert (tmp_path / name(2)).is_dir() and (tmp_path / name(3)).is_symlink()
    assert (tmp_path / "target").read_text() == "a user's file"
    assert outputs.sweep_temporaries(tmp_path / "missing") == []


def test_is_ours_reads_a_checkpoint_header_of_any_honest_length(tmp_path):
    from safetensors.numpy import save as st_save

    meta = {"format_version": "1", "architecture": "[]", "dtype": "float32"}
    small = _write(tmp_path / "small.safetensors", st_save({}, metadata=meta))  # a short header, still ours
    assert outputs.is_ours(small, "checkpoint")
    big = _write(tmp_path / "big.safetensors", st_save({f"t{i}": np.zeros(1) for i in range(2000)}, metadata=meta))
    assert outputs.is_ours(big, "checkpoint")
    data = big.read_bytes()
    _write(tmp_path / "bad.safetensors", (10**9).to_bytes(8, "little") + data[8:])  # a length no file has
    assert not outputs.is_ours(tmp_path / "bad.safetensors", "checkpoint")
    for missing in ("format_version", "architecture", "dtype"):
        other = {k: v for k, v in meta.items() if k != missing}
        assert not outputs.is_ours(_write(tmp_path / "o.safetensors", st_save({}, metadata=other)), "checkpoint")


def test_api_is_ours_knows_every_predictions_format_portablenn_predict_writes(tmp_path):
    """softmax cross-entropy (classes, probabilities), binary cross-entropy (labels, probabilities), regression
    (values): each in .npz and .csv is portablenn's; a user's file that merely looks alike is not."""
    import io

    def npz(name, **arrays):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return _write(tmp_path / name, buffer.getvalue())

    two = np.zeros((2, 2))
    ours = {
        "predictions-npz": [npz("c.npz", classes=np.zeros(2, int), probabilities=two),
                            npz("l.npz", labels=np.zeros((2, 2), int), probabilities=two),
                            npz("v.npz", values=two), npz("v1.npz", values=np.zeros((2, 1)))],
        "predictions-csv": [_write(tmp_path / "c.csv", "class,p0,p1\n0,0.9,0.1\n"),
                            _write(tmp_path / "l.csv", "label0,label1,p0,p1\n1,0,0.9,0.1\n"),
                            _write(tmp_path / "l1.csv", "label0,p0\r\n1,0.9\r\n"),
                            _write(tmp_path / "v.csv", "value0,value1\n0.5,-1.25\n"),
                            _write(tmp_path / "v1.csv", "value0\n0.5\n"),
                            _write(tmp_path / "wide.csv", ",".join(f"value{i}" for i in range(2000)) + "\n")],
    }
    others = {
        "predictions-npz": [npz("lv.npz", labels=two, values=two), npz("vx.npz", values=two, notes=two),
                            npz("p.npz", probabilities=two), npz("vv.npz", value=two)],
        "predictions-csv": [_write(tmp_path / "n.csv", "value0,notes\n1,a\n"),
                            _write(tmp_path / "v2.csv", "value1,value2\n1,2\n"),
                            _write(tmp_path / "vs.csv", "value0,value0\n1,2\n"),
                            _write(tmp_path / "lp.csv", "label0,label1,p0\n1,0,0.9\n"),
                            _write(tmp_path / "lx.csv", "label0,p0,notes\n1,0.9,a\n"),
                            _write(tmp_path / "cp.csv", "class,p1,p2\n0,0.9,0.1\n"),
                            _write(tmp_path / "c0.csv", "class\n0\n"),
                            _write(tmp_path / "cv.csv", "class,value0\n0,1\n"),
                            _write(tmp_path / "sp.csv", "value0, value1\n1,2\n"),
                            _write(tmp_path / "empty-header.csv", "\n1,2\n")],
    }
    for kind, paths in ours.items():
        for path in paths:
            assert outputs.is_ours(path, kind), (kind, path.name)
    for kind, paths in others.items():
        for path in paths:
            assert not outputs.is_ours(path, kind), (kind, path.name)
    # the refusal names every format it would have replaced
    with pytest.raises(outputs.OutputError, match="labels and probabilities, or values"):
        outputs.check(tmp_path / "vx.npz", "predictions-npz", flag="--output")
    with pytest.raises(outputs.OutputError, match=r"header class,p0,\.\.\., label0,\.\.\.,p0,\.\.\., or value0"):
        outputs.check(tmp_path / "n.csv", "predictions-csv", flag="--output")
    for path in ours["predictions-csv"]:
        assert outputs.check(path, "predictions-csv", flag="--output") == path


# -- a hostile review: names, links, empty paths, headers, interrupted exports -----------------------------------
def test_atomic_write_fits_the_temporary_name_to_any_name_the_file_system_takes(tmp_path):
    """A name of 255 bytes in multibyte characters is a valid file name; its temporary file must be one too, or
    the save fails after the training (the path check before it passed)."""
    for name in ("é" * 120 + ".safetensors", "😀" * 60 + ".st", "a" * 255):
        assert len(name.encode()) <= 255
        path = outputs.atomic_write(tmp_path / name, b"data")
        assert path.read_bytes() == b"data"
    checkpoint.save(pn.mlp([2, 3, 2]), tmp_path / ("é" * 120 + ".safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["é" * 120 + ".safetensors", "😀" * 60 + ".st",
                                                                  "a" * 255])


def test_cli_a_long_multibyte_name_is_saved(tmp_path):
    name = "😀" * 60 + ".safetensors"  # 252 bytes
    result = run("train", "--epochs", "1", "--quiet", "--save", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    checkpoint.load_checkpoint(tmp_path / name)


def test_check_distinct_sees_through_links_and_dot_dot_to_files_not_made_yet(tmp_path):
    """Two outputs are one file when a (dangling) symlink or a '..' after a linked folder leads there, though
    the file does not exist yet: the second write would replace the first's output."""
    (tmp_path / "other" / "deep").mkdir(parents=True)
    (tmp_path / "sub").symlink_to(tmp_path / "other" / "deep")
    (tmp_path / "lnk").symlink_to("x.safetensors")  # dangling: x.safetensors is made by the run
    (tmp_path / "h.safetensors").write_text("")
    os.link(tmp_path / "h.safetensors", tmp_path / "hard")
    for a, b in (("x.safetensors", "lnk"), ("sub/../m", "other/m"), ("h.safetensors", "hard")):
        with pytest.raises(outputs.OutputError, match="both name"):
            outputs.check_distinct([("--save", tmp_path / a), ("--log", tmp_path / b)])
    outputs.check_distinct([("--save", tmp_path / "sub" / "m"), ("--log", tmp_path / "other" / "m")])


def test_cli_refuses_two_outputs_that_a_dangling_link_makes_one(tmp_path):
    (tmp_path / "lnk").symlink_to("x.safetensors")
    refused(run("train", "--epochs", "1", "--quiet", "--save", "x.safetensors", "--log", "lnk", cwd=tmp_path),
            "both name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lnk"]


def test_is_ours_never_allocates_what_a_checkpoint_header_claims(tmp_path):
    """The header length of a safetensors file is a number in the file: a 10-byte file claiming a 99 MB header
    must not make a 99 MB read buffer."""
    import struct

    path = _write(tmp_path / "fake.safetensors", struct.pack("<Q", 99_000_000) + b"{}")
    ours, peak = _peak_memory(lambda: outputs.is_ours(path, "checkpoint"))
    assert not ours
    assert peak < 1 << 20, f"{peak} bytes allocated to recognise a 10-byte file"


@pytest.mark.parametrize("args, words", [
    (["train", "--epochs", "1", "--quiet", "--save", ""], ["--save", "empty"]),
    (["train", "--epochs", "1", "--quiet", "--log", ""], ["--log", "empty"]),
    (["train", "--epochs", "1", "--quiet", "--plot", ""], ["--plot", "empty"]),
    (["train", "--epochs", "1", "--quiet", "--animate", ""], ["--animate", "empty"]),
    (["predict", "--checkpoint", "ours.safetensors", "--input", "x.npy", "--output", ""], ["--output", "empty"]),
    (["export", "ours.safetensors", "--onnx", ""], ["--onnx", "empty"]),
    (["sweep", "--epochs", "1", "--lr", "0.1,1", "--save", ""], ["--save", "empty"]),
    (["sweep", "--epochs", "1", "--lr", "0.1,1", "--save-all", ""], ["--save-all", "empty"]),
    (["sweep", "--epochs", "1", "--lr", "0.1,1", "--log", ""], ["--log", "empty"]),
], ids=["save", "log", "plot", "animate", "predict", "export", "sweep save", "sweep save-all", "sweep log"])
def test_cli_an_empty_output_path_is_refused_not_ignored(files, args, words):
    """`--save "$OUT"` with OUT unset: refused before training, not a run that silently saves nothing (or, for
    predict, writes where the user did not say)."""
    if args[0] == "export":
        pytest.importorskip("ndonnx")
    before = sorted(p.name for p in files.iterdir())
    refused(run(*args, cwd=files), *words)
    assert sorted(p.name for p in files.iterdir()) == before


def test_export_is_atomic_an_interrupted_export_leaves_the_old_file(tmp_path, monkeypatch, trained):
    """A kill (here: an error) while the ONNX file is written leaves the earlier export whole, and nothing else."""
    pytest.importorskip("ndonnx")
    import onnx

    from portablenn.cli import main

    (tmp_path / "ours.safetensors").write_bytes(trained)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "ours.safetensors", "--onnx", "m.onnx"]) == 0
    before = (tmp_path / "m.onnx").read_bytes()

    def half(proto, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(proto.SerializeToString()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save", half)
    monkeypatch.setattr(onnx, "save_model", half)
    with pytest.raises(KeyboardInterrupt):
        from portablenn.cli import export

        export.run(type("A", (), {"checkpoint": "ours.safetensors", "onnx": "m.onnx", "overwrite": False})())
    assert (tmp_path / "m.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "ours.safetensors"]


def test_a_plot_of_an_older_portablenn_is_refused_with_a_message_that_says_why_and_what_to_do(tmp_path):
    """PNGs written before plots were marked are refused without --overwrite: the message says portablenn marks
    its PNGs (Software), so an unmarked one is not known to be its, and names --overwrite."""
    _write(tmp_path / "history.png", _png())
    with pytest.raises(outputs.OutputError) as info:
        outputs.check(tmp_path / "history.png", "png", flag="--plot")
    message = str(info.value)
    assert "\n" not in message
    for words in ("not a PNG image portablenn wrote", "Software", "older", "--overwrite"):
        assert words in message, (words, message)


def test_is_ours_reads_a_log_line_by_line_in_bounded_memory(tmp_path):
    """Recognising a log reads a line at a time, and a line no epoch record could be (megabytes without a newline:
    a user's data file) only up to a bound, not whole into memory."""

    record = json.dumps({"epoch": 1, "loss": 0.5, "error": 0.1, "seconds": 0.01, "device": "numpy"})
    for tail in ("x" * 30_000_000 + "\n", "x" * 30_000_000):
        path = _write(tmp_path / "run.jsonl", record + "\n" + tail)
        ours, peak = _peak_memory(lambda: outputs.is_ours(path, "log"))
        assert not ours
        assert peak < 8 << 20, f"{peak} bytes to read a log's lines"
    # a long record is still one (a sweep's settings): well under the bound
    long = json.dumps({"epoch": 1, "loss": 0.5, "name": "y" * 100_000})
    assert outputs.is_ours(_write(tmp_path / "long.jsonl", long + "\n" + long[:50]), "log")


@pytest.mark.parametrize("error", [ImportError("plotting needs matplotlib: pip install 'portablenn[plot]'"),
                                   OSError(28, "No space left on device")])
def test_cli_a_plot_that_fails_after_training_loses_neither_checkpoint_nor_log(tmp_path, monkeypatch, capsys, error):
    """matplotlib gone (or the disk full) by the time the plots are drawn: the checkpoint and the log of the
    finished training are on disk already, and the error is one line."""
    pytest.importorskip("matplotlib")
    from portablenn import plots
    from portablenn.cli import main

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(plots, "plot_history", fail)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--epochs", "2", "--quiet", "--save", "m.safetensors", "--log", "l.jsonl", "--plot", "p"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("portablenn: error:"), err
    assert checkpoint.load_checkpoint(tmp_path / "m.safetensors").metadata["epoch"] == "2"
    assert [r["epoch"] for r in _log_lines(tmp_path / "l.jsonl")] == [1, 2]
    assert not [p.name for p in tmp_path.rglob(".*.tmp")]


def test_a_refusal_is_one_line_whatever_the_name_holds(tmp_path):
    """A name with a newline (legal on POSIX) is shown escaped: the one-line error keeps its reason and names the
    file unambiguously, instead of being cut at the newline."""
    if os.name != "posix":
        pytest.skip("newlines in names are POSIX's")
    name = "a\nb.safetensors"
    (tmp_path / name).write_text("notes\n")
    refused(run("train", "--epochs", "1", "--quiet", "--save", name, cwd=tmp_path),
            r"--save a\nb.safetensors exists and is not a portablenn checkpoint", "--overwrite")
    assert (tmp_path / name).read_text() == "notes\n"
    with pytest.raises(outputs.OutputError, match=r"a\\tb\\x1b\[0m is a directory") as info:
        (tmp_path / "a\tb\x1b[0m").mkdir()
        outputs.check(tmp_path / "a\tb\x1b[0m", "checkpoint", flag="--save")
    assert str(info.value).isprintable()


def test_export_onnx_in_python_is_atomic_too(tmp_path, monkeypatch):
    """``portablenn.onnx.export_onnx`` (the command's and the Python API's) writes the file whole through a
    temporary one: an error mid-save leaves the earlier export, and a symlink there is replaced, not written
    through."""
    pytest.importorskip("ndonnx")
    import onnx

    from portablenn.onnx import export_onnx

    model = pn.mlp([3, 4, 2], seed=1)
    export_onnx(model, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    assert onnx.load(tmp_path / "m.onnx").graph.input[0].name == "input"

    def half(proto, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(proto.SerializeToString()[:100])
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(onnx, "save", half)
        with pytest.raises(KeyboardInterrupt):
            export_onnx(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    (tmp_path / "theirs.txt").write_text("a user's file")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "theirs.txt")
    export_onnx(model, tmp_path / "link.onnx")
    assert (tmp_path / "theirs.txt").read_text() == "a user's file" and not (tmp_path / "link.onnx").is_symlink()


def test_an_onnx_file_is_recognised_by_its_graphs_names_in_bounded_memory(tmp_path):
    """portablenn's exports (a classifier's logits and probabilities, a regression model's outputs) are its own; a
    model with other names, a truncated file or any other bytes are not; and deciding reads a few KB, however
    large the file's weights (skipped by seeking) or the file."""
    pytest.importorskip("ndonnx")

    import onnx

    from portablenn.onnx import export_onnx

    ours = export_onnx(pn.mlp([3, 4, 2], seed=1), tmp_path / "c.onnx")
    export_onnx(pn.mlp([3, 4, 1], seed=1), tmp_path / "r.onnx", loss="mse")
    heavy = onnx.ModelProto()
    heavy.CopyFrom(ours)
    heavy.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(5_000_000, np.float32), "big"))
    _write(tmp_path / "heavy.onnx", heavy.SerializeToString())  # 20 MB of weights before the graph's names
    renamed = onnx.ModelProto()
    renamed.CopyFrom(ours)
    renamed.graph.input[0].name = "x"
    _write(tmp_path / "renamed.onnx", renamed.SerializeToString())
    _write(tmp_path / "cut.onnx", (tmp_path / "c.onnx").read_bytes()[:-30])
    _write(tmp_path / "noise.onnx", np.random.default_rng(0).bytes(30_000_000))
    for name, expected in [("c", True), ("r", True), ("heavy", True), ("renamed", False), ("cut", False),
                           ("noise", False)]:
        ours, peak = _peak_memory(lambda: outputs.is_ours(tmp_path / f"{name}.onnx", "onnx"))
        assert ours is expected, name
        assert peak < 1_000_000, (name, peak)


def test_a_regression_models_export_may_be_replaced_by_the_next_export(tmp_path, capsys):
    """``export`` twice to one file: the second replaces the first without --overwrite, whatever the task."""
    pytest.importorskip("ndonnx")
    from _support import cli_run

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((30, 3)), y=rng.standard_normal(30))
    code, out, err = cli_run(capsys, "train", "--dataset", f"npz:{tmp_path / 'data.npz'}", "--loss", "mse",
                             "--epochs", "1", "--save", str(tmp_path / "r.safetensors"))
    assert code == 0, err
    for _ in range(2):
        code, out, err = cli_run(capsys, "export", str(tmp_path / "r.safetensors"), "--onnx", str(tmp_path / "r.onnx"))
        assert code == 0, err
