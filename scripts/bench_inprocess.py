"""Old code against new in ONE process: a git revision's package, imported as ``portablenn_old``, and the working
tree's, interleaved in alternating order, minima and paired medians over rounds.

``bench_compare.py`` runs each side in its own subprocesses; on these shared 2-core machines that adds a bias
of its own (its HEAD-against-HEAD control came out 1.06x on the MNIST epoch). Here both sides share the
process, its memory and its CPU state, so identical code measures 1.00x to within a few percent.

    python scripts/bench_inprocess.py 0bf435d --rounds 15

Workloads (public API only, present in both): the MNIST epoch (784-100-10, batch 100, float32, SGD 0.2, no
shuffle; real MNIST from $PORTABLENN_DATA or ../shared/data/mnist when present, else synthetic), the CS231n
spiral full-batch step (2-100-3, float64, SGD 1.0, L2 1e-3, 1000 steps), the wide regime (784-1024-1024-10,
batch 1024, float32, 8 steps). Both sides must end with identical weights; the script says so.
"""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _old_package(rev, where):
    """The package at ``rev`` extracted as ``where/portablenn_old`` (its imports are relative, so it works so)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "portablenn"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    (where / "portablenn").rename(where / "portablenn_old")


def _mnist():
    for root in (os.environ.get("PORTABLENN_DATA"), REPO.parent / "shared" / "data" / "mnist"):
        if root and Path(root).is_dir():
            try:
                from portablenn.datasets.mnist import mnist

                X, y = mnist(str(root), "train", download=False)[:2]
                return np.asarray(X, np.float32), np.asarray(y), f"MNIST train from {root}"
            except Exception:
                pass
    rng = np.random.default_rng(0)
    return rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000), "synthetic 60000x784"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="the old revision (default HEAD)")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="portablenn-old-"))
    try:
        _old_package(args.rev, tmp)
        sys.path.insert(0, str(tmp))
        sys.path.insert(0, str(REPO))
        import portablenn as new
        import portablenn_old as old

        X, y, data = _mnist()
        rng = np.random.default_rng(0)
        W1 = (rng.standard_normal((784, 100)) / np.sqrt(100)).astype(np.float32)
        W2 = (rng.standard_normal((100, 10)) / np.sqrt(10)).astype(np.float32)
        spiral = np.random.default_rng(1).standard_normal((300, 2))
        spiral_y = np.arange(300) % 3
        Xw = np.random.default_rng(2).standard_normal((8192, 784)).astype(np.float32)
        yw = np.arange(8192) % 10

        def mnist_epoch(pn):
            model = pn.mlp([784, 100, 10], bias=False)
            model.load_state_dict({"0.weight": W1, "2.weight": W2})
            began = time.perf_counter()
            pn.fit(model, X, y, optimizer=pn.SGD(0.2), epochs=1, batch_size=100, shuffle=False)
            return time.perf_counter() - began, model.state_dict()

        def spiral_step(pn, steps=1000):
            model = pn.mlp([2, 100, 3], init="small", dtype="float64", seed=0)
            began = time.perf_counter()
            pn.fit(model, spiral, spiral_y, optimizer=pn.SGD(1.0), epochs=steps, batch_size=None, l2=1e-3,
                   log_every=steps)
            return (time.perf_counter() - began) / steps, model.state_dict()

        def wide_step(pn):
            model = pn.mlp([784, 1024, 1024, 10], bias=False, seed=0)
            began = time.perf_counter()
            pn.fit(model, Xw, yw, optimizer=pn.SGD(0.05), epochs=1, batch_size=1024, shuffle=False)
            return (time.perf_counter() - began) / 8, model.state_dict()

        workloads = [("MNIST epoch (784-100-10, batch 100, f32)", "ms/epoch", 1e3, mnist_epoch),
                     ("spiral step (2-100-3, 300 pts, f64)", "us/step", 1e6, spiral_step),
                     ("wide step (784-1024-1024-10, batch 1024, f32)", "ms/step", 1e3, wide_step)]
        times = {(name, side): [] for name, *_ in workloads for side in ("old", "new")}
        same = {name: True for name, *_ in workloads}
        for _, _, _, run in workloads:  # warm-up: imports, BLAS threads, first allocations
            run(old), run(new)
        for r in range(args.rounds):
            order = [("old", old), ("new", new)] if r % 2 == 0 else [("new", new), ("old", old)]
            for name, _, _, run in workloads:
                states = {}
                for side, pn in order:
                    seconds, states[side] = run(pn)
                    times[(name, side)].append(seconds)
                same[name] &= all(np.array_equal(states["old"][k], states["new"][k]) for k in states["old"])
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)

        print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"NumPy {np.__version__}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"old: {args.rev}; new: the working tree of {REPO}; data: {data}; {args.rounds} rounds in one process")
        print("| workload | unit | old min | new min | new/old (min) | new/old (paired median) | same weights |")
        print("|---|---|---:|---:|---:|---:|---|")
        for name, unit, scale, _ in workloads:
            o, n = times[(name, "old")], times[(name, "new")]
            paired = sorted(b / a for a, b in zip(o, n))[len(o) // 2]
            print(f"| {name} | {unit} | {min(o) * scale:.2f} | {min(n) * scale:.2f} | {min(n) / min(o):.3f}x | "
                  f"{paired:.3f}x | {'yes' if same[name] else 'NO'} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
