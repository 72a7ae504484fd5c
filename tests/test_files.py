"""load_csv / load_npz / load_spec: good files, and one clear DatasetError per kind of bad file."""
import pickle
import re

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


# -- every check of the readers, at its boundary ------------------------------------------------------------
F32 = float(np.finfo(np.float32).max)  # 3.4028234663852886e+38, the largest float32
BEYOND = float(np.nextafter(F32, np.inf))  # the next float64: beyond float32's range


@pytest.mark.parametrize("value", [F32, -F32, -1e-45, 0.0])
def test_csv_values_at_float32s_limits_load(tmp_path, value):
    X, _ = load_csv(_write(tmp_path, f"0.5,1,0\n{value!r},-2,1\n"))
    assert X.dtype == np.float32 and X[1, 0] == np.float32(value) and np.isfinite(X).all()


@pytest.mark.parametrize("value", [BEYOND, -BEYOND, 1e39, -1e39])
def test_csv_values_beyond_float32_are_refused_unless_reading_float64(tmp_path, value):
    path = _write(tmp_path, f"0.5,1,0\n-2,{value!r},1\n")
    with pytest.raises(DatasetError, match=re.escape(f"line 2, column 2: '{value!r}' is too large for float32 "
                                                     "(at most 3.403e+38)")):
        load_csv(path)
    X, _ = load_csv(path, dtype="float64")
    assert X.dtype == np.float64 and X[1, 1] == value


def test_csv_label_column_is_not_a_float32_feature(tmp_path):
    """The float32 range applies to the features; a label beyond it is refused as a label."""
    with pytest.raises(DatasetError, match=r"line 2: label '1e39' is too large to be a class index"):
        load_csv(_write(tmp_path, "1,2,0\n3,4,1e39\n"))


def test_csv_two_columns_are_one_feature_and_a_label(tmp_path):
    X, y = load_csv(_write(tmp_path, "0.5,1\n-1,0\n"))
    assert X.shape == (2, 1) and X[:, 0].tolist() == [0.5, -1] and y.tolist() == [1, 0]


@pytest.mark.parametrize("first, header", [
    ("x,y,label", True), (" x , y , label ", True), (",x,label", True),  # pandas' unnamed index column
    ("0,1,label", True), ("1,2,label", True), ("0,x,2", True), ("1,x,3", True),  # integer column names
    ("0, 1, label", True), (" 1 ,2 ,label", True),
    ("x,inf,label", True), ("x,nan,y", True), ("-inf,NaN,z", True),  # not finite: names, not numbers
    ("0,1,2", False), ("0.5,1,2", False), ("1e3,-2,0", False),  # all numbers: data
])
def test_csv_header_detection(tmp_path, first, header):
    X, y = load_csv(_write(tmp_path, "\n".join([first, "0.5,1.5,1", "2,3,0"]) + "\n"))
    assert X.shape == ((2, 2) if header else (3, 2)), first
    assert y.tolist() == ([1, 0] if header else [int(float(first.split(",")[-1])), 1, 0])
    if not header:
        np.testing.assert_array_equal(X[0], [float(v) for v in first.split(",")[:-1]])


def test_csv_first_row_of_numbers_and_nan_is_data(tmp_path):
    with pytest.raises(DatasetError, match=r"line 1, column 1: 'nan' is NaN or infinite"):
        load_csv(_write(tmp_path, "nan,1,0\n0.5,1.5,1\n"))


@pytest.mark.parametrize("first, cell", [
    ("0.5,x,label", "column 2: 'x'"), ("2,3,label", "column 3: 'label'"),  # positions off by two: numbers
    ("0,x,3", "column 2: 'x'"), ("1,1,O", "column 3: 'O'"), ("x,5,y", "column 1: 'x'"),
])
def test_csv_first_row_mixing_names_and_numbers_is_refused(tmp_path, first, cell):
    with pytest.raises(DatasetError, match=rf"line 1, {cell} is not a number \(a header row holds names only"):
        load_csv(_write(tmp_path, first + "\n0.5,1.5,1\n2,3,0\n"))


