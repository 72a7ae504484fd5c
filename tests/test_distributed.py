"""Data-parallel training over MPI: K ranks train exactly what one process trains with the same global batch.

Each scenario runs ``mpiexec -n K python tests/_mpi_worker.py`` (every rank writes its final state
dict and History) and compares with ``fit`` in this process. Skipped cleanly when mpi4py or a
matching ``mpiexec`` is missing (``pip install -e '.[mpi]'``). The NCCL tests need 2+ CUDA GPUs.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import portablenn as pn

import _mpi_worker as worker
from _tolerances import assert_close

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_mpi_worker.py"
# float64: ranks sum gradients in another order than one GEMM does: ~1e-16 per step, far below 1e-12
FLOAT64_RTOL_FACTOR = 1e-2  # x 1e-10 -> 1e-12 relative


def _mpiexec():
    """``[mpiexec, options...]`` matching mpi4py's MPI library, or skip."""
    try:
        import mpi4py  # noqa: F401  (does not initialise MPI in this process)
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -e '.[mpi]')")
    candidates = [Path(sys.executable).parent / "mpiexec", shutil.which("mpiexec")]
    exe = next((str(c) for c in candidates if c and os.access(str(c), os.X_OK)), None)
    if exe is None:
        pytest.skip("no mpiexec found (pip install -e '.[mpi]' brings MPICH's)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    options = ["--oversubscribe"] if re.search(r"open ?mpi|openrte", version.stdout + version.stderr, re.I) else []
    return [exe, *options]


@pytest.fixture(scope="module")
def mpiexec():
    command = _mpiexec()
    probe = subprocess.run([*command, "-n", "2", sys.executable, "-c",
                            "import os; from mpi4py import MPI; os.write(1, b'size=%d;' % MPI.COMM_WORLD.Get_size())"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if probe.returncode != 0 or re.findall(r"size=(\d+);", probe.stdout) != ["2", "2"]:
        pytest.skip(f"{command[0]} does not launch mpi4py's MPI ({probe.stdout.strip()!r} "
                    f"{probe.stderr.strip()[-300:]!r})")
    return command


def launch(mpiexec, ranks, runs, tmp, *, die=None, env=None, options=(), timeout=300):
    """Run the worker on ``ranks`` ranks; returns ``(completed process, seconds)``."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"runs": runs, "die": die}))
    environment = dict(os.environ, **(env or {}))
    environment.setdefault("PYTHONPATH", str(HERE.parent))
    began = time.monotonic()
    proc = subprocess.run([*mpiexec, *options, "-n", str(ranks), sys.executable, str(WORKER), str(spec), str(tmp)],
                          capture_output=True, text=True, timeout=timeout, env=environment, stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - began


def read_rank(tmp, name, rank):
    with np.load(tmp / f"{name}.rank{rank}.npz") as z:
        state = {k: z[k] for k in z.files}
    return state, json.loads((tmp / f"{name}.rank{rank}.json").read_text())


def reference(cfg):
    """Single-process fit of ``cfg`` (no comm): ``(state dict, history records)``."""
    X, y, Xv, yv = worker.problem(cfg)
    model, optimizer = worker.build(cfg)
    history = pn.fit(model, X, y, optimizer=optimizer, validation=(Xv, yv), **worker.fit_kwargs(cfg))
    return model.state_dict(), worker.history_records(history)


def tolerance_factor(dtype):
    return FLOAT64_RTOL_FACTOR if dtype == "float64" else 1.0


def assert_same_training(state, records, ref_state, ref_records, dtype, label):
    factor = tolerance_factor(dtype)
    assert sorted(state) == sorted(ref_state), label
    for key in ref_state:
        assert_close(state[key], ref_state[key], dtype, factor=factor, err_msg=f"{label} [{key}]")
    assert [r["epoch"] for r in records] == [r["epoch"] for r in ref_records], label
    for field in ("loss", "error", "val_loss", "val_error"):
        assert_close([r[field] for r in records], [r[field] for r in ref_records], dtype, factor=factor,
                     scale=1.0, err_msg=f"{label} history {field}")


# -- parity: 1, 2 and 3 ranks == one process ---------------------------------------------------------
PARITY = [worker.config(name=f"{dev.split(':')[-1]}-{dtype}-{opt}-{'shuffle' if shuffle else 'inorder'}",
                        device=dev, dtype=dtype, optimizer=opt, shuffle=shuffle)
          for dev in ("numpy", "array_api_strict:device1")
          for dtype in ("float64", "float32")
          for opt in ("sgd", "momentum", "adam")
          for shuffle in (True, False)]
# full-batch gradient descent, Nesterov, no L2, and batches smaller than the rank count
PARITY += [worker.config(name="fullbatch-sgd", batch=None, shuffle=False),
           worker.config(name="nesterov-no-l2", optimizer="nesterov", l2=0.0),
           worker.config(name="tiny-batches-adam", optimizer="adam", batch=2, n=21, n_val=2, epochs=2),
           worker.config(name="reducer-argument", optimizer="momentum", via_reducer=True),  # reducer=DataParallel(comm)
           worker.config(name="dropout", optimizer="momentum", dropout=0.3)]  # each rank draws its rows' mask bits


@pytest.fixture(scope="module")
def parity_runs(mpiexec, tmp_path_factory):
    """``{ranks: output folder}``, each launched once with every PARITY config."""
    cache = {}

    def get(ranks):
        if ranks not in cache:
            tmp = tmp_path_factory.mktemp(f"parity{ranks}")
            proc, _ = launch(mpiexec, ranks, PARITY, tmp)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            cache[ranks] = tmp
        return cache[ranks]
    return get


@pytest.fixture(scope="module")
def references():
    cache = {}

    def get(cfg):
        if cfg["name"] not in cache:
            cache[cfg["name"]] = reference(cfg)
        return cache[cfg["name"]]
    return get


@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("cfg", PARITY, ids=[c["name"] for c in PARITY])
def test_ranks_train_what_one_process_trains(parity_runs, references, ranks, cfg):
    tmp = parity_runs(ranks)
    ref_state, ref_records = references(cfg)
    state0, info0 = read_rank(tmp, cfg["name"], 0)
    assert info0["size"] == ranks and info0["transport"] == "mpi-host"
    assert_same_training(state0, info0["history"], ref_state, ref_records, cfg["dtype"],
                         f"{cfg['name']} on {ranks} ranks")
    for rank in range(1, ranks):  # every rank holds the same weights and History, bit for bit
        state, info = read_rank(tmp, cfg["name"], rank)
        for key in state0:
            np.testing.assert_array_equal(state[key], state0[key], err_msg=f"rank {rank} {key}")
        assert info["history"] == info0["history"]
        assert info["steps"] == info0["steps"]


@pytest.mark.parametrize("ranks", [1, 3])
def test_any_is_true_everywhere_when_one_rank_says_so(parity_runs, ranks):
    for rank in range(ranks):
        assert json.loads((parity_runs(ranks) / f"any.rank{rank}.json").read_text()) == [True, False]


def test_float64_parity_is_far_tighter_than_the_tolerance(parity_runs, references):
    """The measured float64 gap after 20 steps on 3 ranks, shuffled Adam with L2: ~1e-15, not just < 1e-12."""
    cfg = next(c for c in PARITY if c["name"] == "numpy-float64-adam-shuffle")
    state, _ = read_rank(parity_runs(3), cfg["name"], 0)
    ref_state, _ = references(cfg)
    worst = max(float(np.max(np.abs(state[k] - ref_state[k])) / np.max(np.abs(ref_state[k]))) for k in state)
    assert worst < 1e-13


# -- resume with a different rank count ---------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_resume_on_a_different_number_of_ranks(mpiexec, tmp_path, optimizer):
    """2 epochs on 2 ranks, saved by rank 0, resumed to 4 epochs on 3 ranks == 4 epochs in one process."""
    saved = tmp_path / "state.npz"
    first = worker.config(name="first", optimizer=optimizer, epochs=2, save_to=str(saved))
    proc, _ = launch(mpiexec, 2, [first], tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = worker.config(name="second", optimizer=optimizer, epochs=4, initial_epoch=2, resume_from=str(saved))
    proc, _ = launch(mpiexec, 3, [second], tmp_path / "three")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref_state, ref_records = reference(worker.config(name="ref", optimizer=optimizer, epochs=4))
    state, info = read_rank(tmp_path / "three", "second", 0)
    assert_same_training(state, info["history"], ref_state, ref_records[2:], "float64", "resumed")
    for rank in (1, 2):
        other, _ = read_rank(tmp_path / "three", "second", rank)
        for key in state:
            np.testing.assert_array_equal(other[key], state[key])


@pytest.fixture(scope="module")
def rank0_resumed(mpiexec, tmp_path_factory):
    """Checkpoints after 2 epochs (one process), resumed to 4 epochs on 2 ranks where only rank 0 loads
    them: ``(output folder, {optimizer: config})``, launched once for every optimizer."""
    tmp = tmp_path_factory.mktemp("rank0resume")
    runs = {}
    for optimizer in ("adam", "momentum", "nesterov"):
        first = worker.config(name=f"first-{optimizer}", optimizer=optimizer, epochs=2)
        X, y, Xv, yv = worker.problem(first)
        model, opt = worker.build(first)
        pn.fit(model, X, y, optimizer=opt, validation=(Xv, yv), **worker.fit_kwargs(first))
        worker.save(tmp / f"{optimizer}.npz", model, opt)
        runs[optimizer] = worker.config(name=f"resumed-{optimizer}", optimizer=optimizer, epochs=4, initial_epoch=2,
                                        resume_from=str(tmp / f"{optimizer}.npz"), resume_rank0_only=True)
    proc, _ = launch(mpiexec, 2, list(runs.values()), tmp / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "out", runs


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "nesterov"])
def test_resume_broadcasts_rank0s_optimizer_state(rank0_resumed, optimizer):
    """Only rank 0 holds the resumed model and optimizer (Adam's step count and moments, the momentum
    buffers); rank 1 starts from other weights with a fresh optimizer. fit must broadcast all of it:
    both ranks then train what one process resumed from the checkpoint trains, with its step count."""
    out, runs = rank0_resumed
    cfg = runs[optimizer]
    ref_model, ref_opt = worker.build(cfg)  # one process, resumed from the checkpoint
    assert ref_opt.steps == 10 and ref_opt.state
    X, y, Xv, yv = worker.problem(cfg)
    history = pn.fit(ref_model, X, y, optimizer=ref_opt, validation=(Xv, yv), **worker.fit_kwargs(cfg))
    ref_state, ref_records = ref_model.state_dict(), worker.history_records(history)
    state0, info0 = read_rank(out, cfg["name"], 0)
    assert_same_training(state0, info0["history"], ref_state, ref_records, "float64", f"{optimizer} resumed on rank 0")
    state1, info1 = read_rank(out, cfg["name"], 1)
    for key in state0:
        np.testing.assert_array_equal(state1[key], state0[key], err_msg=f"rank 1 {key}")
    assert info1["history"] == info0["history"]
    assert info0["steps"] == info1["steps"] == ref_opt.steps == 20  # 10 restored + 2 epochs of 5 steps


# -- failures ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_failed_rank_stops_the_others_with_a_clear_error(mpiexec, tmp_path, how):
    """Rank 1 vanishes (``os._exit``) or raises on its own mid-epoch, under a launcher that does not clean
    up: ranks 0 and 2 raise CommunicationError within the timeout, and every rank exits non-zero
    (none hangs in MPI_Finalize)."""
    if "hydra" not in _flavour(mpiexec):
        pytest.skip("needs a launcher that lets the other ranks live on (MPICH Hydra's -disable-auto-cleanup)")
    timeout = 4  # healthy collectives finish far sooner, even with 3 ranks on 2 loaded cores
    cfg = worker.config(name="die", epochs=50)
    proc, seconds = launch(mpiexec, 3, [cfg], tmp_path, die={"rank": 1, "epoch": 2, "step": 3, "how": how},
                           env={"PORTABLENN_COMM_TIMEOUT": str(timeout)}, options=["-disable-auto-cleanup"],
                           timeout=120)
    assert proc.returncode != 0
    for rank in (0, 2):
        assert re.search(f"rank {rank}: CommunicationError: rank {rank} of 3: the gradient allreduce did not "
                         f"complete within {timeout} s .*another rank has probably died", proc.stderr), proc.stderr
    if how == "raise":
        assert "RuntimeError: rank 1 fails on its own" in proc.stderr
    else:
        assert "Traceback" not in proc.stderr
    assert seconds < timeout + 60  # start-up of 3 ranks on 2 cores, then the timeout, not a hang


def test_default_launcher_ends_the_job_when_a_rank_dies(mpiexec, tmp_path):
    """With mpiexec's default clean-up the dead rank takes the job down at once (no waiting for the timeout)."""
    cfg = worker.config(name="die", epochs=50)
    proc, seconds = launch(mpiexec, 3, [cfg], tmp_path, die={"rank": 2, "epoch": 1, "step": 2},
                           env={"PORTABLENN_COMM_TIMEOUT": "120"}, timeout=100)
    assert proc.returncode != 0
    assert seconds < 60


def test_ranks_given_different_arguments_all_refuse(mpiexec, tmp_path):
    cfg = worker.config(name="mismatch", batch_on_rank={"1": 16})
    proc, _ = launch(mpiexec, 2, [cfg], tmp_path)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert (f"rank {rank}: InputError: fit arguments differ between ranks: batch_size is 32 on rank 0 "
                f"but 16 on rank 1") in proc.stderr, proc.stderr[-2000:]


def test_divergence_is_reported_alike_on_every_rank(mpiexec, tmp_path):
    """The per-step losses are summed over the ranks, so every rank names the step one process names."""
    cfg = worker.config(name="diverge", dtype="float32", lr=1e30, epochs=3)
    X, y, Xv, yv = worker.problem(cfg)
    model, optimizer = worker.build(cfg)
    with pytest.raises(pn.train.DivergenceError) as expected, np.errstate(all="ignore"):
        pn.fit(model, X, y, optimizer=optimizer, validation=(Xv, yv), **worker.fit_kwargs(cfg))
    proc, _ = launch(mpiexec, 3, [cfg], tmp_path)
    assert proc.returncode != 0
    for rank in range(3):
        assert f"rank {rank}: DivergenceError: {expected.value}" in proc.stderr, proc.stderr[-2000:]


def test_transport_choice_is_the_same_on_every_rank():
    """NCCL only with a GPU of its own for every rank and NCCL on all; else CUDA-aware MPI if all have it."""
    from types import SimpleNamespace

    from portablenn.distributed import CommunicationError, Communicator

    cuda, cpu = SimpleNamespace(library="cupy", name="cupy:0"), SimpleNamespace(library="numpy", name="numpy")

    def facts(gpu, nccl=True, aware=False, host="a"):
        return {"library": "cupy", "host": host, "gpu": gpu, "nccl": nccl, "cuda_aware": aware,
                "problem": "" if nccl else "no NCCL here"}

    def decide(kind, dev, everyone):
        return Communicator._decide(SimpleNamespace(kind=kind), dev, everyone)

    two_gpus = [facts("0000:01"), facts("0000:02")]
    shared = [facts("0000:01"), facts("0000:01")]
    assert decide("auto", cuda, two_gpus) == "nccl"
    assert decide("auto", cuda, [facts("0000:01", host="a"), facts("0000:01", host="b")]) == "nccl"
    assert decide("auto", cuda, shared) == "mpi-host"
    assert decide("auto", cuda, [facts("0000:01", aware=True), facts("0000:01", aware=True)]) == "mpi-cuda"
    assert decide("auto", cuda, [facts("0000:01", nccl=False, aware=True), facts("0000:02", aware=False)]) == "mpi-host"
    assert decide("mpi", cuda, two_gpus) == "mpi-host"
    assert decide("nccl", cuda, two_gpus) == "nccl"
    assert decide("auto", cpu, []) == decide("mpi", cpu, []) == "mpi-host"
    with pytest.raises(pn.InputError, match="one GPU per rank"):
        decide("nccl", cuda, shared)
    with pytest.raises(CommunicationError, match="not usable on rank 1: no NCCL here"):
        decide("nccl", cuda, [facts("0000:01"), facts("0000:02", nccl=False)])
    with pytest.raises(pn.InputError, match="needs a CUDA device"):
        decide("nccl", cpu, [])


def _flavour(mpiexec):
    out = subprocess.run([mpiexec[0], "--version"], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    return (out.stdout + out.stderr).lower()


# -- in-process pieces (no mpiexec needed, only mpi4py) ---------------------------------------------------
def test_timeout_from_the_environment(monkeypatch):
    from portablenn import distributed

    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2.5")
    assert distributed._timeout() == 2.5
    assert distributed._timeout(7) == 7.0
    monkeypatch.delenv(distributed.TIMEOUT_ENV)
    assert distributed._timeout() == distributed.DEFAULT_TIMEOUT
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(pn.InputError, match=distributed.TIMEOUT_ENV):
            distributed._timeout()


def test_bad_comm_and_kind_are_input_errors():
    from portablenn import distributed

    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(pn.InputError, match="comm must be an mpi4py communicator"):
        pn.fit(pn.mlp([2, 2]), X, y, optimizer=pn.SGD(0.1), batch_size=2, comm=object())
    with pytest.raises(pn.InputError, match="unknown communicator kind"):
        distributed.make_communicator("gloo")


def test_launched_by_mpi_reads_the_environment(monkeypatch):
    from portablenn import distributed

    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS",
                 "PMI_RANK", "PMIX_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not distributed.launched_by_mpi()


# -- training defines the Reducer interface; distributed plugs into it (no mpi4py needed) ------------------
TRAIN_PY = HERE.parent / "portablenn" / "train.py"


def test_train_never_imports_distributed():
    """Neither train.py's source nor anything it imports brings in portablenn.distributed."""
    import ast

    tree = ast.parse(TRAIN_PY.read_text(), str(TRAIN_PY))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            assert not any("distributed" in n.split(".") for n in names), ast.dump(node)
        elif isinstance(node, ast.Import):
            assert not any("distributed" in a.name.split(".") for a in node.names), ast.dump(node)
        elif isinstance(node, ast.Call):  # no import by name either
            func = node.func
            assert getattr(func, "id", getattr(func, "attr", None)) not in ("__import__", "import_module"), ast.dump(node)
    # import train with portablenn.distributed blocked and without the package's __init__ (which imports it
    # to register fit's comm adapter): fit then trains alone, with a Reducer, and refuses a comm
    code = f"""
import sys, types
import numpy as np
sys.modules["portablenn.distributed"] = None  # importing it now raises ImportError
package = types.ModuleType("portablenn")
package.__path__ = [{str(TRAIN_PY.parent)!r}]
sys.modules["portablenn"] = package
from portablenn import train, models, optim
from portablenn.validation import InputError
assert train._COMM_ADAPTERS == []
X, y = np.random.default_rng(0).standard_normal((8, 3)), np.arange(8) % 2
train.fit(models.mlp([3, 2]), X, y, optimizer=optim.SGD(0.1), batch_size=4, reducer=train.Reducer())
try:
    train.fit(models.mlp([3, 2]), X, y, optimizer=optim.SGD(0.1), batch_size=4, comm=object())
except InputError as exc:
    assert "comm must be an mpi4py communicator" in str(exc), exc
else:
    raise AssertionError("comm=object() was accepted")
assert "portablenn.distributed" in sys.modules and sys.modules["portablenn.distributed"] is None
print("alone")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PORTABLENN_DISABLE_CUDA="1"), stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.strip() == "alone", result.stdout + result.stderr


def test_importing_portablenn_registers_the_comm_adapter_without_mpi4py():
    code = ("import sys, portablenn; from portablenn import train; "
            "assert [a.__module__ for a in train._COMM_ADAPTERS] == ['portablenn.distributed'], train._COMM_ADAPTERS; "
            "assert 'mpi4py' not in sys.modules; print('lazy')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.strip() == "lazy", result.stdout + result.stderr


class _Doubling(pn.train.Reducer):
    """Two simulated workers that computed the same rows: every sum over the workers is twice this one's."""

    def __init__(self, in_place):
        self.in_place, self.calls, self.started = in_place, {"gradients": 0, "metrics": 0, "shard": []}, None

    def start(self, model, optimizer, n, val_n, settings):
        self.started = (n, val_n, settings)

    def shard(self, start, stop):
        self.calls["shard"].append((start, stop))
        return start, stop

    def reduce_gradients(self, flat):
        self.calls["gradients"] += 1
        if self.in_place:
            flat *= 2
            return flat
        return flat * 2  # a new array: fit must point layer.grads into it

    def reduce_metrics(self, sums):
        self.calls["metrics"] += 1
        if self.in_place:
            sums *= 2
            return sums
        return sums * 2


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "new-array"])
def test_fit_honours_a_custom_reducer(in_place):
    """Doubled gradients with lr 0.1 are the single worker's gradients with lr 0.2, exactly (x2 is exact);
    the History's sums are doubled; start, shard and both reductions are called when fit says."""
    cfg = worker.config(name="reducer", l2=0.0, epochs=3)  # L2 is not a sum over the workers
    X, y, Xv, yv = worker.problem(cfg)
    kwargs = worker.fit_kwargs(cfg)
    doubled, one = _Doubling(in_place), pn.train.Reducer()
    model, _ = worker.build(cfg)
    history = pn.fit(model, X, y, optimizer=pn.SGD(0.1), validation=(Xv, yv), reducer=doubled, **kwargs)
    ref_model, _ = worker.build(cfg)
    ref = pn.fit(ref_model, X, y, optimizer=pn.SGD(0.2), validation=(Xv, yv), reducer=one, **kwargs)
    for key, value in ref_model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    for field in ("loss", "error", "val_loss", "val_error"):
        assert history[field] == [2 * v for v in ref[field]], field
    steps = -(-cfg["n"] // cfg["batch"])
    n, val_n, settings = doubled.started
    assert (n, val_n, settings["batch_size"], settings["epochs"], settings["seed"]) == (130, 40, 32, 3, 5)
    assert doubled.calls["gradients"] == 3 * steps and doubled.calls["metrics"] == 3
    assert doubled.calls["shard"][0] == (0, 40)  # the validation rows this worker evaluates
    assert len(doubled.calls["shard"]) == 1 + 3 * steps
    # the identity Reducer (unfused SGD, one flat gradient buffer) trains what fit without one trains
    plain, _ = worker.build(cfg)
    pn.fit(plain, X, y, optimizer=pn.SGD(0.2), validation=(Xv, yv), **kwargs)
    for key, value in plain.state_dict().items():
        assert_close(ref_model.state_dict()[key], value, "float64", err_msg=key)


def test_fit_evaluates_only_the_reducers_validation_rows():
    """A worker given rows lo:hi of the validation set sums its loss and errors over those rows alone;
    fit divides by the global validation size (the other workers' sums would complete it)."""

    class FirstQuarter(pn.train.Reducer):
        def shard(self, start, stop):
            return start, start + (stop - start) // 4

    cfg = worker.config(name="val-rows", l2=0.0, epochs=2)
    X, y, Xv, yv = worker.problem(cfg)
    model, optimizer = worker.build(cfg)
    history = pn.fit(model, X, y, optimizer=optimizer, validation=(Xv, yv), reducer=FirstQuarter(),
                     **worker.fit_kwargs(cfg))
    loss, error = pn.evaluate(model, Xv[:10], yv[:10])
    assert_close(history["val_loss"][-1], loss * 10 / 40, "float64")
    assert_close(history["val_error"][-1], error * 10 / 40, "float64")


def test_reducer_arguments_are_checked():
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(pn.InputError, match="either comm or reducer"):
        pn.fit(pn.mlp([2, 2]), X, y, optimizer=pn.SGD(0.1), comm=object(), reducer=pn.train.Reducer())
    with pytest.raises(pn.InputError, match="reducer must be a portablenn.train.Reducer"):
        pn.fit(pn.mlp([2, 2]), X, y, optimizer=pn.SGD(0.1), reducer=object())
    with pytest.raises(pn.InputError, match="graph=True cannot be combined with data-parallel training"):
        pn.fit(pn.mlp([2, 2]), X, y, optimizer=pn.SGD(0.1), graph=True, reducer=pn.train.Reducer())


# -- NCCL (needs CUDA GPUs; cannot run on a CPU-only machine) ---------------------------------------------
def _gpus():
    from portablenn.backends.cupy import cuda_problem

    if cuda_problem(0):
        return 0
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["nccl", "mpi"])
def test_gpu_ranks_train_what_one_process_trains(mpiexec, tmp_path, kind):
    """One rank per GPU (or 2 ranks sharing one), NCCL or MPI through the host, == one process on cuda."""
    gpus = _gpus()
    if gpus == 0:
        pytest.skip("no usable CUDA GPU")
    if kind == "nccl" and gpus < 2:
        pytest.skip("NCCL needs one GPU per rank and this machine has one")
    ranks = max(2, min(gpus, 4))
    runs = [worker.config(name=f"cuda-{dtype}-{opt}", device="cuda", dtype=dtype, optimizer=opt)
            for dtype in ("float64", "float32") for opt in ("sgd", "adam")]
    spec_env = {"PORTABLENN_TEST_COMM_KIND": kind}
    proc, _ = launch(mpiexec, ranks, runs, tmp_path, env=spec_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for cfg in runs:
        ref_state, ref_records = reference(dict(cfg, device="cuda:0"))
        state0, info0 = read_rank(tmp_path, cfg["name"], 0)
        assert info0["transport"] in (("nccl",) if kind == "nccl" else ("mpi-host", "mpi-cuda"))
        assert_same_training(state0, info0["history"], ref_state, ref_records, cfg["dtype"], cfg["name"])
        for rank in range(1, ranks):
            state, _ = read_rank(tmp_path, cfg["name"], rank)
            for key in state0:
                np.testing.assert_array_equal(state[key], state0[key])


# -- the command line: mpiexec -n K portablenn train --distributed ------------------------------------------
def test_cli_distributed_prints_once_saves_once_and_matches_one_process(mpiexec, tmp_path):
    """Rank 0 alone prints and writes; the weights equal a single-process run of the same global batch."""
    common = ["train", "--dataset", "lines", "--epochs", "20", "--batch-size", "6", "--dtype", "float64", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "PORTABLENN_DISABLE_CUDA": "1"}
    single = subprocess.run([sys.executable, "-m", "portablenn", *common, "--save", str(tmp_path / "one.safetensors")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([*mpiexec, "-n", "3", sys.executable, "-m", "portablenn", *common, "--distributed",
                            "--save", str(tmp_path / "three.safetensors"), "--log", str(tmp_path / "log.jsonl")],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    assert multi.stdout.count("| Epoch |") == 1 and "x 3 MPI ranks" in multi.stdout
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 20
    from safetensors.numpy import load_file

    one, three = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "three.safetensors"))
    weights = [k for k in one if not k.startswith("optim.")]
    scale = max(float(np.abs(one[k]).max()) for k in weights)
    for key in weights:
        np.testing.assert_allclose(three[key], one[key], rtol=0, atol=1e-12 * scale, err_msg=key)


def test_cli_comm_without_distributed_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "portablenn", "train", "--comm", "mpi"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "--comm needs --distributed" in result.stderr
