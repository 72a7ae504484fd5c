"""The command line as a user runs it: subprocesses, exit codes, output, files written."""
import json
import os
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
    (["train", "--activation", "gelu"], ["invalid choice"]),
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

    real_fit = cli.fit
    calls = []

    def skewed_fit(model, X, y, *, optimizer, **kw):
        calls.append(1)
        if len(calls) == 2:
            optimizer.lr *= 1.001
        return real_fit(model, X, y, optimizer=optimizer, **kw)
    monkeypatch.setattr(cli, "fit", skewed_fit)
    assert cli.main(["parity", "--epochs", "2", "--dtype", "float64"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_parity_step_by_step_names_the_first_step_that_diverges(monkeypatch, capsys):
    """--steps N compares after each of the first N minibatch steps (spanning epochs) and names the first
    step beyond --rtol: here a backend whose weights go wrong from step 4 on."""
    from portablenn import cli

    real_fit = cli.fit
    calls = []

    def late_skew(model, X, y, *, on_step, **kw):
        calls.append(1)
        weight = model.layers[0].params

        def step_then_skew(epoch, step, steps):
            if len(calls) == 2 and (epoch, step) == (2, 1):  # the 4th step: 3 steps an epoch
                weight["weight"][...] *= 1.01
            on_step(epoch, step, steps)
        return real_fit(model, X, y, on_step=step_then_skew, **kw)

    monkeypatch.setattr(cli, "fit", late_skew)
    argv = ["parity", "--dataset", "lines", "--batch-size", "8", "--dtype", "float64", "--no-shuffle", "--steps", "5"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if "array_api_strict:device1 |" in line]
    assert rows == ["1.1", "1.2", "1.3", "2.1", "2.2"]
    assert "first 5 steps" in out and out.rstrip().endswith("first above it at epoch.step 2.1 on array_api_strict:device1")
    monkeypatch.setattr(cli, "fit", real_fit)
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
@pytest.mark.parametrize("optimizer", [["--momentum", "0.9"], ["--optimizer", "adam", "--lr", "0.01"]])
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


def test_divergence_stops_with_epoch_step_and_keeps_the_last_checkpoint(tmp_path):
    path = tmp_path / "run.safetensors"
    result = run("train", "--lr", "1e9", "--epochs", "50", "--checkpoint-every", "1", "--save", str(path), "--quiet")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "became nan" in message or "became inf" in message
    assert "at epoch" in message and "step" in message and "learning rate" in message
    epoch = int(message.split("at epoch ")[1].split(",")[0])
    if epoch > 1:
        assert f"last good checkpoint is {path} (epoch {epoch - 1})" in message
        from portablenn import checkpoint

        state = checkpoint.load_checkpoint(path).state_dict
        assert all(np.all(np.isfinite(v)) for v in state.values())


def test_checkpoint_every_needs_save():
    assert_clean_error(run("train", "--checkpoint-every", "2"), "--save")


def test_device_out_of_memory_is_one_sentence(monkeypatch, capsys):
    """CuPy's OutOfMemoryError (simulated: no GPU here) becomes advice, not a traceback."""
    from portablenn import cli

    class OutOfMemoryError(MemoryError):
        pass

    def boom(*args, **kwargs):
        raise OutOfMemoryError("Out of memory allocating 8,589,934,592 bytes (allocated so far: 0 bytes).")
    monkeypatch.setattr(cli, "fit", boom)
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
    monkeypatch.setattr(cli, "fit", boom)
    assert cli.main(["train", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"portablenn: error: the GPU failed ({kind}: cudaErrorIllegalAddress: an illegal memory")
    assert "--kernels generic" in err and len(err.strip().splitlines()) == 1


def test_other_unexpected_errors_still_raise(monkeypatch):
    """Only CUDA's errors are turned into a line: a bug of portablenn's keeps its traceback."""
    from portablenn import cli

    monkeypatch.setattr(cli, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError):
        cli.main(["train", "--epochs", "1"])


def test_a_kernel_fallback_warning_is_one_line(monkeypatch, capsys):
    from portablenn import backend, cli

    def warn(*args, **kwargs):
        warnings.warn("the fast kernels of cupy:0 failed their self-test (relu is off by 1.8e+00 ...), so it trains "
                      "with the generic Array API kernels", backend.KernelFallbackWarning)
    monkeypatch.setattr(cli, "fit", warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        cli.main(["train", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert err == ("portablenn: warning: the fast kernels of cupy:0 failed their self-test (relu is off by 1.8e+00 "
                   "...), so it trains with the generic Array API kernels\n")


@pytest.mark.parametrize("kernels", ["fast", "generic"])
def test_kernels_flag_picks_the_kernels(monkeypatch, kernels):
    from portablenn import cli
    from portablenn.backend_numpy import NumpyKernels

    seen = []
    monkeypatch.setattr(cli, "fit", lambda model, *a, device, **k: seen.append(type(device.kernels)))
    monkeypatch.setattr(cli, "evaluate", lambda *a, **k: (0.0, 0.0))
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
