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
    monkeypatch.setattr(cli.train, "evaluate", lambda *a, **k: (0.0, 0.0))
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
