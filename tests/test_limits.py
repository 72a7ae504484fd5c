"""Memory follows the data, not a number in it: every reader and builder checks what a file or a flag would make
it allocate before allocating, and what is too large is one line (exit 2) from the CLI, the documented error from
the API. Each memory case runs in a subprocess under a 1 GiB address-space limit (RLIMIT_AS), so a regression
fails fast instead of exhausting the machine. Also the reader items of issue #15: the CSV header rule, the
requested dtype, single-class training sets."""
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import portablenn as pn
from portablenn import checkpoint
from portablenn.datasets import DatasetError, load_csv, load_npz

resource = pytest.importorskip("resource")  # RLIMIT_AS: POSIX only
LIMIT = 1 << 30  # the address space each memory case may use
ENV = {**os.environ, "PORTABLENN_DISABLE_CUDA": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _limited(argv, cwd):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=120,
                          preexec_fn=_limit)


def _cli(*args, cwd):
    return _limited(["-m", "portablenn", *args], cwd)


def assert_one_line(result, *words, code=2):
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("portablenn: error:"), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# -- crafted files -----------------------------------------------------------------------------------------
def _gzip_of_zeros(prefix, chunk, count):
    """A valid gzip stream of ``prefix`` then ``chunk * count`` zero bytes, built in milliseconds: after a full
    flush deflate forgets its history, so the compressed block of one zero chunk repeats verbatim."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(chunk)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    size = len(prefix) + chunk * count
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + block * count + tail
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


def _raw_deflate_of_zeros(prefix, chunk, count):
    """``(raw deflate stream, crc32, size)`` of ``prefix`` then ``chunk * count`` zero bytes (see above)."""
    data = _gzip_of_zeros(prefix, chunk, count)
    crc, size = struct.unpack("<II", data[-8:])
    return data[10:-8], crc, size


def _zip(members):
    """A zip archive from ``(name, payload, crc, file_size, method)``: the sizes are written as given, so a
    member can claim more than it holds (method 0 stored, 8 deflated; payload already compressed)."""
    out, central = io.BytesIO(), []
    for name, payload, crc, file_size, method in members:
        offset = out.tell()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(payload), file_size,
                             len(name), 0)
        out.write(b"PK\x03\x04" + fields + name.encode() + payload)
        central.append(b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset)
                       + name.encode())
    start = out.tell()
    directory = b"".join(central)
    out.write(directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(members), len(members),
                                                      len(directory), start, 0))
    return out.getvalue()


def _npy_header(shape, descr="<f8"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _stored(name, data, claimed=None):
    return (name, data, zlib.crc32(data), len(data) if claimed is None else claimed, 0)


def _idx_header(dims, code=0x08):
    return bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


MNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
BOMB_IMAGES = 60 * 16384  # 983040 images of 28 x 28 zeros: 771 MB decompressed from a 0.8 MB gzip file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad (and a few good) input file, written once."""
    d = tmp_path_factory.mktemp("limits")
    # labels that would decide the model's size
    (d / "label.csv").write_text("0.5,1.5,0\n-2,3,1\n4,5,200000\n")
    (d / "label200.csv").write_text("".join(f"{i},{i % 7},{i % 3}\n" for i in range(199)) + "1,2,5000\n")
    (d / "label999.csv").write_text("0.5,1.5,0\n-2,3,1\n4,5,999\n")
    np.savez(d / "label.npz", X=np.zeros((3, 2)), y=np.array([0, 1, 200000]))
    (d / "single.csv").write_text("0.5,1.5,0\n-2,3,0\n4,5,0\n")
    # a header with a typo, and pandas' integer column names
    (d / "typo.csv").write_text("0.1,O.2,0\n0.3,0.4,1\n")
    (d / "pandas.csv").write_text("0,1,label\n0.5,1.5,0\n-2,3,1\n")
    (d / "wide.csv").write_text("0.5,1e39,0\n-2,3,1\n4,5,2\n")  # finite in float64 only
    # IDX: a header claiming 10^9 images in a 1 KiB file, and a gzip bomb whose header is honest
    (d / "claims.idx").write_bytes(_idx_header((10**9, 28, 28)) + bytes(1024))
    (d / "claims.idx.gz").write_bytes(_gzip_of_zeros(_idx_header((10**9, 28, 28)), 1024, 1))
    (d / "bomb.idx.gz").write_bytes(_gzip_of_zeros(_idx_header((BOMB_IMAGES, 28, 28)), 784 * 16384, 60))
    bomb = d / "mnist-bomb"
    bomb.mkdir()
    (bomb / (MNIST[0] + ".gz")).write_bytes((d / "bomb.idx.gz").read_bytes())
    (bomb / MNIST[2]).write_bytes(_idx_header((3, 28, 28)) + bytes(3 * 784))  # a valid test split, read first
    for name in (MNIST[1], MNIST[3]):
        (bomb / name).write_bytes(_idx_header((3,)) + bytes(3))
    # NPZ members whose header shape exceeds what the archive stores
    y = _npy(np.array([0, 1, 0]))
    (d / "npz-stored.npz").write_bytes(_zip([_stored("X.npy", _npy_header((10**9, 10)) + bytes(80)),
                                             _stored("y.npy", y)]))
    claim = _npy_header((10**9,)) + bytes(64)
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packed.compress(claim) + packed.flush()
    (d / "npz-deflated.npz").write_bytes(_zip([("X.npy", packed, zlib.crc32(claim), len(claim), 8),
                                               _stored("y.npy", y)]))
    # a zip directory claiming 3.9 GB from 100 bytes; and an honest 771 MB deflate bomb
    (d / "npz-ratio.npz").write_bytes(_zip([("X.npy", packed, zlib.crc32(claim), 3_900_000_000, 8),
                                            _stored("y.npy", y)]))
    rows = 16384 * 47
    stream, crc, size = _raw_deflate_of_zeros(_npy_header((rows, 256), "<f4"), 256 * 4 * 16384, 47)
    (d / "npz-bomb.npz").write_bytes(_zip([("X.npy", stream, crc, size, 8),
                                           _stored("y.npy", _npy(np.arange(rows) % 2))]))
    # NPY (predict --input): a header claiming 10^9 x 10 float64 in 1 KiB
    (d / "claims.npy").write_bytes(_npy_header((10**9, 10)) + bytes(1024))
    np.save(d / "good.npy", np.zeros((4, 2)))
    # checkpoints whose architecture metadata claims sizes the tensors do not have
    model = pn.mlp([2, 8, 3], seed=0)
    checkpoint.save(model, d / "good.safetensors", optimizer=pn.SGD(0.1).bind(model),
                    metadata={"dataset": "spiral", "epoch": 1, "seed": 0, "train": json.dumps(dict(
                        dataset="spiral", seed=0, lr=0.1, l2=0.0, batch_size=0, shuffle=True, epochs=1,
                        log_every=1, val=None))})
    _rewrite(d / "good.safetensors", d / "arch.safetensors",
             architecture=json.dumps({"sizes": [2, 10**9, 3], "activation": "relu", "bias": True}))
    _rewrite(d / "good.safetensors", d / "layers.safetensors", architecture=json.dumps(
        [{"type": "Linear", "in_features": 2, "out_features": 10**9, "bias": True}, {"type": "ReLU"},
         {"type": "Linear", "in_features": 10**9, "out_features": 3, "bias": True}]))
    return d


