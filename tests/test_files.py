"""load_csv / load_npz / load_spec: good files, and one clear DatasetError per kind of bad file."""
import pickle

import numpy as np
import pytest

import portablenn as pn
from portablenn.datasets import DatasetError, load_csv, load_npz, load_spec


def _write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- CSV -------------------------------------------------------------------------------------------
def test_csv_without_header(tmp_path):
    X, y = load_csv(_write(tmp_path, "0.5,1,2\n-1.25, 3e-2 ,0\n\n7,8,1\n"))
    assert X.dtype == np.float32 and X.shape == (3, 2)
    assert y.dtype == np.int64 and y.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(X, np.array([[0.5, 1], [-1.25, 0.03], [7, 8]], np.float32))


def test_csv_with_header_bom_and_crlf(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"\xef\xbb\xbf\r\nx1,x2,x3,label\r\n1,2,3,0\r\n4,5,6,1.0\r\n")
    X, y = load_csv(path)
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 5, 6]])
    assert y.tolist() == [0, 1]


def test_csv_trains(tmp_path):
    from portablenn.datasets import spiral

    Xs, ys = spiral(points_per_class=20)
    path = tmp_path / "spiral.csv"
    np.savetxt(path, np.c_[Xs, ys], delimiter=",", header="x,y,label", comments="")
    X, y = load_spec(f"csv:{path}")
    np.testing.assert_allclose(X, Xs.astype(np.float32))
    np.testing.assert_array_equal(y, ys)
    pn.fit(pn.mlp([2, 8, 3]), X, y, optimizer=pn.SGD(0.5), epochs=2, batch_size=None)


@pytest.mark.parametrize("text, message", [
    ("", r"is empty"),
    ("\n  \n", r"is empty"),
    ("a,b,label\n", r"has a header but no data rows"),
    ("1\n2\n", r"has one column"),
    ("1,2,0\n3,4,1\n5,6\n", r"line 3 has 2 values, expected 3 \(as on line 1\)"),
    ("f,g,h\n1,2,0\n\n3,4,5,1\n", r"line 4 has 4 values, expected 3 \(as on line 2\)"),
    ("1,2,0\n3,abc,1\n", r"line 2, column 2: 'abc' is not a number"),
    ("1,2,0\n3,4,\n", r"line 2, column 3: '' is not a number"),
    ("1,2,0\n3,4,1\n5,nan,1\n", r"line 3, column 2: 'nan' is NaN or infinite"),
    ("1,2,0\n\n3,-inf,1\n", r"line 3, column 2: '-inf' is NaN or infinite"),
    ("1,1e400,0\n", r"line 1, column 2: '1e400' is NaN or infinite"),
    ("0.5,1.5,0\n4,5e53,2\n", r"line 2, column 2: '5e53' is too large for float32 \(at most 3\.403e\+38\)"),
    ("1,2,0\n3,4,1e30\n", r"line 2: label '1e30' is too large to be a class index \(at most 2147483647\)"),
    ("1,2,0\n3,4,1.5\n", r"line 2: label '1.5' in the last column is not an integer class index"),
    ("1,2,0\n3,4,-1\n", r"line 2: label '-1' is negative"),
])
def test_bad_csv(tmp_path, text, message):
    with pytest.raises(DatasetError, match=message):
        load_csv(_write(tmp_path, text))


def test_csv_missing_and_not_text(tmp_path):
    with pytest.raises(DatasetError, match=r"CSV file .*nope.csv does not exist"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="is not a regular file"):
        load_csv(tmp_path)
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        load_csv(path)


