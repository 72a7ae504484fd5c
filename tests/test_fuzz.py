"""Nothing let in, fuzzed: random truncation and byte flips of data files and checkpoints either load the
saved data or raise the documented error. Apart from ``test_reliability.py``: only this needs hypothesis."""
import gzip
import io

import numpy as np
import pytest

import portablenn as pn
from portablenn import checkpoint
from portablenn.datasets import DatasetError
from portablenn.datasets.files import load_csv, load_npz
from portablenn.datasets.mnist import read_idx

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


_IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}  # the IDX format's


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mutate(data, cut, flips):
    """Truncate ``data`` to ``cut`` bytes, then XOR the bytes at ``flips`` positions."""
    data = bytearray(data[:cut])
    for position, value in flips:
        if data:
            data[position % len(data)] ^= value or 1
    return bytes(data)


def _mutated_file(tmp_path_factory, original, mutation, name):
    """``original`` mutated by ``mutation`` and written to a fresh file ``name``: ``(path, bytes written)``."""
    data = _mutate(original, mutation[0], mutation[1])
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data)
    return path, data


MUTATION = st.tuples(st.integers(0, 10_000), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                      max_size=4))


# -- readers: random truncation and byte flips either load correct data or raise the documented error ----
@FUZZ
@given(mutation=MUTATION, gz=st.booleans())
def test_idx_reader_survives_corruption(tmp_path_factory, mutation, gz):
    original = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    data = _mutate(_idx_bytes(original), min(mutation[0], 12 + original.size), mutation[1])
    path = tmp_path_factory.mktemp("idx") / ("f.idx" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        loaded = read_idx(path)
    except DatasetError:
        return
    # IDX has no checksum, so a flipped payload byte is data; what loads is what the bytes say, read independently
    assert data[:2] == b"\x00\x00" and data[2] in _IDX_CODES
    ndim, dtype = data[3], np.dtype(_IDX_CODES[data[2]])
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    assert loaded.shape == dims and loaded.dtype == dtype.newbyteorder("=") and loaded.dtype.isnative
    assert loaded.astype(dtype).tobytes() == data[4 + 4 * ndim:]
    if data == _idx_bytes(original):
        np.testing.assert_array_equal(loaded, original)


@FUZZ
@given(mutation=MUTATION)
def test_csv_reader_survives_corruption(tmp_path_factory, mutation):
    text = "x1,x2,label\n0.5,1.5,0\n-2,3,1\n4,5e-3,2\n"
    path, data = _mutated_file(tmp_path_factory, text.encode(), mutation, "d.csv")
    try:
        X, y = load_csv(path)
    except DatasetError:
        return
    assert X.ndim == 2 and X.shape[0] == y.shape[0] > 0 and np.all(np.isfinite(X)) and y.dtype.kind == "i"
    if data == text.encode():
        np.testing.assert_allclose(X, [[0.5, 1.5], [-2, 3], [4, 5e-3]], rtol=1e-6)
        np.testing.assert_array_equal(y, [0, 1, 2])


NPZ_X, NPZ_Y = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5, np.array([0, 2, 1, 0])


@FUZZ
@given(mutation=MUTATION)
def test_npz_reader_survives_corruption(tmp_path_factory, mutation):
    buffer = io.BytesIO()
    np.savez(buffer, X=NPZ_X, y=NPZ_Y)
    path, _ = _mutated_file(tmp_path_factory, buffer.getvalue(), mutation, "d.npz")
    try:
        X, y = load_npz(path)
    except DatasetError:
        return
    # every member carries a CRC-32 that reading it checks: anything that loads is the saved data itself
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, NPZ_X)
    np.testing.assert_array_equal(y, NPZ_Y)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    model = pn.mlp([3, 4, 2], seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    checkpoint.save(model, path, optimizer=pn.SGD(0.1, momentum=0.9).bind(model), metadata={"epoch": 3})
    return path.read_bytes(), model.state_dict()


@FUZZ
@given(mutation=MUTATION)
def test_checkpoint_reader_survives_corruption(tmp_path_factory, saved_checkpoint, mutation):
    original, state = saved_checkpoint
    path, _ = _mutated_file(tmp_path_factory, original, mutation, "m.safetensors")
    try:
        loaded = checkpoint.load_checkpoint(path)
    except checkpoint.CheckpointError:
        return
    # anything that loads is the saved state itself: corruption of data or header is detected (checksum)
    assert set(loaded.state_dict) == set(state) and loaded.metadata["epoch"] == "3"
    for key in state:
        np.testing.assert_array_equal(loaded.state_dict[key], state[key])


# -- metadata: any JSON value in any field is either valid or refused with CheckpointError ---------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
FIELDS = {"architecture": ["sizes", "activation", "bias", None],
          "optimizer": ["class", "lr", "momentum", "nesterov", "steps", "l2", None],
          "train": ["dataset", "seed", "lr", "l2", "batch_size", "shuffle", "epochs", "log_every", "val", None],
          "epoch": [None], "seed": [None], "dataset": [None], "format_version": [None], "dtype": [None]}


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
    """A checkpoint as ``portablenn train --save`` writes it: its metadata and tensors."""
    from safetensors import safe_open

    from portablenn import cli

    path = tmp_path_factory.mktemp("cli") / "run.safetensors"
    assert cli.main(["train", "--epochs", "1", "--hidden", "4", "--momentum", "0.5", "--save", str(path),
                     "--quiet"]) == 0
    with safe_open(str(path), framework="numpy") as fh:
        return dict(fh.metadata()), {key: fh.get_tensor(key) for key in fh.keys()}


@FUZZ
@given(key=st.sampled_from(sorted(FIELDS)), data=st.data(), value=JSON_VALUES, raw=st.booleans())
def test_checkpoint_metadata_fields_survive_any_value(tmp_path_factory, capsys, cli_checkpoint, key, data, value,
                                                      raw):
    import json

    import safetensors.numpy

    from portablenn import cli

    meta, tensors = dict(cli_checkpoint[0]), cli_checkpoint[1]
    name = data.draw(st.sampled_from(FIELDS[key]))
    if name is None:  # the whole entry: the value as JSON, or (raw) its text as the entry itself
        meta[key] = str(value) if raw else json.dumps(value)
    else:
        decoded = json.loads(meta[key])
        decoded[name] = value
        meta[key] = json.dumps(decoded)
    meta["sha256"] = checkpoint._digest(tensors, meta)
    path = tmp_path_factory.mktemp("meta") / "m.safetensors"
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))
    for door in (lambda: checkpoint.load_checkpoint(path), lambda: pn.load(path),
                 lambda: checkpoint.restore_optimizer(pn.SGD(0.1, momentum=0.5), path, pn.mlp([2, 4, 3]))):
        try:
            door()
        except checkpoint.CheckpointError:
            pass
    capsys.readouterr()
    code = cli.main(["train", "--resume", str(path), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 or code == 2 and len(err) == 1 and err[0].startswith("portablenn: error:"), (code, err)
