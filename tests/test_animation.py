"""Training animations: the recorder reads the model at frame steps only and changes nothing; the GIF decodes
with the expected frames and size; colour scales are fixed over the run; every device records what NumPy
records; the CLI's --animate checks its file before training; the first step of maximum accuracy."""
import json
import math
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (Pillow comes with matplotlib)

import portablenn as pn  # noqa: E402
from portablenn import animation, cli, plots  # noqa: E402
from portablenn.animation import TrainingRecorder  # noqa: E402
from portablenn.animation_figure import FrameFigure  # noqa: E402
from portablenn.datasets import lines, spiral  # noqa: E402
from portablenn.history import History  # noqa: E402

from _tolerances import assert_close  # noqa: E402


def _lines_model(dtype="float64"):
    return pn.mlp([9, 6, 2], activation="sigmoid", init="xavier", dtype=dtype)


def _record(model, X, y, epochs, batch_size=None, frame_every=None, **fit_kwargs):
    """A recorder over a plain fit, without writing a file."""
    n = len(y)
    steps = epochs * math.ceil(n / (batch_size or n))
    recorder = TrainingRecorder(model, X, y, total_steps=steps, frame_every=frame_every)
    history = pn.fit(model, X, y, optimizer=pn.SGD(fit_kwargs.pop("lr", 1.0)), epochs=epochs, batch_size=batch_size,
                     on_step=recorder.on_step, **fit_kwargs)
    return recorder.finish(history)


def _gif_frames(path):
    """(frame count, (width, height), comment, per-frame durations) of a GIF, each frame decoded."""
    with Image.open(path) as image:
        durations = []
        for i in range(image.n_frames):
            image.seek(i)
            image.convert("RGB").load()  # decodes
            durations.append(image.info.get("duration"))
        return image.n_frames, image.size, image.info.get("comment", b""), durations


# -- the file --------------------------------------------------------------------------------------------------
def test_gif_decodes_with_one_frame_per_frame_step(tmp_path):
    X, y = lines()["train"]
    path = tmp_path / "sub" / "lines.gif"
    recorder = plots.animate_training(_lines_model(), X, y, path, optimizer=pn.SGD(1.0), epochs=12, batch_size=None,
                                      frame_every=4, fps=5)
    assert [f.step for f in recorder.frames] == [0, 4, 8, 12]  # the initial model, then every 4th step
    assert [f.epoch for f in recorder.frames] == [0, 4, 8, 12]  # full batch: a step is an epoch
    count, size, comment, durations = _gif_frames(path)
    assert count == 4
    assert size == FrameFigure(recorder).size and size[1] == 560  # 5.6 inches at 100 dpi
    assert durations == [200] * 4  # 5 frames a second
    assert animation.MARK.encode() in comment and animation.is_animation(path)
    assert len(recorder.history) == 12


def test_the_last_step_is_a_frame_and_minibatch_steps_count_across_epochs(tmp_path):
    X, y = lines()["train"]  # 24 rows in minibatches of 10: 3 steps an epoch, 15 in all
    recorder = _record(_lines_model(), X, y, epochs=5, batch_size=10, frame_every=4)
    assert [(f.step, f.epoch) for f in recorder.frames] == [(0, 0), (4, 2), (8, 3), (12, 4), (15, 5)]


def test_default_frames_are_about_200_and_never_unbounded():
    X, y = lines()["train"]
    assert animation.default_frame_every(1000) == 5 and animation.default_frame_every(10) == 1
    recorder = _record(_lines_model(), X, y, epochs=450)
    assert recorder.frame_every == 3 and len(recorder.frames) == 151  # steps 0, 3, ..., 450
    TrainingRecorder(_lines_model(), X, y, total_steps=1000, frame_every=1)  # the most: 1000 after the first
    with pytest.raises(ValueError, match=r"makes 1001 frames after the first; at most 1000: take frame_every 2 or"):
        TrainingRecorder(_lines_model(), X, y, total_steps=1001, frame_every=1)
    # nothing said about the steps: past 2 * 200 frames every other one goes, the interval doubles
    model = _lines_model()
    free = TrainingRecorder(model, X, y)
    pn.fit(model, X, y, optimizer=pn.SGD(1.0), epochs=1000, batch_size=None, on_step=free.on_step)
    steps = [f.step for f in free.finish().frames]
    assert len(steps) <= 2 * animation.FRAMES and free.frame_every == 4
    assert steps == list(range(0, 1001, 4))


