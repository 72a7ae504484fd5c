"""Mutation testing: does the suite catch the one-line bugs a developer really makes?

Each mutant is one textual change (a sign, a dropped scale, an off-by-one, a dropped check) to one
file of the package. It is applied alone to a throwaway copy of the repository, and the test
modules that could reach it run there (``pytest -x``, under a timeout). A mutant is *caught* when
they fail, *survives* when they pass. A surviving mutant either shows a blind spot of the suite or
is an equivalent change; the equivalent ones carry their reason in ``MUTANTS`` and are counted apart.

    python scripts/mutation.py                  # every mutant, 2 at a time; a table per module
    python scripts/mutation.py --jobs 1 --only optim    # the mutants whose id starts with "optim"
    python scripts/mutation.py --list           # the mutants, without running anything
    python scripts/mutation.py --json out.json  # also the results as JSON

The mutants' ``find`` text must occur exactly once in its file: a mutant whose text is gone (the
code changed) is reported as STALE, so the list is kept honest as the code moves.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The test modules that can reach each file (what a developer would run after touching it).
_MATH = ["test_optim.py", "test_parity.py", "test_train.py", "test_gradients.py"]
TESTS = {
    "optim.py": _MATH + ["test_graph.py"],
    "kernels.py": _MATH + ["test_backend.py", "test_graph.py", "test_cupy_emulated.py"],
    "backend_numpy.py": _MATH + ["test_backend.py"],
    "losses.py": _MATH,
    "layers.py": _MATH + ["test_backend.py"],
    "train.py": _MATH + ["test_graph.py", "test_memory.py"],
    "static_step.py": ["test_graph.py", "test_graph_property.py"],
    "init.py": ["test_train.py", "test_reproductions.py", "test_backend.py"],
    "models.py": ["test_train.py", "test_backend.py"],
    "validation.py": ["test_train.py", "test_backend.py", "test_fuzz.py", "test_sklearn.py"],
    "sklearn.py": ["test_sklearn.py"],
    "checkpoint.py": ["test_checkpoint.py", "test_reliability.py"],
    "_fileio.py": ["test_checkpoint.py", "test_reliability.py"],
    "datasets/files.py": ["test_datasets.py", "test_files.py", "test_fuzz.py"],
    "datasets/mnist.py": ["test_datasets.py", "test_files.py", "test_fuzz.py"],
    "backend.py": ["test_backend.py", "test_train.py", "test_cupy_emulated.py"],
    "backend_cupy.py": ["test_cupy_emulated.py"],
    "kernel_check.py": ["test_backend.py", "test_cupy_emulated.py"],
}

# (id, file under portablenn/, find, replace[, why it is equivalent])
MUTANTS = [
    # -- optimizers ------------------------------------------------------------------------------------
    ("optim-momentum-decay-sign", "kernels.py", "grad = grad + decay * param", "grad = grad - decay * param"),
    ("optim-momentum-no-decay", "kernels.py", "grad = grad + decay * param", "grad = grad"),
    ("optim-momentum-no-scale", "kernels.py", "        velocity *= momentum\n", "        pass\n"),
    ("optim-nesterov-sum", "kernels.py", "(grad + momentum * velocity) if nesterov", "(grad + velocity) if nesterov"),
    ("optim-nesterov-ignored", "kernels.py", "if nesterov else velocity", "if False else velocity"),
    ("optim-sgd-decay-sign", "kernels.py", "param *= 1.0 - decay\n        param -= grad",
     "param *= 1.0 + decay\n        param -= grad"),
    ("optim-adam-beta1", "kernels.py", "m += (1.0 - beta1) * grad", "m += (1.0 - beta2) * grad"),
    ("optim-adam-v-square", "kernels.py", "v += (1.0 - beta2) * (grad * grad)", "v += (1.0 - beta2) * grad"),
    ("optim-adam-eps", "kernels.py", "(xp.sqrt(v) + eps_hat)", "(xp.sqrt(v) + eps_hat * 1e6)"),
    ("optim-adam-l2-sign", "kernels.py", "grad = grad + l2 * param\n        m *=", "grad = grad - l2 * param\n        m *="),
    ("optim-adam-l2-on-biases", "optim.py", "l2 if name == \"weight\" else 0.0)", "l2)"),
    ("optim-adam-correction1", "optim.py", "correction1 = 1.0 - self.beta1 ** self.steps",
     "correction1 = 1.0 - self.beta1 ** (self.steps + 1)"),
    ("optim-adam-root2", "optim.py", "root2 = (1.0 - self.beta2 ** self.steps) ** 0.5",
     "root2 = (1.0 - self.beta2 ** self.steps)"),
    ("optim-adam-steps", "optim.py", "        self.steps += 1\n        l2 = self.l2", "        l2 = self.l2"),
    ("optim-sgd-decay-on-biases", "optim.py", "decay = self.lr * self.l2 if name == \"weight\" else 0.0",
     "decay = self.lr * self.l2"),
    ("optim-sgd-in-backward-decay", "optim.py", "-1.0, 1.0 - self.lr * self.l2)", "-1.0, 1.0)"),
    ("optim-sgd-bias-skipped", "optim.py", "k.sgd_(layer.params[\"bias\"], k.sum_rows(grad_output), 0.0)", "pass"),
    ("optim-sgd-grad-scale", "optim.py", "    def grad_scale(self):\n        return self.lr",
     "    def grad_scale(self):\n        return 1.0"),
    ("optim-momentum-range", "optim.py", "if not 0.0 <= self.momentum < 1.0:", "if not 0.0 <= self.momentum <= 1.0:"),
    ("optim-lr-inf", "optim.py", "if not lr > 0 or lr == float(\"inf\"):", "if not lr > 0:"),
    # -- kernels and the NumPy fast path --------------------------------------------------------------------
    ("kernels-relu-backward-ge", "kernels.py", "xp.where(output > 0, grad_output, 0.0)", "xp.where(output >= 0, grad_output, 0.0)"),
    ("kernels-xent-scale", "kernels.py", "grad = (exp / total - onehot) * scale", "grad = (exp / total - onehot)"),
    ("kernels-xent-loss", "kernels.py", "loss_sum = xp.sum(xp.log(total)) - xp.sum(shifted * onehot)",
     "loss_sum = xp.sum(xp.log(total)) + xp.sum(shifted * onehot)"),
    ("kernels-xent-wrong", "kernels.py", "xp.argmax(logits, axis=1) != labels", "xp.argmax(logits, axis=1) == labels"),
    ("kernels-update-beta", "kernels.py", "        if beta != 1.0:\n            c *= beta", "        if False:\n            c *= beta"),
    ("kernels-update-alpha", "kernels.py", "c += alpha * (a @ b)", "c -= alpha * (a @ b)"),
    ("kernels-linear-bias", "kernels.py", "            y += bias\n", "            pass\n"),
    ("kernels-sum-rows-axis", "kernels.py", "return self.xp.sum(g, axis=0)", "return self.xp.sum(g, axis=0) * 1.0001"),
    ("kernels-record-step", "kernels.py", "        start += batch\n", "        start += batch - 1\n"),
    ("kernels-minibatch-order", "kernels.py", "            rows = xp.take(order, rows, axis=0)", "            pass"),
    ("numpy-xent-scale", "backend_numpy.py", "np.multiply(exp, dtype.type(scale), out=exp)", "pass"),
    ("numpy-xent-max", "backend_numpy.py", "predicted][:, None], out=logits)", "predicted][:, None] * 0, out=logits)"),
    ("numpy-relu-backward", "backend_numpy.py", "np.multiply(grad_output, output > 0)", "np.multiply(grad_output, output >= 0)"),
    ("numpy-sgd-decay", "backend_numpy.py", "            param *= 1.0 - decay\n        np.subtract",
     "            param *= 1.0 + decay\n        np.subtract"),
    ("numpy-sq-sum", "backend_numpy.py", "return np.dot(flat, flat)", "return np.dot(flat, flat) * 1.0001"),
    ("numpy-sum-rows", "backend_numpy.py", "return np.matmul(ones, g, out=out)", "return np.matmul(ones, g, out=out) * 1.0001"),
    ("numpy-update-threshold", "backend_numpy.py", "blas_update_min = 32768", "blas_update_min = 0",
     "equivalent: where to switch from NumPy's GEMM to the BLAS call is a speed choice; both compute the same"),
    # -- layers, losses, the training loop ------------------------------------------------------------------
    ("layers-sigmoid-backward", "layers.py", "grad_output * (self._out * (1.0 - self._out))",
     "grad_output * (self._out * (1.0 + self._out))"),
    ("layers-tanh-backward", "layers.py", "grad_output * (1.0 - self._out * self._out)", "grad_output * (1.0 - self._out)"),
    ("layers-linear-grad-input-after", "layers.py",
     "        grad_input = k.matmul(grad_output, weight.T) if input_grad else None  # before weight changes\n"
     "        if optimizer is not None:  # plain SGD updates here: weight -= x.T @ grad_output in one GEMM\n"
     "            optimizer.update_linear(self, self._x, grad_output)\n            return grad_input",
     "        if optimizer is not None:  # plain SGD updates here: weight -= x.T @ grad_output in one GEMM\n"
     "            optimizer.update_linear(self, self._x, grad_output)\n"
     "            return k.matmul(grad_output, weight.T) if input_grad else None\n"
     "        grad_input = k.matmul(grad_output, weight.T) if input_grad else None"),
    ("layers-bias-grad", "layers.py", "self.grads[\"bias\"] = k.sum_rows(grad_output, out=self.grads.get(\"bias\"))",
     "self.grads[\"bias\"] = k.sum_rows(grad_output, out=self.grads.get(\"bias\")) * 0.5"),
    ("layers-repeat-copy", "layers.py", "        layers[i] = copy.copy(layer)\n", "        pass\n"),
    ("losses-l2-half", "losses.py", "return 0.5 * l2 * total", "return l2 * total"),
    ("losses-softmax-shift", "losses.py", "exp = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))",
     "exp = xp.exp(logits)"),
    ("train-last-batch-scale", "train.py", "train_step(xb, yb, onehot, stop - start)", "train_step(xb, yb, onehot, batch)"),
    ("train-copy-logits", "train.py", "            logits = dev.xp.asarray(logits, copy=True)\n", "            pass\n"),
    ("train-l2-loss", "train.py", "loss = loss + xb.shape[0] * l2_penalty(model, l2, weights)",
     "loss = loss + l2_penalty(model, l2, weights)"),
    ("train-val-l2", "train.py", "columns.update(val_loss=(values[:, _VAL_LOSS] / val_n + values[:, _L2]).tolist(),",
     "columns.update(val_loss=(values[:, _VAL_LOSS] / val_n).tolist(),"),
    ("train-shuffle-seed", "train.py", "np.random.default_rng([seed, epoch])", "np.random.default_rng([seed, 0])"),
    ("train-error-mean", "train.py", "\"error\": (values[:, _WRONG] / n).tolist()", "\"error\": (values[:, _WRONG] / val_n if val_n else values[:, _WRONG] / n).tolist()"),
    ("train-divergence-step", "train.py", "step = int(np.argmin(np.isfinite(row))) + 1", "step = int(np.argmin(np.isfinite(row)))"),
    ("train-onehot-small", "train.py", "if classes <= n:", "if classes <= n + 1000:",
     "equivalent: the identity or the comparison with arange give the same one-hot rows; only memory differs "
     "(a test under an address-space limit catches the large case)"),
    ("train-initial-epoch", "train.py", "for epoch in range(initial_epoch + 1, epochs + 1):", "for epoch in range(initial_epoch, epochs + 1):"),
    ("static-steps", "static_step.py", "self.steps = data.n // batch", "self.steps = -(-data.n // batch)"),
    ("static-rewind", "static_step.py", "        self.start[...] = 0\n", "        pass\n"),
    ("static-zero-wrong", "static_step.py", "        self.wrong[...] = 0\n", "        pass\n"),
    ("static-step-count", "static_step.py", "self._optimizer.steps = done + 1", "self._optimizer.steps = done"),
    # -- the kernels' self-test (the GPU guard) ----------------------------------------------------------------
    ("check-tolerance", "kernel_check.py", "if not off <= rtol:", "if not off <= rtol * 1e6:"),
    ("check-nonfinite", "kernel_check.py", "        if not np.isfinite(g).all():", "        if False:"),
    ("check-exception", "kernel_check.py", "        return f\"{name} raised {describe(exc)} in {dtype}\"",
     "        return None"),
    ("check-training", "kernel_check.py", "        for name, optimizer in _optimizers():", "        for name, optimizer in []:"),
    ("backend-auto-unchecked", "backend.py", "        problem = kernel_check.check(dev, fast, Kernels(dev.xp))",
     "        problem = None"),
    ("backend-auto-cpu", "backend.py", "self.kernel_mode = \"fast\" if mode == \"auto\" and kind == \"cpu\" else mode",
     "self.kernel_mode = mode"),
    # -- validation ------------------------------------------------------------------------------------------
    ("validation-range-neg", "validation.py", "or float(_host(xp.min(X))) < -largest", ""),
    ("validation-features", "validation.py", "if in_features is not None and X.shape[1] != in_features:",
     "if in_features is not None and X.shape[1] < in_features:"),
    # -- the estimator ---------------------------------------------------------------------------------------
    ("sklearn-alpha", "sklearn.py", "l2=self.alpha, device=dev", "l2=0.0, device=dev"),
    ("sklearn-shuffle", "sklearn.py", "shuffle=bool(self.shuffle), l2=", "shuffle=True, l2="),
    ("sklearn-shuffle-seed", "sklearn.py", "device=dev, seed=shuffle_seed,", "device=dev, seed=0,"),
    ("sklearn-init-seed", "sklearn.py", "seed=init_seed, dtype=self.dtype)", "seed=0, dtype=self.dtype)"),
    ("sklearn-nesterov", "sklearn.py", "nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)",
     "nesterov=False)"),
    ("sklearn-momentum", "sklearn.py", "return SGD(self.learning_rate_init, momentum=self.momentum,",
     "return SGD(self.learning_rate_init, momentum=0.5,"),
    ("sklearn-beta2", "sklearn.py", "Adam(self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)",
     "Adam(self.learning_rate_init, self.beta_1, self.beta_1, self.epsilon)"),
    ("sklearn-epsilon", "sklearn.py", "self.beta_1, self.beta_2, self.epsilon)", "self.beta_1, self.beta_2)"),
    ("sklearn-auto-cap", "sklearn.py", "return min(200, n)", "return n"),
    ("sklearn-clip", "sklearn.py", "return int(np.clip(self.batch_size, 1, n))", "return int(np.clip(self.batch_size, 1, n - 1))"),
    ("sklearn-clip-warning", "sklearn.py", "        if not 1 <= self.batch_size <= n:", "        if not 1 <= self.batch_size < n:"),
    ("sklearn-unpickle-activation", "sklearn.py", "state[\"model_\"] = mlp(config[\"sizes\"], activation=config[\"activation\"],",
     "state[\"model_\"] = mlp(config[\"sizes\"],"),
    ("sklearn-predict-range", "sklearn.py", "            check_range(X, self.model_.dtype)\n", "            pass\n"),
    ("sklearn-logistic", "sklearn.py", "\"logistic\": \"sigmoid\"}", "\"logistic\": \"tanh\"}"),
    ("sklearn-max-iter", "sklearn.py", "epochs=self.max_iter,", "epochs=max(1, self.max_iter - 1),"),
    ("sklearn-lr", "sklearn.py", "return Adam(self.learning_rate_init,", "return Adam(0.001,"),
    ("sklearn-classes-order", "sklearn.py", "return self.classes_[dev.to_numpy(index)]", "return self.classes_[::-1][dev.to_numpy(index)]"),
    ("sklearn-dtype", "sklearn.py", "seed=init_seed, dtype=self.dtype)", "seed=init_seed)"),
]


def _applies(mutant):
    _, file, find, _ = mutant[:4]
    return (REPO / "portablenn" / file).read_text().count(find)


def run_one(mutant, timeout, python):
    """``(status, seconds, detail)``: CAUGHT, SURVIVED, EQUIVALENT (survived, with a reason), STALE or TIMEOUT."""
    ident, file, find, replace = mutant[:4]
    why = mutant[4] if len(mutant) > 4 else None
    count = _applies(mutant)
    if count != 1:
        return "STALE", 0.0, f"the text to change occurs {count} times in portablenn/{file}"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{ident}-") as folder:
        copy = Path(folder)
        shutil.copytree(REPO / "portablenn", copy / "portablenn", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "scripts", copy / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
        target = copy / "portablenn" / file
        target.write_text(target.read_text().replace(find, replace))
        tests = [f"tests/{t}" for t in TESTS[file]]
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            done = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "TIMEOUT", time.perf_counter() - began, f"over {timeout} s"
    seconds = time.perf_counter() - began
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode == 0:
        return ("EQUIVALENT" if why else "SURVIVED"), seconds, why or last
    if done.returncode not in (1,):  # 2: interrupted/collection error, 4: usage, 5: no tests
        return "CAUGHT", seconds, f"pytest exit {done.returncode} (an import or collection error): {last}"
    failed = next((line for line in done.stdout.splitlines() if line.startswith("FAILED")), last)
    return "CAUGHT", seconds, failed[:160]


def _module(file):
    return file.split("/")[0] if "/" in file else file.removesuffix(".py")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="comma-separated id prefixes")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        prefixes = tuple(p.strip() for p in args.only.split(","))
        mutants = [m for m in mutants if m[0].startswith(prefixes)]
    if args.list:
        for m in mutants:
            print(f"{m[0]:34s} portablenn/{m[1]:20s} {'(equivalent) ' if len(m) > 4 else ''}"
                  f"{'STALE' if _applies(m) != 1 else ''}")
        return 0
    results = {}
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, m, args.timeout, sys.executable): m for m in mutants}
        for future in concurrent.futures.as_completed(futures):
            m = futures[future]
            results[m[0]] = (m, *future.result())
            status, seconds, detail = results[m[0]][1:]
            print(f"{status:10s} {seconds:6.1f}s  {m[0]:34s} {detail}", flush=True)
    print(f"\n{len(mutants)} mutants in {time.perf_counter() - began:.0f} s\n")
    print("| module | mutants | caught | equivalent | survived | stale/timeout | score |\n|---|---:|---:|---:|---:|---:|---:|")
    modules = sorted({_module(m[1]) for m in mutants})
    total = {"n": 0, "caught": 0, "eq": 0, "survived": 0, "other": 0}
    for module in modules:
        rows = [r for r in results.values() if _module(r[0][1]) == module]
        counts = {"n": len(rows), "caught": sum(r[1] == "CAUGHT" for r in rows),
                  "eq": sum(r[1] == "EQUIVALENT" for r in rows), "survived": sum(r[1] == "SURVIVED" for r in rows)}
        counts["other"] = counts["n"] - counts["caught"] - counts["eq"] - counts["survived"]
        for key in total:
            total[key] += counts[key]
        real = counts["n"] - counts["eq"] - counts["other"]
        score = f"{100 * counts['caught'] / real:.0f}%" if real else "-"
        print(f"| {module} | {counts['n']} | {counts['caught']} | {counts['eq']} | {counts['survived']} | "
              f"{counts['other']} | {score} |")
    real = total["n"] - total["eq"] - total["other"]
    print(f"| all | {total['n']} | {total['caught']} | {total['eq']} | {total['survived']} | {total['other']} | "
          f"{100 * total['caught'] / max(real, 1):.0f}% |")
    survivors = [r for r in results.values() if r[1] in ("SURVIVED", "STALE", "TIMEOUT")]
    if survivors:
        print("\nnot caught:")
        for m, status, _, detail in sorted(survivors, key=lambda r: r[0][0]):
            print(f"  {status:8s} {m[0]}: portablenn/{m[1]}: {m[2].strip()[:60]!r} -> {m[3].strip()[:60]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {"file": r[0][1], "status": r[1], "seconds": r[2], "detail": r[3]}
                                               for k, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
