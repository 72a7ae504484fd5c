"""scikit-learn's MLPs against portablenn's, side by side, on the CPU: the datasets scikit-learn ships.

    python scripts/compare_sklearn.py                    # 3 rounds, Adam and SGD, prints a Markdown table
    python scripts/compare_sklearn.py --rounds 5 --solvers adam --epochs 200
    python scripts/compare_sklearn.py --dtype float64     # portablenn in scikit-learn's float64

For each dataset (digits, breast cancer and wine: classification, scored by test accuracy; diabetes:
regression, scored by test R^2) the rows are split 75/25 (stratified for classification, seed 0), the
features standardised with the training rows' mean and deviation (and diabetes' target too: R^2 does not
change under that affine map, and both MLPs train on a unit-scale target). Then
``sklearn.neural_network.MLPClassifier``/``MLPRegressor`` and ``portablenn.sklearn``'s estimator of the same
name are fitted with the same parameters: the network (``--hidden``), the solver, the learning rate
(Adam 1e-3; SGD 0.01 with Nesterov momentum 0.9), batches of ``min(200, n)``, ``random_state=0``, and
exactly ``--epochs`` epochs (``n_iter_no_change`` is set to the epochs, so neither stops early and both do
the same work). portablenn trains on ``device="cpu"`` (NumPy) in float32, its default (``--dtype``);
scikit-learn in float64, the dtype of its input. Both start from scikit-learn's initialisation, drawn from different
random streams.

Wall time covers ``fit`` alone (the data already prepared), the minimum over ``--rounds`` rounds; within a
round the two estimators alternate which goes first, from round to round and from dataset to dataset.
The scores are those of round 1 (each estimator repeats its own result exactly from its seed).
"""
import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the working tree's package

from sklearn import __version__ as sklearn_version  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import portablenn  # noqa: E402
from portablenn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

DATASETS = {"digits": (load_digits, "classification"), "breast cancer": (load_breast_cancer, "classification"),
            "wine": (load_wine, "classification"), "diabetes": (load_diabetes, "regression")}
SOLVERS = {"adam": dict(solver="adam", learning_rate_init=1e-3),
           "sgd": dict(solver="sgd", learning_rate_init=0.01, momentum=0.9, nesterovs_momentum=True)}


def prepare(name):
    """``(X_train, X_test, y_train, y_test, task)`` standardised as the module docstring says."""
    load, task = DATASETS[name]
    X, y = load(return_X_y=True)
    if task == "regression":
        y = (y - y.mean()) / y.std()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0,
                                                        stratify=y if task == "classification" else None)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test, task


def timed_fit(make, X, y):
    """``(fitted estimator, seconds of fit)``."""
    estimator = make()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)
    return estimator, time.perf_counter() - began


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hidden", default="64", help="hidden layer sizes, comma-separated (default 64)")
    parser.add_argument("--solvers", default="adam,sgd", help="comma-separated: adam, sgd")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="portablenn's dtype")
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    solvers = args.solvers.split(",")
    data = {name: prepare(name) for name in DATASETS}
    results = {}  # (dataset, solver) -> {"sklearn"/"portablenn": [score, epochs, [seconds...]]}
    for round_ in range(args.rounds):
        for d, name in enumerate(DATASETS):
            X_train, X_test, y_train, y_test, task = data[name]
            for solver in solvers:
                params = dict(hidden_layer_sizes=hidden, max_iter=args.epochs, n_iter_no_change=args.epochs,
                              random_state=0, **SOLVERS[solver])
                sides = {"sklearn": lambda: (SkClassifier if task == "classification" else SkRegressor)(**params),
                         "portablenn": lambda: (MLPClassifier if task == "classification" else MLPRegressor)(
                             **params, device="cpu", dtype=args.dtype)}
                order = list(sides) if (round_ + d) % 2 == 0 else list(sides)[::-1]
                cell = results.setdefault((name, solver), {})
                for side in order:
                    estimator, seconds = timed_fit(sides[side], X_train, y_train)
                    if side not in cell:
                        cell[side] = [estimator.score(X_test, y_test), estimator.n_iter_, []]
                    cell[side][2].append(seconds)
            print(f"round {round_ + 1}/{args.rounds}: {name} done", file=sys.stderr, flush=True)

    print(f"scikit-learn {sklearn_version} against portablenn {portablenn.__version__} (NumPy {np.__version__}, "
          f"Python {platform.python_version()}), {os.cpu_count()} CPUs ({cpu_model()}); network "
          f"{'-'.join(map(str, hidden))} hidden, {args.epochs} epochs, portablenn in {args.dtype}, min over "
          f"{args.rounds} rounds\n")
    print("| dataset | rows train/test x features | solver | metric | scikit-learn | portablenn "
          "| scikit-learn s | portablenn s | speed-up |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for (name, solver), cell in results.items():
        X_train, X_test, _, _, task = data[name]
        (sk_score, sk_epochs, sk_times), (pn_score, pn_epochs, pn_times) = cell["sklearn"], cell["portablenn"]
        assert sk_epochs == pn_epochs == args.epochs, (name, solver, sk_epochs, pn_epochs)
        metric = "accuracy" if task == "classification" else "R^2"
        print(f"| {name} | {len(X_train)}/{len(X_test)} x {X_train.shape[1]} | {solver} | {metric} "
              f"| {sk_score:.3f} | {pn_score:.3f} | {min(sk_times):.3f} | {min(pn_times):.3f} "
              f"| {min(sk_times) / min(pn_times):.1f}x |")


if __name__ == "__main__":
    main()
