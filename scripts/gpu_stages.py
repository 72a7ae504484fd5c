"""The stages of ``scripts/gpu_check.sh``, one subcommand each; the script runs each as its own process
under its own ``timeout``, so a crash or a hang loses that stage only.

    python scripts/gpu_stages.py wheels --target DIR   # install .whl/*.whl the machine lacks (no network)
    python scripts/gpu_stages.py probe --device cuda   # exit 3 when CuPy cannot use a GPU, saying why
    python scripts/gpu_stages.py versions --device cuda
    python scripts/gpu_stages.py cli --device cuda     # what a user types first
    python scripts/gpu_stages.py parity --device cuda  # fast, generic, graph x SGD, momentum, Adam x f32, f64
    python scripts/gpu_stages.py bench --device cuda --json FILE [--rounds N] [--rows N]
    python scripts/gpu_stages.py pytest --device cuda  # the gpu-marked tests
    python scripts/gpu_stages.py nccl --device cuda    # a one-rank NCCL communicator and allreduce

``--device cpu`` is the rehearsal: everything that can run on the CPU does, the rest says SKIP.
Each stage prints what it ran and ends with one line ``RESULT: PASS|FAIL|SKIP|TIMEOUT detail``, and
exits 0 (PASS), 1 (FAIL), 77 (SKIP) or 124 (TIMEOUT: its main command ran out of time); ``probe``
exits 3 where CuPy cannot use a GPU. ``--budget S`` bounds the commands a stage starts (gpu_check.sh
passes a little less than the stage's timeout, so that a slow command is reported by the stage
itself rather than by the timeout). The commands run in their own process groups, ended with the
stage. For the tests, ``GPU_CHECK_HANG=STAGE`` makes that stage hang (until its timeout ends it).
"""
import argparse
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PY = sys.executable
PASS, FAIL, SKIP, NO_GPU, TIMEOUT = 0, 1, 77, 3, 124
_DEADLINE = [float("inf")]
_CHILDREN = set()


# -- plumbing ---------------------------------------------------------------------------------------
def result(code, detail):
    """Print the stage's RESULT line; returns its exit code."""
    word = {PASS: "PASS", FAIL: "FAIL", SKIP: "SKIP", NO_GPU: "FAIL", TIMEOUT: "TIMEOUT"}[code]
    print(f"RESULT: {word} {' '.join(str(detail).split())}", flush=True)
    return code


def one_line(exc):
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def left(cap):
    """Seconds a command may still take: ``cap``, or less where the stage's budget ends first."""
    return max(1.0, min(cap, _DEADLINE[0] - time.monotonic() - 1.0))


def _kill_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _on_term(signum, frame):  # gpu_check.sh's timeout: end our commands' process groups too
    for pid in list(_CHILDREN):
        _kill_group(pid, signal.SIGKILL)
    print(f"\n[stage ended by signal {signum}: its time limit]", flush=True)
    os._exit(124)