def test_reading_happens_at_frame_steps_only_and_changes_nothing(monkeypatch):
    X, y = spiral(points_per_class=20)
    plain = pn.mlp([2, 8, 3], dropout=0.2, norm="batch", dtype="float64")
    watched = pn.mlp([2, 8, 3], dropout=0.2, norm="batch", dtype="float64")
    reads = []
    state_dict = type(watched).state_dict
    monkeypatch.setattr(watched, "state_dict", lambda: reads.append(1) or state_dict(watched))
    recorder = _record(watched, X, y, epochs=10, batch_size=16, frame_every=7, lr=0.5)  # 4 steps an epoch
    pn.fit(plain, X, y, optimizer=pn.SGD(0.5), epochs=10, batch_size=16)
    assert [f.step for f in recorder.frames] == [0, 7, 14, 21, 28, 35, 40]
    assert len(reads) == len(recorder.frames)
    for key, value in plain.state_dict().items():  # Dropout's draws and BatchNorm's statistics included
        np.testing.assert_array_equal(state_dict(watched)[key], value, err_msg=key)


def test_recording_between_the_steps_of_a_recorded_graph_changes_nothing():
    X, y = spiral(points_per_class=20)
    plain, watched = pn.mlp([2, 8, 3], dtype="float64"), pn.mlp([2, 8, 3], dtype="float64")
    recorder = _record(watched, X, y, epochs=6, batch_size=16, frame_every=5, lr=0.5, graph=True)
    pn.fit(plain, X, y, optimizer=pn.SGD(0.5), epochs=6, batch_size=16, graph=True)
    assert [f.step for f in recorder.frames] == [0, 5, 10, 15, 20, 24]
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(watched.state_dict()[key], value, err_msg=key)


def test_a_frame_shows_the_accuracy_the_history_gives_the_next_step():
    """Full batch: step k's History accuracy is measured in its forward pass, by the weights after step k-1."""
    X, y = lines()["train"]
    recorder = _record(_lines_model(), X, y, epochs=60, frame_every=1)
    history = recorder.history.records
    assert len(recorder.frames) == len(history) + 1
    np.testing.assert_allclose([f.accuracy for f in recorder.frames[:-1]], [1 - r["error"] for r in history],
                               rtol=0, atol=1e-12)
    assert_close([f.loss for f in recorder.frames[:-1]], [r["loss"] for r in history], "float64")


# -- what a frame shows -------------------------------------------------------------------------------------------
def test_colour_scale_is_fixed_over_the_run():
    X, y = lines()["train"]
    recorder = _record(_lines_model(), X, y, epochs=300, frame_every=30)
    limits = recorder.limits()
    for key in recorder.frames[0].params:  # symmetric, at the largest magnitude any frame shows
        largest = max(float(np.abs(f.params[key]).max()) for f in recorder.frames)
        assert limits[key] == (-largest, largest), key
    assert limits["proba"] == (0.0, 1.0)
    figure = FrameFigure(recorder)
    for i in range(len(recorder.frames)):
        figure.draw(i)
        figure.pixels()
        for key, image in figure.images.items():
            assert image.get_clim() == limits[key], (i, key)
            assert image.get_cmap().name == ("gray" if key == "proba" else "coolwarm"), key
    # the frame's figures: the last one, all 24 right
    last = recorder.frames[-1]
    assert last.accuracy == 1.0 and last.proba.shape == (24, 2)
    np.testing.assert_allclose(last.proba, pn.predict_proba(recorder.model, X))
    assert "24/24 examples right" in figure.heading.get_text()


