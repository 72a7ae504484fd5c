"""One MPI rank of the distributed tests: ``mpiexec -n K python tests/_mpi_worker.py SPEC.json OUTDIR``.

SPEC is ``{"runs": [config, ...], "die": {"rank", "epoch", "step"} or null}``; for every config each
rank trains with ``fit(..., comm=make_communicator("mpi"))`` (or ``reducer=DataParallel(comm)`` for a
config with ``via_reducer``) and writes ``OUTDIR/<name>.rank<r>.npz``
(final state dict) and ``.json`` (history without timings, communicator facts). ``build`` and
``problem`` are imported by tests/test_distributed.py for the single-process reference, so both sides
start from the same data, weights and optimizer.

On CommunicationError a rank prints ``rank R: CommunicationError: ...`` on stderr and exits 1 (without
MPI_Finalize); on InputError ``rank R: InputError: ...`` and exits 2.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import portablenn as pn  # noqa: E402

DEFAULTS = {"device": "numpy", "dtype": "float64", "optimizer": "sgd", "shuffle": True, "epochs": 4,
            "initial_epoch": 0, "batch": 32, "l2": 1e-3, "n": 130, "n_val": 40, "seed": 5,
            "resume_from": None, "resume_rank0_only": False, "save_to": None, "batch_on_rank": None, "lr": None,
            "via_reducer": False, "dropout": 0.0}


def config(**kwargs):
    unknown = set(kwargs) - set(DEFAULTS) - {"name"}
    assert not unknown, unknown
    return dict(DEFAULTS, **kwargs)


def problem(cfg):
    """``(X, y, X_val, y_val)``: a small learnable 6-feature, 4-class problem (float64 host arrays)."""
    rng = np.random.default_rng(cfg["seed"])
    n, n_val = cfg["n"], cfg["n_val"]
    X = rng.standard_normal((n + n_val, 6))
    teacher = rng.standard_normal((6, 4))
    y = np.argmax(X @ teacher + 0.3 * rng.standard_normal((n + n_val, 4)), axis=1).astype(np.int64)
    return X[:n], y[:n], X[n:], y[n:]


def build(cfg, rank=0):
    """A fresh ``(model, optimizer)`` for ``cfg``; resumed from ``cfg["resume_from"]`` when given (with
    ``cfg["resume_rank0_only"]`` on rank 0 alone: the others start afresh, optimizer state included).

    Ranks other than 0 start from different weights on purpose: fit must broadcast rank 0's.
    """
    model = pn.mlp([6, 16, 4], dtype=cfg["dtype"], seed=cfg["seed"] + 1000 * rank, dropout=cfg["dropout"])
    if cfg["dropout"]:  # the same Dropout seeds on every rank (as the CLI's --seed gives), other weights
        weights = model.state_dict()
        model = pn.mlp([6, 16, 4], dtype=cfg["dtype"], seed=cfg["seed"], dropout=cfg["dropout"])
        model.load_state_dict(weights)
    lr = cfg["lr"]
    optimizer = {"sgd": lambda: pn.SGD(lr or 0.1), "momentum": lambda: pn.SGD(lr or 0.05, momentum=0.9),
                 "nesterov": lambda: pn.SGD(lr or 0.05, momentum=0.9, nesterov=True),
                 "adam": lambda: pn.Adam(lr or 0.01)}[cfg["optimizer"]]()
    if cfg["resume_from"] and (rank == 0 or not cfg["resume_rank0_only"]):
        with np.load(cfg["resume_from"]) as saved:
            model.load_state_dict({k[len("param/"):]: saved[k] for k in saved.files if k.startswith("param/")})
            optimizer.bind(model, cfg["l2"])  # state on the model's (host) device; fit moves it
            state = {}
            for k in sorted(f for f in saved.files if f.startswith("opt/")):
                key = k.split("/")[1]
                state.setdefault(key, []).append(np.array(saved[k]))
            optimizer.state = {key: tuple(buffers) for key, buffers in state.items()}
            optimizer.steps = int(saved["steps"])
    return model, optimizer


def save(path, model, optimizer):
    """Model and optimizer state (what a checkpoint holds) as one .npz."""
    dev = model.device
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    for key, buffers in optimizer.state.items():
        for i, b in enumerate(buffers):
            arrays[f"opt/{key}/{i}"] = np.asarray(dev.to_numpy(b))
    arrays["steps"] = np.array(optimizer.steps)
    np.savez(path, **arrays)


def fit_kwargs(cfg):
    return dict(epochs=cfg["epochs"], initial_epoch=cfg["initial_epoch"], batch_size=cfg["batch"],
                shuffle=cfg["shuffle"], l2=cfg["l2"], device=cfg["device"], seed=cfg["seed"], log_every=2)


def history_records(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def report(line):
    """One line on stderr in one write (the launcher interleaves the ranks' outputs)."""
    sys.stderr.flush()
    os.write(2, (line + "\n").encode())


def main():
    spec_path, out = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    from portablenn.distributed import CommunicationError, guard, make_communicator
    from portablenn.train import DivergenceError

    comm = make_communicator(os.environ.get("PORTABLENN_TEST_COMM_KIND", "mpi"))
    rank = comm.rank
    die = spec.get("die")

    def on_step(epoch, step, steps):
        if die and rank == die["rank"] and epoch == die["epoch"] and step == die["step"]:
            if die.get("how", "exit") == "exit":
                os._exit(7)  # abruptly: no message, no MPI_Finalize
            raise RuntimeError(f"rank {rank} fails on its own")  # leaves guard(): exits without MPI_Finalize

    with guard():  # an error leaving it ends this rank without MPI_Finalize (which would wait for the others)
        try:
            run(spec, out, comm, on_step)
        except CommunicationError as exc:
            report(f"rank {rank}: CommunicationError: {exc}")
            sys.exit(1)
        except pn.InputError as exc:
            report(f"rank {rank}: InputError: {exc}")
            # the only InputError these runs meet is the ranks' agreement check, which every rank fails
            # together: wait until all have reported (as for divergence below), or the first to exit makes
            # mpiexec kill the others mid-report (seen under load: rank 1's line missing)
            comm.barrier(what="the refusal report")
            sys.exit(2)
        except DivergenceError as exc:
            report(f"rank {rank}: DivergenceError: {exc}")
            # every rank diverges at the same step (the losses are summed over the ranks): wait until all have
            # reported, as the CLI does, or the first to exit makes mpiexec kill the others mid-report
            comm.barrier(what="the divergence report")
            sys.exit(3)


def run(spec, out, comm, on_step):
    from portablenn.distributed import DataParallel

    rank = comm.rank
    with open(os.path.join(out, f"any.rank{rank}.json"), "w") as f:  # collective decisions
        json.dump([comm.any(rank == comm.size - 1), comm.any(False)], f)
    for cfg in spec["runs"]:
        cfg = config(**cfg)
        X, y, Xv, yv = problem(cfg)
        model, optimizer = build(cfg, rank)
        kwargs = fit_kwargs(cfg)
        kwargs["device"] = comm.device(cfg["device"])  # "cuda": this rank's GPU
        if cfg["batch_on_rank"] and str(rank) in cfg["batch_on_rank"]:
            kwargs["batch_size"] = cfg["batch_on_rank"][str(rank)]
        parallel = {"reducer": DataParallel(comm)} if cfg["via_reducer"] else {"comm": comm}
        history = pn.fit(model, X, y, optimizer=optimizer, validation=(Xv, yv), on_step=on_step, **parallel,
                         **kwargs)
        np.savez(os.path.join(out, f"{cfg['name']}.rank{rank}.npz"), **model.state_dict())
        with open(os.path.join(out, f"{cfg['name']}.rank{rank}.json"), "w") as f:
            json.dump({"history": history_records(history), "size": comm.size,
                       "transport": comm.transport(model.device), "steps": optimizer.steps}, f)
        if cfg["save_to"] and rank == 0:
            save(cfg["save_to"], model, optimizer)


if __name__ == "__main__":
    main()
