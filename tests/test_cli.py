"""The command line as a user runs it: subprocesses, exit codes, output, files written."""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import portablenn as pn


def run(*args, cwd=None, env=None):
    """``python -m portablenn ARGS`` -> CompletedProcess (text, never raises)."""
    full_env = {**os.environ, "PORTABLENN_DISABLE_CUDA": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "portablenn", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=300)


def assert_clean_error(result, *words):
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(("portablenn: error:", "usage:")) or "error:" in lines[-1], result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def test_train_defaults_reach_98_percent_on_the_spiral():
    result = run("train", "--quiet")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "device numpy" in out and "spiral: 300 train" in out
    assert "| Epoch | Train Loss | Train Err |" in out
    accuracy = float(out.split("train: loss")[1].split("accuracy")[1].split("%")[0])
    assert accuracy >= 98.0


def test_train_linear_spiral_matches_the_case_study():
    result = run("train", "--model", "linear", "--epochs", "200", "--dtype", "float64")
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("accuracy")[1].split("%")[0])
    assert 45.0 <= accuracy <= 55.0  # CS231n: ~49%


def test_train_lines_validation_sets_are_perfect():
    result = run("train", "--dataset", "lines")
    assert result.returncode == 0, result.stderr
    for split in ("val_dim", "val_noise"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(split + ":"))
        assert "accuracy 100.00%" in line, line


def test_log_writes_one_json_object_per_epoch(tmp_path):
    log = tmp_path / "metrics.jsonl"
    result = run("train", "--dataset", "lines", "--epochs", "7", "--log", str(log))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 8))
    for r in records:
        assert set(r) == {"epoch", "loss", "error", "val_loss", "val_error", "seconds", "device"}
        assert r["device"] == "numpy" and r["seconds"] >= 0 and 0 <= r["error"] <= 1


