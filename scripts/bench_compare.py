"""Old code against new, side by side: the same workloads on a git revision and on the working tree.

    python scripts/bench_compare.py                      # HEAD against the working tree (5 rounds)
    python scripts/bench_compare.py 0bf435d --rounds 7   # an older commit
    python scripts/bench_compare.py HEAD --only wide     # one workload (or several: --only mnist,spiral)
    python scripts/bench_compare.py HEAD --new HEAD      # the noise floor: one commit against itself

REV is checked out as a detached git worktree in a temporary folder; the working tree's package is
copied there too when the script starts (so that edits made while it runs do not mix into the
"new" side), or with ``--new REV2`` a second worktree of REV2 is the new side. Every timing
batch is a fresh subprocess that imports one of the two packages (its root first on ``sys.path``;
the worker checks ``portablenn.__file__``), runs one workload once untimed and ``--inner`` times
timed, and reports its times. The batches are interleaved: each
round runs every workload on both sides, the side that goes first alternating from round to round
and from workload to workload. The table shows the minima over all rounds, the ratio new/old of
the minima, and the median of the per-round ratios (each round's old and new ran seconds apart).

Workloads, written only with public API present in both (``pn.mlp``, ``pn.fit``, ``pn.SGD``,
``model.load_state_dict``/``state_dict``), from the same data and initial weights on both sides:
  - mnist:  one MNIST epoch, 784-100-10 no bias, batch 100, in order, float32, SGD lr 0.2 (real MNIST
            from $PORTABLENN_DATA or /work/shared/data/mnist when present, else synthetic 60000x784)
  - spiral: the CS231n spiral full-batch step, 2-100-3 with biases, 300 points, float64, SGD lr 1,
            L2 1e-3, 1000 steps in one ``fit``
  - wide:   784-1024-1024-10 no bias, batch 1024, float32, SGD lr 0.05, 8 steps on synthetic data
            (as ``scripts/bench.py --only wide``), timed with the step's 8 GEMMs alone (the FLOP
            floor) and a hand-written NumPy loop of the same math in the same subprocess, so each
            side has its own ratio to its GEMMs

With both sides the same code (``HEAD`` and a clean tree, or ``HEAD --new HEAD``) the ratios
measure the noise.
The worktree and the temporary folder are removed at the end, also on Ctrl-C or SIGTERM.
"""
import argparse
import gzip
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("mnist", "spiral", "wide")
INNER = {"mnist": 3, "spiral": 3, "wide": 2}  # timed runs per batch (after one untimed)

MNIST_SIZES, MNIST_BATCH, MNIST_LR = (784, 100, 10), 100, 0.2
SPIRAL_STEPS, SPIRAL_LR, SPIRAL_L2 = 1000, 1.0, 1e-3
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/_wide.py, however this is loaded
from _wide import WIDE_BATCH, WIDE_LR, WIDE_ROWS, WIDE_SIZES, wide_gemms, wide_numpy_loop  # noqa: E402,F401
FIT, GEMMS, LOOP = "fit", "gemms", "numpy loop"


# -- data and initial weights, made once by the parent and loaded by every worker -------------------
def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist_arrays():
    """Real MNIST train (uint8 / 255, float32) where the files are, else synthetic data of its shape."""
    dirs = []
    if os.environ.get("PORTABLENN_DATA"):
        dirs += [os.environ["PORTABLENN_DATA"], os.path.join(os.environ["PORTABLENN_DATA"], "mnist")]
    dirs.append("/work/shared/data/mnist")
    for d in dirs:
        for ext in (".gz", ""):
            images = os.path.join(d, "train-images-idx3-ubyte" + ext)
            labels = os.path.join(d, "train-labels-idx1-ubyte" + ext)
            if os.path.isfile(images) and os.path.isfile(labels):
                try:
                    X = read_idx(images).reshape(-1, 784).astype(np.float32) / np.float32(255)
                    y = read_idx(labels).astype(np.int64)
                    if X.shape == (60000, 784) and y.shape == (60000,):
                        return X, y, f"MNIST train from {d}"
                except (OSError, ValueError, IndexError, EOFError):
                    pass
    X, y = synthetic(60000)
    return X, y, "synthetic 60000x784 (MNIST not found)"


def synthetic(rows, seed=0):
    """MNIST-shaped, about its sparsity, with a learnable label (as scripts/bench.py's synthetic_mnist)."""
    rng = np.random.default_rng(seed)
    X = rng.random((rows, 784), dtype=np.float32)
    X *= rng.random((rows, 784), dtype=np.float32) < 0.19
    return X, X[:, :10].argmax(axis=1).astype(np.int64)