@pytest.mark.parametrize("text, message", [
    ("x,y,label\n1,2,0\n3,nan,1\n", r"line 3, column 2: 'nan' is NaN or infinite"),
    ("\nx,y,label\n\n1,2,0\n3,4,1.5\n", r"line 5: label '1.5' in the last column is not an integer"),
    ("x,y,label\n1,2,0\n3,4,-1\n", r"line 3: label '-1' is negative"),
    ("x,y,label\n1,2,0\n3,1e39,1\n", r"line 3, column 2: '1e39' is too large for float32"),
    ("x,y,label\n1,2,0\n3,4,2147483648\n", r"line 3: label '2147483648' is too large to be a class index"),
    ("x,y,label\n1,2,0\n\n1,2,1\n3,4,1000\n", r"line 5: label '1000' would make 1001 classes from 3 rows"),
    ("x,y,label\n1,2,0\n3,4\n", r"line 3 has 2 values, expected 3 \(as on line 2\)"),
    ("x,y,label\n1,2,0\n3,z,1\n", r"line 3, column 2: 'z' is not a number"),
    ("\n\nx,y,label\n1,2,0\n3,4,-2\n", r"line 5: label '-2' is negative"),
])
def test_csv_errors_after_a_header_name_their_line_in_the_file(tmp_path, text, message):
    with pytest.raises(DatasetError, match=message):
        load_csv(_write(tmp_path, text))


@pytest.mark.parametrize("label, message", [
    ("2147483647", r"line 2: label '2147483647' would make 2147483648 classes from 2 rows"),  # the largest index
    ("2147483648", r"line 2: label '2147483648' is too large to be a class index \(at most 2147483647\)"),
    ("-1", r"line 2: label '-1' is negative"),
    ("-0.5", r"line 2: label '-0.5' in the last column is not an integer"),
])
def test_csv_label_limits(tmp_path, label, message):
    with pytest.raises(DatasetError, match=message):
        load_csv(_write(tmp_path, f"1,2,0\n3,4,{label}\n"))