# -- NPZ -------------------------------------------------------------------------------------------
def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((10, 3)), rng.integers(0, 4, 10).astype(np.uint8)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2 = load_npz(tmp_path / "d.npz")
    assert X2.dtype == np.float64 and y2.dtype == np.int64
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    np.savez_compressed(tmp_path / "u8.npz", X=(X > 0).astype(np.uint8), y=y.astype(np.float32))
    X3, y3 = load_spec(f"npz:{tmp_path / 'u8.npz'}")
    assert X3.dtype == np.float32 and X3.shape == (10, 3) and y3.tolist() == y.tolist()


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((3, 2))}, r"has no array 'y' \(it has X;"),
    ({"data": np.zeros((3, 2)), "y": np.zeros(3, int)}, r"has no array 'X' \(it has data, y;"),
    ({"X": np.zeros((3, 2, 2)), "y": np.zeros(3, int)}, r"X must be 2-D \(n_samples, n_features\), got shape \(3, 2,"),
    ({"X": np.zeros(3), "y": np.zeros(3, int)}, r"X must be 2-D"),
    ({"X": np.zeros((0, 2)), "y": np.zeros(0, int)}, r"X is empty"),
    ({"X": np.zeros((3, 2)), "y": np.zeros((3, 1), int)}, r"y must be 1-D"),
    ({"X": np.zeros((3, 2)), "y": np.zeros(4, int)}, r"X has 3 samples but y has 4 labels"),
    ({"X": np.array([[1.0, np.nan], [0, 0]]), "y": np.zeros(2, int)}, r"X contains 1 NaN or infinite value"),
    ({"X": np.array([[1.0, np.inf]]), "y": np.zeros(1, int)}, r"X contains 1 NaN or infinite value"),
    ({"X": np.zeros((2, 2)), "y": np.array([0.0, 0.5])}, r"y must hold integer class indices; found non-integer"),
    ({"X": np.zeros((2, 2)), "y": np.array(["a", "b"])}, r"y must hold integer class indices, got dtype <U1"),
    ({"X": np.array([["a", "b"]]), "y": np.zeros(1, int)}, r"X must hold numbers, got dtype <U1"),
    ({"X": np.zeros((2, 2)), "y": np.array([0, -3])}, r"negative label \(-3\)"),
    ({"X": np.zeros((2, 2)), "y": np.array([0.0, 1e30])}, r"y has a label too large to be a class index"),
    ({"X": np.zeros((2, 2)), "y": np.array([0, 2**63], np.uint64)}, r"y has a label too large to be a class index"),
])
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        load_npz(tmp_path / "d.npz")


def test_npz_with_a_pickled_object_array_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    X = np.empty((2, 2), dtype=object)
    X[:] = [[Boom(), 1], [2, 3]]
    np.savez(tmp_path / "obj.npz", X=X, y=np.zeros(2, int))
    with pytest.raises(DatasetError, match=r"X is a pickled object array, which is never loaded"):
        load_npz(tmp_path / "obj.npz")


def test_npz_that_is_not_an_archive(tmp_path):
    with pytest.raises(DatasetError, match=r"NPZ file .*missing.npz does not exist"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"is empty"):
        load_npz(tmp_path / "empty.npz")
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"X": [[1.0]], "y": [0]}))
    with pytest.raises(DatasetError, match=r"is not an .npz archive"):
        load_npz(tmp_path / "p.npz")
    (tmp_path / "text.npz").write_text("hello, world\n")
    with pytest.raises(DatasetError, match=r"is not an .npz archive"):
        load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "one.npy", np.zeros((2, 2)))
    with pytest.raises(DatasetError, match=r"holds a single array, not an archive with X and y"):
        load_npz(tmp_path / "one.npy")
    import zipfile

    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as archive:  # members that are not .npy files
        archive.writestr("X", b"not an array")
        archive.writestr("y.npy", b"")
    with pytest.raises(DatasetError, match=r"raw.npz: X is not a NumPy array"):
        load_npz(tmp_path / "raw.npz")
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DatasetError, match=r"zip.npz is not a readable .npz archive"):
        load_npz(tmp_path / "zip.npz")
    good = tmp_path / "good.npz"
    np.savez(good, X=np.zeros((50, 40)), y=np.zeros(50, int))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-200])
    with pytest.raises(DatasetError, match=r"cut.npz"):
        load_npz(tmp_path / "cut.npz")


# -- specs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [
    ("spiral.csv", r"unknown dataset 'spiral.csv'; expected csv:PATH or npz:PATH"),
    ("json:x.json", r"unknown dataset 'json:x.json'"),
    ("csv:", r"names no file; expected csv:PATH"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DatasetError, match=message):
        load_spec(spec)


def test_spec_prefix_is_case_insensitive_and_paths_may_hold_colons(tmp_path):
    directory = tmp_path / "a:b"
    directory.mkdir()
    path = _write(directory, "1,2,1\n")
    X, y = load_spec(f"CSV:{path}")
    assert X.tolist() == [[1.0, 2.0]] and y.tolist() == [1]
