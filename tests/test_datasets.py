"""Tests for the host-side dataset loaders in portablenn.datasets."""

import gzip
import struct
import sys

import numpy as np
import pytest

from portablenn.datasets import (
    DatasetError,
    MnistNotFoundError,
    lines,
    mnist,
    spiral,
)
from portablenn.datasets.mnist import find_mnist_dir, read_idx

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ---------------------------------------------------------------- spiral


def _cs231n_spiral_original():
    """The CS231n case-study code, verbatim, after np.random.seed(0)."""
    np.random.seed(0)
    N = 100  # number of points per class
    D = 2  # dimensionality
    K = 3  # number of classes
    X = np.zeros((N * K, D))  # data matrix (each row = single example)
    y = np.zeros(N * K, dtype="uint8")  # class labels
    for j in range(K):
        ix = range(N * j, N * (j + 1))
        r = np.linspace(0.0, 1, N)  # radius
        t = np.linspace(j * 4, (j + 1) * 4, N) + np.random.randn(N) * 0.2  # theta
        X[ix] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[ix] = j
    return X, y


def test_spiral_matches_cs231n_original():
    saved = np.random.get_state()
    try:
        X_ref, y_ref = _cs231n_spiral_original()
    finally:
        np.random.set_state(saved)
    X, y = spiral()
    assert X.dtype == np.float64 and X.shape == (300, 2)
    assert y.dtype == np.uint8 and y.shape == (300,)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_spiral_leaves_global_state_alone():
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    spiral(points_per_class=10, num_classes=4, seed=7)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_spiral_shapes_and_seed():
    X, y = spiral(points_per_class=7, num_classes=5, seed=3)
    assert X.shape == (35, 2)
    np.testing.assert_array_equal(np.bincount(y), [7] * 5)
    np.testing.assert_array_equal(X, spiral(7, 5, 3)[0])
    assert not np.array_equal(X, spiral(7, 5, 4)[0])


# ---------------------------------------------------------------- lines


def _rule(X):
    """Label 1 (horizontal) iff row sums vary more than column sums."""
    images = X.reshape(-1, 3, 3)
    row_var = images.sum(axis=2).var(axis=1)
    col_var = images.sum(axis=1).var(axis=1)
    return (row_var > col_var).astype(np.uint8)


