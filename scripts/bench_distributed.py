"""Distributed training benchmark: MNIST epoch time against the number of ranks (strong and weak scaling).

The CMU 10-714 setup (784-100-10, no bias, plain SGD lr 0.2, float32, in-order minibatches), on
MNIST from ``portablenn.datasets.mnist`` or, where it is not found, synthetic data of the same shape.

* strong scaling: a fixed GLOBAL batch (``--batch``, default 100) split over the ranks: the same
  training as one process, so the same number of steps per epoch;
* weak scaling: a fixed batch PER RANK (``--batch``): the global batch grows with the ranks and an
  epoch has ``ranks`` times fewer steps.

For each point it reports the epoch time (the slowest rank, best of ``--epochs`` epochs), the time
per step, the samples per second, the allreduce payload per step (one flat buffer of all
gradients), and the communication share: time spent inside the gradient allreduce (including
waiting for slower ranks and, for non-NumPy devices, the host copies) over the epoch time. The
``single process`` row is ``fit`` without ``comm`` (plain SGD fused into backward), the baseline.

    python scripts/bench_distributed.py                         # 1, 2, 3 ranks on the CPU here
    python scripts/bench_distributed.py --ranks 1 2 4 8 --json out.json
    python scripts/bench_distributed.py --device cuda --comm nccl --ranks 1 2 4   # one rank per GPU

Each point is its own ``mpiexec -n K`` launch of this script in ``--worker`` mode. BLAS threads per
rank are set to ``max(1, cores // ranks)`` (``--threads`` overrides) so ranks do not oversubscribe
the cores with BLAS threads.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
HIDDEN, LR = 100, 0.2
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def mnist_data(limit=None):
    from portablenn import datasets

    try:
        X, y = datasets.mnist(split="train")
        name = "MNIST train"
    except Exception:
        rng = np.random.default_rng(0)
        X = rng.random((60000, 784), dtype=np.float32)
        y = X[:, :10].argmax(axis=1).astype(np.int64)
        name = "synthetic 60000x784 (MNIST not found)"
    if limit:
        X, y = X[:limit], y[:limit]
    return np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64), f"{name} ({X.shape[0]} rows)"


def initial_state():
    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((784, HIDDEN)) / np.sqrt(HIDDEN)
    W2 = rng.standard_normal((HIDDEN, 10)) / np.sqrt(10)
    return {"0.weight": W1.astype(np.float32), "2.weight": W2.astype(np.float32)}


# -- one rank ------------------------------------------------------------------------------------
def worker(args):
    import portablenn as pn

    comm = None
    if not args.single:
        from portablenn.distributed import make_communicator

        comm = make_communicator(args.comm)
    rank = 0 if comm is None else comm.rank
    size = 1 if comm is None else comm.size
    X, y, data_name = mnist_data(args.limit)
    device = args.device if comm is None else comm.device(args.device)
    dev = pn.device(device)
    X, y = dev.asarray(X), dev.asarray(y)  # resident on the device once, as in a real run: not timed
    model = pn.mlp([784, HIDDEN, 10], bias=False)
    model.load_state_dict(initial_state())
    global_batch = args.batch * size if args.mode == "weak" else args.batch
    seconds, allreduce_seconds, calls, nbytes = [], [], [], []
    for _ in range(args.epochs):  # one fit per epoch: each is timed alone, after the previous one
        if comm is not None:
            comm.barrier()
            comm.reset_stats()
        began = time.perf_counter()
        pn.fit(model, X, y, optimizer=pn.SGD(LR), epochs=1, batch_size=global_batch, shuffle=False,
               device=device, comm=comm)
        model.device.synchronize()
        seconds.append(time.perf_counter() - began)
        if comm is not None:
            stats = dict(comm.stats)
            allreduce_seconds.append(stats["allreduce_seconds"])
            calls.append(stats["allreduce_calls"])
            nbytes.append(stats["allreduce_bytes"])
    steps = -(-X.shape[0] // global_batch)
    mine = {"rank": rank, "seconds": seconds, "allreduce_seconds": allreduce_seconds, "calls": calls,
            "bytes": nbytes}
    everyone = [mine] if comm is None else comm.allgather_object(mine)
    if rank == 0:
        # epoch time: the slowest rank, best epoch; communication share: mean over ranks in that epoch
        epoch_times = [max(r["seconds"][e] for r in everyone) for e in range(args.epochs)]
        best = int(np.argmin(epoch_times))
        result = {"ranks": size, "mode": "single" if comm is None else args.mode, "data": data_name,
                  "device": str(model.device.name), "global_batch": global_batch,
                  "rank_batch": global_batch / size, "steps": steps, "epoch_seconds": epoch_times[best],
                  "epoch_seconds_all": epoch_times, "transport": None if comm is None else comm.transport(model.device)}
        if comm is not None:
            params = sum(int(np.prod(v.shape)) for v in model.state_dict().values())
            result["allreduce_bytes_per_step"] = params * np.dtype(model.dtype).itemsize  # the flat gradient
            result["allreduce_calls"] = everyone[0]["calls"][best]  # steps + 1 (the epoch's metrics)
            result["comm_share"] = float(np.mean([r["allreduce_seconds"][best] / r["seconds"][best] for r in everyone]))
        with open(args.result, "w") as f:
            json.dump(result, f)


# -- the driver ----------------------------------------------------------------------------------
def mpiexec_command():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if exe is None:
        sys.exit("no mpiexec: pip install 'portablenn[mpi]'")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL).stdout.lower()
    return [exe] + (["--oversubscribe"] if "open mpi" in version or "openrte" in version else [])


def run_point(args, ranks, mode, tmp):
    result = os.path.join(tmp, f"{mode}-{ranks}.json")
    threads = args.threads or max(1, (os.cpu_count() or 1) // ranks)
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--batch", str(args.batch),
               "--epochs", str(args.epochs), "--device", args.device, "--comm", args.comm, "--result", result]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if mode == "single":
        command = command + ["--single"]
    else:
        command = mpiexec_command() + ["-n", str(ranks)] + command
    proc = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(result) as f:
        out = json.load(f)
    out["blas_threads"] = threads
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name():
    try:
        import cupy

        return f"{cupy.cuda.runtime.getDeviceCount()} x " + \
            cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        return "none"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--modes", nargs="+", default=["strong", "weak"], choices=["strong", "weak"])
    parser.add_argument("--batch", type=int, default=100, help="global batch (strong) / per-rank batch (weak)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per launch; the best one is reported")
    parser.add_argument("--repeat", type=int, default=1, help="launches per point, in rounds; the best is reported")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per rank by local rank), ...")
    parser.add_argument("--comm", default="auto", choices=["auto", "mpi", "nccl"])
    parser.add_argument("--threads", type=int, default=0, help="BLAS threads per rank (default cores // ranks)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training rows")
    parser.add_argument("--json", help="also write the results here")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="strong", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    import tempfile

    import portablenn as pn

    info = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu_name(),
            "python": platform.python_version(), "numpy": np.__version__, "portablenn": pn.__version__}
    try:
        from mpi4py import MPI  # noqa: F401  (initialises a singleton MPI in the driver: harmless)

        info["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
        import mpi4py

        info["mpi4py"] = mpi4py.__version__
    except Exception as exc:
        info["mpi"] = f"unavailable ({exc})"
    print("setup: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    points = [(1, "single")] + [(ranks, mode) for mode in args.modes for ranks in args.ranks]
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeat):  # rounds over all points: background load hits them alike
            for ranks, mode in points:
                row = run_point(args, ranks, mode, tmp)
                if (ranks, mode) not in best or row["epoch_seconds"] < best[(ranks, mode)]["epoch_seconds"]:
                    best[(ranks, mode)] = row
                print(f"  round {repeat + 1}: {mode} {ranks} ranks: {row['epoch_seconds']:.3f} s/epoch", flush=True)
    rows = [best[p] for p in points]
    base = rows[0]["epoch_seconds"]
    print(f"\nMNIST epoch ({rows[0]['data']}), 784-100-10 float32 plain SGD, device {args.device}, comm {args.comm}, "
          f"best of {args.repeat} x {args.epochs} epochs")
    print("| mode | ranks | global batch | batch/rank | steps/epoch | allreduces/epoch | epoch s | ms/step "
          "| samples/s | speed-up | allreduce bytes/step | comm share | transport | BLAS threads/rank |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        n = int(r["data"].split("(")[-1].split()[0])
        distributed = "comm_share" in r
        cells = [r["mode"], r["ranks"], r["global_batch"], f"{r['rank_batch']:g}", r["steps"],
                 r.get("allreduce_calls", "-"), f"{r['epoch_seconds']:.2f}",
                 f"{1e3 * r['epoch_seconds'] / r['steps']:.2f}", f"{n / r['epoch_seconds']:,.0f}",
                 f"{base / r['epoch_seconds']:.2f}x",
                 f"{r['allreduce_bytes_per_step']:,}" if distributed else "-",
                 f"{100 * r['comm_share']:.0f}%" if distributed else "-",
                 r["transport"] or "none (fused SGD)", r["blas_threads"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": info, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