def run(cmd, timeout, env=None):
    """Run ``cmd`` in its own process group, echoing its output as it comes; ``(exit code, output)``.

    After ``timeout`` seconds the whole group is ended and the exit code is 124.
    """
    timeout = left(timeout)
    shown = [f"<{SCRIPT_NAMES.get(c, 'script')}>" if "\n" in c else c for c in cmd]  # not a -c script's text
    print(f"\n$ {shlex.join(shown)}    [limit {timeout:.0f} s]", flush=True)
    began = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", cwd=REPO, env=env, start_new_session=True)
    except OSError as exc:
        print(f"[could not start: {one_line(exc)}]")
        return 127, ""
    _CHILDREN.add(proc.pid)
    expired = []

    def expire():
        expired.append(True)
        _kill_group(proc.pid, signal.SIGTERM)
        time.sleep(3)
        _kill_group(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        sys.stdout.write(line)
        sys.stdout.flush()
    code = proc.wait()
    watchdog.cancel()
    _CHILDREN.discard(proc.pid)
    if expired:
        code = 124
    print(f"[exit {code} after {time.monotonic() - began:.1f} s{', over its time limit' if expired else ''}]",
          flush=True)
    return code, "".join(lines)


SCRIPT_NAMES = {}  # the text of a ``python -c`` script -> its name in the log


def last_line(out, width=120):
    """The last non-empty line of a command's output, shortened: why it failed, usually."""
    lines = [line.strip() for line in out.strip().splitlines() if line.strip() and not line.startswith("[exit ")]
    return (lines[-1] if lines else "no output")[:width]


def verdict(code, out):
    return "PASS" if code == 0 else f"FAIL (exit {code}: {last_line(out)})"


def version_of(module):
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception as exc:
        return f"not importable ({one_line(exc)})"


# -- wheels: the pure-Python packages an offline machine lacks ---------------------------------------
NEEDED = ("array_api_compat", "array_api_strict")


def wheels(args):
    """Unpack ``.whl/*.whl`` of the needed packages that do not import here into ``--target``.

    A pure-Python wheel is a zip of the files as installed, so unpacking it is installing it; no pip,
    no index, never the network. gpu_check.sh then puts the target first on PYTHONPATH.
    """
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return result(PASS, "already importable: " + ", ".join(f"{m} {version_of(m)}" for m in NEEDED))
    files = sorted(glob.glob(os.path.join(REPO, ".whl", "*.whl")))
    print(f"not importable: {', '.join(missing)}; wheels in .whl/: {[os.path.basename(f) for f in files]}")
    os.makedirs(args.target, exist_ok=True)
    done = []
    for path in files:
        module = os.path.basename(path).split("-")[0].lower().replace(".", "_")
        if module not in missing:
            continue
        if not path.endswith("-none-any.whl"):
            print(f"skipped {os.path.basename(path)}: not a pure-Python wheel")
            continue
        with zipfile.ZipFile(path) as wheel:
            wheel.extractall(args.target)
        done.append(module)
        print(f"unpacked {os.path.basename(path)} into {args.target}")
    lacking = [m for m in missing if m not in done]
    code, out = run([PY, "-c", "import importlib, sys\nfor m in sys.argv[1:]: "
                     "print(m, importlib.import_module(m).__version__)", *done], 20,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join([args.target, os.environ.get("PYTHONPATH", "")])})
    if lacking:
        return result(FAIL, f"{', '.join(lacking)} not importable and no wheel in .whl/ (run scripts/gpu_wheels.sh "
                            "where there is internet and carry .whl/); the stages that need it will fail")
    if code != 0:
        return result(FAIL, f"unpacked {', '.join(done)} but importing failed: {out.strip().splitlines()[-1:]}")
    return result(PASS, "installed from .whl/: " + ", ".join(out.split("\n")[:len(done)]).strip(", "))


# -- probe: can CuPy use a GPU? -----------------------------------------------------------------------
def probe(args):
    """PASS: portablenn can use the GPU; exit 3: CuPy cannot use one; FAIL: CuPy can but portablenn does
    not import (missing wheels), so the stages that need it fail and the others still run."""
    try:
        from portablenn import backend
    except Exception as exc:  # a missing dependency (array-api-compat): ask CuPy itself
        broken = f"portablenn does not import ({one_line(exc)})"
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount() if cupy.is_available() else 0
        except Exception as cupy_exc:
            count, why = 0, one_line(cupy_exc)
        else:
            why = "CuPy sees no usable GPU"
        if count:
            return result(FAIL, f"CuPy {cupy.__version__} sees {count} GPU(s) but {broken}")
        dev, why = None, f"{why}; and {broken}"
    else:
        dev, why = backend.probe("cuda")
    if dev is None:
        print(f"CuPy cannot use a GPU: {why}")
        if args.device == "cpu":
            return result(SKIP, f"no usable GPU ({why}); the rehearsal runs on the cpu")
        result(FAIL, f"CuPy cannot use a GPU: {why}")
        return NO_GPU
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(dev.native.id)
    detail = (f"CuPy {cupy.__version__} uses {dev.name}: {props['name'].decode()} of "
              f"{cupy.cuda.runtime.getDeviceCount()} GPU(s)")
    print(detail)
    return result(PASS, detail)


