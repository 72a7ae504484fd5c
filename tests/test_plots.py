"""plots: every function writes a readable PNG of the expected size; colours and errors are right."""
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

import portablenn as pn  # noqa: E402
from portablenn import plots  # noqa: E402
from portablenn.datasets import lines, spiral  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREEN, RED = (0.0, 128 / 255, 0.0), (1.0, 0.0, 0.0)  # matplotlib's "green" and "red"


def _read_png(path, expected_size=None):
    """Check the file is a non-empty PNG; return its pixels (rows, cols, RGBA) in [0, 1]."""
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    if expected_size is not None:  # (width, height) in pixels, at matplotlib's default 100 dpi
        width, height = expected_size
        assert abs(pixels.shape[1] - width) <= 2 and abs(pixels.shape[0] - height) <= 2, pixels.shape
    return pixels


def _has_colour(pixels, rgb, tol=0.02):
    return bool(np.any(np.all(np.abs(pixels[..., :3] - np.asarray(rgb)) < tol, axis=-1)))


def test_plot_history_with_validation(tmp_path):
    records = [{"epoch": e, "loss": 1 / e, "error": 0.5 / e, "val_loss": 1.2 / e, "val_error": 0.6 / e, "seconds": 0.1}
               for e in range(1, 6)]
    path = plots.plot_history(records, tmp_path / "sub" / "history.png", title="test")
    assert path == tmp_path / "sub" / "history.png"
    pixels = _read_png(path, (1000, 400))
    assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 20  # lines, text, not blank


def test_plot_history_from_fit(tmp_path):
    X, y = spiral(points_per_class=20)
    history = pn.fit(pn.mlp([2, 10, 3]), X, y, optimizer=pn.SGD(0.5), epochs=300, batch_size=None, log_every=50)
    _read_png(plots.plot_history(history, tmp_path / "h.png"), (1000, 400))
    with pytest.raises(ValueError, match="history is empty"):
        plots.plot_history([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="lack epoch, error"):
        plots.plot_history([{"loss": 1.0}], tmp_path / "bad.png")
    assert not (tmp_path / "empty.png").exists()


@pytest.fixture(scope="module")
def spiral_model():
    X, y = spiral()
    model = pn.mlp([2, 100, 3], init="small", dtype="float64")
    pn.fit(model, X, y, optimizer=pn.SGD(1.0), epochs=300, batch_size=None, l2=1e-3)
    return model, X, y


def test_plot_decision_regions(spiral_model, tmp_path):
    model, X, y = spiral_model
    pixels = _read_png(plots.plot_decision_regions(model, X, y, tmp_path / "regions.png"), (600, 600))
    # three filled regions in the Spectral colours at alpha 0.8 over white
    import matplotlib

    cmap = matplotlib.colormaps["Spectral"]
    for k in range(3):
        colour = 0.8 * np.asarray(cmap((k + 0.5) / 3)[:3]) + 0.2
        assert _has_colour(pixels, colour), k


def test_plot_decision_regions_of_a_model_on_another_device(spiral_model, tmp_path):
    pytest.importorskip("array_api_strict")
    model, X, y = spiral_model
    moved = pn.mlp([2, 100, 3], dtype="float32").load_state_dict(model.state_dict()).to("array_api_strict:device1")
    _read_png(plots.plot_decision_regions(moved, X, y, tmp_path / "r.png"), (600, 600))
    assert moved.device.name == "array_api_strict:device1"


def test_plot_decision_regions_refuses_other_shapes(spiral_model, tmp_path):
    model, X, y = spiral_model
    with pytest.raises(ValueError, match=r"X of shape \(n, 2\); got shape \(300, 3\)"):
        plots.plot_decision_regions(model, np.c_[X, X[:, :1]], y, tmp_path / "r.png")
    with pytest.raises(ValueError, match="model with 2 inputs; this one takes 4"):
        plots.plot_decision_regions(pn.mlp([4, 3]), X, y, tmp_path / "r.png")


def test_plot_decision_regions_caps_the_mesh(tmp_path):
    X = np.array([[0.0, 0.0], [5000.0, 1.0], [2.0, -3000.0]])
    model = pn.mlp([2, 3])
    _read_png(plots.plot_decision_regions(model, X, [0, 1, 2], tmp_path / "wide.png"), (600, 600))


def test_plot_lines_predictions_colours_right_and_wrong(tmp_path):
    data = lines()
    X, y = data["train"]
    trained = pn.mlp([9, 6, 2], activation="sigmoid", init="xavier")
    pn.fit(trained, X, y, optimizer=pn.SGD(1.0), epochs=600, batch_size=None)
    assert pn.evaluate(trained, X, y)[1] == 0
    good = _read_png(plots.plot_lines_predictions(trained, X, y, tmp_path / "good.png", title="train"), (960, 760))
    assert _has_colour(good, GREEN) and not _has_colour(good, RED)
    flipped = _read_png(plots.plot_lines_predictions(trained, X, 1 - y, tmp_path / "bad.png"), (960, 760))
    assert _has_colour(flipped, RED) and not _has_colour(flipped, GREEN)
    X_dim, y_dim = data["val_dim"]  # 18 images: 3 rows of 6
    _read_png(plots.plot_lines_predictions(trained, X_dim, y_dim, tmp_path / "dim.png"), (960, 1.75 * 300 + 60))
    with pytest.raises(ValueError, match=r"X of shape \(n, 9\)"):
        plots.plot_lines_predictions(trained, X[:, :4], y, tmp_path / "x.png")


def test_plot_first_layer(tmp_path):
    model = pn.mlp([784, 30, 10], seed=1)
    pixels = _read_png(plots.plot_first_layer(model, tmp_path / "w.png"), (660, 600))
    assert len(np.unique(pixels[..., 0])) > 50  # grey-level weights, not a blank canvas
    _read_png(plots.plot_first_layer(model, tmp_path / "w5.png", max_units=4), (450, 220 + 50))
    _read_png(plots.plot_first_layer(pn.mlp([12, 5]), tmp_path / "small.png", shape=(3, 4)))
    with pytest.raises(ValueError, match=r"784 inputs, which are not images of shape \(20, 20\)"):
        plots.plot_first_layer(model, tmp_path / "x.png", shape=(20, 20))


def test_missing_matplotlib_is_one_clear_sentence(tmp_path, monkeypatch):
    for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes "import name" raise ImportError
    with pytest.raises(ImportError, match=r"^plotting needs matplotlib: pip install 'portablenn\[plot\]'$"):
        plots.plot_first_layer(pn.mlp([4, 2]), tmp_path / "x.png", shape=(2, 2))
    assert not (tmp_path / "x.png").exists()