def _rewrite(source, target, **changes):
    """``source`` re-serialised with some metadata entries changed and a matching checksum (a crafted file)."""
    import safetensors.numpy
    from safetensors import safe_open

    with safe_open(str(source), framework="numpy") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        meta = {**fh.metadata(), **changes}
    meta["sha256"] = checkpoint._digest(tensors, meta)
    target.write_bytes(safetensors.numpy.save(tensors, metadata=meta))


def test_crafted_streams_are_what_they_claim(files):
    import gzip

    small = _gzip_of_zeros(b"head", 1000, 3)
    assert gzip.decompress(small) == b"head" + bytes(3000)
    with np.load(files / "npz-bomb.npz") as archive:  # a real, readable archive: only large
        info = archive.zip.getinfo("X.npy")
        assert info.file_size > 700e6 and info.compress_size < 1e6
        with archive.zip.open("X.npy") as fh:
            assert fh.read(4096)[:6] == b"\x93NUMPY"


# -- the command line: one line, exit 2, under a 1 GiB address-space limit -----------------------------------
CLI_CASES = [
    ("CSV label 200000 in 3 rows", ["train", "--dataset", "csv:label.csv"],
     ["line 3", "'200000' would make 200001 classes from 3 rows", "max(1000, 10 x rows)"]),
    ("CSV label 5000 in 200 rows", ["train", "--dataset", "csv:label200.csv"],
     ["line 200", "5001 classes from 200 rows", "(here 2000)"]),
    ("NPZ label 200000 in 3 rows", ["train", "--dataset", "npz:label.npz"], ["200001 classes from 3 rows"]),
    ("--hidden 100000000", ["train", "--hidden", "100000000", "--epochs", "1"],
     ["--hidden 100000000", "[2, 100000000, 3]", "needs", "more than"]),
    ("--hidden 100000 100000", ["train", "--hidden", "100000", "100000", "--epochs", "1"],
     ["--hidden 100000 100000", "needs", "more than"]),
    ("--hidden with Adam on a file", ["train", "--dataset", "csv:label999.csv", "--hidden", "3000000",
                                      "--optimizer", "adam"], ["--hidden 3000000", "needs"]),
    ("MNIST gzip bomb", ["train", "--dataset", "mnist", "--data-dir", "mnist-bomb", "--no-download"],
     [MNIST[0] + ".gz", f"({BOMB_IMAGES}, 28, 28)", "needs", "more than"]),
    ("NPZ header beyond its stored member", ["train", "--dataset", "npz:npz-stored.npz"],
     ["X's header says shape (1000000000, 10)", "stores only"]),
    ("NPZ deflate bomb", ["train", "--dataset", "npz:npz-bomb.npz"], ["X of shape (770048, 256)", "needs"]),
    ("checkpoint architecture [2, 10^9, 3]: eval", ["eval", "--checkpoint", "arch.safetensors"],
     ["arch.safetensors", "'0.weight' has shape (2, 8), the architecture needs (2, 1000000000)"]),
    ("checkpoint architecture [2, 10^9, 3]: predict", ["predict", "--checkpoint", "arch.safetensors", "--input",
                                                        "good.npy", "--output", "-"], ["(2, 1000000000)"]),
    ("checkpoint architecture [2, 10^9, 3]: resume", ["train", "--resume", "arch.safetensors", "--epochs", "2"],
     ["(2, 1000000000)"]),
    ("checkpoint layer list 10^9 wide: export", ["export", "layers.safetensors", "--onnx", "m.onnx"],
     ["layers.safetensors", "(2, 1000000000)"]),
    ("NPY header claiming 10^9 x 10", ["predict", "--checkpoint", "good.safetensors", "--input", "claims.npy",
                                       "--output", "-"], ["claims.npy", "(1000000000, 10)", "holds only"]),
]