def test_csv_label_zero_and_negative_zero(tmp_path):
    X, y = load_csv(_write(tmp_path, "1,2,-0\n3,4,1\n"))
    assert y.tolist() == [0, 1]


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((3, 2)), "y": np.zeros(2, int)}, r"X has 3 samples but y has 2 labels"),  # one row short
    ({"X": np.zeros((3, 0)), "y": np.zeros(3, int)}, r"X is empty \(shape \(3, 0\)\)"),
    ({"X": np.zeros((2, 2)), "y": np.array([0, -1])}, r"negative label \(-1\)"),
    ({"X": np.zeros((2, 2)), "y": np.array([0.0, np.inf])}, r"y must hold integer class indices; found non-integer"),
    ({"X": np.zeros((2, 2)), "y": np.array([0.0, -np.inf])}, r"y must hold integer class indices; found non-integer"),
    ({"X": np.zeros((2, 2)), "y": np.array([0.0, np.nan])}, r"y must hold integer class indices; found non-integer"),
    ({"X": np.zeros((2, 2)), "y": np.array([0, 2**31])}, r"y has a label too large to be a class index \(2147483648"),
    ({"X": np.zeros((2, 2)), "y": np.array([0, 2**31 - 1])}, r"label 2147483647 in y \(row 2\) would make 2147483648 "
                                                             r"classes from 2 rows"),
    ({"X": np.zeros((3, 2)), "y": np.array([0, 1000, 1])}, r"label 1000 in y \(row 2\) would make 1001 classes"),
    ({"X": np.zeros((2, 2), np.complex64), "y": np.zeros(2, int)}, r"X must hold numbers, got dtype complex64"),
])
def test_bad_npz_at_the_boundaries(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        load_npz(tmp_path / "d.npz")


@pytest.mark.parametrize("value", [BEYOND, -BEYOND, 1e39, -1e39])
def test_npz_values_beyond_float32_are_refused_when_reading_float32(tmp_path, value):
    np.savez(tmp_path / "d.npz", X=np.array([[0.5, value], [1.0, 2.0]]), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"X has values too large for float32 \(magnitude up to [0-9.e+]+, at most "
                                           r"3\.403e\+38\); scale the data or use float64"):
        load_npz(tmp_path / "d.npz", dtype="float32")
    assert load_npz(tmp_path / "d.npz")[0][0, 1] == value  # float64 stays float64


def test_npz_values_at_float32s_limits_load_as_float32(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.array([[F32, -F32], [1.0, 2.0]]), y=np.array([0, 1]))
    X, _ = load_npz(tmp_path / "d.npz", dtype="float32")
    assert X.dtype == np.float32 and X[0].tolist() == [F32, -F32]


@pytest.mark.parametrize("stored, requested, result", [
    ("float64", None, "float64"), ("float32", None, "float32"), ("float16", None, "float32"),
    ("int64", None, "float32"), ("uint8", None, "float32"), ("bool", None, "float32"),
    ("float32", "float64", "float64"), ("float64", "float32", "float32"), ("int16", "float64", "float64"),
])
def test_npz_feature_dtypes(tmp_path, stored, requested, result):
    X = (np.arange(6).reshape(3, 2) % 2).astype(stored)
    np.savez(tmp_path / "d.npz", X=X, y=np.array([True, False, True]))
    X2, y2 = load_npz(tmp_path / "d.npz", **({"dtype": requested} if requested else {}))
    assert X2.dtype == np.dtype(result) and y2.dtype == np.int64
    np.testing.assert_array_equal(X2, X.astype(result))
    assert y2.tolist() == [1, 0, 1]


# -- NPY (predict --input) --------------------------------------------------------------------------------
def test_npy_round_trip_and_bad_files(tmp_path):
    from portablenn.datasets import load_npy

    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "x.npy", X)
    out = load_npy(tmp_path / "x.npy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, X)
    with pytest.raises(DatasetError, match=r"NPY file .*missing.npy does not exist"):
        load_npy(tmp_path / "missing.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty.npy is empty"):
        load_npy(tmp_path / "empty.npy")
    (tmp_path / "text.npy").write_text("1,2,3\n")
    with pytest.raises(DatasetError, match=r"text.npy is not an .npy array file"):
        load_npy(tmp_path / "text.npy")
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-1])  # one byte short of what its header says
    with pytest.raises(DatasetError, match=r"short.npy: its header says shape \(3, 2\) of float32 \(24 B\) but the "
                                           r"file holds only 23 B"):
        load_npy(tmp_path / "short.npy")

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    np.save(tmp_path / "obj.npy", np.array([Boom(), 1], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"obj.npy holds a pickled object array, which is never loaded"):
        load_npy(tmp_path / "obj.npy")


# -- targets by task: regression (real numbers, K columns) and multi-label (0/1 columns) -------------------------
def test_csv_regression_targets_are_the_last_k_columns(tmp_path):
    path = _write(tmp_path, "x1,x2,t1,t2\n1,2,0.5,-3e2\n3,4,1e-3,7\n")
    X, y = load_csv(path, task="regression", targets=2)
    assert X.dtype == y.dtype == np.float32 and X.shape == (2, 2) and y.shape == (2, 2)
    np.testing.assert_array_equal(y, np.array([[0.5, -300], [1e-3, 7]], np.float32))
    X1, y1 = load_csv(path, dtype="float64", task="regression")  # one target by default: the last column
    assert y1.dtype == np.float64 and y1.shape == (2, 1) and X1.shape == (2, 3)
    np.testing.assert_array_equal(y1[:, 0], [-300, 7])
    X, y = load_spec(f"csv:{path}", task="regression", targets=2)
    assert y.shape == (2, 2)


def test_csv_multilabel_targets_are_0_1_columns(tmp_path):
    X, y = load_csv(_write(tmp_path, "1,2,0,1,1\n3,4,1,0,0.5\n"), task="multilabel", targets=3)
    assert X.shape == (2, 2) and y.tolist() == [[0, 1, 1], [1, 0, 0.5]] and y.dtype == np.float32


@pytest.mark.parametrize("text, kwargs, message", [
    ("1,2,0,2\n", dict(task="multilabel", targets=2), r"line 1, column 4: '2' is not a 0/1 target"),
    ("1,2,0,1\n3,4,-1,0\n", dict(task="multilabel", targets=2), r"line 2, column 3: '-1' is not a 0/1 target"),
    ("1,2,0\n", dict(task="regression", targets=3), r"has 3 columns; expected features followed by 3 target columns"),
    ("1,2\n", dict(task="regression", targets=2), r"has 2 columns; expected features followed by 2 target columns"),
    ("1,2,1e39\n", dict(task="regression"), r"line 1, column 3: '1e39' is too large for float32"),
    ("1,2,nan\n", dict(task="regression"), r"line 1, column 3: 'nan' is NaN or infinite"),
])
def test_bad_csv_targets(tmp_path, text, kwargs, message):
    with pytest.raises(DatasetError, match=message):
        load_csv(_write(tmp_path, text), **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="regress"), "task must be one of classification, regression, multilabel"),
    (dict(task="classification", targets=2), "classification reads one label column"),
    (dict(task="regression", targets=0), "targets must be a positive number"),
    (dict(task="regression", targets=True), "targets must be a positive number"),
])
def test_task_and_targets_are_checked(tmp_path, kwargs, message):
    path = _write(tmp_path, "1,2,0\n")
    with pytest.raises(ValueError, match=message):
        load_csv(path, **kwargs)
    np.savez(tmp_path / "d.npz", X=np.ones((1, 2)), y=np.zeros(1))
    with pytest.raises(ValueError, match=message):
        load_npz(tmp_path / "d.npz", **kwargs)


