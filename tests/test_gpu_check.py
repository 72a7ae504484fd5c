"""scripts/gpu_check.sh: its rehearsal on the CPU passes end to end, and without a GPU it stops at once.

The GPU machine is lent rarely and briefly, so the script that runs there must already work: here
every stage runs with the ``cpu`` device in place of ``cuda`` (``--rehearse``) and the CuPy-only
parts say SKIP.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
STAGES = ["wheels", "probe", "versions", "cli", "parity", "bench", "pytest", "nccl"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform == "win32" or not (shutil.which("bash") and shutil.which("timeout")),
                                 reason="needs bash and coreutils timeout")]


def _env(**extra):
    """The caller's environment without pytest's own variables (the script runs pytest itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k not in ("OUT", "CUPY_TF32")}
    env.update(PYTHON=sys.executable, **extra)
    return env


def _run(args, out, timeout, **env):
    began = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True,
                          timeout=timeout, env=_env(**env), cwd=REPO)
    return proc, time.monotonic() - began


def _summary(out):
    """{stage: (status, seconds, detail)} from summary.txt's stage lines."""
    rows = {}
    for line in (out / "summary.txt").read_text().splitlines():
        match = re.match(r"^(\w+)\s+(PASS|FAIL|SKIP|TIMEOUT)\s+([0-9.]+)\s+(.*)$", line)
        if match:
            rows[match[1]] = (match[2], float(match[3]), match[4])
    return rows


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc, seconds = _run(["--rehearse"], out, timeout=240, PORTABLENN_DISABLE_CUDA="")
    return proc, out, seconds


def test_rehearsal_exits_0(rehearsal):
    proc, out, seconds = rehearsal
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seconds < 200, f"the rehearsal took {seconds:.0f} s"


def test_rehearsal_writes_at_most_8_plain_files(rehearsal):
    _, out, _ = rehearsal
    entries = sorted(p.name for p in out.iterdir())
    assert "summary.txt" in entries
    assert len(entries) <= 8, entries
    assert all((out / name).is_file() and re.fullmatch(r"[a-z0-9_.-]+", name) for name in entries), entries


def test_summary_lists_every_stage_as_pass_or_skip(rehearsal):
    proc, out, _ = rehearsal
    rows = _summary(out)
    assert list(rows) == STAGES, (out / "summary.txt").read_text()
    for stage, (status, seconds, detail) in rows.items():
        assert status in ("PASS", "SKIP"), f"{stage}: {status} {detail}"
        assert detail, stage
    # what must run on the cpu does; what needs CuPy says SKIP
    assert {s for s, (status, _, _) in rows.items() if status == "PASS"} >= {"versions", "cli", "parity", "bench"}
    assert rows["probe"][0] == rows["pytest"][0] == rows["nccl"][0] == "SKIP"


def test_parity_lines_pass(rehearsal):
    _, out, _ = rehearsal
    lines = [line for line in (out / "parity.txt").read_text().splitlines() if re.match(r"^(PASS|FAIL|SKIP) ", line)]
    labels = {line[6:].split("  ")[0].strip(): line[:4] for line in lines}
    expected = {f"{family} {opt} {dtype}" for family in ("fast", "generic", "graph")
                for opt in ("sgd", "momentum", "adam") for dtype in ("float32", "float64")}
    assert expected <= set(labels), sorted(labels)
    assert not [line for line in lines if line.startswith("FAIL")], lines
    assert all(labels[label] == ("SKIP" if label.startswith("graph adam") else "PASS") for label in expected), lines
    assert any(label.startswith("auto") and status == "PASS" for label, status in labels.items()), lines


def test_bench_table_has_the_portablenn_rows(rehearsal):
    _, out, _ = rehearsal
    text = (out / "bench.txt").read_text()
    for name in ("portablenn graph", "portablenn fast", "portablenn generic"):
        assert re.search(rf"^\| {name} \| [0-9.]+ \| [0-9.]+ \|", text, re.M), name
    for name in ("hand-written CuPy", "PyTorch CUDA eager, manual gradients", "PyTorch CUDA autograd"):
        assert re.search(rf"^\| {re.escape(name)} \| SKIP: ", text, re.M), name
    report = json.loads((out / "bench.json").read_text())
    assert {r["variant"]: r["status"] for r in report["rows"]}["portablenn graph"] == "ok"
    assert [t["status"] for t in report["targets"]] == ["n/a", "n/a"]  # the GPU targets, not judged on a cpu


