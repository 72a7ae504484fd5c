"""Benchmark portablenn against hand-written loops, interleaved in one process so ratios are side by side.

Workloads (float32 MNIST epoch of the CMU 10-714 setup; float64 CS231n spiral full-batch steps; the
float32 wide regime, 784-1024-1024-10 at batch 1024, where the GEMMs are nearly all of a step):
  - reference: a hand-written NumPy loop of the same math (ratio 1.00)
  - portablenn ``fit`` on every available device (NumPy fast path and generic Array API path, CuPy)
  - the same loop through array-api-compat, PyTorch eager (manual gradients and autograd) when installed
  - on a GPU: a hand-written CuPy loop and PyTorch CUDA eager
  - the five GEMMs alone and the FLOP limit at the measured large-GEMM peak
  - wide regime (CPU): ``fit``, a hand-written NumPy loop and the step's eight GEMMs alone (the FLOP
    floor), with every row's ratios to the GEMMs and to the NumPy loop
Prints a table of min/median times and ratios (of the minima, and the median of per-round ratios), and
writes JSON (``--json``).

    python scripts/bench.py                 # everything available here
    python scripts/bench.py --quick         # fewer repetitions
    python scripts/bench.py --only wide     # one section (or several: --only mnist,spiral; also memory, jax)
    python scripts/bench.py --only jax --jax-device jax:cuda   # the compiled JAX step (scripts/_jax_bench.py)
    python scripts/bench.py --only sweep    # 16 members stacked vs 16 fits vs GridSearchCV (scripts/bench_sweep.py)
    python scripts/bench.py --gpu-epoch     # only the GPU MNIST epoch, against PyTorch CUDA eager (gpu_check.sh)
    python scripts/bench.py --gpu-epoch --device cpu --rows 6000 --rounds 2   # its rehearsal on the CPU

A variant that raises, in its correctness check or while timed, is reported as FAILED with the
reason in one line; the others are still timed.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import portablenn as pn  # noqa: E402
from portablenn import _blas, backend, datasets  # noqa: E402

BATCH, HIDDEN, LR = 100, 100, 0.2


# -- data and initial weights ---------------------------------------------------------------------
def mnist_data():
    try:
        X, y = datasets.mnist(split="train")
        return X, y.astype(np.int64), "MNIST train (60000)"
    except Exception:
        rng = np.random.default_rng(0)
        X = rng.random((60000, 784), dtype=np.float32)
        y = (X[:, :10].argmax(axis=1)).astype(np.int64)
        return X, y, "synthetic 60000x784 (MNIST not found)"


def initial_weights(dtype=np.float32):
    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((784, HIDDEN)) / np.sqrt(HIDDEN)
    W2 = rng.standard_normal((HIDDEN, 10)) / np.sqrt(10)
    return W1.astype(dtype), W2.astype(dtype)


# -- MNIST epoch variants: each returns a function that runs one epoch and returns the final weights --
def numpy_loop(X, y, W1, W2):
    """CMU 10-714 hw0 nn_epoch, vectorised NumPy, minibatches in order."""
    W1, W2 = W1.copy(), W2.copy()
    for i in range(0, X.shape[0], BATCH):
        Xb, yb = X[i:i + BATCH], y[i:i + BATCH]
        Z1 = np.maximum(Xb @ W1, 0)
        logits = Z1 @ W2
        E = np.exp(logits - logits.max(axis=1, keepdims=True))
        S = E / E.sum(axis=1, keepdims=True)
        S[np.arange(yb.size), yb] -= 1
        G1 = (Z1 > 0) * (S @ W2.T)
        W1 -= LR / BATCH * (Xb.T @ G1)
        W2 -= LR / BATCH * (Z1.T @ S)
    return W1, W2


def xp_loop(xp, X, y, W1, W2, sync=lambda: None):
    """The same math written once against an Array API namespace (array-api-compat)."""
    W1, W2 = xp.asarray(W1, copy=True), xp.asarray(W2, copy=True)
    classes = xp.arange(10)
    for i in range(0, X.shape[0], BATCH):
        Xb, yb = X[i:i + BATCH, :], y[i:i + BATCH]
        Z1 = xp.maximum(Xb @ W1, 0.0)
        logits = Z1 @ W2
        E = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
        S = E / xp.sum(E, axis=1, keepdims=True) - xp.astype(yb[:, None] == classes, Xb.dtype)
        G1 = xp.where(Z1 > 0, S @ W2.T, 0.0)
        W1 -= LR / BATCH * (Xb.T @ G1)
        W2 -= LR / BATCH * (Z1.T @ S)
    sync()
    return W1, W2


def gemms_only(X, W1, W2):
    G2 = np.full((BATCH, 10), 1e-3, np.float32)
    for i in range(0, X.shape[0], BATCH):
        Xb = X[i:i + BATCH]
        Z1 = Xb @ W1
        Z1 @ W2
        G1 = G2 @ W2.T
        Z1.T @ G2
        Xb.T @ G1
    return W1, W2


def torch_manual(torch, X, y, W1, W2, sync=lambda: None):
    W1, W2 = W1.clone(), W2.clone()
    with torch.no_grad():
        for i in range(0, X.shape[0], BATCH):
            Xb, yb = X[i:i + BATCH], y[i:i + BATCH]
            Z1 = torch.relu(Xb @ W1)
            S = torch.softmax(Z1 @ W2, dim=1)
            S[torch.arange(yb.shape[0], device=S.device), yb] -= 1
            G1 = (Z1 > 0) * (S @ W2.T)
            W1 -= LR / BATCH * (Xb.T @ G1)
            W2 -= LR / BATCH * (Z1.T @ S)
    sync()
    return W1, W2


def torch_autograd(torch, X, y, W1, W2, sync=lambda: None):
    net = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(HIDDEN, 10, bias=False)).to(X.device)
    with torch.no_grad():
        net[0].weight.copy_(W1.T)
        net[2].weight.copy_(W2.T)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(0, X.shape[0], BATCH):
        opt.zero_grad(set_to_none=True)
        loss_fn(net(X[i:i + BATCH]), y[i:i + BATCH]).backward()
        opt.step()
    sync()
    return net[0].weight.detach().T, net[2].weight.detach().T


def portablenn_fit(spec, X, y, W1, W2, kernels="fast", graph=False):
    """``run(epochs=1)`` trains from (W1, W2) and returns the weights; ``run.history`` is its last History."""
    dev = pn.device(spec, kernels=kernels)
    model = pn.mlp([784, HIDDEN, 10], bias=False)
    model.load_state_dict({"0.weight": W1, "2.weight": W2})
    model.to(dev)
    Xd, yd = dev.asarray(X), dev.asarray(y)  # data already resident, as for the other device variants

    def run(epochs=1):
        model.load_state_dict({"0.weight": W1, "2.weight": W2})
        run.history = pn.fit(model, Xd, yd, optimizer=pn.SGD(LR), epochs=epochs, batch_size=BATCH, shuffle=False,
                             graph=graph)
        dev.synchronize()
        sd = model.state_dict()
        return sd["0.weight"], sd["2.weight"]
    return run


def kernels_loop(spec, X, y, W1, W2):
    """portablenn's kernels for the same math in a flat loop: ``fit`` without its layers, loop and input check.

    Not a way to train: it splits the fast path's ratio into the kernels' share and the framework's.
    """
    dev = pn.device(spec, kernels="fast")
    k = dev.kernels
    Xd, yd = dev.asarray(X), dev.asarray(y)
    onehot = dev.asarray(np.eye(10, dtype=X.dtype)[y])

    def run():
        A, B = dev.asarray(W1), dev.asarray(W2)
        for i in range(0, X.shape[0], BATCH):
            xb, yb, ob = Xd[i:i + BATCH, :], yd[i:i + BATCH], onehot[i:i + BATCH, :]
            z = k.relu(k.matmul(xb, A))
            g, _, _ = k.softmax_xent(k.matmul(z, B), yb, ob, LR / BATCH)
            dz = k.relu_backward(k.matmul(g, B.T), z)
            k.matmul_update_(B, z.T, g, -1.0)
            k.matmul_update_(A, xb.T, dz, -1.0)
        dev.synchronize()
        return A, B
    return run


# -- spiral full-batch steps ------------------------------------------------------------------------
def spiral_numpy(X, y, steps):
    """The CS231n case study's 2-layer network loop, verbatim in spirit (float64)."""
    rng = np.random.RandomState(0)
    W, b = 0.01 * rng.randn(2, 100), np.zeros((1, 100))
    W2, b2 = 0.01 * rng.randn(100, 3), np.zeros((1, 3))
    n, reg = X.shape[0], 1e-3
    for _ in range(steps):
        hidden = np.maximum(0, np.dot(X, W) + b)
        scores = np.dot(hidden, W2) + b2
        exp_scores = np.exp(scores)
        probs = exp_scores / np.sum(exp_scores, axis=1, keepdims=True)
        loss = np.sum(-np.log(probs[range(n), y])) / n + 0.5 * reg * (np.sum(W * W) + np.sum(W2 * W2))  # noqa: F841
        dscores = probs
        dscores[range(n), y] -= 1
        dscores /= n
        dW2, db2 = np.dot(hidden.T, dscores), np.sum(dscores, axis=0, keepdims=True)
        dhidden = np.dot(dscores, W2.T)
        dhidden[hidden <= 0] = 0
        dW, db = np.dot(X.T, dhidden), np.sum(dhidden, axis=0, keepdims=True)
        dW2 += reg * W2
        dW += reg * W
        W += -1.0 * dW
        b += -1.0 * db
        W2 += -1.0 * dW2
        b2 += -1.0 * db2


