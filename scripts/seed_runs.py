"""The issue's seed runs whose figures docs/benchmarks.md records: rerun them and compare.

    python scripts/seed_runs.py [--data-dir DIR] [--epochs 15]

MNIST 784-256-256-10 with dropout 0.2 between the hidden layers, AdamW (lr 1e-3, weight decay 0.01 on the
weight matrices), batch 128, a cosine schedule with one epoch of linear warmup, float32 on the CPU: the
test error after every epoch (evaluated in eval mode, so without dropout) and the wall time. Needs the
four MNIST files ($PORTABLENN_DATA or ../shared/data/mnist). tests/test_reproductions.py asserts the end
figure (under 2%) when PORTABLENN_SEED_RUNS=1.
"""
import argparse
import os
import time
from pathlib import Path

import portablenn as pn
from portablenn.datasets import mnist


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("PORTABLENN_DATA") or str(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--data-dir", default=default)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    X, y = mnist(args.data_dir, split="train")
    Xt, yt = mnist(args.data_dir, split="test")
    model = pn.mlp([784, 256, 256, 10], dropout=0.2, seed=0)
    began = time.perf_counter()
    print("| epoch | train loss | test error | seconds |")
    print("|---|---|---|---|")

    def report(record):
        error = pn.evaluate(model, Xt, yt)[1]
        print(f"| {record['epoch']} | {record['loss']:.4f} | {100 * error:.2f}% | {time.perf_counter() - began:.0f} |",
              flush=True)

    pn.fit(model, X, y, optimizer=pn.AdamW(1e-3, weight_decay=0.01), epochs=args.epochs, batch_size=128,
           schedule=pn.schedules.CosineWarmup(warmup=1), seed=0, device=args.device, callback=report)


if __name__ == "__main__":
    main()