def test_lines_keys_shapes_counts_range():
    data = lines()
    assert set(data) == {"train", "val_dim", "val_noise"}
    sizes = {"train": 24, "val_dim": 18, "val_noise": 24}
    for name, (X, y) in data.items():
        n = sizes[name]
        assert X.shape == (n, 9) and X.dtype == np.float64
        assert y.shape == (n,) and y.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(y, minlength=2), [n // 2, n // 2])
        assert X.min() >= 0.0 and X.max() <= 1.0


def test_lines_dimmed_line_pixels_are_04():
    X, y = lines()["val_dim"]
    images = X.reshape(-1, 3, 3)
    for image, label in zip(images, y):
        sums = image.sum(axis=0) if label == 0 else image.sum(axis=1)
        position = int(np.argmax(sums))
        line = image[:, position] if label == 0 else image[position, :]
        np.testing.assert_allclose(line, 0.4)
        off = np.delete(image, position, axis=1 if label == 0 else 0)
        assert off.max() <= 0.1


def test_lines_train_clean_images():
    X, y = lines()["train"]
    clean = X[np.isin(X, (0.0, 1.0)).all(axis=1)]
    assert len(clean) == 6  # one clean image per position and orientation
    np.testing.assert_array_equal(clean.sum(axis=1), 3.0)
    np.testing.assert_array_equal(np.unique(clean.reshape(-1, 9), axis=0).shape, (6, 9))


def test_lines_determinism_by_seed():
    a, b, c = lines(0), lines(0), lines(1)
    for name in ("train", "val_dim", "val_noise"):
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
    np.testing.assert_array_equal(a["train"][0], c["train"][0])
    np.testing.assert_array_equal(a["val_dim"][0], c["val_dim"][0])
    assert not np.array_equal(a["val_noise"][0], c["val_noise"][0])


def test_lines_noise_split_is_noisy_train():
    data = lines()
    X_train, y_train = data["train"]
    X_noise, y_noise = data["val_noise"]
    np.testing.assert_array_equal(y_noise, y_train)
    diff = X_noise - X_train
    assert 0.05 < np.abs(diff).mean() < 0.3


@pytest.mark.parametrize("name", ["train", "val_dim", "val_noise"])
def test_lines_trivial_rule_classifies_all(name):
    X, y = lines(0)[name]
    np.testing.assert_array_equal(_rule(X), y)


# ---------------------------------------------------------------- mnist


def _idx_bytes(array, code=0x08):
    """Encode ``array`` as an IDX file (big-endian header)."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.tobytes()


def _write(path, payload, gz):
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _fake_mnist(directory, gz, n_train=5, n_test=3, seed=0):
    """Write a tiny MNIST-shaped dataset and return its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n, (img, lab) in (
        ("train", n_train, MNIST_FILES[:2]),
        ("test", n_test, MNIST_FILES[2:]),
    ):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write(directory / img, _idx_bytes(images), gz)
        _write(directory / lab, _idx_bytes(labels), gz)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    arrays = _fake_mnist(tmp_path, gz)
    for split in ("train", "test"):
        X, y = mnist(root=tmp_path, split=split)
        images, labels = arrays[split]
        assert X.dtype == np.float32 and X.shape == (len(labels), 784)
        assert y.dtype == np.uint8
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_allclose(X * 255, images.reshape(len(labels), 784), atol=1e-3)
        assert X.min() >= 0.0 and X.max() <= 1.0


@pytest.mark.parametrize(
    ("code", "dtype"),
    [
        (0x08, "u1"),
        (0x09, "i1"),
        (0x0B, ">i2"),
        (0x0C, ">i4"),
        (0x0D, ">f4"),
        (0x0E, ">f8"),
    ],
)
def test_read_idx_type_codes(tmp_path, code, dtype):
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    path = _write(tmp_path / "a-idx3", _idx_bytes(array, code), gz=False)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path, gz):
    payload = _idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))[:-10]
    path = _write(tmp_path / "train-images-idx3-ubyte", payload, gz)
    with pytest.raises(DatasetError, match=r"expected 3920 bytes, found 3910") as info:
        read_idx(path)
    assert path.name in str(info.value)


def test_read_idx_oversized(tmp_path):
    payload = _idx_bytes(np.zeros(5, dtype=np.uint8)) + b"\x00"
    path = _write(tmp_path / "labels", payload, gz=False)
    with pytest.raises(DatasetError, match=r"expected 5 bytes, found 6"):
        read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    payload = b"\x01\x00" + _idx_bytes(np.zeros(5, dtype=np.uint8))[2:]
    path = _write(tmp_path / "labels", payload, gz=False)
    with pytest.raises(DatasetError, match="magic"):
        read_idx(path)
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x07, 1, 0))
    with pytest.raises(DatasetError, match="type code"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path):
    path = _write(tmp_path / "imgs", struct.pack(">BBBBI", 0, 0, 8, 3, 5), gz=False)
    with pytest.raises(DatasetError, match="header"):
        read_idx(path)


def test_mnist_count_mismatch(tmp_path):
    _fake_mnist(tmp_path, gz=False)
    (tmp_path / MNIST_FILES[1]).write_bytes(_idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="5 images but .* 4 labels"):
        mnist(root=tmp_path, split="train")


def test_mnist_bad_split(tmp_path):
    _fake_mnist(tmp_path, gz=False)
    with pytest.raises(ValueError, match="split"):
        mnist(root=tmp_path, split="validation")


def test_mnist_missing_dir_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MnistNotFoundError) as info:
        mnist(root=missing, download=False)
    message = str(info.value)
    assert str(missing) in message and "\n" not in message
    assert "mnist(download=True)" in message and "portablenn download mnist" in message
    for name in MNIST_FILES:
        assert name in message
    assert isinstance(info.value, DatasetError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FileNotFoundError)
    assert not missing.exists()


