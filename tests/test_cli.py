"""The command line as a user runs it: subprocesses, exit codes, output, files written."""
import json
import os
import subprocess
import sys

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
    assert "usable -> numpy" in out
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


def test_python_m_and_console_script_agree():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"portablenn {pn.__version__}"