# -- versions: the machine, the GPU and the libraries ------------------------------------------------
def versions(args):
    import platform

    gpu = args.device != "cpu"
    problems, facts = [], {}

    def item(name, fn, needs_gpu=False):
        if needs_gpu and not gpu:
            print(f"{name}: SKIP (rehearsal on the cpu)")
            return None
        try:
            value = fn()
        except Exception as exc:
            value = None
            problems.append(name)
            print(f"{name}: FAILED {one_line(exc)}")
        else:
            print(f"{name}: {value}")
            facts[name] = value
        return value

    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\nhost: {platform.node()} {platform.machine()}, "
          f"{os.cpu_count()} cpus\npython: {sys.version.split()[0]} ({PY})")
    from importlib import metadata

    for name in ("numpy", "array-api-compat", "array-api-strict", "cupy-cuda13x", "cupy-cuda12x", "cupy", "torch",
                 "jax", "jaxlib", "mpi4py", "mpich", "safetensors", "tqdm", "matplotlib", "hypothesis", "pytest",
                 "pytest-xdist", "pytest-timeout"):
        try:  # the installed distribution's metadata: no import (torch and jax take seconds)
            print(f"{name}: {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(f"{name}: not installed")
    print(f"CUPY_TF32={os.environ.get('CUPY_TF32', '(unset)')} CUDA_PATH={os.environ.get('CUDA_PATH', '(unset)')} "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
    if gpu:
        if shutil.which("nvidia-smi"):
            code, out = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,"
                             "compute_cap,clocks.max.sm,power.limit", "--format=csv"], 15)
            if code != 0:
                problems.append("nvidia-smi")
            code, out = run(["nvidia-smi"], 10)
        else:
            print("nvidia-smi: not on PATH")
            problems.append("nvidia-smi")
    else:
        print("nvidia-smi: SKIP (rehearsal on the cpu)")

    def cupy_mod():
        import cupy

        return cupy

    item("cupy", lambda: cupy_mod().__version__, needs_gpu=True)
    item("CUDA runtime", lambda: cupy_mod().cuda.runtime.runtimeGetVersion(), needs_gpu=True)
    item("CUDA driver", lambda: cupy_mod().cuda.runtime.driverGetVersion(), needs_gpu=True)
    item("NVRTC", lambda: cupy_mod().cuda.nvrtc.getVersion(), needs_gpu=True)

    def device_props():
        cupy = cupy_mod()
        p = cupy.cuda.runtime.getDeviceProperties(0)
        return (f"{p['name'].decode()}, compute capability {p['major']}.{p['minor']}, "
                f"{p['totalGlobalMem'] / 2**30:.1f} GiB, {p['multiProcessorCount']} SMs")

    item("GPU 0", device_props, needs_gpu=True)

    def cublas():
        cupy = cupy_mod()
        from portablenn import _blas

        a = cupy.ones((64, 64), dtype=cupy.float32)
        (a @ a).sum().item()  # loads cuBLAS
        found = _blas.loaded_libraries("cublas")
        if not found:
            raise RuntimeError("no libcublas among the loaded libraries after a CuPy matmul")
        try:
            from cupy_backends.cuda.libs import cublas as lib

            version = lib.getVersion(cupy.cuda.device.get_cublas_handle())
        except Exception as exc:  # the version is a nicety; the library being found is the fact
            version = f"? ({one_line(exc)})"
        return f"version {version}, " + ", ".join(found)

    item("cuBLAS", cublas, needs_gpu=True)

    def nccl():
        from cupy.cuda import nccl as lib

        if not getattr(lib, "available", True):
            raise RuntimeError("CuPy was built without NCCL")
        return lib.get_version()

    item("NCCL", nccl, needs_gpu=True)

    def torch_cuda():
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"torch {torch.__version__} sees no CUDA GPU")
        return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
                f"allow_tf32 default {torch.backends.cuda.matmul.allow_tf32}")

    item("PyTorch CUDA", torch_cuda, needs_gpu=True)
    if gpu:
        try:
            import cupy

            print("\n-- cupy.show_config()")
            cupy.show_config()
        except Exception as exc:
            print(f"cupy.show_config() failed: {one_line(exc)}")
    code, out = run([PY, "-m", "portablenn", "info"], 25)
    if code != 0:
        problems.append(f"portablenn info (exit {code})")
    if gpu:
        detail = (f"CuPy {facts.get('cupy')}, CUDA runtime {facts.get('CUDA runtime')}, driver "
                  f"{facts.get('CUDA driver')}, NVRTC {facts.get('NVRTC')}, NCCL {facts.get('NCCL')}, "
                  f"{str(facts.get('GPU 0', '?')).split(',')[0]}")
    else:
        detail = f"numpy {version_of('numpy')}, array-api-compat {version_of('array_api_compat')}; GPU rows SKIP"
    if problems:
        return result(FAIL, f"failed: {', '.join(problems)}; {detail}")
    return result(PASS, detail)


