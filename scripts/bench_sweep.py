"""A sweep as one stacked model against the same members trained one after another, side by side (issue #20).

    python scripts/bench_sweep.py                 # both workloads, 3 rounds, with scikit-learn's yardstick
    python scripts/bench_sweep.py --rounds 5 --only spiral
    python scripts/bench_sweep.py --no-sklearn
    python scripts/bench_sweep.py --stack-vs-one --device cuda --members 64   # the GPU figure (gpu_check.sh)
    python scripts/bench_sweep.py --compare /tmp/before   # also another tree's stacked fit, e.g. from
                                                          # `git archive HEAD portablenn | tar -x -C /tmp/before`

Workloads (16 members each: a 4 x 4 grid of learning rate and L2 strength, seed 0, float32, CPU):
  - spiral: 2-100-3 with biases, the CS231n spiral (300 points), full batch, 1000 steps
            (``portablenn.fit_stack`` once against 16 ``portablenn.fit``); issue target: stacked <= 0.25x
  - mnist:  784-100-10 without biases, batch 100, one epoch in order (60000 rows; synthetic data of that
            shape where MNIST is absent); issue target: stacked <= 0.7x
Each round times every variant once: the stacked fit, the 16 ordinary fits, member 0's fit alone and the
same fit with one hidden unit (the ``floor`` line: the share of a fit's time that grows with the hidden
layer, which stacking cannot save), and scikit-learn's
``GridSearchCV`` over ``MLPClassifier`` (``n_jobs=-1``, one predefined train/validation split, the same grid,
``solver="sgd"``, no momentum, the same epochs and batch, trained on four fifths of the rows), the order
rotating from round to round. The table shows the minima over the rounds (the least disturbed run of
each) and the ratio of the minima; the per-round ratios are printed too. Everything runs in this one process, with the metrics read once per
fit (``log_every`` = the epochs) on both sides.
"""
import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import portablenn as pn  # noqa: E402
from portablenn.datasets import mnist, spiral  # noqa: E402

MEMBERS = 16


def workloads(data_dir):
    X, y = spiral()
    grid = [(lr, l2) for lr in (0.3, 0.5, 1.0, 2.0) for l2 in (1e-4, 3e-4, 1e-3, 3e-3)]
    out = {"spiral": dict(X=X.astype("float32"), y=y, sizes=[2, 100, 3], bias=True, init="small", batch=None,
                          epochs=1000, shuffle=True, grid=grid, source="spiral, 300 points")}
    try:
        Xm, ym = mnist(data_dir, split="train", download=False)
        source = "MNIST training set"
    except Exception:  # absent here: the same shapes, synthetic
        rng = np.random.default_rng(0)
        Xm, ym = rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000)
        source = "synthetic 60000 x 784 (MNIST absent)"
    grid = [(lr, l2) for lr in (0.05, 0.1, 0.2, 0.4) for l2 in (0.0, 1e-4, 1e-3, 1e-2)]
    out["mnist"] = dict(X=Xm.astype("float32"), y=ym, sizes=[784, 100, 10], bias=False, init="cmu", batch=100,
                        epochs=1, shuffle=False, grid=grid, source=source)
    return out


def stacked(w):
    s = pn.stack_mlp(w["sizes"], [0] * MEMBERS, bias=w["bias"], init=w["init"])
    lrs, l2s = zip(*w["grid"])
    pn.fit_stack(s, w["X"], w["y"], lr=list(lrs), l2=list(l2s), epochs=w["epochs"], batch_size=w["batch"],
                 shuffle=w["shuffle"], log_every=w["epochs"])