def test_log_every_controls_the_table_rows():
    result = run("train", "--epochs", "30", "--log-every", "10", "--quiet")
    rows = [line for line in result.stdout.splitlines() if line.startswith("|") and line[2:7].strip().isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [1, 10, 20, 30]


def test_train_on_a_strict_device_matches_cpu():
    cpu = run("train", "--epochs", "20", "--dtype", "float64", "--quiet")
    strict = run("train", "--epochs", "20", "--dtype", "float64", "--quiet", "--device", "array_api_strict:device1")
    assert strict.returncode == 0, strict.stderr
    assert "device array_api_strict:device1" in strict.stdout

    def table(out):
        return [line for line in out.splitlines() if line.startswith("|") and line[2:7].strip().isdigit()]
    assert table(cpu.stdout) == table(strict.stdout)


@pytest.mark.parametrize("args, words", [
    (["train", "--device", "bogus"], ["unknown device 'bogus'"]),
    (["train", "--device", "cuda"], ["cannot use cuda"]),
    (["train", "--device", "cuda:x"], ["bad device index"]),
    (["train", "--dataset", "imagenet"], ["unknown dataset 'imagenet'"]),
    (["train", "--lr", "-1"], ["learning rate"]),
    (["train", "--epochs", "-2"], ["epochs"]),
    (["train", "--batch-size", "1000"], ["batch_size"]),
    (["train", "--dtype", "float64", "--device", "array_api_strict:no_float64"], ["does not support float64"]),
    (["train", "--hidden", "0"], ["sizes"]),
    (["train", "--activation", "mish"], ["invalid choice"]),
    (["train", "--cuda-graph", "--optimizer", "adam"], ["--cuda-graph replays the same step every time"]),
    (["train", "--kernels", "turbo"], ["invalid choice: 'turbo'"]),
    (["parity", "--devices", "cpu"], ["at least two devices"]),
    (["eval", "--checkpoint", "missing.safetensors"], ["missing.safetensors"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path):
    result = run(*args, cwd=tmp_path, env={"PORTABLENN_DISABLE_CUDA": "1"} if "cuda" in args else None)
    assert_clean_error(result, *words)


def test_no_command_prints_help_and_exits_2():
    result = run()
    assert result.returncode == 2 and "train" in result.stdout


def test_info_lists_devices_and_why_not():
    result = run("info", env={"PORTABLENN_DISABLE_CUDA": "1"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"numpy {np.__version__}" in out and "array-api-compat" in out
    assert "usable -> numpy, kernels fast" in out
    strict_line = next(line for line in out.splitlines() if line.strip().startswith("array_api_strict:device1 "))
    assert "kernels generic (no fast kernels for this library)" in strict_line
    assert "array_api_strict:device1" in out
    cuda_line = next(line for line in out.splitlines() if line.strip().startswith("cuda "))
    assert "not usable" in cuda_line and "PORTABLENN_DISABLE_CUDA" in cuda_line


def test_parity_passes_across_devices_and_fails_beyond_rtol():
    ok = run("parity", "--epochs", "3", "--dtype", "float64", "--devices", "cpu,array_api_strict:device1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = [line for line in ok.stdout.splitlines() if "array_api_strict:device1 |" in line]
    assert len(rows) == 3 and ok.stdout.rstrip().splitlines()[-1].startswith("PASS")
    strict = run("parity", "--epochs", "3", "--devices", "cpu,array_api_strict:device1", "--rtol", "0")
    assert strict.returncode == 1 and "FAIL" in strict.stdout


def test_parity_catches_a_real_difference(monkeypatch, capsys):
    """A backend that computes something else (here: a different learning rate) must fail parity."""
    from portablenn import cli

    real_fit = cli.parity.fit
    calls = []

    def skewed_fit(model, X, y, *, optimizer, **kw):
        calls.append(1)
        if len(calls) == 2:
            optimizer.lr *= 1.001
        return real_fit(model, X, y, optimizer=optimizer, **kw)
    monkeypatch.setattr(cli.parity, "fit", skewed_fit)
    assert cli.main(["parity", "--epochs", "2", "--dtype", "float64"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_parity_step_by_step_names_the_first_step_that_diverges(monkeypatch, capsys):
    """--steps N compares after each of the first N minibatch steps (spanning epochs) and names the first
    step beyond --rtol: here a backend whose weights go wrong from step 4 on."""
    from portablenn import cli

    real_fit = cli.parity.fit
    calls = []

    def late_skew(model, X, y, *, on_step, **kw):
        calls.append(1)
        weight = model.layers[0].params

        def step_then_skew(epoch, step, steps):
            if len(calls) == 2 and (epoch, step) == (2, 1):  # the 4th step: 3 steps an epoch
                weight["weight"][...] *= 1.01
            on_step(epoch, step, steps)
        return real_fit(model, X, y, on_step=step_then_skew, **kw)

    monkeypatch.setattr(cli.parity, "fit", late_skew)
    argv = ["parity", "--dataset", "lines", "--batch-size", "8", "--dtype", "float64", "--no-shuffle", "--steps", "5"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if "array_api_strict:device1 |" in line]
    assert rows == ["1.1", "1.2", "1.3", "2.1", "2.2"]
    assert "first 5 steps" in out and out.rstrip().endswith("first above it at epoch.step 2.1 on array_api_strict:device1")
    monkeypatch.setattr(cli.parity, "fit", real_fit)
    assert cli.main(argv) == 0 and capsys.readouterr().out.rstrip().splitlines()[-1].startswith("PASS")


def test_a_reader_that_goes_away_stops_the_command_quietly():
    """``portablenn train | head -1``: the closed pipe ends the run as SIGPIPE would (exit 141), with no
    traceback or error message, whether it shows in a print or in the last flush."""
    env = {**os.environ, "PORTABLENN_DISABLE_CUDA": ""}
    for epochs in ("3000", "2"):
        proc = subprocess.Popen([sys.executable, "-m", "portablenn", "train", "--dataset", "spiral", "--epochs", epochs],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().startswith("portablenn")
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=300)
        assert code in ((141,) if epochs == "3000" else (0, 141)) and err == "", (epochs, code, err)


def test_python_m_and_console_script_agree():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"portablenn {pn.__version__}"


# -- checkpoints, resume, interruption, divergence -------------------------------------------------------
def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.mark.parametrize("device", ["cpu", "array_api_strict:device1"])
@pytest.mark.parametrize("optimizer", [["--momentum", "0.9"], ["--optimizer", "adam", "--lr", "0.01"],
                                       ["--optimizer", "adamw", "--lr", "0.01"]])
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, device, optimizer):
    common = ["--dataset", "lines", "--batch-size", "6", "--shuffle", "--quiet", "--device", device, *optimizer]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert run("train", *common, "--epochs", "12", "--save", str(full)).returncode == 0
    assert run("train", *common, "--epochs", "5", "--save", str(part)).returncode == 0
    resumed = run("train", "--resume", str(part), "--epochs", "12", "--save", str(part), "--quiet", "--device", device)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 5" in resumed.stdout
    a, b = _weights(full), _weights(part)
    assert sorted(a) == sorted(b) and any(k.startswith("optim.") for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_save_then_eval_and_predict(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    assert run("train", "--dataset", "lines", "--save", str(ckpt), "--quiet").returncode == 0
    ev = run("eval", "--checkpoint", str(ckpt), "--split", "val_noise", "--device", "array_api_strict:device1")
    assert ev.returncode == 0, ev.stderr
    assert "lines val_noise: 24 samples" in ev.stdout and "accuracy 100.00%" in ev.stdout
    matrix = [line.split() for line in ev.stdout.splitlines()[-2:]]
    assert matrix == [["0", "12", "0"], ["1", "0", "12"]]
    from portablenn.datasets import lines

    X, y = lines()["val_dim"]
    np.save(tmp_path / "x.npy", X)
    pr = run("predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "x.npy"))
    assert pr.returncode == 0, pr.stderr
    out = np.load(str(tmp_path / "x.npy") + ".predictions.npz")
    np.testing.assert_array_equal(out["classes"], y)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-6)
    csv = run("predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "x.npy"), "--output", "-")
    rows = csv.stdout.strip().splitlines()
    assert rows[0] == "class,p0,p1" and len(rows) == 1 + len(y)


def _start(args, tmp_path):
    env = {**os.environ, "PORTABLENN_DISABLE_CUDA": "1"}
    return subprocess.Popen([sys.executable, "-m", "portablenn", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_at_the_epoch_boundary_and_resumes(tmp_path, sig, code):
    path = tmp_path / "run.safetensors"
    proc = _start(["train", "--epochs", "100000", "--save", str(path), "--quiet", "--log",
                   str(tmp_path / "log.jsonl")], tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "log.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"saved {path}" in err
    epoch = int(err.split("interrupted after epoch ")[1].split(";")[0])
    from portablenn import checkpoint

    assert int(checkpoint.load_checkpoint(path).metadata["epoch"]) == epoch
    resumed = run("train", "--resume", str(path), "--epochs", str(epoch + 3), "--quiet")
    assert resumed.returncode == 0 and f"resuming after epoch {epoch}" in resumed.stdout


@pytest.mark.parametrize("lr", ["1e6", "1e9", "1e30"])
def test_divergence_keeps_only_a_checkpoint_whose_next_epoch_was_finite(tmp_path, lr):
    """Principle 4: the state saved after epoch E is written only once epoch E+1 ended finite, so the checkpoint
    the message names evaluates finite and resumes for an epoch without diverging; where no state qualifies
    (1e30 diverges in epoch 2) the message says so and nothing is written. A run whose last state gives a
    non-finite loss is not saved as if it were fine."""
    path = tmp_path / "run.safetensors"
    result = run("train", "--lr", lr, "--epochs", "50", "--checkpoint-every", "1", "--save", str(path), "--quiet")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "became nan" in message or "became inf" in message
    assert "at epoch" in message and "step" in message and "learning rate" in message
    diverged = int(message.split("at epoch ")[1].split(",")[0])
    if diverged <= 2:
        assert "there is no good checkpoint" in message and not path.exists(), message
        return
    good = int(message.split(f"last good checkpoint is {path} (epoch ")[1].split(")")[0])
    assert good == diverged - 2  # the state after diverged - 1 is the one that diverged
    from portablenn import checkpoint

    assert int(checkpoint.load_checkpoint(path).metadata["epoch"]) == good
    ev = run("eval", "--checkpoint", str(path))
    assert ev.returncode == 0 and "nan" not in ev.stdout.split("|")[1], ev.stdout
    # its next epoch is finite; the state after it is the one that diverges: refused, the checkpoint kept
    resumed = run("train", "--resume", str(path), "--epochs", str(good + 1), "--quiet")
    assert resumed.returncode == 1 and "became nan" not in resumed.stderr, resumed.stderr
    assert "gives a non-finite loss" in resumed.stderr and f"{path} (epoch {good}) is as it was" in resumed.stderr
    assert int(checkpoint.load_checkpoint(path).metadata["epoch"]) == good


def test_checkpoint_every_needs_save():
    assert_clean_error(run("train", "--checkpoint-every", "2"), "--save")


def test_device_out_of_memory_is_one_sentence(monkeypatch, capsys):
    """CuPy's OutOfMemoryError (simulated: no GPU here) becomes advice, not a traceback."""
    from portablenn import cli

    class OutOfMemoryError(MemoryError):
        pass

    def boom(*args, **kwargs):
        raise OutOfMemoryError("Out of memory allocating 8,589,934,592 bytes (allocated so far: 0 bytes).")
    monkeypatch.setattr(cli.train, "fit", boom)
    assert cli.main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "--batch-size" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind, module", [("CUDARuntimeError", "cupy_backends.cuda.api.runtime"),
                                          ("CUBLASError", "cupy_backends.cuda.libs.cublas"),
                                          ("CompileException", "cupy.cuda.compiler")])
def test_a_cuda_error_is_one_line_and_exit_1(monkeypatch, capsys, kind, module):
    """An error from CUDA through CuPy (simulated: no GPU here) is one line naming it, never a traceback."""
    from portablenn import cli

    error = type(kind, (RuntimeError,), {"__module__": module})

    def boom(*args, **kwargs):
        raise error("cudaErrorIllegalAddress: an illegal memory access was encountered\n(more lines)")
    monkeypatch.setattr(cli.train, "fit", boom)
    assert cli.main(["train", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"portablenn: error: the GPU failed ({kind}: cudaErrorIllegalAddress: an illegal memory")
    assert "--kernels generic" in err and len(err.strip().splitlines()) == 1


def test_other_unexpected_errors_still_raise(monkeypatch):
    """Only CUDA's errors are turned into a line: a bug of portablenn's keeps its traceback."""
    from portablenn import cli

    monkeypatch.setattr(cli.train, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError):
        cli.main(["train", "--epochs", "1"])


def test_a_kernel_fallback_warning_is_one_line(monkeypatch, capsys):
    from portablenn import backend, cli

    def warn(*args, **kwargs):
        warnings.warn("the fast kernels of cupy:0 failed their self-test (relu is off by 1.8e+00 ...), so it trains "
                      "with the generic Array API kernels", backend.KernelFallbackWarning)
    monkeypatch.setattr(cli.train, "fit", warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        cli.main(["train", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert err == ("portablenn: warning: the fast kernels of cupy:0 failed their self-test (relu is off by 1.8e+00 "
                   "...), so it trains with the generic Array API kernels\n")


@pytest.mark.parametrize("kernels", ["fast", "generic"])
def test_kernels_flag_picks_the_kernels(monkeypatch, kernels):
    from portablenn import cli
    from portablenn.backends.numpy import NumpyKernels

    seen = []
    monkeypatch.setattr(cli.train, "fit", lambda model, *a, device, **k: seen.append(type(device.kernels)))
    monkeypatch.setattr(cli.train, "evaluate", lambda *a, **k: {"loss": 0.0, "error": 0.0})
    assert cli.main(["train", "--epochs", "1", "--quiet", "--kernels", kernels]) == 0
    assert seen == [NumpyKernels if kernels == "fast" else pn.kernels.Kernels]


def test_cuda_graph_runs_its_static_step_on_the_cpu_as_fit_does():
    """The CLI agrees with ``fit(graph=True)``: off a GPU the fixed-address step runs eagerly, same numbers."""
    args = ("train", "--epochs", "30", "--quiet", "--batch-size", "100", "--dtype", "float64")
    plain, graph = run(*args), run(*args, "--cuda-graph")
    assert plain.returncode == 0 and graph.returncode == 0, plain.stderr + graph.stderr
    assert "no CUDA graph off a GPU" in graph.stdout

    def table(out):
        return [line for line in out.splitlines() if line.startswith("|") and line[2:7].strip().isdigit()]
    assert table(graph.stdout) == table(plain.stdout) and len(table(plain.stdout)) >= 2


# -- your own data, plots, export ----------------------------------------------------------------------
def test_csv_and_npz_datasets_with_validation_files(tmp_path):
    from portablenn.datasets import spiral

    X, y = spiral()
    rows = np.column_stack([X, y])
    (tmp_path / "train.csv").write_text("x,y,label\n" + "\n".join(f"{a},{b},{int(c)}" for a, b, c in rows[::2]))
    (tmp_path / "val.csv").write_text("\n".join(f"{a},{b},{int(c)}" for a, b, c in rows[1::2]))
    np.savez(tmp_path / "train.npz", X=X[::2], y=y[::2])
    np.savez(tmp_path / "val.npz", X=X[1::2], y=y[1::2])
    for kind in ("csv", "npz"):
        result = run("train", "--dataset", f"{kind}:train.{kind}", "--val", f"val.{kind}", "--epochs", "300",
                     "--batch-size", "0", "--lr", "1", "--quiet", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"{kind}:train.{kind}: 150 train, 150 val" in result.stdout
        assert "| Val Loss | Val Err |" in result.stdout
        accuracy = float(result.stdout.split("val: loss")[1].split("accuracy")[1].split("%")[0])
        assert accuracy > 80


def test_small_files_default_to_one_full_batch_and_huge_values_are_named(tmp_path):
    """The file datasets' default minibatch (100) is more than 30 samples: one full batch, not an error;
    an explicit --batch-size beyond them is one. Values a float32 model cannot hold are named."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 2)), np.arange(30) % 3
    np.savez(tmp_path / "small.npz", X=X, y=y)
    result = run("train", "--dataset", "npz:small.npz", "--epochs", "2", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| batch full |" in result.stdout
    assert_clean_error(run("train", "--dataset", "npz:small.npz", "--batch-size", "100", cwd=tmp_path),
                       "batch_size must be between 1 and the number of samples (30), got 100")
    X[3, 1] = 1e39
    np.savez(tmp_path / "huge.npz", X=X, y=y)
    assert_clean_error(run("train", "--dataset", "npz:huge.npz", cwd=tmp_path),
                       "X has values too large for float32")
    result = run("train", "--dataset", "npz:huge.npz", "--dtype", "float64", "--epochs", "1", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "e+" in result.stdout.split("train: loss")[1]  # a huge loss in exponent form, not 40 digits


def test_plot_writes_readable_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    result = run("train", "--epochs", "300", "--plot", str(tmp_path / "plots"), "--quiet")
    assert result.returncode == 0, result.stderr
    for name in ("history.png", "decision_regions.png"):
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = imread(path).shape[:2]
        assert 300 <= height <= 3000 and 300 <= width <= 4000
    lines = run("train", "--dataset", "lines", "--epochs", "50", "--plot", str(tmp_path / "lines"), "--quiet")
    assert lines.returncode == 0 and sorted(p.name for p in (tmp_path / "lines").iterdir()) == [
        "history.png", "lines_train.png", "lines_val_dim.png", "lines_val_noise.png"]


def test_plot_without_matplotlib_is_one_line(tmp_path):
    code = "import sys; sys.modules['matplotlib'] = None; from portablenn.cli import main; " \
           "sys.exit(main(['train', '--epochs', '5', '--plot', 'p', '--quiet']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "pip install 'portablenn[plot]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_onnx_from_a_checkpoint(tmp_path):
    pytest.importorskip("ndonnx")
    ort = pytest.importorskip("onnxruntime")
    ckpt = tmp_path / "m.safetensors"
    assert run("train", "--epochs", "50", "--save", str(ckpt), "--quiet").returncode == 0
    result = run("export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr
    from portablenn import checkpoint
    from portablenn.datasets import spiral

    model = checkpoint.load(ckpt)
    X = spiral()[0].astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    logits, probs = session.run(["logits", "probabilities"], {"input": X})
    np.testing.assert_allclose(probs, pn.predict_proba(model, X), rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graph_trains_as_the_ordinary_loop_on_a_gpu():
    from conftest import make_device

    make_device("cuda")  # skips without a usable GPU
    args = ("train", "--device", "cuda", "--epochs", "5", "--batch-size", "64", "--quiet")
    plain, graph = run(*args), run(*args, "--cuda-graph")
    assert plain.returncode == 0 and graph.returncode == 0, plain.stderr + graph.stderr

    def losses(out):  # the Train Loss column, printed with 5 decimals
        rows = [line for line in out.splitlines() if line.startswith("|") and line[2:7].strip().isdigit()]
        return [float(row.split("|")[2]) for row in rows]
    assert len(losses(graph.stdout)) == 5
    np.testing.assert_allclose(losses(graph.stdout), losses(plain.stdout), atol=5e-5)
    adam = run(*args, "--cuda-graph", "--optimizer", "adam")
    assert_clean_error(adam, "--cuda-graph replays the same step every time: it needs --optimizer sgd")


# -- issue #15: finished training is never thrown away (principle 3) ----------------------------------------------
# Runs the command line in a process that signals itself at a chosen moment: in an epoch's callback (as
# SIGINT from a terminal would arrive during training), in the final evaluation, or in the final save.
SIGNAL_SELF = """
import os, signal, sys
from portablenn import checkpoint, cli
when, sig = sys.argv[1], getattr(signal, sys.argv[2])
if when.startswith("epoch"):
    real_fit, at = cli.train.fit, int(when[5:])
    def fit(*args, callback, **kwargs):
        def each(record):
            if record["epoch"] == at:
                os.kill(os.getpid(), sig)
            callback(record)
        return real_fit(*args, callback=each, **kwargs)
    cli.train.fit = fit
elif when == "evaluate":
    real_evaluate, calls = cli.train.evaluate, []
    def evaluate(*args, **kwargs):
        if not calls:
            os.kill(os.getpid(), sig)
        calls.append(1)
        return real_evaluate(*args, **kwargs)
    cli.train.evaluate = evaluate
elif when == "save":
    real_write = checkpoint._atomic_write
    def write(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return real_write(*args, **kwargs)
    checkpoint._atomic_write = write
sys.exit(cli.main(sys.argv[3:]))
"""


def run_signalled(when, sig, *args, cwd, launcher=()):
    return subprocess.run([*launcher, sys.executable, "-c", SIGNAL_SELF, when, sig, *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env={**os.environ, "PORTABLENN_DISABLE_CUDA": "1"},
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("when", ["epoch5", "evaluate", "save"])
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
@pytest.mark.parametrize("save", [True, False], ids=["save", "no-save"])
def test_a_signal_after_the_last_epoch_still_saves_the_finished_training(tmp_path, when, sig, code, save):
    """A signal in the last epoch, the final evaluation or the final save: the finished model is saved (to
    --save, or ./portablenn-interrupted.safetensors without it), then the exit status of the signal."""
    if when == "save" and not save:
        pytest.skip("without --save the only save is the interrupted one")
    args = ["train", "--epochs", "5", "--quiet"] + (["--save", "done.safetensors"] if save else [])
    result = run_signalled(when, sig, *args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    path = tmp_path / ("done.safetensors" if save else "portablenn-interrupted.safetensors")
    assert "Traceback" not in result.stderr
    assert f"interrupted after the last epoch 5; saved {path.name} (training was complete)" in result.stderr
    from portablenn import checkpoint

    assert checkpoint.load_checkpoint(path).metadata["epoch"] == "5"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_only_rank_0_says_it_is_stopping(capsys):
    """Under mpiexec every rank gets the signal; ranks other than 0 take it quietly (``quiet=not root``)."""
    from portablenn import cli

    for quiet in (True, False):
        with cli.stopping.graceful_stop(quiet=quiet) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.time() + 10
            while stop["signum"] is None and time.time() < deadline:
                time.sleep(0.01)
        assert stop["signum"] == signal.SIGINT
        err = capsys.readouterr().err
        assert ("stopping after this epoch" in err) is (not quiet), err


# -- issue #15: resume means what it says (principle 5) ------------------------------------------------------------
@pytest.mark.parametrize("extra, saved_as", [
    (["--save", "my runs/ck.safetensors"], "my runs/ck.safetensors"),  # a path the shell would split
    ([], "portablenn-interrupted.safetensors"),
    (["--save", "ck.safetensors", "--device", "array_api_strict:device1", "--log", "a log.jsonl",
      "--checkpoint-every", "2"], "ck.safetensors"),
], ids=["spaces", "no-save", "device-and-log"])
def test_the_printed_resume_command_continues_and_saves(tmp_path, extra, saved_as):
    """Interrupted at epoch 3 of 8, then the printed command run as printed: it trains to epoch 8 and the
    checkpoint holds epoch 8 (a resumed run saves back to its checkpoint)."""
    (tmp_path / "my runs").mkdir()
    stopped = run_signalled("epoch3", "SIGINT", "train", "--epochs", "8", "--quiet", *extra, cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    command = stopped.stderr.split("continue with: ")[1].rsplit(")", 1)[0]
    words = shlex.split(command)
    assert words[:4] == ["portablenn", "train", "--resume", saved_as], command
    for flag in ("--device", "--log", "--checkpoint-every"):
        assert (flag in words) is (flag in extra), (flag, command)
    again = run(*words[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch 3" in again.stdout and f"saved {saved_as}" in again.stdout
    from portablenn import checkpoint

    assert checkpoint.load_checkpoint(tmp_path / saved_as).metadata["epoch"] == "8"
    if "--log" in extra:
        assert [json.loads(line)["epoch"] for line in (tmp_path / "a log.jsonl").read_text().splitlines()] == \
            list(range(1, 9))


def test_the_resume_command_under_mpiexec_names_the_launcher_and_rank_0_alone_speaks(tmp_path):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        pytest.skip("needs mpi4py and mpiexec (pip install -e '.[mpi]')")
    result = run_signalled("epoch3", "SIGINT", "train", "--distributed", "--dataset", "lines", "--epochs", "8",
                           "--batch-size", "6", "--quiet", "--save", "ck.safetensors", cwd=tmp_path,
                           launcher=(mpiexec, "-n", "2"))
    assert result.stderr.count("stopping after this epoch") == 1, result.stderr
    assert ("continue with: mpiexec -n 2 portablenn train --distributed --resume ck.safetensors --epochs 8"
            in result.stderr), result.stderr
    from portablenn import checkpoint

    assert checkpoint.load_checkpoint(tmp_path / "ck.safetensors").metadata["epoch"] == "3"


def test_continue_command_is_quoted_and_complete():
    from types import SimpleNamespace

    from portablenn import cli

    args = cli.build_parser().parse_args(["train", "--log", "it's here.jsonl", "--kernels", "generic", "--comm", "mpi",
                                          "--distributed", "--data-dir", "/d d", "--no-download"])
    command = cli.train_outputs.continue_command(args, "cuda", SimpleNamespace(size=4), "a b.safetensors", 12)
    assert shlex.split(command) == [
        "mpiexec", "-n", "4", "portablenn", "train", "--distributed", "--comm", "mpi", "--resume", "a b.safetensors",
        "--epochs", "12", "--device", "cuda", "--kernels", "generic", "--data-dir", "/d d", "--log", "it's here.jsonl",
        "--no-download"]


def test_a_resumed_run_saves_back_to_its_checkpoint(tmp_path):
    path = tmp_path / "ck.safetensors"
    assert run("train", "--epochs", "3", "--quiet", "--save", str(path)).returncode == 0
    resumed = run("train", "--resume", str(path), "--epochs", "5", "--quiet")
    assert resumed.returncode == 0 and f"saved {path}" in resumed.stdout, resumed.stderr
    from portablenn import checkpoint

    assert checkpoint.load_checkpoint(path).metadata["epoch"] == "5"


RESUME_CONFLICTS = [  # (flags given with --resume, the flag as given, the checkpoint's value)
    (["--hidden", "50"], "--hidden 50", "--hidden 100"),
    (["--optimizer", "adam"], "--optimizer adam", "--optimizer sgd"),
    (["--lr", "0.5"], "--lr 0.5", "--lr 1"),
    (["--dataset", "lines"], "--dataset lines", "--dataset spiral"),
    (["--dtype", "float64"], "--dtype float64", "--dtype float32"),
    (["--batch-size", "10"], "--batch-size 10", "--batch-size 0"),
    (["--activation", "tanh"], "--activation tanh", "--activation relu"),
    (["--model", "linear"], "--model linear", "--model mlp"),
    (["--no-bias"], "--no-bias", "--bias"),
    (["--init", "xavier"], "--init xavier", "--init small"),
    (["--l2", "0"], "--l2 0", "--l2 0.001"),
    (["--momentum", "0.9"], "--momentum 0.9", "--momentum 0"),
    (["--no-shuffle"], "--no-shuffle", "--shuffle"),
    (["--seed", "3"], "--seed 3", "--seed 0"),
    (["--val", "v.csv"], "--val v.csv", "no --val"),
]


@pytest.fixture(scope="module")
def spiral_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    assert run("train", "--epochs", "2", "--quiet", "--save", "ck.safetensors", cwd=folder).returncode == 0
    return (folder / "ck.safetensors").read_bytes()


@pytest.mark.parametrize("flags, given, saved", RESUME_CONFLICTS, ids=[c[1] for c in RESUME_CONFLICTS])
def test_resume_refuses_a_flag_that_contradicts_the_checkpoint(tmp_path, spiral_checkpoint, flags, given, saved):
    (tmp_path / "ck.safetensors").write_bytes(spiral_checkpoint)
    result = run("train", "--resume", "ck.safetensors", "--epochs", "4", *flags, cwd=tmp_path)
    assert_clean_error(result, f"{given} contradicts ck.safetensors, which was trained with {saved}")
    assert (tmp_path / "ck.safetensors").read_bytes() == spiral_checkpoint
    assert "| Epoch" not in result.stdout


def test_resume_accepts_flags_that_agree_with_the_checkpoint(tmp_path, spiral_checkpoint):
    (tmp_path / "ck.safetensors").write_bytes(spiral_checkpoint)
    same = ["--hidden", "100", "--optimizer", "sgd", "--lr", "1", "--dataset", "spiral", "--dtype", "float32",
            "--batch-size", "0", "--activation", "relu", "--model", "mlp", "--bias", "--init", "small", "--l2", "0.001",
            "--momentum", "0", "--shuffle", "--seed", "0"]
    result = run("train", "--resume", "ck.safetensors", "--epochs", "4", "--quiet", *same, cwd=tmp_path)
    assert result.returncode == 0 and "resuming after epoch 2" in result.stdout, result.stderr


# -- issue #15: no silent surprises (principle 8, the command line's part) ------------------------------------------
SURPRISES = [  # (arguments, words of the one-line refusal)
    (["eval", "--checkpoint", "ck.safetensors", "--split", "test"], ["has no split 'test'; choose one of train"]),
    (["eval", "--checkpoint", "ck.safetensors", "--split", "val_dim"], ["has no split 'val_dim'"]),
    (["train", "--val", "val.csv", "--epochs", "2"], ["--val is for csv:/npz: datasets", "spiral"]),
    (["train", "--dataset", "lines", "--val", "val.csv", "--epochs", "2"], ["--val is for csv:/npz: datasets"]),
    (["train", "--momentum", "0.9", "--optimizer", "adam", "--epochs", "2"], ["--momentum 0.9 is SGD's"]),
    (["parity", "--momentum", "0.9", "--optimizer", "adam", "--epochs", "2"], ["--momentum 0.9 is SGD's"]),
    (["predict", "--checkpoint", "ck.safetensors", "--input", "x.npy", "--output", "preds.npy"], ["name a .npz file"]),
    (["predict", "--checkpoint", "ck.safetensors", "--input", "x.npy", "--output", "preds"], ["name a .npz file"]),
]


@pytest.mark.parametrize("args, words", SURPRISES, ids=["eval --split test", "eval --split val_dim",
                                                           "spiral --val", "lines --val", "adam --momentum",
                                                           "parity adam --momentum", "predict .npy", "predict no ext"])
def test_no_silent_surprises(tmp_path, spiral_checkpoint, args, words):
    (tmp_path / "ck.safetensors").write_bytes(spiral_checkpoint)
    (tmp_path / "val.csv").write_text("0.1,0.2,0\n0.3,0.4,1\n")
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_clean_error(run(*args, cwd=tmp_path), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no preds.npy.npz


def test_eval_without_split_uses_the_only_split_and_says_which(tmp_path, spiral_checkpoint):
    (tmp_path / "ck.safetensors").write_bytes(spiral_checkpoint)
    result = run("eval", "--checkpoint", "ck.safetensors", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("spiral train: 300 samples"), result.stderr


def test_adam_gets_its_own_default_learning_rate():
    """--optimizer adam without --lr: Adam's rate for the dataset (not SGD's 1.0, which leaves the spiral at 44%)."""
    result = run("train", "--optimizer", "adam", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Adam(lr=0.001" in result.stdout
    accuracy = float(result.stdout.split("train: loss")[1].split("accuracy")[1].split("%")[0])
    assert accuracy > 90.0


# -- issue #15: a typo gets the subcommand's usage and a suggestion (principle 9) -----------------------------------
TYPOS = [  # (arguments, the subcommand, the suggestion)
    (["train", "--epcohs", "5"], "train", "--epochs"),
    (["train", "--hiden", "50"], "train", "--hidden"),
    (["train", "--chekpoint-every", "2"], "train", "--checkpoint-every"),
    (["predict", "--checkpoint", "c", "--input", "x", "--ouput", "y"], "predict", "--output"),
    (["eval", "--checkpoint", "c", "--splt", "test"], "eval", "--split"),
    (["parity", "--devics", "cpu,cpu"], "parity", "--devices"),
]


@pytest.mark.parametrize("args, command, suggestion", TYPOS,
                         ids=[next(a for a in c[0] if a.startswith("--") and a not in ("--checkpoint", "--input"))
                              for c in TYPOS])
def test_a_typo_gets_the_subcommands_usage_and_a_suggestion(args, command, suggestion):
    result = run(*args)
    assert_clean_error(result, f"usage: portablenn {command}", f"did you mean {suggestion}?")
    assert result.stderr.splitlines()[-1].startswith(f"portablenn {command}: error: unrecognized arguments: ")


# -- issue #18: losses, targets, layers, schedules, early stopping and the validation split on the command line ------
def call(capsys, *args):
    """``cli.main(args)`` in this process -> (exit code, stdout, stderr); an unexpected exception propagates."""
    from portablenn import cli

    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, *words):
    """Exit 2 and exactly one line on stderr, the error, naming ``words``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("portablenn: error: "), (code, err)
    for word in words:
        assert word in lines[0], (word, lines[0])


def _regression_files(folder, n=200, seed=0):
    """reg.csv (3 features, 2 real targets, a header), ml.csv (3 features, 3 0/1 labels) and reg.npz."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    Y = np.c_[X @ [1.0, -2.0, 0.5] + 0.1 * rng.standard_normal(n), np.sin(X[:, 0]) + X[:, 1] ** 2]
    np.savetxt(folder / "reg.csv", np.c_[X, Y], delimiter=",", header="a,b,c,t1,t2", comments="")
    labels = np.c_[X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 0] * X[:, 1] > 0].astype(int)
    np.savetxt(folder / "ml.csv", np.c_[X, labels], delimiter=",", fmt="%.8g")
    np.savez(folder / "reg.npz", X=X, y=Y)
    np.savetxt(folder / "x.csv", X[:5], delimiter=",")
    return X, Y, labels


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORTABLENN_DISABLE_CUDA", "1")
    return _regression_files(tmp_path)


BAD_COMBINATIONS = [  # (flags after "train --epochs 3 --quiet", words of the one line)
    (["--dropout", "1"], ["--dropout is a probability in [0, 1), got 1"]),
    (["--dropout", "-0.1"], ["--dropout is a probability in [0, 1), got -0.1"]),
    (["--dropout", "nan"], ["--dropout is a probability in [0, 1), got nan"]),
    (["--model", "linear", "--dropout", "0.2"], ["--dropout acts on hidden layers; --model linear has none"]),
    (["--model", "linear", "--norm", "batch"], ["--norm acts on hidden layers"]),
    (["--weight-decay", "0.1"], ["--weight-decay is AdamW's", "--optimizer sgd has none"]),
    (["--optimizer", "adam", "--weight-decay", "0.1"], ["--optimizer adam has none", "use --optimizer adamw"]),
    (["--optimizer", "adamw", "--weight-decay", "-1"], ["--weight-decay must be a finite number >= 0"]),
    (["--warmup", "2"], ["--warmup is for --schedule cosine"]),
    (["--schedule", "step", "--warmup", "2", "--step-size", "1"],
     ["--warmup is for --schedule cosine, not --schedule step"]),
    (["--schedule", "cosine", "--warmup", "5"], ["--warmup must be from 0 to --epochs (3) epochs, got 5"]),
    (["--schedule", "step"], ["--schedule step needs --step-size EPOCHS"]),
    (["--schedule", "step", "--step-size", "0"], ["--step-size must be a positive number of epochs, got 0"]),
    (["--step-size", "2"], ["--step-size is for --schedule step"]),
    (["--schedule", "cosine", "--gamma", "0.5"], ["--gamma is for --schedule step, not --schedule cosine"]),
    (["--schedule", "step", "--step-size", "1", "--gamma", "1.5"],
     ["StepDecay gamma must be a finite number in (0, 1]"]),
    (["--factor", "0.5"], ["--factor is for --schedule plateau"]),
    (["--plateau-patience", "2"], ["--plateau-patience is for --schedule plateau"]),
    (["--schedule", "plateau", "--monitor", "loss", "--factor", "2"], ["ReduceOnPlateau factor must be"]),
    (["--patience", "3"], ["--patience is for --early-stopping"]),
    (["--schedule", "plateau", "--patience", "2"], ["(the plateau schedule's is --plateau-patience)"]),
    (["--min-delta", "0.1"], ["--min-delta is for --early-stopping"]),
    (["--early-stopping", "--monitor", "loss", "--patience", "0"], ["--patience must be a positive number of epochs"]),
    (["--early-stopping", "--monitor", "loss", "--min-delta", "-1"], ["--min-delta must be a finite number >= 0"]),
    (["--monitor", "loss"], ["--monitor is what --early-stopping or --schedule plateau watch; neither is asked for"]),
    (["--early-stopping"], ["--early-stopping watches val_loss, which needs validation data: add --val-fraction F"]),
    (["--schedule", "plateau"], ["--schedule plateau watches val_loss, which needs validation data"]),
    (["--early-stopping", "--monitor", "rmse", "--val-fraction", "0.2"],
     ["--monitor rmse: --early-stopping can watch loss, error, val_loss, val_error"]),
    (["--dataset", "mnist", "--data-dir", "nowhere", "--no-download", "--early-stopping"],
     ["would watch val_loss on mnist's test split, which must not choose the model: add --val-fraction F"]),
    (["--clip-grad", "0"], ["--clip-grad must be a positive finite gradient norm, got 0"]),
    (["--clip-grad", "inf"], ["--clip-grad must be a positive finite gradient norm, got inf"]),
    (["--val-fraction", "1"], ["--val-fraction must be a number strictly between 0 and 1, got 1"]),
    (["--val-fraction", "0"], ["--val-fraction must be a number strictly between 0 and 1"]),
    (["--dataset", "csv:reg.csv", "--val", "reg.csv", "--val-fraction", "0.2"], ["pass one of them"]),
    (["--cuda-graph", "--schedule", "step", "--step-size", "1"], ["--cuda-graph", "cannot follow --schedule step"]),
    (["--cuda-graph", "--dataset", "lines", "--loss", "binary_cross_entropy"],
     ["--cuda-graph records the step of softmax_cross_entropy only, not --loss binary_cross_entropy"]),
    (["--loss", "mse"], ["--loss mse is a regression loss, but spiral holds class labels"]),
    (["--loss", "huber", "--dataset", "lines"], ["--loss huber is a regression loss, but lines holds class labels"]),
    (["--loss", "binary_cross_entropy"],
     ["--loss binary_cross_entropy takes 0/1 targets, but the labels go from 0 to 2"]),
    (["--targets", "2", "--dataset", "csv:reg.csv"], ["--targets is for regression and binary_cross_entropy"]),
    (["--loss", "mse", "--targets", "2"], ["--targets is for csv:/npz: datasets; spiral has one label per row"]),
    (["--loss", "mse", "--dataset", "csv:reg.csv", "--targets", "0"], ["--targets must be a positive number"]),
    (["--loss", "mse", "--dataset", "csv:reg.csv", "--targets", "5"],
     ["has 5 columns; expected features followed by 5 target columns"]),
    (["--loss", "mse", "--dataset", "npz:reg.npz", "--targets", "3"], ["y has 2 target columns, expected 3"]),
    (["--loss", "binary_cross_entropy", "--dataset", "csv:reg.csv", "--targets", "2"],
     ["column 4", "is not a 0/1 target"]),
    (["--loss", "softmax_cross_entropy", "--dataset", "csv:reg.csv"], ["is not an integer class index"]),
    (["--norm", "batch", "--batch-size", "1", "--dataset", "lines"],
     ["--norm batch normalises over each minibatch", "--batch-size 1 over 24 training rows"]),
    (["--norm", "batch", "--batch-size", "17", "--dataset", "lines", "--val-fraction", "0.25"],
     ["--batch-size 17 over 18 training rows leaves a minibatch of 1 row"]),
]


@pytest.mark.parametrize("flags, words", BAD_COMBINATIONS, ids=[" ".join(f) for f, _ in BAD_COMBINATIONS])
def test_every_bad_combination_is_one_line_and_exit_2(files, capsys, flags, words):
    code, out, err = call(capsys, "train", "--epochs", "3", "--quiet", *flags)
    assert_one_line(code, err, *words)
    assert "| Epoch" not in out


def test_bad_combinations_are_one_line_in_a_real_process(tmp_path):
    _regression_files(tmp_path)
    assert_clean_error(run("train", "--dropout", "1.5", cwd=tmp_path), "--dropout is a probability in [0, 1)")
    assert_clean_error(run("train", "--dataset", "lines", "--norm", "batch", "--batch-size", "1", cwd=tmp_path),
                       "--norm batch normalises over each minibatch")
    assert_clean_error(run("train", "--loss", "mse", "--dataset", "csv:reg.csv", "--targets", "5", cwd=tmp_path),
                       "expected features followed by 5 target columns")
    assert_clean_error(run("train", "--norm", "group"), "invalid choice: 'group'")
    assert_clean_error(run("train", "--loss", "hinge"), "invalid choice: 'hinge'")
    assert_clean_error(run("train", "--schedule", "onecycle"), "invalid choice: 'onecycle'")


def test_batch_norm_one_row_minibatch_from_fit_is_one_line(files, capsys, monkeypatch):
    """Where the CLI's own check does not apply (a resumed run, --distributed), fit's InputError is one line too."""
    from portablenn import cli

    real_build = cli.train.build

    def build(args, opts, splits):  # a model with BatchNorm1d that the CLI did not check against the batch size
        model, optimizer = real_build(args, opts, splits)
        return pn.mlp(model.config["sizes"], activation="sigmoid", norm="batch"), optimizer
    monkeypatch.setattr(cli.train, "build", build)
    code, _, err = call(capsys, "train", "--epochs", "1", "--quiet", "--dataset", "lines", "--batch-size", "5")
    assert code == 0, err  # 24 = 4 x 5 + 4: every minibatch has 2 rows or more
    code, _, err = call(capsys, "train", "--epochs", "1", "--quiet", "--dataset", "lines", "--batch-size", "23")
    assert_one_line(code, err, "BatchNorm1d needs at least 2 rows in every minibatch")


@pytest.mark.parametrize("activation", ["gelu", "leaky_relu"])
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_activation_norm_and_dropout_train_save_and_evaluate(files, capsys, activation, norm):
    code, out, err = call(capsys, "train", "--dataset", "lines", "--epochs", "200", "--quiet", "--activation",
                          activation, "--norm", norm, "--dropout", "0.1", "--optimizer", "adam", "--batch-size", "8",
                          "--save", "m.safetensors")
    assert code == 0, err
    assert f"model [9, 6, 2] {activation} bias=True dropout=0.1" in out and (f"norm={norm}" in out) is (norm != "none")
    from portablenn import checkpoint

    ckpt = checkpoint.load_checkpoint("m.safetensors")
    assert ckpt.architecture == {"sizes": [9, 6, 2], "activation": activation, "bias": True, "dropout": 0.1, "seed": 0,
                                 **({} if norm == "none" else {"norm": norm})}
    assert float(out.split("train: loss")[1].split("accuracy")[1].split("%")[0]) >= 95.0, out
    accuracy = float(out.split("val_dim: loss")[1].split("accuracy")[1].split("%")[0])
    code, out, err = call(capsys, "eval", "--checkpoint", "m.safetensors", "--split", "val_dim")
    assert code == 0 and f"accuracy {accuracy:.2f}%" in out, (out, err)


def test_eval_also_gives_the_loss_with_the_runs_l2_term_as_train_printed_it(files, capsys):
    """train's table (and sweep's) add the L2 term of --l2 to the loss; eval prints the data loss and, where the
    run had an L2 term, the loss with it, which is train's figure for the same split."""
    code, out, err = call(capsys, "train", "--val-fraction", "0.2", "--epochs", "50", "--l2", "0.01", "--quiet",
                          "--save", "l2.safetensors")
    assert code == 0, err
    val_loss = out.split("val: loss")[1].split()[0]
    code, out, err = call(capsys, "eval", "--checkpoint", "l2.safetensors", "--split", "val")
    assert code == 0, err
    data_loss = out.split("| loss ")[1].split()[0]
    assert f"({val_loss} with the L2 term of --l2 0.01, as training reported it)" in out
    assert float(data_loss) < float(val_loss)
    code, out, err = call(capsys, "train", "--val-fraction", "0.2", "--epochs", "5", "--l2", "0", "--quiet",
                          "--save", "no_l2.safetensors")
    code, out, err = call(capsys, "eval", "--checkpoint", "no_l2.safetensors", "--split", "val")
    assert code == 0 and "L2 term" not in out, out + err


def test_weight_decay_reaches_adamw_and_the_checkpoint(files, capsys):
    code, out, err = call(capsys, "train", "--epochs", "5", "--quiet", "--optimizer", "adamw", "--weight-decay", "0.25",
                          "--save", "w.safetensors")
    assert code == 0 and "AdamW(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0.25)" in out, out + err
    from portablenn import checkpoint

    assert checkpoint.load_checkpoint("w.safetensors").optimizer_config["weight_decay"] == 0.25
    code, out, _ = call(capsys, "train", "--epochs", "5", "--quiet", "--optimizer", "adamw", "--save", "d.safetensors")
    assert "weight_decay=0.01" in out  # AdamW's default without the flag
    a, b = _weights("w.safetensors"), _weights("d.safetensors")
    assert np.abs(a["0.weight"]).sum() < np.abs(b["0.weight"]).sum()  # stronger decay: smaller weights


def test_clip_grad_is_fits_clip_norm_and_is_recorded(files, capsys, monkeypatch):
    from portablenn import cli

    seen = []
    real_fit = cli.train.fit
    monkeypatch.setattr(cli.train, "fit", lambda *a, **k: seen.append(k["clip_norm"]) or real_fit(*a, **k))
    code, out, err = call(capsys, "train", "--epochs", "20", "--quiet", "--clip-grad", "0.01", "--save",
                          "c.safetensors")
    assert code == 0 and seen == [0.01] and "training: clip-grad 0.01" in out, err
    from portablenn import checkpoint

    assert json.loads(checkpoint.load_checkpoint("c.safetensors").metadata["train"])["clip_grad"] == 0.01
    call(capsys, "train", "--epochs", "20", "--quiet", "--save", "n.safetensors")
    clipped, free = _weights("c.safetensors"), _weights("n.safetensors")
    start = pn.mlp([2, 100, 3], init="small", seed=0).state_dict()["0.weight"]
    # 20 steps of lr 1 and gradients of norm at most 0.01 move the weights by at most 0.2
    assert np.linalg.norm(clipped["0.weight"] - start) <= 0.2 + 1e-6 < np.linalg.norm(free["0.weight"] - start)


@pytest.mark.parametrize("flags, expected", [
    (["--schedule", "step", "--step-size", "2", "--gamma", "0.5"], lambda e: 0.5 ** ((e - 1) // 2)),
    (["--schedule", "cosine", "--warmup", "2"],  # 3 steps an epoch (24 rows, batch 8): warmup 6 steps, decay 12
     lambda e: 3 * e / 6 if e <= 2 else 0.5 * (1 + np.cos(np.pi * (3 * e - 1 - 6) / 12))),
], ids=["step", "cosine"])
def test_schedules_set_the_learning_rate_the_table_and_log_show(files, capsys, flags, expected):
    code, out, err = call(capsys, "train", "--dataset", "lines", "--epochs", "6", "--batch-size", "8", "--lr", "0.4",
                          "--quiet", "--log", "log.jsonl", "--log-every", "1", *flags)
    assert code == 0, err
    records = [json.loads(line) for line in open("log.jsonl")]
    np.testing.assert_allclose([r["lr"] for r in records], [0.4 * expected(e) for e in range(1, 7)], rtol=1e-12)
    assert out.splitlines()[3].endswith("|        LR |")
    rows = [line for line in out.splitlines() if line.startswith("|") and line[2:7].strip().isdigit()]
    assert [float(row.split("|")[-2]) for row in rows] == [float(f"{r['lr']:.4g}") for r in records]


def test_plateau_reduces_when_the_monitor_stalls(files, capsys):
    code, out, err = call(capsys, "train", "--dataset", "lines", "--epochs", "8", "--lr", "0.5", "--quiet", "--log",
                          "log.jsonl", "--log-every", "1", "--schedule", "plateau", "--monitor", "val_loss",
                          "--plateau-patience", "0", "--factor", "0.5")
    assert code == 0, err
    records = [json.loads(line) for line in open("log.jsonl")]
    scale = 1.0  # torch's rule, here with patience 0: any epoch that does not improve the best halves the lr after it
    best = float("inf")
    for r in records:
        assert r["lr"] == pytest.approx(0.5 * scale, rel=1e-12), records
        if r["val_loss"] < best * (1 - 1e-4):
            best = r["val_loss"]
        else:
            scale *= 0.5
    assert "schedule ReduceOnPlateau(monitor='val_loss', factor=0.5, patience=0" in out


def test_early_stopping_stops_restores_and_a_resume_has_nothing_to_do(files, capsys):
    args = ["train", "--dataset", "csv:reg.csv", "--loss", "mse", "--targets", "2", "--epochs", "60", "--optimizer",
            "adam", "--lr", "0.1", "--batch-size", "20", "--val-fraction", "0.25", "--early-stopping", "--patience",
            "3", "--quiet", "--save", "es.safetensors", "--log", "log.jsonl"]
    code, out, err = call(capsys, *args)
    assert code == 0, err
    records = [json.loads(line) for line in open("log.jsonl")]
    last = records[-1]["epoch"]
    best = min(records, key=lambda r: r["val_loss"])
    assert last < 60 and last == best["epoch"] + 3
    assert (f"early stopping: stopped after epoch {last}, val_loss not having improved for 3 epochs; the model has "
            f"epoch {best['epoch']}'s weights") in out
    final_val = float(out.split("val: loss")[1].split()[0])
    assert final_val == pytest.approx(best["val_loss"], rel=1e-4)  # the best epoch's weights, evaluated again
    from portablenn import checkpoint

    ckpt = checkpoint.load_checkpoint("es.safetensors")
    assert ckpt.metadata["epoch"] == str(last)
    assert json.loads(ckpt.metadata["train"])["early_stopping_state"]["stopped_epoch"] == last
    code, out, err = call(capsys, "train", "--resume", "es.safetensors", "--quiet")
    assert code == 0 and f"nothing to do: early stopping ended es.safetensors after epoch {last}" in out, err
    code, out, err = call(capsys, "eval", "--checkpoint", "es.safetensors", "--split", "val")
    assert code == 0 and f"val: 50 samples | loss {final_val:.5f}" in out, out + err


def test_val_fraction_holds_out_rows_and_eval_finds_them_again(files, capsys):
    code, out, err = call(capsys, "train", "--epochs", "50", "--quiet", "--val-fraction", "0.2", "--save",
                          "v.safetensors")
    assert code == 0, err
    assert "spiral: 240 train, 60 val" in out and "| Val Loss | Val Err |" in out
    assert "training: validation: 0.2 of the rows held out" in out
    val_line = next(line for line in out.splitlines() if line.strip().startswith("val:"))
    code, out, err = call(capsys, "eval", "--checkpoint", "v.safetensors", "--split", "val")
    assert code == 0 and out.startswith("spiral val: 60 samples"), err
    assert f"accuracy {val_line.split('accuracy')[1].strip()}" in out  # (train's loss adds the L2 term, eval's not)
    code, out, _ = call(capsys, "eval", "--checkpoint", "v.safetensors", "--split", "train")
    assert out.startswith("spiral train: 240 samples")  # the rows it trained on


def test_regression_csv_train_eval_predict(files, capsys):
    X, Y, _ = files
    code, out, err = call(capsys, "train", "--dataset", "csv:reg.csv", "--loss", "mse", "--targets", "2", "--epochs",
                          "60", "--optimizer", "adam", "--lr", "0.01", "--val-fraction", "0.2", "--quiet", "--save",
                          "r.safetensors")
    assert code == 0, err
    assert "model [3, 100, 2] relu" in out and "| loss mse |" in out
    assert "| Epoch | Train Loss | Train RMSE | Train R2 | Val Loss | Val RMSE |   Val R2 |" in out
    r2 = float(out.split("val: loss")[1].split("r2")[1].split()[0])
    assert r2 > 0.85, out
    code, out, err = call(capsys, "eval", "--checkpoint", "r.safetensors", "--split", "val")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("csv:reg.csv val: 40 samples | loss ") and f"r2 {r2:.5f}" in lines[0]
    assert lines[1].startswith("  target 0: rmse") and lines[2].startswith("  target 1: rmse")
    code, _, err = call(capsys, "predict", "--checkpoint", "r.safetensors", "--input", "x.csv", "--output", "p.npz")
    assert code == 0, err
    from portablenn import checkpoint

    model = checkpoint.load("r.safetensors")
    values = np.load("p.npz")["values"]
    np.testing.assert_array_equal(values, pn.predict(model, X[:5].astype(np.float32), loss="mse"))
    code, out, _ = call(capsys, "predict", "--checkpoint", "r.safetensors", "--input", "x.csv", "--output", "-")
    rows = out.strip().splitlines()
    assert rows[0] == "value0,value1" and len(rows) == 6
    np.testing.assert_array_equal(np.array([r.split(",") for r in rows[1:]], dtype=np.float32), values)
    for output in ("p.npz", "p.csv", "p.csv"):  # its own predictions file is replaced without --overwrite
        code, _, err = call(capsys, "predict", "--checkpoint", "r.safetensors", "--input", "x.csv", "--output", output)
        assert code == 0, err
    open("other.csv", "w").write("mine\n")
    code, _, err = call(capsys, "predict", "--checkpoint", "r.safetensors", "--input", "x.csv", "--output", "other.csv")
    assert_one_line(code, err, "--output other.csv exists and is not")


def test_regression_npz_and_a_validation_file(files, capsys):
    X, Y, _ = files
    np.savez("val.npz", X=X[:30], y=Y[:30])
    code, out, err = call(capsys, "train", "--dataset", "npz:reg.npz", "--val", "val.npz", "--loss", "huber",
                          "--epochs", "5", "--quiet", "--save", "h.safetensors")
    assert code == 0 and "npz:reg.npz: 200 train, 30 val" in out and "model [3, 100, 2]" in out, err
    code, out, err = call(capsys, "eval", "--checkpoint", "h.safetensors", "--split", "val")
    assert code == 0 and out.startswith("npz:reg.npz val: 30 samples | loss") and "rmse" in out, err


def test_multilabel_csv_train_eval_predict(files, capsys):
    X, _, labels = files
    code, out, err = call(capsys, "train", "--dataset", "csv:ml.csv", "--loss", "binary_cross_entropy", "--targets",
                          "3", "--epochs", "40", "--optimizer", "adam", "--lr", "0.01", "--quiet", "--save",
                          "m.safetensors")
    assert code == 0, err
    assert "model [3, 100, 3]" in out and "| Epoch | Train Loss | Train Err |" in out
    accuracy = float(out.split("train: loss")[1].split("accuracy")[1].split("%")[0])
    assert accuracy > 90.0
    code, out, err = call(capsys, "eval", "--checkpoint", "m.safetensors")
    assert code == 0 and f"accuracy {accuracy:.2f}% (of the labels)" in out, err
    errors = [float(part.split(":")[1]) for part in out.splitlines()[1].split(": ", 1)[1].split(" | ")]
    assert len(errors) == 3 and np.mean(errors) == pytest.approx(1 - accuracy / 100, abs=1e-4)
    code, _, err = call(capsys, "predict", "--checkpoint", "m.safetensors", "--input", "x.csv")
    assert code == 0, err
    saved = np.load("x.csv.predictions.npz")
    assert sorted(saved.files) == ["labels", "probabilities"] and saved["labels"].shape == (5, 3)
    np.testing.assert_array_equal(saved["labels"], (saved["probabilities"] > 0.5).astype(np.int64))
    assert (saved["labels"] == labels[:5]).mean() >= 0.8
    code, out, _ = call(capsys, "predict", "--checkpoint", "m.safetensors", "--input", "x.csv", "--output", "-")
    assert out.splitlines()[0] == "label0,label1,label2,p0,p1,p2"
    for output in ("x.csv.predictions.npz", "p.csv", "p.csv"):  # its own predictions replaced without --overwrite
        code, _, err = call(capsys, "predict", "--checkpoint", "m.safetensors", "--input", "x.csv", "--output", output)
        assert code == 0, err


def test_binary_cross_entropy_on_the_lines_and_its_confusion_matrix(files, capsys):
    code, out, err = call(capsys, "train", "--dataset", "lines", "--loss", "binary_cross_entropy", "--quiet",
                          "--save", "b.safetensors")
    assert code == 0 and "model [9, 6, 1] sigmoid" in out, err
    assert "train: loss" in out and "val_noise: loss" in out and "accuracy 100.00%" in out.split("train: loss")[1]
    code, out, err = call(capsys, "eval", "--checkpoint", "b.safetensors", "--split", "val_noise")
    assert code == 0 and "accuracy 100.00%" in out, out
    assert [line.split() for line in out.splitlines()[-2:]] == [["0", "12", "0"], ["1", "0", "12"]], out


def test_integer_targets_for_a_regression_loss_are_a_one_line_warning(files, capsys, tmp_path):
    from portablenn.datasets import spiral

    Xs, ys = spiral()
    np.savetxt("labels.csv", np.c_[Xs, ys], delimiter=",", fmt="%.8g")
    code, out, err = call(capsys, "train", "--dataset", "csv:labels.csv", "--loss", "mse", "--epochs", "2", "--quiet")
    assert code == 0
    assert err == ("portablenn: warning: --loss mse: the targets are the integers 0..2, which look like class labels; "
                   "they are trained as real numbers (for classes use --loss softmax_cross_entropy)\n")
    code, out, err = call(capsys, "train", "--dataset", "csv:ml.csv", "--loss", "huber", "--targets", "3",
                          "--epochs", "2", "--quiet")
    assert code == 0 and "every target column holds only 0 and 1" in err and "binary_cross_entropy" in err
    code, out, err = call(capsys, "train", "--dataset", "csv:reg.csv", "--loss", "mse", "--epochs", "2", "--quiet")
    assert code == 0 and err == ""  # real-valued targets: nothing to say
    np.savetxt("grades.csv", np.c_[Xs, ys + 3], delimiter=",", fmt="%.8g")  # 3, 4, 5: grades, not labels
    code, out, err = call(capsys, "train", "--dataset", "csv:grades.csv", "--loss", "mse", "--epochs", "2", "--quiet")
    assert code == 0 and err == ""


def test_parity_takes_the_loss_and_layer_flags(files, capsys):
    code, out, err = call(capsys, "parity", "--dataset", "csv:reg.csv", "--loss", "mse", "--targets", "2", "--epochs",
                          "2", "--dtype", "float64", "--dropout", "0.2", "--norm", "layer")
    assert code == 0 and out.rstrip().splitlines()[-1].startswith("PASS"), out + err


# resume with a schedule, early stopping, dropout and batch normalization: bit for bit the uninterrupted run
RESUMED_RUNS = {
    "cosine": ["--dataset", "lines", "--epochs", "12", "--batch-size", "6", "--schedule", "cosine", "--warmup",
               "2.5", "--dropout", "0.2", "--optimizer", "adamw", "--weight-decay", "0.05", "--lr", "0.05",
               "--clip-grad", "0.5"],
    "plateau+early-stopping": ["--dataset", "csv:reg.csv", "--loss", "mse", "--targets", "2", "--epochs", "60",
                               "--batch-size", "20", "--optimizer", "adam", "--lr", "0.1", "--schedule", "plateau",
                               "--plateau-patience", "1", "--factor", "0.5", "--early-stopping", "--patience", "3",
                               "--val-fraction", "0.25", "--norm", "batch"],
}


@pytest.mark.parametrize("name", sorted(RESUMED_RUNS))
def test_a_resumed_run_with_a_schedule_and_early_stopping_ends_bit_for_bit_as_the_uninterrupted_one(tmp_path, name):
    _regression_files(tmp_path)
    flags = [*RESUMED_RUNS[name], "--quiet"]
    full = run("train", *flags, "--save", "full.safetensors", "--log", "full.jsonl", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    stopped = run_signalled("epoch4", "SIGINT", "train", *flags, "--save", "part.safetensors", "--log", "part.jsonl",
                            cwd=tmp_path)
    assert stopped.returncode == 130 and "interrupted after epoch 4" in stopped.stderr, stopped.stderr
    resumed = run("train", "--resume", "part.safetensors", "--quiet", "--log", "part.jsonl", cwd=tmp_path)
    assert resumed.returncode == 0 and "resuming after epoch 4" in resumed.stdout, resumed.stderr
    if name != "cosine":  # the uninterrupted run did stop early, after the interruption, and both say so
        said = next(line for line in full.stdout.splitlines() if line.startswith("early stopping: stopped after"))
        assert int(said.split("after epoch ")[1].split(",")[0]) > 4 and said in resumed.stdout
    a, b = _weights(tmp_path / "full.safetensors"), _weights(tmp_path / "part.safetensors")
    assert sorted(a) == sorted(b) and any(k.startswith("optim.") for k in a)
    assert any(k.startswith("extra.best.") for k in a) is (name != "cosine")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    from portablenn import checkpoint

    one, two = (checkpoint.load_checkpoint(tmp_path / f"{n}.safetensors") for n in ("full", "part"))
    assert one.schedule == two.schedule and one.schedule is not None
    assert one.metadata["epoch"] == two.metadata["epoch"] and one.metadata["train"] == two.metadata["train"]

    def records(path):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(path)]
    assert records(tmp_path / "full.jsonl") == records(tmp_path / "part.jsonl")


RESUME_CONFLICTS_18 = [  # (flags of the run, flags given with --resume, the words)
    ([], ["--loss", "mse"], "--loss mse contradicts ck.safetensors, ... with --loss softmax_cross_entropy"),
    ([], ["--dropout", "0.2"], "--dropout 0.2 contradicts ck.safetensors, ... with --dropout 0"),
    (["--dropout", "0.2"], ["--dropout", "0"], "--dropout 0 contradicts ck.safetensors, ... with --dropout 0.2"),
    ([], ["--norm", "layer"], "--norm layer contradicts ck.safetensors, ... with no --norm"),
    (["--norm", "batch"], ["--norm", "none"], "--norm none contradicts ck.safetensors, ... with --norm batch"),
    ([], ["--weight-decay", "0.1"], "--weight-decay 0.1 contradicts ck.safetensors, ... with --optimizer sgd"),
    (["--optimizer", "adamw"], ["--weight-decay", "0.1"], "trained with --weight-decay 0.01"),
    ([], ["--clip-grad", "1"], "--clip-grad 1 contradicts ck.safetensors, ... with no --clip-grad"),
    ([], ["--schedule", "cosine"], "--schedule cosine contradicts ck.safetensors, ... with no --schedule"),
    (["--schedule", "cosine", "--warmup", "1"], ["--warmup", "2"], "which was trained with --warmup 1"),
    (["--schedule", "cosine"], ["--step-size", "2"],
     "--step-size 2 contradicts ck.safetensors, ... with no --step-size"),
    (["--schedule", "step", "--step-size", "3"], ["--gamma", "0.5"], "which was trained with --gamma 0.1"),
    (["--schedule", "plateau", "--monitor", "loss"], ["--factor", "0.5"], "which was trained with --factor 0.1"),
    (["--schedule", "plateau", "--monitor", "loss"], ["--plateau-patience", "2"], "trained with --plateau-patience 10"),
    ([], ["--early-stopping"], "--early-stopping contradicts ck.safetensors, ... with --no-early-stopping"),
    (["--early-stopping", "--monitor", "loss"], ["--patience", "4"], "which was trained with --patience 10"),
    (["--early-stopping", "--monitor", "loss"], ["--min-delta", "0.1"], "which was trained with --min-delta 0"),
    (["--early-stopping", "--monitor", "loss"], ["--monitor", "val_loss"], "which was trained with --monitor loss"),
    ([], ["--val-fraction", "0.2"], "--val-fraction 0.2 contradicts ck.safetensors, ... with no --val-fraction"),
    (["--schedule", "cosine"], ["--epochs", "9"],
     "--epochs 9 contradicts ck.safetensors, whose cosine schedule runs over 4 epochs"),
]


@pytest.mark.parametrize("flags, given, words", RESUME_CONFLICTS_18, ids=[" ".join(c[1]) + " after " + " ".join(c[0])
                                                                           for c in RESUME_CONFLICTS_18])
def test_resume_refuses_a_new_flag_that_contradicts_the_checkpoint(files, capsys, flags, given, words):
    code, _, err = call(capsys, "train", "--epochs", "4", "--quiet", "--save", "ck.safetensors", *flags)
    assert code == 0, err
    before = open("ck.safetensors", "rb").read()
    code, out, err = call(capsys, "train", "--resume", "ck.safetensors", "--epochs", "4", *given)
    assert_one_line(code, err, *words.split(" ... "))
    assert open("ck.safetensors", "rb").read() == before and "| Epoch" not in out


def test_resume_accepts_the_new_flags_where_they_agree(files, capsys):
    flags = ["--dropout", "0.1", "--norm", "layer", "--optimizer", "adamw", "--weight-decay", "0.05", "--clip-grad",
             "2", "--schedule", "step", "--step-size", "2", "--gamma", "0.5", "--early-stopping", "--patience", "4",
             "--monitor", "val_loss", "--val-fraction", "0.25", "--loss", "softmax_cross_entropy"]
    code, _, err = call(capsys, "train", "--epochs", "3", "--quiet", "--save", "ck.safetensors", *flags)
    assert code == 0, err
    code, out, err = call(capsys, "train", "--resume", "ck.safetensors", "--epochs", "5", "--quiet", *flags)
    assert code == 0 and "resuming after epoch 3" in out, err


def test_eval_and_predict_refuse_a_loss_that_contradicts_the_checkpoint(files, capsys):
    code, _, err = call(capsys, "train", "--dataset", "csv:reg.csv", "--loss", "mse", "--targets", "2", "--epochs", "2",
                        "--quiet", "--save", "r.safetensors")
    assert code == 0, err
    for command in (["eval", "--checkpoint", "r.safetensors"], ["predict", "--checkpoint", "r.safetensors", "--input",
                                                                 "x.csv", "--output", "-"]):
        code, _, err = call(capsys, *command, "--loss", "softmax_cross_entropy")
        assert_one_line(code, err, "--loss softmax_cross_entropy contradicts r.safetensors, which was trained with "
                                   "--loss mse")
    code, out, err = call(capsys, "eval", "--checkpoint", "r.safetensors", "--loss", "mse", "--split", "train")
    assert code == 0 and "rmse" in out, err


def test_a_checkpoint_without_the_new_options_still_resumes(files, capsys):
    """A checkpoint written before #18's options existed (no loss, targets, ... in its train options) resumes as
    softmax cross-entropy without controls."""
    from portablenn import checkpoint

    code, _, err = call(capsys, "train", "--epochs", "2", "--quiet", "--save", "old.safetensors")
    assert code == 0, err
    import safetensors.numpy
    from safetensors import safe_open

    with safe_open("old.safetensors", framework="numpy") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        meta = dict(fh.metadata())
    train = json.loads(meta["train"])
    for key in ("loss", "targets", "clip_grad", "val_fraction", "early_stopping"):
        del train[key]
    meta["train"] = json.dumps(train)
    meta["sha256"] = checkpoint._digest(tensors, meta)
    open("old.safetensors", "wb").write(safetensors.numpy.save(tensors, metadata=meta))
    code, out, err = call(capsys, "train", "--resume", "old.safetensors", "--epochs", "3", "--quiet")
    assert code == 0 and "| loss softmax_cross_entropy |" in out and "resuming after epoch 2" in out, err


def test_a_signal_in_the_epoch_early_stopping_ends_finishes_the_run(tmp_path):
    """A stop request in the very epoch early stopping ends: the run ends as it would have (best weights back,
    saved once, "training was complete"), not as an interrupted run that a resume would have to finish."""
    _regression_files(tmp_path)
    flags = [*RESUMED_RUNS["plateau+early-stopping"], "--quiet"]
    full = run("train", *flags, "--save", "full.safetensors", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    said = next(line for line in full.stdout.splitlines() if line.startswith("early stopping: stopped after"))
    last = int(said.split("after epoch ")[1].split(",")[0])
    stopped = run_signalled(f"epoch{last}", "SIGTERM", "train", *flags, "--save", "part.safetensors", cwd=tmp_path)
    assert stopped.returncode == 143, stopped.stderr
    assert f"interrupted after the last epoch {last}; saved part.safetensors (training was complete)" in stopped.stderr
    a, b = _weights(tmp_path / "full.safetensors"), _weights(tmp_path / "part.safetensors")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("data, loss, names", [("reg.csv", "mse", ["outputs"]),
                                               ("ml.csv", "binary_cross_entropy", ["logits", "probabilities"])])
def test_export_follows_the_loss_the_checkpoint_was_trained_with(files, capsys, data, loss, names):
    """A regression checkpoint exports one output "outputs", a binary cross-entropy one sigmoid probabilities;
    no warning either way."""
    pytest.importorskip("ndonnx")
    ort = pytest.importorskip("onnxruntime")
    targets = 2 if loss == "mse" else 3
    code, _, err = call(capsys, "train", "--dataset", f"csv:{data}", "--loss", loss, "--targets", str(targets),
                        "--epochs", "1", "--quiet", "--save", "r.safetensors")
    assert code == 0, err
    code, out, err = call(capsys, "export", "r.safetensors", "--onnx", "r.onnx")
    assert code == 0 and f"-> {', '.join(names)} (N, {targets})" in out and err == "", err
    session = ort.InferenceSession("r.onnx", providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    from portablenn import checkpoint

    model = checkpoint.load("r.safetensors")
    X = files[0].astype(np.float32)
    results = session.run(None, {"input": X})
    np.testing.assert_allclose(results[0], model.forward(X), rtol=1e-5, atol=1e-6)
    if loss == "binary_cross_entropy":  # sigmoids, not a softmax over the labels
        np.testing.assert_allclose(results[1], 1 / (1 + np.exp(-model.forward(X))), rtol=1e-5, atol=1e-6)
