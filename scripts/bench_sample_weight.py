"""What sample weights cost a fit: one MNIST epoch (784-100-10, batch 100, SGD, float32) with and without them.

    python scripts/bench_sample_weight.py                # cpu, 3 rounds
    python scripts/bench_sample_weight.py --device cuda --rounds 5

A weighted step runs the loss's own code (the fused softmax twin knows plain targets only) and multiplies the
target rows by the weights: the table says what that costs next to the unweighted fit, both timed in this one
process, interleaved, the order alternating, minima over the rounds. Synthetic data of MNIST's shape where MNIST
is absent (``$PORTABLENN_DATA`` or ../shared/data/mnist).
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import portablenn as pn  # noqa: E402
from portablenn.datasets import mnist  # noqa: E402


def data(data_dir):
    try:
        X, y = mnist(data_dir, "train", download=False)
        return X.reshape(len(X), -1).astype(np.float32), y, "MNIST training set"
    except Exception:
        rng = np.random.default_rng(0)
        return rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000), "synthetic, MNIST's shape"


def one_epoch(X, y, device, weights):
    model = pn.mlp([784, 100, 10], seed=0, bias=False)
    began = time.perf_counter()
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=100, shuffle=False, device=device,
           sample_weight=weights)
    return time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("PORTABLENN_DATA", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")))
    args = parser.parse_args(argv)
    X, y, source = data(args.data_dir)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    variants = {"unweighted": None, "weighted": weights}
    one_epoch(X[:1000], y[:1000], args.device, None)  # warm-up: the device, its kernels
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            times[name].append(one_epoch(X, y, args.device, variants[name]))
    print(f"{time.strftime('%Y-%m-%d')} | {platform.machine()}, {os.cpu_count()} CPUs | numpy {np.__version__} | "
          f"{args.device} | {source} | {args.rounds} rounds, minima")
    for name, ts in times.items():
        print(f"  {name:<12} {min(ts):6.2f} s   (rounds: {', '.join(f'{t:.2f}' for t in ts)})")
    ratios = [w / u for w, u in zip(times["weighted"], times["unweighted"])]
    print(f"  weighted / unweighted: {min(times['weighted']) / min(times['unweighted']):.2f}x of the minima "
          f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