def spiral_arrays(N=100, K=3):
    """The CS231n spiral (as portablenn.datasets.spiral, seed 0)."""
    rng = np.random.RandomState(0)
    X, y = np.zeros((N * K, 2)), np.zeros(N * K, dtype=np.int64)
    for j in range(K):
        r = np.linspace(0.0, 1, N)
        t = np.linspace(j * 4, (j + 1) * 4, N) + rng.randn(N) * 0.2
        X[N * j:N * (j + 1)] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[N * j:N * (j + 1)] = j
    return X, y


def prepare_data(folder, workloads):
    """Write each workload's X, y and initial state dict to ``folder``; returns a line per workload."""
    os.makedirs(folder, exist_ok=True)
    notes = {}
    for name in workloads:
        if name == "mnist":
            X, y, notes[name] = mnist_arrays()
            rng = np.random.default_rng(0)
            state = {"0.weight": (rng.standard_normal((784, 100)) / np.sqrt(100)).astype(np.float32),
                     "2.weight": (rng.standard_normal((100, 10)) / np.sqrt(10)).astype(np.float32)}
        elif name == "spiral":
            X, y = spiral_arrays()
            notes[name] = "CS231n spiral 300x2"
            rng = np.random.RandomState(0)
            state = {"0.weight": 0.01 * rng.randn(2, 100), "0.bias": np.zeros(100),
                     "2.weight": 0.01 * rng.randn(100, 3), "2.bias": np.zeros(3)}
        else:
            X, y = synthetic(WIDE_ROWS)
            notes[name] = f"synthetic {WIDE_ROWS}x784"
            rng = np.random.default_rng(1)  # as scripts/bench.py's wide_weights
            state = {f"{2 * i}.weight": (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
                     for i, (a, b) in enumerate(zip(WIDE_SIZES[:-1], WIDE_SIZES[1:]))}
        np.save(os.path.join(folder, f"{name}_X.npy"), X)
        np.save(os.path.join(folder, f"{name}_y.npy"), y)
        np.savez(os.path.join(folder, f"{name}_state.npz"), **state)
    return notes


# -- the worker: one workload on one package, in its own process -------------------------------------
def wide_loop(X, y, Ws):
    W1, W2, W3 = wide_numpy_loop(X, y, Ws)
    return {"0.weight": W1, "2.weight": W2, "4.weight": W3}


def worker(args):
    root = os.path.realpath(args.root)
    sys.path.insert(0, root)
    import portablenn as pn
    where = os.path.realpath(os.path.dirname(pn.__file__))
    if where != os.path.join(root, "portablenn"):
        raise SystemExit(f"imported portablenn from {where}, not from {root}")
    name = args.worker
    X = np.load(os.path.join(args.data, f"{name}_X.npy"))
    y = np.load(os.path.join(args.data, f"{name}_y.npy"))
    state = dict(np.load(os.path.join(args.data, f"{name}_state.npz")))
    if name == "mnist":
        model = pn.mlp(list(MNIST_SIZES), bias=False)
        kwargs = dict(epochs=1, batch_size=MNIST_BATCH, shuffle=False)
        lr = MNIST_LR
    elif name == "spiral":
        model = pn.mlp([2, 100, 3], dtype="float64")
        kwargs = dict(epochs=SPIRAL_STEPS, batch_size=None, l2=SPIRAL_L2, log_every=SPIRAL_STEPS)
        lr = SPIRAL_LR
    else:
        model = pn.mlp(list(WIDE_SIZES), bias=False)
        kwargs = dict(epochs=1, batch_size=WIDE_BATCH, shuffle=False)
        lr = WIDE_LR

    def fit():
        model.load_state_dict(state)
        pn.fit(model, X, y, optimizer=pn.SGD(lr), **kwargs)

    variants = {FIT: fit}
    if name == "wide":
        Ws = [state[k] for k in ("0.weight", "2.weight", "4.weight")]
        variants[GEMMS] = lambda: wide_gemms(X, Ws)
        variants[LOOP] = lambda: wide_loop(X, y, Ws)
    out = {"portablenn": where, "times": {v: [] for v in variants}}
    for v, run in variants.items():  # untimed: imports, BLAS threads, allocator
        run()
    if name == "wide":  # fit's weights against the hand-written loop's, relative to their largest
        ref, got = wide_loop(X, y, Ws), model.state_dict()
        scale = max(float(np.abs(r).max()) for r in ref.values())
        out["fit_vs_loop"] = max(float(np.abs(np.asarray(got[k], np.float64) - r).max()) for k, r in ref.items()) / scale
    if args.weights_out:
        np.savez(args.weights_out, **{k: np.asarray(v) for k, v in model.state_dict().items()})
    names = list(variants)
    for r in range(args.inner):
        for v in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            variants[v]()
            out["times"][v].append(time.perf_counter() - t)
    print("RESULT " + json.dumps(out))


# -- the parent -----------------------------------------------------------------------------------------
def git(repo, *argv):
    return subprocess.run(["git", "-C", repo, *argv], check=True, capture_output=True, text=True).stdout.rstrip()


def run_batch(root, name, data, inner, weights_out=None):
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--root", root, "--data", data,
           "--inner", str(inner)] + (["--weights-out", weights_out] if weights_out else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
        raise RuntimeError(f"{name} worker on {root} failed: {tail}")
    return json.loads(lines[-1][len("RESULT "):])


def weight_diff(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a.files) != sorted(b.files):
        return float("inf")
    scale = max(float(np.abs(a[k]).max()) for k in a.files) or 1.0
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a.files) / scale


