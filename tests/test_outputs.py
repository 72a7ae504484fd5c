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