def test_a_parameter_never_negative_is_grey_from_0_to_1():
    X, y = lines()["train"]
    model = _lines_model()
    state = model.state_dict()
    model.load_state_dict({**state, "0.weight": np.abs(state["0.weight"]) / 10})
    recorder = TrainingRecorder(model, X, y).finish()
    assert recorder.limits()["0.weight"] == (0.0, 1.0)
    figure = FrameFigure(recorder)
    assert figure.images["0.weight"].get_cmap().name == "gray"
    assert figure.images["2.weight"].get_cmap().name == "coolwarm"


def test_image_inputs_draw_the_first_units_as_images_and_wide_layers_are_cut():
    rng = np.random.default_rng(0)
    X, y = rng.random((50, 784)), rng.integers(0, 10, 50)
    recorder = TrainingRecorder(pn.mlp([784, 30, 10]), X, y).finish()
    assert recorder.image_shape == (28, 28) and recorder.frames[0].params["0.weight"].shape == (784, 16)
    figure = FrameFigure(recorder)
    assert figure.images["0.weight"].get_array().shape == (4 * 29 - 1, 4 * 29 - 1)  # 4 x 4 images, 1 px apart
    assert figure.images["2.weight"].get_array().shape == (30, 10)
    wide = TrainingRecorder(pn.mlp([200, 300, 3]), rng.random((10, 200)), rng.integers(0, 3, 10)).finish()
    assert wide.image_shape is None  # 200 inputs are no square image
    assert wide.frames[0].params["0.weight"].shape == (128, 128) and wide.frames[0].params["0.bias"].shape == (128,)


def test_two_feature_data_gets_the_decision_regions():
    X, y = spiral(points_per_class=20)
    model = pn.mlp([2, 10, 3], dtype="float64")
    recorder = _record(model, X, y, epochs=20, frame_every=10)
    regions = recorder.frames[-1].regions
    assert regions.shape == (150, 150)
    x0, x1, y0, y1 = recorder.extent
    row, column = 40, 110  # the mesh point there is the model's prediction there
    point = [[x0 + column * (x1 - x0) / 149, y0 + row * (y1 - y0) / 149]]
    assert regions[row, column] == pn.predict(model, point)[0]
    assert FrameFigure(recorder).regions is not None


def test_bad_input_is_one_clear_sentence(tmp_path):
    X, y = lines()["train"]
    with pytest.raises(ValueError, match=r"X of shape \(n, 9\)"):
        TrainingRecorder(_lines_model(), X[:, :4], y)
    with pytest.raises(ValueError, match="24 class labels in 0..1"):
        TrainingRecorder(_lines_model(), X, y + 1)
    with pytest.raises(animation.AnimationError, match=r"written as .gif or .mp4, not .avi"):
        plots.animate_training(_lines_model(), X, y, tmp_path / "a.avi", optimizer=pn.SGD(1.0))
    with pytest.raises(ValueError, match="needs softmax cross-entropy"):
        plots.animate_training(_lines_model(), X, y, tmp_path / "a.gif", optimizer=pn.SGD(1.0), loss="mse")
    assert not list(tmp_path.iterdir())


# -- every device records what NumPy records ----------------------------------------------------------------------
def test_every_device_records_the_frames_numpy_records(device):
    dtype = "float64" if device.supports("float64") else "float32"
    X, y = spiral(points_per_class=20)
    frames = {}
    for where in ("numpy", device):
        model = pn.mlp([2, 12, 3], dtype=dtype)
        frames[str(where)] = _record(model, X, y, epochs=30, frame_every=10, lr=0.5, device=where).frames
        assert model.device.name == (where if isinstance(where, str) else where.name)
    ours, reference = frames[str(device)], frames["numpy"]
    assert [f.step for f in ours] == [f.step for f in reference] == [0, 10, 20, 30]
    for a, b in zip(ours, reference):
        for key in b.params:
            assert_close(a.params[key], b.params[key], dtype, factor=100, err_msg=f"step {b.step} {key}")
        assert_close(a.proba, b.proba, dtype, factor=100, err_msg=f"step {b.step} proba")
        assert_close([a.loss, a.accuracy], [b.loss, b.accuracy], dtype, factor=100)
        # a mesh point on a class boundary may tip either way by a rounding: a handful at most
        assert np.count_nonzero(a.regions != b.regions) <= 5, b.step