def test_mnist_downloads_on_first_use_as_the_cli_does(tmp_path, monkeypatch):
    """download=True (the default) fetches the files where they are missing, into ``root``; the CLI's
    --no-download is download=False."""
    from portablenn.datasets import download

    calls = []

    def fake_download(root=None, **kwargs):
        calls.append(root)
        (tmp_path / "fetched").mkdir()
        _fake_mnist(tmp_path / "fetched", gz=True)
        return tmp_path / "fetched"

    monkeypatch.setattr(download, "download_mnist", fake_download)
    X, y = mnist(root=tmp_path / "fetched", split="test")
    assert calls == [tmp_path / "fetched"] and X.shape == (3, 784) and y.shape == (3,)
    mnist(root=tmp_path / "fetched")  # found now: no second download
    assert len(calls) == 1
    with pytest.raises(MnistNotFoundError):
        mnist(root=tmp_path / "elsewhere", download=False)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="split"):  # a bad split never downloads
        mnist(root=tmp_path / "elsewhere", split="validation")
    assert len(calls) == 1


def test_mnist_prefers_existing_variant(tmp_path):
    arrays = _fake_mnist(tmp_path, gz=True)
    # A raw copy alongside the .gz of one file is also fine.
    (tmp_path / MNIST_FILES[1]).write_bytes(_idx_bytes(arrays["train"][1]))
    np.testing.assert_array_equal(mnist(root=tmp_path)[1], arrays["train"][1])