def spiral_torch(torch, X, y, steps):
    g = torch.Generator().manual_seed(0)
    W = 0.01 * torch.randn(2, 100, generator=g, dtype=torch.float64)
    W2 = 0.01 * torch.randn(100, 3, generator=g, dtype=torch.float64)
    b, b2 = torch.zeros(100, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    n, reg = X.shape[0], 1e-3
    with torch.no_grad():
        for _ in range(steps):
            hidden = torch.relu(X @ W + b)
            probs = torch.softmax(hidden @ W2 + b2, dim=1)
            loss = -torch.log(probs[torch.arange(n), y]).mean() + 0.5 * reg * ((W * W).sum() + (W2 * W2).sum())  # noqa: F841
            probs[torch.arange(n), y] -= 1
            probs /= n
            dW2, db2 = hidden.T @ probs + reg * W2, probs.sum(0)
            dhidden = (probs @ W2.T) * (hidden > 0)
            dW, db = X.T @ dhidden + reg * W, dhidden.sum(0)
            W -= dW
            b -= db
            W2 -= dW2
            b2 -= db2


def spiral_portablenn(spec, X, y, steps, kernels="fast", graph=False):
    dev = pn.device(spec, kernels=kernels)
    model = pn.mlp([2, 100, 3], init="small", dtype="float64")
    pn.fit(model, X, y, optimizer=pn.SGD(1.0), epochs=steps, batch_size=None, l2=1e-3,
           device=dev, log_every=steps, graph=graph)
    dev.synchronize()


# -- wide regime: 784-1024-1024-10, batch 1024, float32, where a step is nearly all GEMM ---------------
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/_wide.py, however this is loaded
from _wide import WIDE_BATCH, WIDE_LR, WIDE_ROWS, WIDE_SIZES, wide_gemms, wide_numpy_loop  # noqa: E402,F401
WIDE_KEYS = ("0.weight", "2.weight", "4.weight")  # pn.mlp(..., bias=False): Linear, ReLU, Linear, ReLU, Linear


def wide_flops(rows=WIDE_ROWS, sizes=WIDE_SIZES):
    """FLOPs of ``rows`` rows through the 8 GEMMs: 3 forward, 3 weight gradients, 2 input gradients."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return 2 * rows * (3 * sum(a * b for a, b in pairs) - pairs[0][0] * pairs[0][1])


def wide_weights(sizes=WIDE_SIZES, dtype=np.float32):
    """He-scaled initial weights (in, out) of the bias-free MLP, from a fixed seed."""
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]


def wide_fit(spec, X, y, Ws, kernels="fast"):
    """``run()`` trains the bias-free 784-1024-1024-10 MLP from ``Ws`` for one in-order epoch; returns the weights."""
    dev = pn.device(spec, kernels=kernels)
    model = pn.mlp(list(WIDE_SIZES), bias=False)
    state = dict(zip(WIDE_KEYS, Ws))
    model.load_state_dict(state)
    model.to(dev)
    Xd, yd = dev.asarray(X), dev.asarray(y)

    def run():
        model.load_state_dict(state)
        pn.fit(model, Xd, yd, optimizer=pn.SGD(WIDE_LR), epochs=1, batch_size=WIDE_BATCH, shuffle=False)
        dev.synchronize()
        sd = model.state_dict()
        return [sd[k] for k in WIDE_KEYS]
    return run


WIDE_FIT, WIDE_LOOP, WIDE_GEMMS = ("portablenn numpy fit (fast kernels)", "hand-written NumPy loop",
                                   "the step's 8 GEMMs alone (FLOP floor)")


def wide_section(repeat):
    """The wide regime's check, interleaved timings and table; returns (rows, check, failed)."""
    X, y = synthetic_mnist(WIDE_ROWS)
    Ws = wide_weights()
    ref = wide_numpy_loop(X, y, Ws)
    variants, failed = {}, {}
    add(variants, failed, WIDE_FIT, lambda: wide_fit("cpu", X, y, Ws))
    variants[WIDE_LOOP] = lambda: wide_numpy_loop(X, y, Ws)
    variants[WIDE_GEMMS] = lambda: wide_gemms(X, Ws)
    check = weight_check(variants, failed, ref, [WIDE_FIT])
    print("wide regime: max |W - W_ref| / max |W_ref| after one epoch (fit vs the NumPy loop): "
          + ", ".join(f"{k}: {v:.1e}" for k, v in check.items()))
    times = interleave(variants, repeat, failed)
    flops = wide_flops()
    rows = ratio_table(f"Wide regime: {'-'.join(map(str, WIDE_SIZES))} ReLU no bias, batch {WIDE_BATCH}, float32, "
                       f"SGD lr {WIDE_LR} no momentum, {WIDE_ROWS // WIDE_BATCH} steps per run on synthetic "
                       f"{WIDE_ROWS}x784 ({flops / 1e9:.1f} GFLOP per run), {repeat} interleaved rounds",
                       times, {"GEMMs": WIDE_GEMMS, "NumPy loop": WIDE_LOOP}, failed=failed)
    for row in rows:
        if row["status"] == "ok":
            row["gflops"] = flops / row["min"] / 1e9
            row["max_rel_diff"] = check.get(row["variant"])
    return rows, check, failed


def ratio_table(title, times, refs, failed=None):
    """Min and median ms, and for each reference in ``refs`` ({label: variant}) the ratio of the minima
    and the median over rounds of the per-round ratio."""
    head = "".join(f" / {label} (min) | / {label} (paired) |" for label in refs)
    print(f"\n{title}\n| variant | min ms | median ms |{head}\n|---|---:|---:|" + "---:|---:|" * len(refs))
    rows = []
    for name, ts in times.items():
        row = {"variant": name, "status": "ok", "min": min(ts), "median": statistics.median(ts), "ratios": {}}
        cells = []
        for label, ref_name in refs.items():
            ref = times.get(ref_name)
            ratio = min(ts) / min(ref) if ref else None
            paired = statistics.median(t / r for t, r in zip(ts, ref)) if ref and len(ref) == len(ts) else None
            row["ratios"][label] = {"min": ratio, "paired": paired}
            cells += ["" if ratio is None else f"{ratio:.3f}x", "" if paired is None else f"{paired:.3f}x"]
        rows.append(row)
        print(f"| {name} | {row['min'] * 1e3:.1f} | {row['median'] * 1e3:.1f} | " + " | ".join(cells) + " |")
    for name, reason in (failed or {}).items():
        rows.append({"variant": name, "status": "FAILED", "reason": reason})
        print(f"| {name} | FAILED: {reason} | |" + " | |" * len(refs))
    return rows


# -- harness ----------------------------------------------------------------------------------------
def gemm_peak(xp=np, sync=lambda: None, n=2048):
    a = xp.ones((n, n), dtype=xp.float32)
    best = float("inf")
    for _ in range(5):
        sync()
        t = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


MEMORY_PROBE = """
import resource, sys, time
import numpy as np
import portablenn as pn
from portablenn import datasets
spec = sys.argv[1]
try:
    X, y = datasets.mnist(split="train")
except Exception:
    X = np.random.default_rng(0).random((60000, 784), dtype=np.float32); y = X[:, :10].argmax(axis=1)
dev = pn.device(spec)
def rss():  # this process's own high-water mark (ru_maxrss would include the parent's at fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = rss()
model = pn.mlp([784, 100, 10], bias=False, init="cmu")
pn.fit(model, X, y, optimizer=pn.SGD(0.2), epochs=2, batch_size=100, shuffle=True, device=dev,
       graph=sys.argv[2:] == ["graph"])
dev.synchronize()
gpu = ""
if dev.library == "cupy":
    import cupy
    free, total = cupy.cuda.runtime.memGetInfo()  # the whole GPU: this process's pools and context included
    gpu = (f" gpu_pool_mib={cupy.get_default_memory_pool().total_bytes() / 2**20:.1f}"
           f" gpu_used_mib={(total - free) / 2**20:.1f}")
print(f"data_mib={X.nbytes / 2**20:.1f} rss_before_fit_mib={before:.1f} peak_rss_mib={rss():.1f}{gpu}")
"""


def memory(spec, *extra):
    """Peak host RSS (and GPU memory) of a fresh process that loads MNIST and fits 2 shuffled epochs."""
    import subprocess
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)  # keep the caller's entries
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, spec, *extra], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": path})
    return out.stdout.strip() or (out.stderr.strip().splitlines() or [f"exit {out.returncode}, no output"])[-1]