@pytest.mark.parametrize("name, argv, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_what_would_not_fit(files, name, argv, words):
    if argv[0] == "export":
        pytest.importorskip("ndonnx")
    assert_one_line(_cli(*argv, cwd=files), *words)


def test_cli_good_inputs_still_run_under_the_limit(files):
    """The same limit leaves room for real work: 1000 classes from 3 rows (the floor of the rule), a
    pandas-style header, and a checkpoint that loads."""
    result = _cli("train", "--dataset", "csv:label999.csv", "--epochs", "2", "--quiet", cwd=files)
    assert result.returncode == 0, result.stderr
    assert "[2, 100, 1000]" in result.stdout
    result = _cli("train", "--dataset", "csv:pandas.csv", "--epochs", "1", "--quiet", cwd=files)
    assert result.returncode == 0 and "2 train" in result.stdout, result.stderr
    result = _cli("predict", "--checkpoint", "good.safetensors", "--input", "good.npy", "--output", "-", cwd=files)
    assert result.returncode == 0 and result.stdout.startswith("class,p0,p1,p2"), result.stderr


def test_any_memory_error_is_one_line_naming_what(monkeypatch, capsys):
    from portablenn import cli

    def boom(*args, **kwargs):
        raise MemoryError("Unable to allocate 149. GiB for an array with shape (200001, 200001) and data type "
                          "float32")
    monkeypatch.setattr(cli.train, "fit", boom)
    assert cli.main(["train", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("portablenn: error: not enough memory")
    assert "149. GiB for an array with shape (200001, 200001)" in err[0]


# -- the API and the file readers: the documented error, under the same limit ----------------------------------
API_CASES = [
    ("read_idx: 10^9 images claimed by 1 KiB", "from portablenn.datasets.mnist import read_idx; read_idx('claims.idx')",
     "DatasetError", "expected 784000000000 bytes, found 1024"),
    ("read_idx: 10^9 images claimed by 1 KiB of gzip", "from portablenn.datasets.mnist import read_idx; "
     "read_idx('claims.idx.gz')", "DatasetError", "more than a"),
    ("read_idx: gzip bomb", "from portablenn.datasets.mnist import read_idx; read_idx('bomb.idx.gz')",
     "DatasetError", "needs"),
    ("mnist(): gzip bomb", "from portablenn.datasets import mnist; mnist('mnist-bomb', split='train')",
     "DatasetError", "needs"),
    ("load_npz: stored member beyond its size", "from portablenn.datasets import load_npz; "
     "load_npz('npz-stored.npz')", "DatasetError", "stores only"),
    ("load_npz: deflated member beyond its size", "from portablenn.datasets import load_npz; "
     "load_npz('npz-deflated.npz')", "DatasetError", "stores only"),
    ("load_npz: zip directory claims 3.9 GB from 100 B", "from portablenn.datasets import load_npz; "
     "load_npz('npz-ratio.npz')", "DatasetError", "more than deflate can expand"),
    ("load_npz: deflate bomb", "from portablenn.datasets import load_npz; load_npz('npz-bomb.npz')",
     "DatasetError", "needs"),
    ("load_npy: header claims 10^9 x 10", "from portablenn.datasets import load_npy; load_npy('claims.npy')",
     "DatasetError", "holds only"),
    ("pn.load: architecture [2, 10^9, 3]", "import portablenn as pn; pn.load('arch.safetensors')",
     "CheckpointError", "(2, 1000000000)"),
    ("load_checkpoint: architecture [2, 10^9, 3]", "from portablenn import checkpoint; "
     "checkpoint.load_checkpoint('arch.safetensors')", "CheckpointError", "(2, 1000000000)"),
    ("pn.load: layer list 10^9 wide", "import portablenn as pn; pn.load('layers.safetensors')",
     "CheckpointError", "(2, 1000000000)"),
    ("load_csv: label 200000 in 3 rows", "from portablenn.datasets import load_csv; load_csv('label.csv')",
     "DatasetError", "200001 classes from 3 rows"),
    ("load_npz: label 200000 in 3 rows", "from portablenn.datasets import load_npz; load_npz('label.npz')",
     "DatasetError", "200001 classes from 3 rows"),
]

PROBE = textwrap.dedent("""
    import sys
    try:
        exec(sys.argv[1])
    except BaseException as exc:
        print(type(exc).__name__ + ": " + str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        sys.exit(3)
    print("loaded")
""")


@pytest.mark.parametrize("name, code, error, words", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_what_would_not_fit(files, name, code, error, words):
    result = _limited(["-c", PROBE, code], files)
    assert result.returncode == 3, (result.stdout, result.stderr[-2000:])
    assert result.stdout.startswith(error + ": ") and words in result.stdout, result.stdout


# -- reader items of issue #15, in process --------------------------------------------------------------------
def test_csv_header_is_names_only(files, tmp_path):
    with pytest.raises(DatasetError, match=r"line 1, column 2: 'O.2' is not a number \(a header row holds names"):
        load_csv(files / "typo.csv")
    for text, rows in [("0,1,label\n1,2,0\n", 1), ("1,2,label\n1,2,0\n", 1), ("x,y,label\n1,2,0\n", 1),
                       (",x,\n1,2,0\n", 1), ("x,NaN,label\n1,2,0\n", 1), ("1,2,0\n3,4,1\n", 2)]:
        (tmp_path / "h.csv").write_text(text)
        assert load_csv(tmp_path / "h.csv")[0].shape[0] == rows, text
    for text, cell in [("0.5,x,label\n1,2,0\n", "line 1, column 2: 'x'"),
                       ("1,1,O\n1,2,0\n", "line 1, column 3: 'O'"),  # not the columns' positions
                       ("x,5,y\n1,2,0\n", "line 1, column 1: 'x'")]:
        (tmp_path / "h.csv").write_text(text)
        with pytest.raises(DatasetError, match=cell.replace("(", r"\(").replace(".", r"\.")):
            load_csv(tmp_path / "h.csv")


def test_csv_and_npz_are_read_in_the_requested_dtype(tmp_path):
    (tmp_path / "d.csv").write_text("0.1,1e39,0\n0.2,3,1\n")
    X, _ = load_csv(tmp_path / "d.csv", dtype="float64")
    assert X.dtype == np.float64 and X[0, 0] == 0.1 and X[0, 1] == 1e39
    with pytest.raises(DatasetError, match="too large for float32"):
        load_csv(tmp_path / "d.csv")
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        load_csv(tmp_path / "d.csv", dtype="int8")
    np.savez(tmp_path / "d.npz", X=np.array([[1, 2], [3, 4]], np.uint8), y=np.array([0, 1]))
    assert load_npz(tmp_path / "d.npz")[0].dtype == np.float32  # the default keeps its old rule
    assert load_npz(tmp_path / "d.npz", dtype="float64")[0].dtype == np.float64
    np.savez(tmp_path / "w.npz", X=np.array([[0.1, 1e39], [1, 2]]), y=np.array([0, 1]))
    assert load_npz(tmp_path / "w.npz", dtype="float64")[0][0, 0] == 0.1
    with pytest.raises(DatasetError, match="X has values too large for float32"):
        load_npz(tmp_path / "w.npz", dtype="float32")


def test_cli_reads_files_in_dtype(files):
    """--dtype float64 reaches the reader: a value beyond float32 trains instead of being refused."""
    result = _cli("train", "--dataset", "csv:wide.csv", "--dtype", "float64", "--epochs", "1", "--quiet", cwd=files)
    assert result.returncode == 0, result.stderr
    assert_one_line(_cli("train", "--dataset", "csv:wide.csv", "--epochs", "1", cwd=files),
                    "'1e39' is too large for float32")


def test_cli_refuses_a_single_class_and_a_header_typo(files):
    assert_one_line(_cli("train", "--dataset", "csv:single.csv", cwd=files),
                    "single class (label 0 on all 3 rows)", "at least two classes")
    assert_one_line(_cli("train", "--dataset", "csv:typo.csv", cwd=files), "line 1, column 2: 'O.2'")


# -- the rules themselves, at their boundaries ----------------------------------------------------------------
def test_class_limit_is_max_of_1000_and_10_per_row():
    from portablenn.validation import class_limit

    assert [class_limit(n) for n in (0, 1, 3, 99, 100, 101, 200, 10**6)] == [1000, 1000, 1000, 1000, 1000, 1010,
                                                                             2000, 10**7]


@pytest.mark.parametrize("rows, label, ok", [(3, 999, True), (3, 1000, False), (200, 1999, True), (200, 2000, False)])
def test_readers_allow_exactly_the_class_limit(tmp_path, rows, label, ok):
    labels = np.arange(rows) % 2
    labels[-1] = label
    (tmp_path / "d.csv").write_text("".join(f"{i},0.5,{c}\n" for i, c in enumerate(labels)))
    np.savez(tmp_path / "d.npz", X=np.zeros((rows, 2)), y=labels)
    for read in (lambda: load_csv(tmp_path / "d.csv"), lambda: load_npz(tmp_path / "d.npz")):
        if ok:
            assert read()[1].max() == label
        else:
            limit = max(1000, 10 * rows)
            with pytest.raises(DatasetError, match=rf"{label + 1} classes from {rows} rows; .* \(here {limit}\)"):
                read()


def test_check_memory_refuses_only_beyond_the_limit(monkeypatch):
    from portablenn import validation

    monkeypatch.setattr(validation, "available_memory", lambda: (1000, "the test's memory"))
    validation.check_memory(1000, "x")
    validation.check_memory(0, "x")
    with pytest.raises(validation.InputError, match=r"^y needs 1001 B, more than the test's memory \(1000 B\); "
                                                    r"try less$"):
        validation.check_memory(1001, "y", hint="try less")
    with pytest.raises(DatasetError, match=r"^z needs 1\.0 KiB, more than the test's memory \(1000 B\)$"):
        validation.check_memory(1024, "z", DatasetError)
    monkeypatch.setattr(validation, "available_memory", lambda: (None, None))
    validation.check_memory(10**30, "anything")  # unknown: no check


def test_available_memory_is_the_lower_of_the_machine_and_the_address_space_limit():
    """Run under RLIMIT_AS: what the limit leaves (less than 1 GiB, more than nothing); without: the machine."""
    code = ("from portablenn.validation import available_memory; import os; n, what = available_memory(); "
            "print(n, os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'), what, sep='|')")
    limited = _limited(["-c", code], os.getcwd())
    assert limited.returncode == 0, limited.stderr
    n, machine, what = limited.stdout.strip().split("|")
    assert 0 < int(n) < LIMIT and "address-space limit" in what
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    n, machine, what = free.stdout.strip().split("|")
    assert int(n) == int(machine) and what == "this machine's memory"


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                     (2**20 - 1, "1024.0 KiB"), (2**20, "1.0 MiB"), (3 * 2**30, "3.0 GiB"),
                                     (2**40, "1.0 TiB"), (2**50, "1.0 PiB"), (2**60, "1024.0 PiB")])
def test_format_bytes(n, text):
    from portablenn.validation import format_bytes

    assert format_bytes(n) == text


def test_training_memory_counts_each_part():
    from portablenn.validation import training_memory

    # [10, 20, 3]: 10*20 + 20 + 20*3 + 3 = 283 parameters; largest matrix 200 (its float64 draw: 16 bytes each)
    total, params = training_memory([10, 20, 3], 4, rows=100, batch_rows=10)
    assert params == 283
    passes = 100 * (20 + 3) * 4 * 3  # min(rows, 8192) rows of activations and gradients
    assert total == 283 * 4 * 2 + 200 * 16 + 100 * (10 + 3) * 4 + passes
    assert training_memory([10, 20, 3], 4, 100, 10, optimizer_buffers=2)[0] == total + 2 * 283 * 4
    assert training_memory([10, 20, 3], 4, 100, 10, bias=False)[1] == 260
    assert training_memory([10, 20, 3], 8, 100, 10)[0] == 2 * total - 200 * 16
    big = training_memory([10, 20, 3], 4, rows=10**5, batch_rows=10)[0]  # passes are over 8192 rows at most
    assert big == 283 * 4 * 2 + 200 * 16 + 10**5 * 13 * 4 + 8192 * 23 * 4 * 3
    assert training_memory([10, 20, 3], 4, rows=10**5, batch_rows=10**4)[0] == big + (10**4 - 8192) * 23 * 4 * 3
    # a normalization layer after the hidden layer: its output, normalized input and gradient, per pass row
    assert training_memory([10, 20, 3], 4, 100, 10, norm=True)[0] == total + 100 * 20 * 4 * 3