# -- the step of first maximum accuracy ---------------------------------------------------------------------------
def _first_max_by_hand(records):
    best, at = -1.0, None
    for record in records:
        accuracy = 1.0 - record["error"]
        if accuracy > best:
            best, at = accuracy, record["epoch"]
    return at, best


def test_first_best_agrees_with_a_loop_over_the_history():
    X, y = lines()["train"]
    history = pn.fit(_lines_model(), X, y, optimizer=pn.SGD(1.0), epochs=400, batch_size=None)
    at, best = _first_max_by_hand(history.records)
    record = history.first_best("error")
    assert (record["epoch"], 1 - record["error"]) == (at, best) and best == 1.0
    assert 1 < at < 400  # reached during the run, after the first step
    made_up = History()
    made_up.records = [{"epoch": e, "error": v, "r2": -v} for e, v in enumerate([0.5, float("nan"), 0.2, 0.2, 0.3], 1)]
    assert made_up.first_best("error")["epoch"] == 3 and made_up.first_best("r2", "max")["epoch"] == 3
    assert History().first_best("error") is None
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        made_up.first_best("error", "best")


# -- the command line ---------------------------------------------------------------------------------------------
def _train(capsys, *args):
    code = cli.main(["train", "--dataset", "lines", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_animate_writes_the_gif_and_says_when_accuracy_first_peaked(tmp_path, capsys):
    gif, log = tmp_path / "lines.gif", tmp_path / "log.jsonl"
    code, out, err = _train(capsys, "--epochs", "300", "--animate", str(gif), "--log", str(log))
    assert code == 0, err
    count, size, _, _ = _gif_frames(gif)
    assert count == 151 and f"animation: {gif} (151 frames, one every 2 steps)" in out  # steps 0, 2, ..., 300
    at, best = _first_max_by_hand(json.loads(line) for line in log.read_text().splitlines())
    assert (f"training accuracy first reached its maximum, {100 * best:.2f}%, at step {at} (full batch: one step "
            "per epoch)") in out
    # a file portablenn wrote is replaced without --overwrite
    code, out, err = _train(capsys, "--epochs", "3", "--animate", str(gif), "--frame-every", "2")
    assert code == 0 and _gif_frames(gif)[0] == 3 and "(3 frames, one every 2 steps)" in out  # steps 0, 2, 3


def test_cli_summary_of_a_minibatch_run_names_the_epoch(capsys):
    code, out, err = _train(capsys, "--epochs", "4", "--batch-size", "10")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("training accuracy first"))
    assert line.split(", ", 2)[2].startswith("in epoch ") and "(measured once per epoch, over its 3 minibatch" in line


def test_cli_a_resumed_run_names_the_step_the_uninterrupted_one_does(tmp_path, capsys):
    """The checkpoint keeps the best of the epochs before it ("first_best"): a run resumed from epoch 20 says
    what the uninterrupted run says, whether the best came before the save (step 4 of 40) or after it (300)."""
    def line(*args):
        code, out, err = cli.main(["train", "--quiet", *args]), *capsys.readouterr()
        assert code == 0, err
        return next(l for l in out.splitlines() if l.startswith("training accuracy first"))

    ckpt = tmp_path / "a.safetensors"
    for total in (40, 300):
        line("--epochs", "20", "--save", str(ckpt), "--overwrite")
        resumed = line("--resume", str(ckpt), "--epochs", str(total))
        assert resumed == line("--epochs", str(total))
    assert "at step 4 " in line("--epochs", "40") and "at step 4 " not in line("--epochs", "300")
    line("--epochs", "20", "--save", str(ckpt), "--overwrite")  # resumed twice: the second checkpoint carries it
    line("--resume", str(ckpt), "--epochs", "30", "--save", str(ckpt))
    assert line("--resume", str(ckpt), "--epochs", "40") == line("--epochs", "40")


def test_cli_refuses_a_file_it_did_not_write_before_training(tmp_path, capsys):
    theirs = tmp_path / "notes.gif"
    theirs.write_text("not an animation")
    code, out, err = _train(capsys, "--epochs", "3", "--animate", str(theirs))
    assert code == 2 and out == ""  # before the data and the first epoch: nothing printed
    assert err.strip() == (f"portablenn: error: --animate {theirs} exists and is not an animation portablenn wrote; "
                           "portablenn replaces only its own files: choose another name, or pass --overwrite to "
                           "replace it")
    assert theirs.read_text() == "not an animation"
    code, out, err = _train(capsys, "--epochs", "3", "--animate", str(theirs), "--overwrite")
    assert code == 0 and _gif_frames(theirs)[0] == 4
    (tmp_path / "folder.gif").mkdir()
    code, out, err = _train(capsys, "--epochs", "3", "--animate", str(tmp_path / "folder.gif"), "--overwrite")
    assert code == 2 and "folder.gif is a directory" in err and out == ""


def test_cli_mp4_without_ffmpeg_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(animation.shutil, "which", lambda name: None)
    code, out, err = _train(capsys, "--epochs", "3", "--animate", str(tmp_path / "run.mp4"))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"portablenn: error: --animate {tmp_path / 'run.mp4'}: writing .mp4 needs "
                                        "ffmpeg, and 'ffmpeg' is not on the PATH; install ffmpeg, or write a .gif"]
    assert not (tmp_path / "run.mp4").exists()