UNITS = {"mnist": ("ms/epoch", 1e3, 1), "spiral": ("us/step", 1e6, SPIRAL_STEPS),
         "wide": ("ms/step", 1e3, WIDE_ROWS // WIDE_BATCH)}
LABELS = {"mnist": "MNIST epoch (784-100-10, batch 100, f32)", "spiral": "spiral step (2-100-3, 300 pts, f64)",
          "wide": "wide step (784-1024-1024-10, batch 1024, f32)"}


def compare(args):
    repo = git(HERE, "rev-parse", "--show-toplevel")
    old_sha = git(repo, "rev-parse", "--verify", f"{args.rev}^{{commit}}")
    head_sha = git(repo, "rev-parse", "HEAD")
    new_sha = git(repo, "rev-parse", "--verify", f"{args.new}^{{commit}}") if args.new else None
    dirty = [line for line in git(repo, "status", "--porcelain", "--", "portablenn").splitlines() if line]
    tmp = tempfile.mkdtemp(prefix="bench_compare_")
    old_root, new_root, data = os.path.join(tmp, "old"), os.path.join(tmp, "new"), os.path.join(tmp, "data")
    worktrees = []
    try:
        for root, sha in ((old_root, old_sha), (new_root, new_sha)):
            if sha:
                worktrees.append(root)  # before the add: a half-made worktree is removed too
                git(repo, "worktree", "add", "--detach", root, sha)
        if not new_sha:
            shutil.copytree(os.path.join(repo, "portablenn"), os.path.join(new_root, "portablenn"),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        print(f"machine: {platform.platform()}, {platform.machine()} {platform.processor() or ''}".rstrip()
              + f", {os.cpu_count()} CPUs, Python {platform.python_version()}, NumPy {np.__version__}, "
              f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"old: {args.rev} = {old_sha[:12]} {git(repo, 'log', '-1', '--format=%s', old_sha)[:80]}")
        if new_sha:
            print(f"new: {args.new} = {new_sha[:12]} {git(repo, 'log', '-1', '--format=%s', new_sha)[:80]}")
        else:
            print(f"new: working tree of {repo} at HEAD {head_sha[:12]}"
                  + (f" + {len(dirty)} changed path(s) under portablenn/: " + ", ".join(d[3:] for d in dirty)
                     if dirty else " (no changes under portablenn/)") + "; package copied at start")
        notes = prepare_data(data, args.only)
        print("data: " + "; ".join(f"{k}: {v}" for k, v in notes.items()))
        sides = {"old": old_root, "new": new_root}
        results = {name: {"old": [], "new": []} for name in args.only}
        checks = {}
        for r in range(args.rounds):
            began = time.perf_counter()
            for i, name in enumerate(args.only):
                order = ("old", "new") if (r + i) % 2 == 0 else ("new", "old")
                for side in order:
                    out = None if r else os.path.join(tmp, f"{side}_{name}.npz")
                    results[name][side].append(run_batch(sides[side], name, data, args.inner or INNER[name], out))
                if r == 0:
                    checks[name] = weight_diff(os.path.join(tmp, f"old_{name}.npz"), os.path.join(tmp, f"new_{name}.npz"))
            print(f"round {r + 1}/{args.rounds}: {time.perf_counter() - began:.1f} s", flush=True)
        report(args, results, checks, dict(date=time.strftime("%Y-%m-%d %H:%M:%S"), platform=platform.platform(),
                                           cpus=os.cpu_count(), numpy=np.__version__, python=platform.python_version(),
                                           old=old_sha, new=new_sha or f"working tree at {head_sha}",
                                           dirty=None if new_sha else dirty,
                                           data=notes, loadavg_end=os.getloadavg()))
    finally:
        for root in worktrees:
            try:
                git(repo, "worktree", "remove", "--force", root)
            except subprocess.CalledProcessError:
                shutil.rmtree(root, ignore_errors=True)
                subprocess.run(["git", "-C", repo, "worktree", "prune"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, results, checks, info):
    def fit_min(batches):
        return min(min(b["times"][FIT]) for b in batches)

    print(f"\n{args.rounds} interleaved rounds, minima over rounds (each batch: 1 untimed + "
          f"{args.inner or '/'.join(str(INNER[n]) for n in args.only)} timed runs in a fresh process)")
    print("| workload | unit | old min | new min | new/old (min) | new/old (paired median) | max rel. weight diff |"
          "\n|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for name, res in results.items():
        unit, scale, per = UNITS[name]
        old, new = fit_min(res["old"]), fit_min(res["new"])
        paired = statistics.median(min(n["times"][FIT]) / min(o["times"][FIT]) for o, n in zip(res["old"], res["new"]))
        row = {"workload": name, "unit": unit, "old_min": old / per, "new_min": new / per, "ratio": new / old,
               "paired_ratio": paired, "weight_diff_old_new": checks.get(name)}
        print(f"| {LABELS[name]} | {unit} | {old * scale / per:.2f} | {new * scale / per:.2f} | {new / old:.3f}x | "
              f"{paired:.3f}x | {checks.get(name, float('nan')):.1e} |")
        rows.append(row)
    if "wide" in results:
        print("\nwide regime, each side against its own GEMMs and hand-written NumPy loop (same subprocesses)\n"
              "| side | fit ms/step | 8 GEMMs ms/step | NumPy loop ms/step | fit/GEMMs (min) | fit/GEMMs (paired) "
              "| fit/loop (min) | fit/loop (paired) | fit vs loop weights |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        steps = WIDE_ROWS // WIDE_BATCH
        wide = {}
        for side in ("old", "new"):
            batches = results["wide"][side]
            mins = {v: min(min(b["times"][v]) for b in batches) for v in (FIT, GEMMS, LOOP)}
            paired = {v: statistics.median(min(b["times"][FIT]) / min(b["times"][v]) for b in batches)
                      for v in (GEMMS, LOOP)}
            diff = max(b.get("fit_vs_loop", 0.0) for b in batches[:1])
            wide[side] = {"min_s": mins, "fit_over_gemms": mins[FIT] / mins[GEMMS], "fit_over_gemms_paired": paired[GEMMS],
                          "fit_over_loop": mins[FIT] / mins[LOOP], "fit_over_loop_paired": paired[LOOP],
                          "fit_vs_loop_weights": diff}
            print(f"| {side} | {mins[FIT] * 1e3 / steps:.1f} | {mins[GEMMS] * 1e3 / steps:.1f} | "
                  f"{mins[LOOP] * 1e3 / steps:.1f} | {mins[FIT] / mins[GEMMS]:.3f}x | {paired[GEMMS]:.3f}x | "
                  f"{mins[FIT] / mins[LOOP]:.3f}x | {paired[LOOP]:.3f}x | {diff:.1e} |")
        info["wide"] = wide
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
          "(a shared machine: read ratios within a few % of 1.00 as noise; run HEAD against HEAD for the floor)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows,
                       "raw": {n: {s: [b["times"] for b in bs] for s, bs in res.items()} for n, res in results.items()}},
                      f, indent=1)


def only_arg(text):
    chosen = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not chosen or any(p not in WORKLOADS for p in chosen):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(WORKLOADS)} (comma-separated), got {text!r}")
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="the old revision (default HEAD)")
    parser.add_argument("--new", metavar="REV2", help="a revision for the new side instead of the working tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", type=only_arg, default=WORKLOADS, help="comma-separated: mnist,spiral,wide")
    parser.add_argument("--inner", type=int, default=0, help="timed runs per batch (default 3, wide 2)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--weights-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.rounds < 1 or args.inner < 0:
        parser.error("--rounds must be >= 1 and --inner >= 0")

    def terminate(signum, frame):  # SIGTERM/SIGHUP as Ctrl-C: the finally clause removes the worktree
        raise KeyboardInterrupt(signal.Signals(signum).name)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # leave nohup's choice alone
            signal.signal(sig, terminate)
    try:
        compare(args)
    except KeyboardInterrupt:
        print("\ninterrupted; worktree removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