def other_tree(root, name):
    """The stacked fit of the portablenn under ``root`` (an earlier version), timed in a fresh process."""
    import subprocess

    root = os.path.abspath(root)
    code = (f"import sys, time; sys.path.insert(0, {root!r}); import portablenn; "  # that tree's, before ours
            f"sys.path.insert(1, {os.path.dirname(os.path.abspath(__file__))!r}); import numpy as np, bench_sweep as b; "
            f"assert portablenn.__file__.startswith({root!r}), portablenn.__file__; "
            f"w = b.workloads({DATA_DIR[0]!r})[{name!r}]; "
            "t = time.perf_counter(); np.seterr(all='ignore'); b.stacked(w); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


DATA_DIR = [None]


def one_by_one(w):
    for lr, l2 in w["grid"]:
        model = pn.mlp(w["sizes"], seed=0, bias=w["bias"], init=w["init"])
        pn.fit(model, w["X"], w["y"], optimizer=pn.SGD(lr), l2=l2, epochs=w["epochs"], batch_size=w["batch"],
               shuffle=w["shuffle"], log_every=w["epochs"])


def one_fit(w, hidden=None):
    """Member 0 alone; with ``hidden`` units in place of the hidden layer's (1: almost no arithmetic left)."""
    sizes = w["sizes"] if hidden is None else [w["sizes"][0]] + [hidden] * (len(w["sizes"]) - 2) + [w["sizes"][-1]]
    lr, l2 = w["grid"][0]
    model = pn.mlp(sizes, seed=0, bias=w["bias"], init=w["init"])
    pn.fit(model, w["X"], w["y"], optimizer=pn.SGD(lr), l2=l2, epochs=w["epochs"], batch_size=w["batch"],
           shuffle=w["shuffle"], log_every=w["epochs"])


def floor_line(best):
    """What stacking can save at most: a fit's time less the same fit with one hidden unit is the work that grows
    with the hidden layer (its GEMMs and passes over the activations), which every member still does in a stack;
    only the rest (Python, dispatch, the minibatch read, per-step fixed work) is done once for all."""
    one, unit = best["one fit"], best["one fit, 1 hidden unit"]
    grows = max(one - unit, 0.0)
    bound = (MEMBERS * grows + unit) / (MEMBERS * one)
    return (f"  floor: one fit {one * 1e3:.0f} ms, of which {grows / one:.0%} grows with the hidden layer (the same "
            f"fit with 1 hidden unit: {unit * 1e3:.0f} ms); a stack that did that work at one model's speed "
            f"and nothing else would take {bound:.2f}x of one by one")


def sklearn_grid(w):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, PredefinedSplit
    from sklearn.neural_network import MLPClassifier

    n = len(w["y"])
    fold = np.full(n, -1)
    fold[np.random.default_rng(0).permutation(n)[: n // 5]] = 0  # one validation fold of a fifth
    lrs, l2s = zip(*w["grid"])
    estimator = MLPClassifier(hidden_layer_sizes=tuple(w["sizes"][1:-1]), solver="sgd", momentum=0.0,
                              batch_size=int((fold == -1).sum()) if w["batch"] is None else w["batch"],
                              max_iter=w["epochs"],
                              shuffle=w["shuffle"], tol=0.0, n_iter_no_change=w["epochs"] + 1, random_state=0)
    search = GridSearchCV(estimator, {"learning_rate_init": sorted(set(lrs)), "alpha": sorted(set(l2s))},
                          cv=PredefinedSplit(fold), n_jobs=-1, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(w["X"], w["y"])


def stack_vs_one(spec, members, rounds, rows):
    """One in-order epoch (784-100-10 without biases, batch 100, SGD, float32, synthetic rows of MNIST's shape)
    of a stack of ``members`` against one model, on ``spec``, the data resident there: the issue's GPU check
    (64 members should cost well under 8x one model's epoch). Prints the minima and their ratio."""
    rng = np.random.default_rng(0)
    X, y = rng.random((rows, 784), dtype=np.float32), rng.integers(0, 10, rows)
    dev = pn.device(spec)
    Xd, yd = dev.asarray(X), dev.asarray(y)
    lrs = [float(v) for v in np.geomspace(0.05, 0.4, members)]

    def stack():
        s = pn.stack_mlp([784, 100, 10], [0] * members, bias=False, init="cmu")
        pn.fit_stack(s, Xd, yd, lr=lrs, epochs=1, batch_size=100, shuffle=False, device=dev, log_every=1)
        dev.synchronize()

    def one():
        model = pn.mlp([784, 100, 10], seed=0, bias=False, init="cmu")
        pn.fit(model, Xd, yd, optimizer=pn.SGD(0.2), epochs=1, batch_size=100, shuffle=False, device=dev)
        dev.synchronize()

    variants, times = {f"stack of {members}": stack, "one model": one}, {}
    for fn in variants.values():  # warm-up: kernels, allocator, the self-test of a GPU's kernels
        fn()
    for r in range(rounds):
        for name in list(variants)[r % 2:] + list(variants)[:r % 2]:
            began = time.perf_counter()
            variants[name]()
            times.setdefault(name, []).append(time.perf_counter() - began)
    best = {name: min(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:14s} {best[name] * 1e3:9.1f} ms   (rounds: {', '.join(f'{v * 1e3:.1f}' for v in t)})")
    ratio = best[f"stack of {members}"] / best["one model"]
    print(f"stack-vs-one on {dev.name}: {members} members {ratio:.2f}x one model's epoch ({rows} rows, minima of "
          f"{rounds} rounds; target well under {members / 8:g}x)")
    return ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stack-vs-one", action="store_true", help="only: one epoch of a stack of --members against "
                        "one model on --device (the GPU check's figure)")
    parser.add_argument("--device", default="cpu", help="--stack-vs-one's device")
    parser.add_argument("--members", type=int, default=64, help="--stack-vs-one's stack size")
    parser.add_argument("--rows", type=int, default=60000, help="--stack-vs-one's rows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="spiral or mnist")
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--compare", metavar="DIR", help="also time the stacked fit of the portablenn under DIR "
                        "(in a fresh process each round: its time excludes that process's start)")
    parser.add_argument("--data-dir", default=os.environ.get("PORTABLENN_DATA", "/work/shared/data/mnist"))
    args = parser.parse_args(argv)
    if args.stack_vs_one:
        stack_vs_one(args.device, args.members, args.rounds, args.rows)
        return
    DATA_DIR[0] = args.data_dir
    variants = {"stacked": stacked, "one by one": one_by_one, "one fit": one_fit,
                "one fit, 1 hidden unit": lambda w: one_fit(w, hidden=1)}
    if args.compare:
        variants[f"stacked ({args.compare})"] = None
    if not args.no_sklearn:
        try:
            import sklearn  # noqa: F401
            variants["sklearn GridSearchCV"] = sklearn_grid
        except ImportError:
            print("scikit-learn is not installed: no yardstick")
    print(f"{time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs | "
          f"numpy {np.__version__} | {args.rounds} rounds, minima")
    for name, w in workloads(args.data_dir).items():
        if args.only and name != args.only:
            continue
        times = {v: [] for v in variants}
        names = list(variants)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            for v in order:
                if variants[v] is None:  # another tree's, timed inside its own process
                    times[v].append(other_tree(args.compare, name))
                    continue
                began = time.perf_counter()
                with np.errstate(all="ignore"):
                    variants[v](w)
                times[v].append(time.perf_counter() - began)
        best = {v: min(t) for v, t in times.items()}
        print(f"\n{name}: {MEMBERS} members {w['sizes']}, batch {w['batch'] or 'full'}, {w['epochs']} epoch(s), "
              f"{w['source']}")
        for v in names:
            print(f"  {v:22s} {best[v]:8.2f} s   (rounds: {', '.join(f'{t:.2f}' for t in times[v])})")
        ratios = [s / o for s, o in zip(times["stacked"], times["one by one"])]
        print(f"  stacked / one by one: {best['stacked'] / best['one by one']:.2f}x of the minima "
              f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
        print(floor_line(best))
        if args.compare:
            other = f"stacked ({args.compare})"
            ratios = [s / o for s, o in zip(times[other], times["one by one"])]
            print(f"  {other} / one by one: {best[other] / best['one by one']:.2f}x of the minima "
                  f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
        if "sklearn GridSearchCV" in best:
            print(f"  stacked / GridSearchCV: {best['stacked'] / best['sklearn GridSearchCV']:.2f}x")


if __name__ == "__main__":
    main()