# -- cli: what a user types first -------------------------------------------------------------------
def cli(args):
    dev = args.device
    base = [PY, "-m", "portablenn"]
    commands = [("train", base + ["train", "--device", dev]),
                ("train --cuda-graph", base + ["train", "--device", dev, "--cuda-graph"]),
                ("parity", base + ["parity", "--devices", f"cpu,{dev}"])]
    notes, failed = [], False
    for name, cmd in commands:
        code, out = run(cmd, 45)  # the first CUDA use compiles the kernels (NVRTC) for the disk cache
        accuracy = re.findall(r"train: loss \S+\s+accuracy ([0-9.]+)%", out)
        warned = re.findall(r"(\w*(?:KernelFallback|Runtime)Warning): (.*)", out)
        parity_line = re.findall(r"^(PASS|FAIL): largest relative parameter difference (\S+)", out, re.M)
        if code == 0 and name.startswith("train"):
            ok = bool(accuracy) and float(accuracy[-1]) >= 90.0
            notes.append(f"{name} {accuracy[-1] + '%' if accuracy else 'no accuracy line'}")
        elif code == 0:
            ok = bool(parity_line) and parity_line[-1][0] == "PASS"
            notes.append(f"{name} {' '.join(parity_line[-1]) if parity_line else 'no PASS line'}")
        elif (code == 2 and name.endswith("graph") and dev == "cpu"
              and "needs a CUDA device" in out):  # this CLI refuses --cuda-graph off a GPU: fine in rehearsal
            ok = True
            notes.append(f"{name} refused on the cpu by this CLI (exit 2)")
        else:
            ok = False
            notes.append(f"{name} exit {code}: {last_line(out)}")
        if warned:  # the fast kernels fell back, or a graph recording was refused: not what the user asked for
            ok = False
            notes[-1] += f" but warned {warned[0][0]}: {warned[0][1][:120]}"
        failed |= not ok
    return result(FAIL if failed else PASS, "; ".join(notes))


# -- parity: every kernel family and optimizer against NumPy on the CPU --------------------------------
PARITY_TOL = {"float64": 1e-9, "float32": 1e-4}  # largest |diff| / largest |reference parameter|
PARITY_SETUP = dict(n=250, sizes=[12, 32, 16, 5], batch=32, epochs=4, l2=1e-4)  # 8 steps/epoch (last partial)
OPTIMIZERS = {"sgd": lambda pn: pn.SGD(0.1), "momentum": lambda pn: pn.SGD(0.05, momentum=0.9),
              "adam": lambda pn: pn.Adam(0.01)}


def _problem():
    import numpy as np

    rng = np.random.default_rng(7)
    n, features, classes = PARITY_SETUP["n"], PARITY_SETUP["sizes"][0], PARITY_SETUP["sizes"][-1]
    X = rng.standard_normal((n, features))
    y = np.argmax(X @ rng.standard_normal((features, classes)) + 0.3 * rng.standard_normal((n, classes)), axis=1)
    return X, y.astype(np.int64)