def test_without_a_gpu_it_exits_3_at_once(tmp_path):
    proc, seconds = _run([], tmp_path, timeout=60, PORTABLENN_DISABLE_CUDA="1")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert seconds < 30
    rows = _summary(tmp_path)
    assert rows["probe"][0] == "FAIL" and "PORTABLENN_DISABLE_CUDA" in rows["probe"][2], rows
    assert set(rows) == {"wheels", "probe"}, rows  # nothing else ran
    assert "exit 3" in (tmp_path / "summary.txt").read_text()


def test_a_stage_over_its_limit_is_a_timeout_and_the_next_stages_still_run(tmp_path):
    # parity hangs in its own process (ended by gpu_check.sh's timeout); pytest's command outlives the
    # stage's budget (ended by the stage, which reports it); nccl after them runs as usual
    proc, seconds = _run(["--rehearse", "--stages", "parity,pytest,nccl", "--limit", "parity=3", "--limit", "pytest=2"],
                         tmp_path, timeout=120, GPU_CHECK_HANG="parity")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = _summary(tmp_path)
    assert list(rows) == ["wheels", "probe", "parity", "pytest", "nccl"], rows
    assert rows["parity"][0] == "TIMEOUT" and rows["parity"][1] < 10, rows
    assert "over its limit of 3 s" in rows["parity"][2]
    assert rows["pytest"][0] == "TIMEOUT" and rows["pytest"][1] < 10, rows
    assert "pytest did not finish" in rows["pytest"][2]
    assert rows["nccl"][0] == "SKIP", rows
    assert "stage ended by signal 15" in (tmp_path / "parity.txt").read_text()
    assert seconds < 60


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("portablenn_bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_reports_a_failing_variant_and_times_the_others(capsys):
    bench = _bench()
    calls = {"flaky": 0}

    def flaky():
        calls["flaky"] += 1
        if calls["flaky"] == 3:  # the warm-up and the first round pass, the second round raises
            raise RuntimeError("lost the device\nsecond line")

    def wrong():
        return [bench.np.ones(2)]

    variants, failed = {"fine": lambda: [bench.np.zeros(2)], "flaky": flaky, "wrong": wrong}, {}
    bench.add(variants, failed, "no set-up", lambda: 1 / 0)
    check = bench.weight_check(variants, failed, [bench.np.full(2, 1e-9)], names=["wrong"])
    assert "wrong" not in variants and "correctness check" in failed["wrong"] and not check["wrong"] <= 1e-3
    times = bench.interleave(variants, 3, failed)
    assert list(times) == ["fine"] and len(times["fine"]) == 3
    assert failed["flaky"] == "timed run: RuntimeError: lost the device"
    assert failed["no set-up"].startswith("set-up raised ZeroDivisionError")
    rows = bench.table("t", times, "fine", failed=failed, skipped={"absent": "needs a GPU"})
    assert {r["variant"]: r["status"] for r in rows} == {"fine": "ok", "no set-up": "FAILED", "wrong": "FAILED",
                                                          "flaky": "FAILED", "absent": "SKIP"}
    out = capsys.readouterr().out
    assert "| flaky | FAILED: timed run: RuntimeError: lost the device |" in out
    assert "| absent | SKIP: needs a GPU |" in out


def test_bench_memory_probe_keeps_the_callers_pythonpath(monkeypatch):
    bench = _bench()
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setattr(bench, "MEMORY_PROBE", "import os, portablenn; print(os.environ['PYTHONPATH'])")
    entries = bench.memory("cpu").split(os.pathsep)
    assert Path(entries[0]).resolve() == REPO and entries[1:] == ["/somewhere/else"]


def test_stage_limits_add_up_to_under_8_minutes():
    """By construction: the stages' limits plus timeout's 5 s kill grace each stay under 480 s."""
    limits = re.findall(r"^run_stage (\w+) (\d+) ", SCRIPT.read_text(), re.M)
    assert [name for name, _ in limits] == STAGES
    assert sum(int(s) for _, s in limits) <= 450
    assert sum(int(s) + 5 for _, s in limits) < 480
    assert int(dict(limits)["wheels"]) + int(dict(limits)["probe"]) <= 25  # exit 3 within 30 s


def test_bad_arguments_exit_2(tmp_path):
    proc, _ = _run(["--bogus"], tmp_path, timeout=30)
    assert proc.returncode == 2
    assert not (tmp_path / "summary.txt").exists()