def one_line(exc):
    """``"TypeName: first line of the message"``: how a failed variant is reported."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def add(variants, failed, name, make):
    """``variants[name] = make()``, or the reason in ``failed[name]`` where setting the variant up raises."""
    try:
        variants[name] = make()
    except Exception as exc:
        failed[name] = f"set-up raised {one_line(exc)}"


def weight_check(variants, failed, ref, names=None, rtol=1e-3):
    """Run each variant once and compare its weights with ``ref``'s: ``{name: max |diff| / max |ref|}``.

    A variant that raises, or whose weights differ by more than ``rtol`` relative, moves from
    ``variants`` to ``failed`` (not timed: a fast wrong answer is no result).
    """
    ref = [np.asarray(r, dtype=np.float64) for r in ref]
    scale = max(float(np.max(np.abs(r))) for r in ref)
    check = {}
    for name in list(variants if names is None else names):
        try:
            got = variants[name]()
            rel = max(float(np.max(np.abs(backend._host(g).astype(np.float64) - r))) for g, r in zip(got, ref)) / scale
            check[name] = rel
            if not rel <= rtol:
                raise AssertionError(f"weights differ from the NumPy reference by {rel:.1e} relative (> {rtol:g})")
        except Exception as exc:
            failed[name] = f"correctness check: {one_line(exc)}"
            del variants[name]
    return check


def interleave(variants, repeat, failed=None, warmup=True):
    """Run every variant ``repeat`` times, round-robin (the order rotated each round so that no variant
    always follows the same one); returns {name: [seconds of round 1, round 2, ...]}.

    A variant that raises (in the warm-up or a timed round) is dropped with its reason in ``failed``
    (one line); the others go on.
    """
    failed = {} if failed is None else failed
    names = [name for name in variants if name not in failed]
    times = {name: [] for name in names}

    def call(name, stage):
        try:
            variants[name]()
            return True
        except Exception as exc:
            failed[name] = f"{stage}: {one_line(exc)}"
            del times[name]
            return False

    if warmup:  # imports, BLAS threads, GPU kernels, allocator
        for name in names:
            call(name, "warm-up")
    for r in range(repeat if names else 0):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in times:
                t = time.perf_counter()
                if call(name, "timed run"):
                    times[name].append(time.perf_counter() - t)
    return times


def table(title, times, reference, unit=1e3, unit_name="ms", per=1, failed=None, skipped=None):
    """Min and median times, and two ratios to the reference: of the minima, and the median over rounds
    of each round's ratio (a shared machine's speed drifts; runs of one round are seconds apart).

    Variants in ``failed`` and ``skipped`` ({name: reason}) get a row saying so; without a timed
    reference the ratios are left empty.
    """
    ref = times.get(reference)
    print(f"\n{title}\n| variant | min {unit_name} | median {unit_name} | ratio (min) | ratio (paired median) |"
          "\n|---|---:|---:|---:|---:|")
    rows = []
    for name, ts in times.items():
        paired = (statistics.median(t / r for t, r in zip(ts, ref)) if ref and len(ts) == len(ref) else None)
        row = {"variant": name, "status": "ok", "min": min(ts) / per, "median": statistics.median(ts) / per,
               "ratio": min(ts) / min(ref) if ref else None, "paired_ratio": paired}
        rows.append(row)
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        shown = "" if paired is None else f"{paired:.2f}x"
        print(f"| {name} | {row['min'] * unit:.2f} | {row['median'] * unit:.2f} | {ratio} | {shown} |")
    for status, reasons in (("FAILED", failed or {}), ("SKIP", skipped or {})):
        for name, reason in reasons.items():
            rows.append({"variant": name, "status": status, "reason": reason})
            print(f"| {name} | {status}: {reason} | | | |")
    return rows


SECTIONS = ("mnist", "spiral", "wide", "memory", "jax", "sweep")


def sections_arg(text):
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [part for part in chosen if part not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or text!r}; choose from {', '.join(SECTIONS)}")
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", "--rounds", type=int, default=11, help="timed rounds")
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--spiral-steps", type=int, default=1000)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--only", type=sections_arg, default=SECTIONS,
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--gpu-epoch", action="store_true",
                        help="only the MNIST epoch on --device against PyTorch CUDA eager, on synthetic data of "
                             "MNIST's shape, with the GPU targets (scripts/gpu_check.sh)")
    parser.add_argument("--device", default="cuda", help="--gpu-epoch: cuda, or cpu for a rehearsal")
    parser.add_argument("--rows", type=int, default=60000, help="--gpu-epoch: rows of the synthetic data; the jax "
                        "section: fewer than 60000 trains on that many synthetic rows (and at most as many wide ones)")
    parser.add_argument("--jax-device", default="jax:cpu", help="the jax section's device (jax:cpu, jax:cuda)")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else args.repeat
    if args.gpu_epoch:
        return gpu_epoch(args.device, repeat, args.rows, args.json, use_torch=not args.no_torch)

    torch = None
    if not args.no_torch and {"mnist", "spiral"} & set(args.only):  # the sections with PyTorch rows
        try:
            import torch
            torch.backends.cuda.matmul.allow_tf32 = False
        except ImportError:
            torch = None
    cuda_dev, why = backend.probe("cuda")
    import array_api_compat
    info = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "array_api_compat": array_api_compat.__version__, "torch": getattr(torch, "__version__", None),
            "blas_update": _blas.available()}
    if cuda_dev is not None:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        info.update(cupy=cupy.__version__, gpu=props["name"].decode(), cuda_runtime=cupy.cuda.runtime.runtimeGetVersion())
    else:
        info["gpu"] = f"none ({why})"
    print("setup: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    mnist_rows, check, failed = [], {}, {}
    if "mnist" in args.only:
        X, y, data_name = mnist_data()
        W1, W2 = initial_weights()
        flops = 600 * 2 * BATCH * (784 * HIDDEN * 2 + HIDDEN * 10 * 3)
        import array_api_compat.numpy as npx
        ref = numpy_loop(X, y, W1, W2)
        variants, failed = {"hand-written NumPy (reference)": lambda: numpy_loop(X, y, W1, W2)}, {}
        add(variants, failed, "portablenn numpy (fast path)", lambda: portablenn_fit("cpu", X, y, W1, W2))
        add(variants, failed, "portablenn numpy (generic Array API)",
            lambda: portablenn_fit("cpu", X, y, W1, W2, kernels="generic"))
        add(variants, failed, "portablenn numpy kernels, flat loop (no fit)", lambda: kernels_loop("cpu", X, y, W1, W2))
        variants["same loop via array-api-compat"] = lambda: xp_loop(npx, X, y, W1, W2)
        variants["five GEMMs alone"] = lambda: gemms_only(X, W1, W2)
        if torch is not None:
            Xt, yt, W1t, W2t = (torch.from_numpy(a) for a in (X, y, W1, W2))
            variants["PyTorch CPU eager, manual gradients"] = lambda: torch_manual(torch, Xt, yt, W1t, W2t)
            variants["PyTorch CPU autograd (nn.Linear + optim.SGD)"] = lambda: torch_autograd(torch, Xt, yt, W1t, W2t)
        if cuda_dev is not None:
            import cupy
            import array_api_compat.cupy as cpx
            sync = cuda_dev.synchronize
            Xc, yc = cupy.asarray(X), cupy.asarray(y)
            add(variants, failed, "portablenn cuda (fast path)", lambda: portablenn_fit("cuda", X, y, W1, W2))
            add(variants, failed, "portablenn cuda (CUDA graph)", lambda: portablenn_fit("cuda", X, y, W1, W2, graph=True))
            add(variants, failed, "portablenn cuda (generic Array API)",
                lambda: portablenn_fit("cuda", X, y, W1, W2, kernels="generic"))
            variants["hand-written CuPy"] = lambda: xp_loop(cpx, Xc, yc, W1, W2, sync)
            if torch is not None and torch.cuda.is_available():
                Xg, yg, W1g, W2g = (torch.from_numpy(a).cuda() for a in (X, y, W1, W2))
                tsync = torch.cuda.synchronize
                variants["PyTorch CUDA eager, manual gradients"] = lambda: torch_manual(torch, Xg, yg, W1g, W2g, tsync)
                variants["PyTorch CUDA autograd"] = lambda: torch_autograd(torch, Xg, yg, W1g, W2g, tsync)

        # correctness first: the same weights as the NumPy reference, to float32 tolerance
        check = weight_check(variants, failed, ref, [n for n in variants if n.startswith("portablenn")])
        print("max |W - W_ref| / max |W_ref| after one epoch: " + ", ".join(f"{k}: {v:.1e}" for k, v in check.items()))

        times = interleave(variants, repeat, failed)
        peak = gemm_peak()
        times["FLOP limit at measured NumPy GEMM peak"] = [flops / peak]
        mnist_rows = table(f"MNIST epoch, {data_name}, 784-100-10 no bias, batch 100, in-order SGD, float32 "
                           f"({flops / 1e9:.1f} GFLOP; GEMM peak {peak / 1e9:.0f} GFLOP/s)", times,
                           "hand-written NumPy (reference)", failed=failed)
        if cuda_dev is not None:  # the GPU rows again, against PyTorch CUDA eager (the yardstick)
            gpu_ref = ("PyTorch CUDA eager, manual gradients" if "PyTorch CUDA eager, manual gradients" in times
                       else "hand-written CuPy")
            gpu_times = {name: ts for name, ts in times.items() if "cuda" in name.lower() or "CuPy" in name}
            mnist_rows += [dict(row, reference=gpu_ref) for row in table(
                f"MNIST epoch on the GPU, against {gpu_ref} (target: <= 25 ms and <= 0.33x)", gpu_times, gpu_ref)]
            import cupy
            gpu_peak = gemm_peak(cupy, cuda_dev.synchronize, 8192)
            print(f"GPU float32 GEMM peak {gpu_peak / 1e12:.1f} TFLOP/s; GPU memory pool "
                  f"{cupy.get_default_memory_pool().total_bytes() / 2**20:.0f} MiB")
            info["gpu_gemm_peak_tflops"] = gpu_peak / 1e12
            info["gpu_pool_mib"] = cupy.get_default_memory_pool().total_bytes() / 2**20

    spiral_rows, spiral_failed = [], {}
    if "spiral" in args.only:
        Xs, ys = datasets.spiral()
        steps = args.spiral_steps
        spiral = {
            "hand-written NumPy CS231n loop (reference)": lambda: spiral_numpy(Xs, ys, steps),
            "portablenn numpy (fast path)": lambda: spiral_portablenn("cpu", Xs, ys, steps),
            "portablenn numpy (generic Array API)": lambda: spiral_portablenn("cpu", Xs, ys, steps, kernels="generic"),
        }
        if torch is not None:
            Xst, yst = torch.from_numpy(Xs), torch.from_numpy(ys.astype(np.int64))
            spiral["PyTorch CPU eager"] = lambda: spiral_torch(torch, Xst, yst, steps)
        if cuda_dev is not None:
            spiral["portablenn cuda (fast path)"] = lambda: spiral_portablenn("cuda", Xs, ys, steps)
            spiral["portablenn cuda (CUDA graph)"] = lambda: spiral_portablenn("cuda", Xs, ys, steps, graph=True)
        spiral_failed = {}
        spiral_rows = table(f"Spiral full-batch step (300x2, hidden 100, float64), {steps} steps per run",
                            interleave(spiral, repeat, spiral_failed), "hand-written NumPy CS231n loop (reference)",
                            unit=1e6, unit_name="us/step", per=steps, failed=spiral_failed)
    wide_rows, wide_check, wide_failed = wide_section(repeat) if "wide" in args.only else ([], {}, {})
    if "sweep" in args.only:  # its own table: the stacked fit, the fits one by one, scikit-learn's GridSearchCV
        import bench_sweep

        bench_sweep.main(["--rounds", str(min(repeat, 3))])
    jax_rows, jax_failed = {}, {}
    if "jax" in args.only:
        jax_rows, jax_failed = jax_rows_or_reason(repeat, args.jax_device, args.rows)
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak host memory (RSS) of this benchmark process: {info['peak_rss_mib']:.0f} MiB")
    info["memory"] = {}
    probes = [("cpu",)] + ([("cuda",), ("cuda", "graph")] if cuda_dev is not None else [])
    for spec, *extra in probes if "memory" in args.only else []:
        name = " ".join([spec, *extra])
        info["memory"][name] = memory(spec, *extra)
        print(f"memory of a fresh process fitting 2 MNIST epochs on {name}: {info['memory'][name]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "sections": list(args.only), "mnist": mnist_rows, "spiral": spiral_rows,
                       "wide": wide_rows, "jax": jax_rows, "max_abs_diff": check, "wide_max_rel_diff": wide_check,
                       "failed": {**failed, **{f"spiral: {k}": v for k, v in spiral_failed.items()},
                                  **{f"wide: {k}": v for k, v in wide_failed.items()},
                                  **{f"jax: {k}": v for k, v in jax_failed.items()}}}, f, indent=1)
    return 1 if failed or spiral_failed or wide_failed or jax_failed else 0


def jax_rows_or_reason(repeat, spec, rows=60000):
    """The jax section (scripts/_jax_bench.py) on ``spec``, or a skip line where JAX or that device is missing;
    ``rows`` under 60000: synthetic data of that many rows (the wide one at most as many, whole batches)."""
    dev, why = backend.probe(spec)
    if dev is None:
        print(f"\njax section skipped: {why}")
        return {"skipped": why}, {}
    from _jax_bench import jax_section

    if rows < 60000:
        rows = max(BATCH, rows - rows % BATCH)
        (X, y), name = synthetic_mnist(rows), f"synthetic {rows}x784"
    else:
        X, y, name = mnist_data()
    wide = max(1024, min(WIDE_ROWS, rows - rows % 1024))
    Xw, yw = synthetic_mnist(wide)
    return jax_section(repeat, (lambda X, y, Ws: numpy_loop(X, y, *Ws), X, y.astype(np.int64), list(initial_weights()),
                                name), (wide_numpy_loop, Xw, yw, wide_weights(), f"synthetic {wide}x784"), spec)


# -- --gpu-epoch: the GPU's MNIST epoch against PyTorch CUDA eager (scripts/gpu_check.sh) ------------
GPU_REF = "PyTorch CUDA eager, manual gradients"
CPU_REF = "hand-written NumPy (reference on the cpu)"
TARGET_MS, TARGET_RATIO = 25.0, 1 / 3


def synthetic_mnist(rows=60000):
    """Data of MNIST's shape and about its sparsity and mean (0.095 vs 0.13), with a learnable label.

    The data does not travel to a lent GPU machine; uniform noise instead would not train at lr 0.2
    (the loss stays at log 10), which makes a poor check of the weights.
    """
    rng = np.random.default_rng(0)
    X = rng.random((rows, 784), dtype=np.float32)
    X *= rng.random((rows, 784), dtype=np.float32) < 0.19
    return X, X[:, :10].argmax(axis=1).astype(np.int64)


def gpu_epoch(spec, repeat, rows, json_path, use_torch=True):
    """One MNIST-shaped epoch per variant, interleaved: portablenn's graph, fast and generic kernels, a
    hand-written CuPy loop, PyTorch CUDA eager (manual gradients; the reference) and autograd.

    Prints the table and the targets (graph epoch <= 25 ms and <= 1/3 of PyTorch CUDA eager, by the
    median and the paired median ratio); returns 1 if a variant failed, 2 if ``spec`` is unusable.
    """
    dev, why = backend.probe(spec)
    if dev is None:
        print(why)
        return 2
    on_gpu = dev.library == "cupy"
    torch, torch_why = None, "PyTorch is not installed"
    if not use_torch:
        torch_why = "--no-torch"
    else:
        try:
            import torch
            torch.backends.cuda.matmul.allow_tf32 = False  # full FP32 GEMMs, as portablenn's and CuPy's
            torch.backends.cudnn.allow_tf32 = False
        except Exception as exc:  # ImportError, or a broken install
            torch, torch_why = None, f"PyTorch does not import ({one_line(exc)})"
    if torch is not None and not on_gpu:
        torch_why = f"needs a GPU (this run is on {dev.name})"
    elif torch is not None and not torch.cuda.is_available():
        torch_why = f"PyTorch {torch.__version__} sees no CUDA GPU"
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": dev.name, "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": getattr(torch, "__version__", None)}
    if on_gpu:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(dev.native.id)
        info.update(cupy=cupy.__version__, gpu=props["name"].decode(),
                    cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(), tf32=os.environ.get("CUPY_TF32", "off"))
    print("setup: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    X, y = synthetic_mnist(rows)
    W1, W2 = initial_weights()
    ref = numpy_loop(X, y, W1, W2)
    variants, failed, skipped = {}, {}, {}
    add(variants, failed, "portablenn graph", lambda: portablenn_fit(spec, X, y, W1, W2, graph=True))
    add(variants, failed, "portablenn fast", lambda: portablenn_fit(spec, X, y, W1, W2))
    add(variants, failed, "portablenn generic", lambda: portablenn_fit(spec, X, y, W1, W2, kernels="generic"))
    if on_gpu:
        def cupy_loop():
            import cupy
            import array_api_compat.cupy as cpx
            Xc, yc = cupy.asarray(X), cupy.asarray(y)
            return lambda: xp_loop(cpx, Xc, yc, W1, W2, dev.synchronize)
        add(variants, failed, "hand-written CuPy", cupy_loop)
    else:
        skipped["hand-written CuPy"] = f"needs CuPy on a GPU (this run is on {dev.name})"
        variants[CPU_REF] = lambda: numpy_loop(X, y, W1, W2)
    if torch is not None and on_gpu and torch.cuda.is_available():
        try:
            Xg, yg, W1g, W2g = (torch.from_numpy(a).cuda() for a in (X, y, W1, W2))
            sync = torch.cuda.synchronize
            variants[GPU_REF] = lambda: torch_manual(torch, Xg, yg, W1g, W2g, sync)
            variants["PyTorch CUDA autograd"] = lambda: torch_autograd(torch, Xg, yg, W1g, W2g, sync)
        except Exception as exc:
            failed[GPU_REF] = failed["PyTorch CUDA autograd"] = f"set-up raised {one_line(exc)}"
    else:
        skipped[GPU_REF] = skipped["PyTorch CUDA autograd"] = torch_why

    check = weight_check(variants, failed, ref)
    print("max |W - W_ref| / max |W_ref| after one epoch, against the NumPy loop on the cpu: "
          + ", ".join(f"{k}: {v:.1e}" for k, v in check.items()))
    times = interleave(variants, repeat, failed)
    reference = GPU_REF if GPU_REF in times else CPU_REF if CPU_REF in times else None
    data = f"synthetic {rows}x784 float32"
    rows_out = table(f"MNIST epoch on {dev.name} ({data}, 784-100-10 no bias, batch 100, in-order SGD lr {LR}, "
                     f"TF32 off), {repeat} interleaved rounds; ratios to {reference or 'nothing timed'}",
                     times, reference, failed=failed, skipped=skipped)
    for row in rows_out:
        if row["status"] == "ok":
            row.update(min_ms=row["min"] * 1e3, median_ms=row["median"] * 1e3, max_rel_diff=check.get(row["variant"]),
                       times_ms=[t * 1e3 for t in times[row["variant"]]])

    steady = {}  # an epoch inside a longer fit: without the per-fit set-up (data check, graph recording)
    for name in ("portablenn graph", "portablenn fast"):
        if name in times:
            try:
                variants[name](epochs=3)
                steady[name] = [s * 1e3 for s in variants[name].history["seconds"]]
                print(f"{name}: epochs 1-3 of one 3-epoch fit: " + ", ".join(f"{s:.2f} ms" for s in steady[name]))
            except Exception as exc:
                print(f"{name}: a 3-epoch fit raised {one_line(exc)}")

    targets = []
    graph = times.get("portablenn graph")
    for name, value, limit, unit in (
            (f"graph epoch <= {TARGET_MS:g} ms (median)", graph and statistics.median(graph) * 1e3, TARGET_MS, " ms"),
            ("graph epoch <= 1/3 of PyTorch CUDA eager (paired median ratio)",
             next((r["paired_ratio"] for r in rows_out if r["variant"] == "portablenn graph" and reference == GPU_REF),
                  None), TARGET_RATIO, "x")):
        if not on_gpu:
            status = "n/a (not a GPU run)"
        elif value is None:
            status = "NOT MET (not measured: " + (failed.get("portablenn graph") or failed.get(GPU_REF)
                                                 or skipped.get(GPU_REF) or "?") + ")"
        else:
            status = f"{'MET' if value <= limit else 'NOT MET'} ({value:.2f}{unit})"
        targets.append({"name": name, "status": status.split(" (")[0], "value": value, "text": status})
        print(f"target: {name}: {status}")
    if on_gpu:
        import cupy
        info["gpu_pool_mib"] = cupy.get_default_memory_pool().total_bytes() / 2**20
        print(f"GPU memory pool: {info['gpu_pool_mib']:.0f} MiB")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"info": info, "reference": reference, "rows": rows_out, "targets": targets,
                       "steady_state_ms": steady, "max_rel_diff": check}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