@pytest.mark.parametrize("nested", [False, True])
def test_mnist_env_var(tmp_path, monkeypatch, nested):
    data_dir = tmp_path / "data"
    target = data_dir / "mnist" if nested else data_dir
    target.mkdir(parents=True)
    arrays = _fake_mnist(target, gz=nested)
    monkeypatch.setenv("PORTABLENN_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    assert find_mnist_dir() == target
    X, y = mnist(split="test")
    np.testing.assert_array_equal(y, arrays["test"][1])
    assert X.shape == (3, 784)


def test_mnist_cache_dir(tmp_path, monkeypatch):
    # The package re-exports the function ``mnist``, which shadows the
    # submodule attribute, so fetch the module itself from sys.modules.
    mod = sys.modules["portablenn.datasets.mnist"]
    cache = tmp_path / "cache"
    target = cache / "portablenn" / "mnist"
    target.mkdir(parents=True)
    _fake_mnist(target, gz=False)
    monkeypatch.delenv("PORTABLENN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)
    # Hide the repository-relative candidate so the cache is reached.
    monkeypatch.setattr(mod, "__file__", str(tmp_path / "a" / "b" / "c" / "mnist.py"))
    assert find_mnist_dir() == target


def test_mnist_real_data():
    try:
        find_mnist_dir()
    except MnistNotFoundError:
        pytest.skip("real MNIST files not available")
    X, y = mnist(split="train")
    X_test, y_test = mnist(split="test")
    assert X.shape == (60000, 784) and y.shape == (60000,)
    assert X_test.shape == (10000, 784) and y_test.shape == (10000,)
    for images, labels in ((X, y), (X_test, y_test)):
        assert images.dtype == np.float32 and labels.dtype == np.uint8
        assert images.min() == 0.0 and images.max() == 1.0
        np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    assert y[0] == 5


# ---------------------------------------------------------------- mnist: every check, at its boundary


def _mnist_dir(directory, images, labels):
    """A directory whose train split is ``images`` and ``labels`` (raw IDX bytes or arrays); a valid test split."""
    _fake_mnist(directory, gz=False)
    for name, content in ((MNIST_FILES[0], images), (MNIST_FILES[1], labels)):
        (directory / name).write_bytes(content if isinstance(content, bytes) else _idx_bytes(content))
    return directory


def test_mnist_labels_9_load_and_10_is_refused(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    X, y = mnist(root=_mnist_dir(tmp_path, images, np.array([0, 9, 5], np.uint8)))
    assert y.tolist() == [0, 9, 5] and X.shape == (3, 784)
    for bad in (10, 11, 255):
        _mnist_dir(tmp_path, images, np.array([0, bad, 5], np.uint8))
        with pytest.raises(DatasetError, match=rf"train-labels-idx1-ubyte: label {bad} outside 0\.\.9"):
            mnist(root=tmp_path)


def test_mnist_empty_split_loads_empty(tmp_path):
    X, y = mnist(root=_mnist_dir(tmp_path, np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)))
    assert X.shape == (0, 784) and X.dtype == np.float32 and y.shape == (0,) and y.dtype == np.uint8


@pytest.mark.parametrize("images, found", [
    (np.zeros((3, 28, 27), np.uint8), r"uint8 \(3, 28, 27\)"),  # one column short
    (np.zeros((3, 27, 28), np.uint8), r"uint8 \(3, 27, 28\)"),  # one row short
    (np.zeros((3, 29, 28), np.uint8), r"uint8 \(3, 29, 28\)"),
    (np.zeros((3, 784), np.uint8), r"uint8 \(3, 784\)"),  # flat rows
    (np.zeros((3, 28, 28, 1), np.uint8), r"uint8 \(3, 28, 28, 1\)"),
    (np.zeros((3, 28, 28), np.int8), r"int8 \(3, 28, 28\)"),  # type code 0x09
    (np.zeros((3, 28, 28), ">f4"), r"float32 \(3, 28, 28\)"),
])
def test_mnist_images_must_be_uint8_28x28(tmp_path, images, found):
    code = {"u1": 0x08, "i1": 0x09, "f4": 0x0D}[images.dtype.str[1:]]
    _mnist_dir(tmp_path, _idx_bytes(images, code), np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: expected uint8 images of shape \(n, 28, 28\), "
                                           rf"found {found}"):
        mnist(root=tmp_path)


@pytest.mark.parametrize("labels, code, found", [
    (np.zeros((3, 1), np.uint8), 0x08, r"uint8 \(3, 1\)"),
    (np.zeros(3, np.int8), 0x09, r"int8 \(3,\)"),
    (np.zeros(3, ">i4"), 0x0C, r"int32 \(3,\)"),
])
def test_mnist_labels_must_be_uint8_vectors(tmp_path, labels, code, found):
    _mnist_dir(tmp_path, np.zeros((3, 28, 28), np.uint8), _idx_bytes(labels, code))
    with pytest.raises(DatasetError, match=rf"train-labels-idx1-ubyte: expected uint8 labels of shape \(n,\), "
                                           rf"found {found}"):
        mnist(root=tmp_path)


def test_mnist_one_label_more_than_images(tmp_path):
    _mnist_dir(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match=r"holds 3 images but .*train-labels-idx1-ubyte holds 4 labels"):
        mnist(root=tmp_path)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x01\x08\x01", b"\xff\xff\x08\x01",
                                   b"\x00\x80\x08\x01"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_each_magic_byte_is_checked(tmp_path, magic, gz):
    payload = magic + _idx_bytes(np.arange(5, dtype=np.uint8))[4:]
    path = _write(tmp_path / "labels", payload, gz)
    with pytest.raises(DatasetError, match=rf"not an IDX file \(bad magic number {magic.hex()}\)"):
        read_idx(path)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00", b"\x00\x00\x08"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_shorter_than_its_magic_number(tmp_path, data, gz):
    path = _write(tmp_path / "labels", data, gz)
    with pytest.raises(DatasetError, match=rf"not an IDX file \(bad magic number {data.hex() or 'empty'}\)"):
        read_idx(path)


@pytest.mark.parametrize("code", [0x00, 0x07, 0x0A, 0x0F, 0xFF])
def test_read_idx_unknown_type_codes(tmp_path, code):
    path = _write(tmp_path / "a", struct.pack(">BBBBI", 0, 0, code, 1, 0), gz=False)
    with pytest.raises(DatasetError, match=rf"unsupported IDX type code 0x{code:02x}"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_header_one_dim_short(tmp_path, gz):
    path = _write(tmp_path / "imgs", struct.pack(">BBBBII", 0, 0, 8, 3, 5, 28), gz)
    with pytest.raises(DatasetError, match=r"truncated header, expected 16 bytes for 3 dims, found 12"):
        read_idx(path)


@pytest.mark.parametrize("extra", [1, 1 << 20, (1 << 20) + 5])
def test_read_idx_gzip_with_data_after_the_payload(tmp_path, extra):
    payload = _idx_bytes(np.zeros((2, 3), dtype=np.uint8)) + bytes(extra)
    path = _write(tmp_path / "a", payload, gz=True)
    found = f"found {6 + extra}" if extra < 1 << 20 else f"found more than {6 + (1 << 20) - 1}"
    with pytest.raises(DatasetError, match=rf"payload size mismatch for dims \(2, 3\), expected 6 bytes, {found}"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_one_byte_short_or_over(tmp_path, gz):
    good = _idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "ok", good, gz)), np.arange(6).reshape(2, 3))
    with pytest.raises(DatasetError, match=r"expected 6 bytes, found 5"):
        read_idx(_write(tmp_path / "short", good[:-1], gz))
    with pytest.raises(DatasetError, match=r"expected 6 bytes, found 7"):
        read_idx(_write(tmp_path / "over", good + b"\x00", gz))


def test_read_idx_damaged_gzip_and_missing_file(tmp_path):
    path = _write(tmp_path / "a", _idx_bytes(np.zeros((50, 40), dtype=np.uint8)), gz=True)
    data = bytearray(path.read_bytes())
    data[-12] ^= 0xFF  # inside the deflate stream or its checksum
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"a.gz: corrupt gzip stream"):
        read_idx(path)
    with pytest.raises(DatasetError, match=r"cannot read .*nope: No such file"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"cannot read .*nope.gz: No such file"):
        read_idx(tmp_path / "nope.gz")