def test_cli_animate_without_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.animation", None)  # makes the import raise ImportError
    code, out, err = _train(capsys, "--epochs", "3", "--animate", str(tmp_path / "a.gif"))
    assert code == 2 and out == ""
    assert err.strip() == "portablenn: error: --animate needs matplotlib: pip install 'portablenn[plot]'"


def test_cli_refuses_what_it_cannot_animate(tmp_path, capsys):
    code, _, err = _train(capsys, "--epochs", "5000", "--animate", str(tmp_path / "a.gif"), "--frame-every", "1")
    assert code == 2 and "--frame-every 1 over 5000 steps makes 5000 frames after the first; an animation has " \
                          "at most 1000: use --frame-every 5 or more" in err
    code, _, err = _train(capsys, "--epochs", "3", "--frame-every", "2")
    assert code == 2 and "--frame-every N needs N >= 1 and --animate FILE" in err
    code, _, err = _train(capsys, "--epochs", "3", "--animate", str(tmp_path / "a.gif"), "--loss",
                          "binary_cross_entropy")
    assert code == 2 and "--animate draws class probabilities" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg on the PATH")
def test_cli_writes_an_mp4_with_ffmpeg(tmp_path, capsys):
    path = tmp_path / "lines.mp4"
    code, out, err = _train(capsys, "--epochs", "10", "--animate", str(path))
    assert code == 0, err
    assert path.stat().st_size > 1000 and animation.is_animation(path)
    assert [p.name for p in tmp_path.iterdir()] == ["lines.mp4"]  # no temporary file left


def test_an_mp4s_temporary_file_is_named_as_atomic_writes_are(tmp_path):
    """ffmpeg renders into a temporary file beside the target, named as ``outputs.atomic_write`` names its own
    (this host and process, ending in .tmp): the next write into the folder removes one a kill left behind; and the
    name fits 255 bytes however many bytes the target's characters take."""
    import os

    from portablenn import outputs
    from portablenn.animation_figure import _temporary

    for name in ("run.mp4", "\N{GRINNING FACE}" * 60 + ".mp4"):
        temporary = _temporary(tmp_path / name)
        assert outputs._TEMPORARY.match(temporary.name), temporary.name
        assert len(os.fsencode(temporary.name)) <= 255 and temporary.parent == tmp_path
        temporary.unlink()