def test_npz_regression_and_multilabel_targets(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    np.savez(tmp_path / "r.npz", X=X, y=y)
    Xr, yr = load_npz(tmp_path / "r.npz", task="regression")
    assert Xr.dtype == yr.dtype == np.float64 and yr.shape == (6, 2)
    np.testing.assert_array_equal(yr, y)
    Xr, yr = load_npz(tmp_path / "r.npz", dtype="float32", task="regression", targets=2)
    assert yr.dtype == np.float32
    np.savez(tmp_path / "one.npz", X=X, y=y[:, 0])
    assert load_npz(tmp_path / "one.npz", task="regression")[1].shape == (6, 1)
    np.savez(tmp_path / "m.npz", X=X, y=(y > 0).astype(np.int8))
    _, ym = load_npz(tmp_path / "m.npz", task="multilabel")
    assert ym.dtype == np.float64 and ym.tolist() == (y > 0).astype(float).tolist()


@pytest.mark.parametrize("y, kwargs, message", [
    (np.zeros((4, 2)), dict(task="regression", targets=3), r"y has 2 target columns, expected 3"),
    (np.zeros((4, 2, 1)), dict(task="regression"), r"y must be \(n_samples,\) or \(n_samples, targets\)"),
    (np.zeros((4, 0)), dict(task="regression"), r"y has no target columns"),
    (np.array([[0.0], [np.nan], [1], [2]]), dict(task="regression"), r"y contains 1 NaN or infinite"),
    (np.array([1e39, 0, 0, 0]), dict(task="regression", dtype="float32"), r"y has values too large for float32"),
    (np.array([[0, 1], [1, 2], [0, 0], [1, 1]]), dict(task="multilabel"), r"y\[1, 1\] = 2 is not a 0/1 target"),
    (np.array(["a", "b", "c", "d"]), dict(task="regression"), r"y must hold numbers"),
    (np.zeros((4, 2)), dict(), r"y must be 1-D \(n_samples,\)"),
])
def test_bad_npz_targets(tmp_path, y, kwargs, message):
    np.savez(tmp_path / "d.npz", X=np.ones((4, 2)), y=y)
    with pytest.raises(DatasetError, match=message):
        load_npz(tmp_path / "d.npz", **kwargs)