def test_mnist_pixels_scale_to_0_1_exactly(tmp_path):
    images = np.resize(np.arange(256, dtype=np.uint8), 784).reshape(1, 28, 28)  # every value 0..255
    X, _ = mnist(root=_mnist_dir(tmp_path, images, np.zeros(1, np.uint8)))
    np.testing.assert_array_equal(X[0], images.reshape(784).astype(np.float32) / np.float32(255))
    assert X.max() == 1.0 and X.min() == 0.0


# -- registry.load: the targets of a file dataset follow the loss's task -------------------------------------------
def test_load_reads_file_targets_by_task_and_the_val_file_alike(tmp_path):
    from portablenn.datasets import registry

    (tmp_path / "t.csv").write_text("1,2,0.5,1\n3,4,-1,0\n5,6,2,1\n")
    (tmp_path / "v.csv").write_text("7,8,0.25,0\n")
    splits = registry.load(f"csv:{tmp_path / 't.csv'}", val=str(tmp_path / "v.csv"), task="regression", targets=2)
    assert splits["train"][1].tolist() == [[0.5, 1], [-1, 0], [2, 1]] and splits["val"][1].tolist() == [[0.25, 0]]
    assert splits["train"][0].shape == (3, 2) and splits["val"][0].shape == (1, 2)
    # without targets the val file takes the training file's count
    np.savez(tmp_path / "t.npz", X=np.ones((4, 2)), y=np.zeros((4, 3)))
    np.savez(tmp_path / "v.npz", X=np.ones((2, 2)), y=np.zeros((2, 2)))
    with pytest.raises(DatasetError, match="y has 2 target columns, expected 3"):
        registry.load(f"npz:{tmp_path / 't.npz'}", val=str(tmp_path / "v.npz"), task="multilabel")
    splits = registry.load(f"csv:{tmp_path / 't.csv'}", task="multilabel")
    assert splits["train"][1].tolist() == [[1], [0], [1]]
    # the embedded datasets give their class labels whatever the task
    X, y = registry.load("spiral", task="multilabel")["train"]
    assert y.ndim == 1 and y.dtype.kind in "iu"