def _train(pn, dev, optimizer, dtype, graph):
    """Train the parity problem on ``dev``; ``(state dict, final loss, warnings raised)``."""
    X, y = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = pn.mlp(PARITY_SETUP["sizes"], dtype=dtype, seed=3)
        history = pn.fit(model, X.astype(dtype), y, optimizer=OPTIMIZERS[optimizer](pn), epochs=PARITY_SETUP["epochs"],
                         batch_size=PARITY_SETUP["batch"], shuffle=True, l2=PARITY_SETUP["l2"], device=dev,
                         seed=11, graph=graph)
        dev.synchronize()
        state = model.state_dict()
    return state, history["loss"][-1], [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _compare(state, ref):
    import numpy as np

    diff = max(float(np.max(np.abs(state[k].astype(np.float64) - ref[k]))) for k in ref)
    scale = max(float(np.max(np.abs(ref[k]))) for k in ref)
    return diff / max(scale, 1e-30)


def parity(args):
    import numpy as np

    import portablenn as pn
    from portablenn import backend
    from portablenn.validation import InputError

    spec = args.device
    setup = PARITY_SETUP
    steps = setup["epochs"] * -(-setup["n"] // setup["batch"])
    print(f"parity of {spec} against NumPy on the CPU: MLP {setup['sizes']} with biases, {setup['n']} samples, "
          f"batch {setup['batch']} (last one partial), shuffled, L2 {setup['l2']:g}, {setup['epochs']} epochs = "
          f"{steps} steps; tolerance on max |param diff| / max |reference param|: {PARITY_TOL}")
    refs = {}

    def reference(optimizer, dtype):
        if (optimizer, dtype) not in refs:
            state, loss, _ = _train(pn, pn.device("cpu"), optimizer, dtype, graph=False)
            refs[optimizer, dtype] = ({k: v.astype(np.float64) for k, v in state.items()}, loss)
        return refs[optimizer, dtype]

    rows = []  # (status, label, text)

    def row(status, label, text):
        rows.append((status, label, text))
        print(f"{status:4s}  {label:32s} {text}", flush=True)

    def attempt(label, mode, optimizer, dtype, graph):
        began = time.perf_counter()
        try:
            dev = pn.device(spec, kernels=mode)
            if dtype == "float64" and not dev.supports("float64"):
                return row("SKIP", label, f"{dev.name} has no float64")
            ref, ref_loss = reference(optimizer, dtype)
            state, loss, caught = _train(pn, dev, optimizer, dtype, graph)
        except InputError as exc:
            if graph and optimizer == "adam":
                return row("SKIP", label, f"refused by design, as expected ({one_line(exc)})")
            return row("FAIL", label, f"raised {one_line(exc)}")
        except Exception as exc:
            return row("FAIL", label, f"raised {one_line(exc)}")
        rel, tol = _compare(state, ref), PARITY_TOL[dtype]
        status = getattr(dev, "kernel_status", None)
        problems = []
        if not rel <= tol:
            problems.append(f"above tolerance {tol:g}")
        for w in caught:  # a refused graph recording, a fast-kernel fallback: not what was asked for
            problems.append(f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}")
        if mode == "auto" and (status is None or "fallback" in status):
            problems.append(f"kernel status {status!r}")
        text = (f"max rel param diff {rel:.2e} (tol {tol:g}), loss diff {abs(loss - ref_loss):.1e}, "
                f"kernels {status!r}, {time.perf_counter() - began:.2f} s")
        row("FAIL" if problems else "PASS", label, text + ("; " + "; ".join(problems) if problems else ""))

    # first, before anything else on this device: the default ("auto") device runs its self-test now
    attempt("auto (default) self-test sgd float32", "auto", "sgd", "float32", False)
    for dtype in ("float32", "float64"):
        for optimizer in OPTIMIZERS:
            for family in ("fast", "generic", "graph"):
                mode = "generic" if family == "generic" else "fast"
                attempt(f"{family} {optimizer} {dtype}", mode, optimizer, dtype, graph=family == "graph")
    failed = [(label, text) for status, label, text in rows if status == "FAIL"]
    passed = sum(status == "PASS" for status, _, _ in rows)
    skipped = [label for status, label, _ in rows if status == "SKIP"]
    detail = f"{passed} of {len(rows)} rows PASS, {len(skipped)} SKIP ({', '.join(skipped)})"
    if failed:
        names = ", ".join(label for label, _ in failed[:6]) + (", ..." if len(failed) > 6 else "")
        return result(FAIL, f"{len(failed)} FAIL ({names}), the first: {failed[0][1][:200]}; {detail}")
    if not hasattr(backend, "KernelFallbackWarning"):
        return result(FAIL, "portablenn.backend has no KernelFallbackWarning (library older than the kernels= API)")
    return result(PASS, detail)


# -- bench: one MNIST-shaped epoch per variant, interleaved ---------------------------------------------
def bench(args):
    cmd = [PY, os.path.join(REPO, "scripts", "bench.py"), "--gpu-epoch", "--device", args.device,
           "--rounds", str(args.rounds), "--rows", str(args.rows), "--json", args.json]
    if os.path.exists(args.json):
        os.remove(args.json)
    code, out = run(cmd, 1e9)
    try:
        with open(args.json) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return result(TIMEOUT if code == 124 else FAIL, f"bench.py exit {code} without its JSON: {last_line(out, 200)}")
    rows = {r["variant"]: r for r in report["rows"]}
    failed = [f"{name}: {r['reason']}" for name, r in rows.items() if r["status"] == "FAILED"]
    missing = [n for n in ("portablenn fast", "portablenn graph", "portablenn generic") if n not in rows]

    def ms(name):
        r = rows.get(name, {})
        return f"{r['min_ms']:.1f} ms" if r.get("status") == "ok" else r.get("status", "absent")

    targets = "; ".join(f"{t['name']}: {t['text']}" for t in report.get("targets", []))
    detail = (f"graph {ms('portablenn graph')}, fast {ms('portablenn fast')}, generic {ms('portablenn generic')}, "
              f"CuPy loop {ms('hand-written CuPy')}, torch eager {ms('PyTorch CUDA eager, manual gradients')}"
              f"{'; ' + targets if targets else ''}")
    stack_detail = stack_bench(args)  # before JAX's: issue #20's figure, in what is left of the stage
    jax_failed, jax_detail = jax_bench(args)
    detail += f"; {stack_detail}; {jax_detail}"
    if failed or missing or code not in (0, 1) or jax_failed:
        return result(FAIL, "; ".join(failed + [f"no row {m}" for m in missing] + [f"exit {code}"] + jax_failed)
                      + "; " + detail)
    return result(PASS, detail)


def stack_bench(args):
    """bench_sweep.py --stack-vs-one: one epoch of 64 stacked MNIST-shaped members against one model on the GPU
    (4 small ones when rehearsing), in what is left of the stage's budget; a note for the detail line."""
    budget = left(40)
    if budget < 10:
        return "stack of 64: no time left in the stage"
    size = ["--members", "4", "--rows", "2000"] if args.device == "cpu" else ["--members", "64", "--rows", "60000"]
    code, out = run([PY, os.path.join(REPO, "scripts", "bench_sweep.py"), "--stack-vs-one", "--device", args.device,
                     "--rounds", "2", *size], budget)
    found = re.search(r"^stack-vs-one on .*$", out, re.M)
    return found.group(0) if found and code == 0 else f"stack-vs-one: exit {code} ({last_line(out, 120)})"


def jax_bench(args):
    """bench.py's jax section on jax:cuda (jax:cpu when rehearsing; small), in what is left of the stage's budget
    after the CuPy epoch and the stack: ``([failures], detail)``. Missing JAX or a JAX without CUDA is a note,
    not a failure; a portablenn JAX row whose weights differ from NumPy's is a failure."""
    import tempfile

    spec = "jax:cpu" if args.device == "cpu" else "jax:cuda"
    budget = left(60)
    if budget < 15:
        return [], f"{spec}: no time left in the stage"
    handle, path = tempfile.mkstemp(suffix=".json")  # not in the output folder: it holds at most 8 files
    os.close(handle)
    try:
        rows = "2000" if args.device == "cpu" else str(min(args.rows, 60000))
        code, out = run([PY, os.path.join(REPO, "scripts", "bench.py"), "--only", "jax", "--jax-device", spec,
                         "--rounds", "1", "--rows", rows, "--json", path], budget)
        try:
            with open(path) as f:
                report = json.load(f).get("jax", {})
        except (OSError, ValueError):
            return [], f"{spec}: bench.py exit {code} without its JSON ({last_line(out, 120)})"
    finally:
        os.remove(path)
    if "skipped" in report:
        return [], f"{spec}: skipped ({report['skipped'][:120]})"
    failures, parts = [], []
    for workload in ("mnist", "wide"):
        table = {r["variant"]: r for r in report.get(workload, [])}
        for name, r in table.items():
            if r["status"] != "ok" and name.startswith("portablenn"):
                failures.append(f"{spec} {workload} {name}: {r.get('reason', '')[:120]}")
        ours = next((r for n, r in table.items() if n.startswith(f"portablenn {spec}") and r["status"] == "ok"), None)
        hand = next((r for n, r in table.items() if n.startswith("JAX by hand") and r["status"] == "ok"), None)
        if ours is not None:
            parts.append(f"{workload} epoch {ours['min'] * 1e3:.1f} ms (compile {ours['compile'] * 1e3:.0f} ms)"
                         + (f", JAX by hand {hand['min'] * 1e3:.1f} ms" if hand else ""))
    return failures, f"{spec}: " + ("; ".join(parts) if parts else "no timed rows")


# -- pytest: the gpu-marked tests -----------------------------------------------------------------------
def pytest_stage(args):
    from portablenn import backend

    usable = backend.probe("cuda")[0] is not None
    cmd = [PY, "-m", "pytest", "-q", "-ra", "-m", "gpu", "tests", "-p", "no:cacheprovider", "--durations=10"]
    if importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "60"]
    code, out = run(cmd, 1e9)
    last = [line for line in out.strip().splitlines()
            if re.search(r"\d+ (passed|failed|skipped|error|deselected)", line)]
    counts = {word.rstrip("s"): int(n) for n, word in
              re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", last[-1] if last else "")}
    collected = sum(counts.values())
    summary = ", ".join(f"{n} {w}" for w, n in counts.items()) or "no summary line"
    if code == 124:
        return result(TIMEOUT, f"pytest did not finish within the stage's limit ({summary})")
    if code != 0:
        first = [line[len("FAILED "):].split(" - ")[0] for line in out.splitlines()
                 if line.startswith(("FAILED ", "ERROR "))][:3]
        return result(FAIL, f"exit {code}: {summary}" + (f"; first: {', '.join(first)}" if first else ""))
    if collected == 0:
        return result(FAIL, "no gpu test collected")
    if counts.get("skipped", 0) == collected:
        if usable:
            return result(FAIL, f"CuPy can use a GPU but all {collected} gpu tests skipped")
        return result(SKIP, f"all {collected} gpu tests skipped: no usable GPU here")
    return result(PASS, summary)


# -- nccl: a one-rank NCCL communicator and allreduce ---------------------------------------------------
NCCL_RAW = """
import cupy, numpy as np
from cupy.cuda import nccl
print("NCCL version", nccl.get_version())
uid = nccl.get_unique_id()
comm = nccl.NcclCommunicator(1, uid, 0)
for dtype, code in ((np.float32, nccl.NCCL_FLOAT32), (np.float64, nccl.NCCL_FLOAT64)):
    a = cupy.arange(1000, dtype=dtype)
    out = cupy.empty_like(a)
    comm.allReduce(a.data.ptr, out.data.ptr, a.size, code, nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)
    cupy.cuda.get_current_stream().synchronize()
    assert bool((out == a).all()), f"allreduce over one rank changed the data ({dtype.__name__})"
    print("allReduce", dtype.__name__, "ok")
comm.destroy()
print("raw NCCL one-rank allreduce: ok")
"""

NCCL_PORTABLENN = """
import sys, numpy as np
import portablenn as pn
from portablenn import distributed
kind, spec = sys.argv[1], sys.argv[2]
comm = distributed.make_communicator(kind, timeout=30)
print(comm)
dev = pn.device(comm.device(spec))
comm.setup(dev)
print("transport", comm.transport(dev))
assert comm.transport(dev) == ("nccl" if kind == "nccl" else "mpi-host"), comm.transport(dev)
a = dev.asarray(np.arange(10.0))
a = comm.allreduce_(a, dev)
comm.drain()
assert np.array_equal(dev.to_numpy(a), np.arange(10.0)), dev.to_numpy(a)
print("allreduce_ ok", comm.stats)
rng = np.random.default_rng(0)
X = rng.standard_normal((200, 6)); y = np.argmax(X @ rng.standard_normal((6, 4)), axis=1)
states = []
for c in (comm, None):
    model = pn.mlp([6, 16, 4], dtype="float64", seed=1)
    h = pn.fit(model, X, y, optimizer=pn.SGD(0.05, momentum=0.9), epochs=3, batch_size=32, device=dev, comm=c)
    states.append(model.state_dict())
comm.drain()
diff = max(float(np.abs(states[0][k] - states[1][k]).max()) for k in states[1])
print(f"fit with comm ({comm.stats['allreduce_calls']} allreduces) vs without: max |diff| {diff:.2e}")
assert diff <= 1e-10, diff
comm.close()
print("portablenn one-rank", kind, "fit: ok")
"""
SCRIPT_NAMES.update({NCCL_RAW: "NCCL_RAW in scripts/gpu_stages.py",
                     NCCL_PORTABLENN: "NCCL_PORTABLENN in scripts/gpu_stages.py"})


def nccl(args):
    gpu = args.device != "cpu"
    kind = "nccl" if gpu else "mpi"
    notes, failed = [], False
    if gpu:
        code, out = run([PY, "-c", NCCL_RAW], 20)
        notes.append(f"raw cupy.cuda.nccl one-rank allreduce {verdict(code, out)}")
        failed |= code != 0
    else:
        print("raw cupy.cuda.nccl: SKIP (rehearsal on the cpu)")
        notes.append("NCCL SKIP (needs CUDA)")
    if importlib.util.find_spec("mpi4py") is None:
        notes.append("mpi4py missing: portablenn communicator not run")
        failed |= not gpu
    else:
        code, out = run([PY, "-c", NCCL_PORTABLENN, kind, args.device], 25)
        notes.append(f"make_communicator({kind!r}) + allreduce_ + fit(comm) {verdict(code, out)}")
        failed |= code != 0
        here = os.path.join(os.path.dirname(PY), "mpiexec")
        mpiexec = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
        if mpiexec:
            env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
            code, out = run([mpiexec, "-n", "1", PY, "-m", "portablenn", "train", "--distributed", "--device",
                             args.device, "--comm", kind, "--epochs", "20"], 25, env=env)
            notes.append(f"mpiexec -n 1 train --comm {kind} {verdict(code, out)}")
            failed |= code != 0
        else:
            notes.append("no mpiexec: CLI run skipped")
    if failed:
        return result(FAIL, "; ".join(notes))
    return result(PASS if gpu else SKIP, "; ".join(notes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["wheels", "probe", "versions", "cli", "parity", "bench", "pytest", "nccl"])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the rehearsal")
    parser.add_argument("--budget", type=float, help="seconds this stage may take in all")
    parser.add_argument("--target", help="wheels: the folder to unpack into")
    parser.add_argument("--json", help="bench: where bench.py writes its JSON")
    parser.add_argument("--rounds", type=int, default=15, help="bench: timed rounds")
    parser.add_argument("--rows", type=int, default=60000, help="bench: rows of the synthetic MNIST")
    args = parser.parse_args(argv)
    if args.budget:
        _DEADLINE[0] = time.monotonic() + args.budget
    signal.signal(signal.SIGTERM, _on_term)
    if os.environ.get("GPU_CHECK_HANG") == args.stage:  # for tests/test_gpu_check.py: a stage that hangs
        print(f"GPU_CHECK_HANG={args.stage}: hanging", flush=True)
        time.sleep(3600)
    stage = {"wheels": wheels, "probe": probe, "versions": versions, "cli": cli, "parity": parity, "bench": bench,
             "pytest": pytest_stage, "nccl": nccl}[args.stage]
    try:
        return stage(args)
    except Exception as exc:  # a bug or a broken library: the stage fails with one line, the others run
        import traceback

        traceback.print_exc()
        return result(FAIL, f"the stage raised {one_line(exc)}")


if __name__ == "__main__":
    sys.exit(main())
