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
_MATH = ["test_optim.py", "test_parity.py", "test_train.py", "test_gradients.py", "test_models.py"]
_TASKS = ["test_tasks.py", "test_early_stopping.py", "test_split.py"]  # History metrics, stopping, the split
_STATE = ["test_dropout.py", "test_normalization.py", "test_gradients.py"]  # layers with buffers
TESTS = {
    "optim.py": _MATH + ["test_graph.py", "test_schedules.py"],
    "schedules.py": ["test_schedules.py"],
    "kernels.py": _MATH + ["test_backend.py", "test_graph.py", "test_cupy_emulated.py"],
    "backends/numpy.py": _MATH + ["test_backend.py"],
    "losses.py": _MATH + ["test_losses.py", "test_tasks.py", "test_sample_weight.py"],
    "layers.py": _MATH + ["test_backend.py", "test_dropout.py", "test_normalization.py"],
    "dropout.py": _STATE,
    "normalization.py": _STATE,
    "counter_rng.py": _STATE,
    "train.py": _MATH + _TASKS + ["test_graph.py", "test_memory.py", "test_registry.py", "test_schedules.py",
                                  "test_normalization.py", "test_distributed.py"],  # fit's BatchNorm and Dropout rules
    "step.py": _MATH + ["test_graph.py", "test_registry.py", "test_step.py", "test_schedules.py",
                        "test_sample_weight.py"],
    "history.py": _MATH + _TASKS + ["test_graph.py"],
    "early_stopping.py": _TASKS,
    "split.py": ["test_split.py", "test_losses.py", "test_sample_weight.py"],
    "static_step.py": ["test_graph.py", "test_graph_property.py", "test_schedules.py"],
    "init.py": ["test_models.py", "test_train.py", "test_reproductions.py", "test_backend.py", "test_parity.py"],
    "models.py": ["test_models.py", "test_train.py", "test_backend.py", "test_parity.py", "test_reproductions.py",
                  "test_dropout.py", "test_normalization.py"],
    "validation.py": ["test_sample_weight.py", "test_train.py", "test_backend.py", "test_fuzz.py", "test_sklearn.py", "test_reliability.py",
                      "test_limits.py", "test_files.py", "test_losses.py"],
    "sklearn.py": ["test_sklearn.py"],
    "stack.py": ["test_stack.py", "test_sweep.py", "test_stack_norm.py", "test_sweep_hostile.py"],
    "sweep.py": ["test_sweep.py", "test_stack.py", "test_cupy_emulated.py", "test_stack_norm.py",
                 "test_sweep_hostile.py", "test_sweep_search.py"],
    "stack_fit.py": ["test_sweep.py", "test_stack.py", "test_cupy_emulated.py", "test_stack_norm.py",
                     "test_sweep_hostile.py", "test_losses.py"],
    "stack_optim.py": ["test_sweep.py", "test_stack.py", "test_cupy_emulated.py", "test_stack_norm.py",
                       "test_sweep_hostile.py"],
    "stack_history.py": ["test_sweep.py", "test_stack_norm.py", "test_sweep_hostile.py"],
    "cli/sweep.py": ["test_sweep.py", "test_sweep_hostile.py", "test_sweep_search.py"],
    "cli/sweep_plots.py": ["test_sweep.py", "test_sweep_search.py"],
    "checkpoint.py": ["test_checkpoint.py", "test_reliability.py", "test_metadata.py", "test_fuzz.py",
                      "test_limits.py"],
    "outputs.py": ["test_checkpoint.py", "test_reliability.py", "test_outputs.py"],
    "onnx.py": ["test_onnx.py", "test_outputs.py"],
    "_fileio.py": ["test_checkpoint.py", "test_reliability.py", "test_download.py"],
    "datasets/files.py": ["test_datasets.py", "test_files.py", "test_fuzz.py", "test_limits.py"],
    "datasets/mnist.py": ["test_datasets.py", "test_files.py", "test_fuzz.py", "test_limits.py"],
    "backend.py": ["test_backend.py", "test_train.py", "test_cupy_emulated.py"],
    "backends/strict.py": ["test_backend.py", "test_train.py"],
    "backends/cupy_kernels.py": ["test_cupy_emulated.py"],
    "kernel_check.py": ["test_backend.py", "test_cupy_emulated.py"],
    "distributed.py": ["test_distributed.py"],
    "pure_step.py": ["test_sweep.py", "test_jax.py", "test_backend.py", "test_train.py", "test_early_stopping.py"],
    "backends/jax.py": ["test_jax.py"],
}

# (id, file under portablenn/, find, replace[, why it is equivalent])
MUTANTS = [
    # -- optimizers ------------------------------------------------------------------------------------
    ("optim-momentum-decay-sign", "kernels.py", "grad = grad + decay * param", "grad = grad - decay * param"),
    ("optim-momentum-no-decay", "kernels.py", "grad = grad + decay * param", "grad = grad"),
    ("optim-momentum-no-scale", "kernels.py", "        velocity *= momentum\n", "        pass\n"),
    ("optim-nesterov-sum", "kernels.py", "(step + momentum * velocity) if nesterov", "(step + velocity) if nesterov"),
    ("optim-nesterov-ignored", "kernels.py", "if nesterov else velocity", "if False else velocity"),
    ("optim-sgd-decay-sign", "kernels.py", "param *= 1.0 - lr * decay\n        param -= grad",
     "param *= 1.0 + lr * decay\n        param -= grad"),
    ("optim-sgd-lr-ignored", "kernels.py", "param -= grad if lr == 1.0 else lr * grad", "param -= grad"),
    ("optim-momentum-lr", "kernels.py", "        step = lr * grad\n", "        step = grad\n"),
    ("optim-adam-beta1", "kernels.py", "m += (1.0 - beta1) * grad", "m += (1.0 - beta2) * grad"),
    ("optim-adam-v-square", "kernels.py", "v += (1.0 - beta2) * (grad * grad)", "v += (1.0 - beta2) * grad"),
    ("optim-adam-eps", "kernels.py", "(xp.sqrt(v) + eps_hat)", "(xp.sqrt(v) + eps_hat * 1e6)"),
    ("optim-adam-l2-sign", "kernels.py", "grad = grad + l2 * param\n        m *=", "grad = grad - l2 * param\n        m *="),
    ("optim-l2-on-biases", "step.py", "self.l2 if name in layer.decayed else 0.0, name in layer.decayed)",
     "self.l2, name in layer.decayed)"),
    ("optim-adam-correction1", "optim.py", "correction1 = 1.0 - self.beta1 ** step",
     "correction1 = 1.0 - self.beta1 ** (step + 1)"),
    ("optim-adam-root2", "optim.py", "root2 = (1.0 - self.beta2 ** step) ** 0.5", "root2 = (1.0 - self.beta2 ** step)"),
    ("optim-adam-steps", "step.py", "        optimizer.steps += 1\n", "        pass\n"),
    ("optim-sgd-lr", "optim.py", "kernels.sgd_(param, grad, lr, decay)", "kernels.sgd_(param, grad, 1.0, decay)"),
    ("optim-sgd-functional-nesterov", "optim.py", "(lr * grad + self.momentum * velocity) if self.nesterov",
     "(lr * grad + velocity) if self.nesterov"),
    ("optim-sgd-functional-decay", "optim.py", "        if decay:\n            grad = grad + decay * param\n        if not",
     "        if not"),
    ("optim-adam-functional-m", "optim.py", "m = self.beta1 * m + (1.0 - self.beta1) * grad",
     "m = self.beta1 * m + (1.0 - self.beta2) * grad"),
    ("optim-adam-functional-eps", "optim.py", "(m / (xp.sqrt(v) + eps_hat))", "(m / (xp.sqrt(v) + 1e-3))"),
    ("step-clip-min", "step.py", "factor = xp.minimum(self.clip_norm", "factor = xp.maximum(self.clip_norm"),
    ("step-clip-sqrt", "step.py", "(xp.sqrt(total) + 1e-6)", "(total + 1e-6)"),
    ("optim-adamw-order", "optim.py", "                grad, decay = grad + decay * param, 0.0\n            kernels.scale_",
     "                decay = decay\n            kernels.scale_"),
    ("optim-adamw-biases", "step.py", "else 0.0, name in layer.decayed)", "else 0.0, True)"),
    ("optim-adamw-factor", "optim.py", "return (*super().hyper(step), 1.0 - self.lr_at(step) * self.weight_decay)",
     "return (*super().hyper(step), 1.0 - self.weight_decay)"),
    ("split-unstratified", "split.py", "groups = [np.arange(n)] if labels is None else", "groups = [np.arange(n)] if True else"),
    ("split-class-cap", "split.py", "take = min(int(np.floor(fraction * len(rows) + 0.5)), len(rows) - 1) if labels",
     "take = int(np.floor(fraction * len(rows) + 0.5)) if labels"),
    ("split-seed", "split.py", "rng = np.random.default_rng([seed, 1, 0])", "rng = np.random.default_rng([0, 1, 0])"),
    ("stopping-ties", "early_stopping.py", "if self._sign * value < self._sign * self.best - self.min_delta:",
     "if self._sign * value <= self._sign * self.best - self.min_delta:"),
    ("stopping-no-restore", "early_stopping.py", "                store[name] = value\n", "                pass\n"),
    ("stopping-patience", "early_stopping.py", "if self._wait >= self.patience:", "if self._wait > self.patience:"),
    ("step-sgd-in-gemm-decay", "step.py", "keep = self.model.layers, 1.0 - lr * self.l2",
     "keep = self.model.layers, 1.0"),
    ("step-sgd-bias-skipped", "step.py", "k.sgd_(layer.params[\"bias\"], k.sum_rows(grad_output), 1.0, 0.0)", "pass"),
    ("step-lr-fold", "step.py", "lr = optimizer.lr_at(optimizer.steps + 1) if self._sgd_in_gemm else 1.0", "lr = 1.0"),
    ("step-grad-input-after", "step.py",
     "    grad_input = k.matmul(grad_output, weight.T) if input_grad else None  # before the weight changes\n"
     "    k.matmul_update_(weight, layer._x.T, grad_output, -1.0, keep)  # the decay as GEMM's beta\n",
     "    k.matmul_update_(weight, layer._x.T, grad_output, -1.0, keep)  # the decay as GEMM's beta\n"
     "    grad_input = k.matmul(grad_output, weight.T) if input_grad else None  # before the weight changes\n"),
    ("optim-momentum-range", "optim.py", "if not 0.0 <= self.momentum < 1.0:", "if not 0.0 <= self.momentum <= 1.0:"),
    ("optim-lr-inf", "optim.py", "if not lr > 0 or lr == float(\"inf\"):", "if not lr > 0:"),
    # -- kernels and the NumPy fast path --------------------------------------------------------------------
    ("kernels-relu-backward-ge", "kernels.py", "xp.where(output > 0, grad_output, 0.0)", "xp.where(output >= 0, grad_output, 0.0)"),
    ("losses-xent-scale", "losses.py", "grad = (exp / total - target) * scale", "grad = (exp / total - target)"),
    ("losses-xent-loss", "losses.py", "loss_sum = _sum(xp, xp.log(total)) - _sum(xp, shifted * target)",
     "loss_sum = _sum(xp, xp.log(total)) + _sum(xp, shifted * target)"),
    ("losses-xent-wrong", "losses.py", "xp.argmax(logits, axis=-1) != labels", "xp.argmax(logits, axis=-1) == labels"),
    ("kernels-update-beta", "kernels.py", "        if beta != 1.0:\n            c *= beta", "        if False:\n            c *= beta"),
    ("kernels-update-alpha", "kernels.py", "c += alpha * (a @ b)", "c -= alpha * (a @ b)"),
    ("kernels-linear-bias", "kernels.py", "            y += bias\n", "            pass\n"),
    ("kernels-sum-rows-axis", "kernels.py", "return self.xp.sum(g, axis=0)", "return self.xp.sum(g, axis=0) * 1.0001"),
    ("kernels-record-step", "kernels.py", "        start += batch\n", "        start += batch - 1\n"),
    ("kernels-minibatch-order", "kernels.py", "            rows = xp.take(order, rows, axis=0)", "            pass"),
    ("numpy-xent-scale", "backends/numpy.py", "np.multiply(exp, dtype.type(scale), out=exp)", "pass"),
    ("numpy-xent-max", "backends/numpy.py", "predicted][:, None])", "predicted][:, None] * 0)"),
    ("numpy-xent-overwrites-logits", "backends/numpy.py", "predicted][:, None])", "predicted][:, None], out=logits)"),
    ("numpy-relu-backward", "backends/numpy.py", "np.multiply(grad_output, output > 0)", "np.multiply(grad_output, output >= 0)"),
    ("numpy-sgd-decay", "backends/numpy.py", "            param *= 1.0 - lr * decay\n        np.subtract",
     "            param *= 1.0 + lr * decay\n        np.subtract"),
    ("numpy-sgd-lr", "backends/numpy.py", "grad if lr == 1.0 else np.multiply", "grad if True else np.multiply"),
    ("numpy-sq-sum", "backends/numpy.py", "return np.dot(flat, flat)", "return np.dot(flat, flat) * 1.0001"),
    ("numpy-sum-rows", "backends/numpy.py", "return np.matmul(ones, g, out=out)", "return np.matmul(ones, g, out=out) * 1.0001"),
    ("numpy-update-threshold", "backends/numpy.py", "blas_update_min = 32768", "blas_update_min = 0",
     "equivalent: where to switch from NumPy's GEMM to the BLAS call is a speed choice; both compute the same"),
    # -- layers, losses, the training loop ------------------------------------------------------------------
    ("layers-sigmoid-backward", "layers.py", "grad_output * (self._out * (1.0 - self._out))",
     "grad_output * (self._out * (1.0 + self._out))"),
    ("layers-tanh-backward", "layers.py", "grad_output * (1.0 - self._out * self._out)", "grad_output * (1.0 - self._out)"),
    ("layers-bias-grad", "layers.py", "self.grads[\"bias\"] = k.sum_rows(grad_output, out=self.grads.get(\"bias\"))",
     "self.grads[\"bias\"] = k.sum_rows(grad_output, out=self.grads.get(\"bias\")) * 0.5"),
    ("layers-leaky-backward", "layers.py", "grad_output, self.negative_slope * grad_output)",
     "grad_output, 0.0 * grad_output)"),
    ("layers-gelu-cubic", "layers.py", "(1.0 + 3.0 * self._A * (x * x))", "(1.0 + self._A * (x * x))"),
    ("layers-gelu-forward", "layers.py", "return 0.5 * x * (1.0 + self._t)", "return 0.5 * (1.0 + self._t)"),
    ("layers-repeat-copy", "layers.py", "        layers[i] = copy.copy(layer)\n", "        pass\n"),
    ("losses-l2-half", "losses.py", "return 0.5 * l2 * total", "return l2 * total"),
    ("losses-softmax-shift", "losses.py", "exp = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))",
     "exp = xp.exp(logits)"),
    ("train-last-batch-scale", "train.py", "train_step(xb, targets, stop - start)", "train_step(xb, targets, batch)"),
    ("train-eval-mode", "train.py", "                    model.eval()\n", "                    pass\n"),
    ("train-l2-loss", "step.py", "loss_sum = loss_sum + xb.shape[0] * l2_penalty(model, self.l2, self._weights)",
     "loss_sum = loss_sum + l2_penalty(model, self.l2, self._weights)"),
    ("train-val-l2", "history.py", "columns[\"val_loss\"] = values[:, VAL_LOSS] / val.n + values[:, L2]",
     "columns[\"val_loss\"] = values[:, VAL_LOSS] / val.n"),
    ("train-shuffle-seed", "train.py", "np.random.default_rng([seed, epoch])", "np.random.default_rng([seed, 0])"),
    ("train-error-mean", "history.py", "**loss.metrics(values[:, METRIC], n, data.outputs",
     "**loss.metrics(values[:, METRIC], val.n if val is not None else n, data.outputs"),
    ("train-divergence-step", "history.py", "step = int(np.argmin(np.isfinite(row))) + 1", "step = int(np.argmin(np.isfinite(row)))"),
    ("train-onehot-small", "losses.py", "if classes <= n:", "if classes <= n + 1000:",
     "equivalent: the identity and the comparison with arange give the same one-hot rows; the threshold only picks "
     "the cheaper one, and a dataset with far more classes than rows still takes the comparison"),
    ("train-initial-epoch", "train.py", "for epoch in range(initial_epoch + 1, epochs + 1):", "for epoch in range(initial_epoch, epochs + 1):"),
    ("static-steps", "static_step.py", "self.steps = data.n // batch", "self.steps = -(-data.n // batch)"),
    ("static-rewind", "static_step.py", "        self.start[...] = 0\n", "        pass\n"),
    ("static-zero-wrong", "static_step.py", "        self.wrong[...] = 0\n", "        pass\n"),
    ("static-step-count", "static_step.py", "self._optimizer.steps = done + 1", "self._optimizer.steps = done"),
    # -- initialisation and the model builder --------------------------------------------------------------
    ("init-he", "init.py", "np.sqrt(2.0 / fan_in)", "np.sqrt(2.0 / fan_out)"),
    ("init-xavier", "init.py", "bound = np.sqrt(6.0 / (fan_in + fan_out))", "bound = np.sqrt(3.0 / (fan_in + fan_out))"),
    ("init-xavier-normal", "init.py", "np.sqrt(2.0 / (fan_in + fan_out))", "np.sqrt(1.0 / (fan_in + fan_out))"),
    ("init-small", "init.py", "return 0.01 * rng.standard_normal", "return 0.1 * rng.standard_normal"),
    ("init-cmu", "init.py", "/ np.sqrt(fan_out)", "/ np.sqrt(fan_in)"),
    ("init-bias-zero", "init.py", "params[\"bias\"] = np.zeros(fan_out, dtype=dtype)",
     "params[\"bias\"] = np.full(fan_out, 0.01, dtype=dtype)"),
    ("init-host-copy-order", "init.py", 'return np.array(value, dtype=dtype, order="C")', "return np.array(value, dtype=dtype)"),
    ("init-shape-check", "init.py", "    if w.shape != (fan_in, fan_out):", "    if False:"),
    ("models-auto-init", "models.py", "init = ACTIVATIONS[activation].auto_init", "init = \"he\""),
    ("models-no-activation", "models.py", "        if i:  # the hidden block's tail", "        if i < 0:  # the hidden block's tail"),
    ("models-shared-rng", "models.py", "init=init, rng=rng,", "init=init, rng=seed,"),
    ("models-config-bias", "models.py", "\"activation\": activation, \"bias\": bool(bias)}",
     "\"activation\": activation, \"bias\": True}"),
    # -- more of the math -----------------------------------------------------------------------------------
    ("losses-onehot", "losses.py", "labels[:, None] == classes[None, :]", "labels[:, None] != classes[None, :]"),
    ("losses-mean", "losses.py", "return loss_sum / logits.shape[0]", "return loss_sum"),
    ("losses-grad-batch", "losses.py", "(xp, logits, targets, 1.0 / logits.shape[0])", "(xp, logits, targets, 1.0 / logits.shape[1])"),
    ("losses-weights-only", "losses.py", "            if name in layer.decayed]", "            ]"),
    ("layers-backward-order", "layers.py", "for i in range(len(self.layers) - 1, -1, -1):", "for i in range(len(self.layers)):"),
    ("layers-first-input-grad", "layers.py", "self.layers[i].backward(grad_output, input_grad or i > 0)",
     "self.layers[i].backward(grad_output, True)"),
    ("layers-sigmoid-forward", "layers.py", "0.5 * (self.xp.tanh(0.5 * x) + 1.0)", "0.5 * (self.xp.tanh(x) + 1.0)"),
    ("layers-shared-weights", "layers.py", "        if layer.params or layer.buffers:\n            what",
     "        if False:\n            what"),
    ("layers-chain-check", "layers.py", "if a.out_features != b.in_features:", "if a.out_features < b.in_features:"),
    ("train-val-chunk", "train.py", "for start in range(0, data.n, _EVAL_CHUNK):", "for start in range(0, data.n - 1, _EVAL_CHUNK):"),
    ("train-predict-argmax", "losses.py", "return xp.argmax(outputs, axis=-1)", "return xp.argmin(outputs, axis=-1)"),
    ("train-evaluate-l2", "train.py", "            mean = mean + l2_penalty(model, l2)\n", "            pass\n"),
    ("train-log-every", "train.py", "if epoch % log_every == 0 or epoch == epochs:", "if epoch % log_every == 0:"),
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
    ("backend-asarray-device", "backends/strict.py", "            array = array.to_device(dev.native)\n",
     "            pass\n"),
    ("distributed-steps", "distributed.py", "            opt.steps = payload[\"steps\"]\n", "            pass\n"),
    ("distributed-state", "distributed.py",
     "            opt.state = {k: tuple(dev.asarray(b) for b in bufs) for k, bufs in payload[\"state\"].items()}\n",
     "            pass\n"),
    # -- validation ------------------------------------------------------------------------------------------
    ("validation-range-neg", "validation.py", "or float(_host(xp.min(X))) < -largest", ""),
    ("validation-features", "validation.py", "if in_features is not None and X.shape[1] != in_features:",
     "if in_features is not None and X.shape[1] < in_features:"),
    # -- the estimator ---------------------------------------------------------------------------------------
    ("sklearn-alpha", "sklearn.py", "l2=self.alpha, device=dev", "l2=0.0, device=dev"),
    ("sklearn-shuffle", "sklearn.py", "shuffle=bool(self.shuffle), l2=", "shuffle=True, l2="),
    ("sklearn-shuffle-seed", "sklearn.py", "device=dev, seed=shuffle_seed,", "device=dev, seed=0,"),
    # the weights are scikit-learn's Glorot draw from init_seed (_glorot); mlp's seed now seeds only Dropout's masks
    ("sklearn-init-seed", "sklearn.py", "6.0, init_seed))", "6.0, 0))"),
    ("sklearn-dropout-seed", "sklearn.py", "seed=init_seed, dtype=self.dtype)", "seed=0, dtype=self.dtype)"),
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
    # sklearn-unpickle-activation dropped: unpickling no longer calls mlp(sizes, activation=...) but rebuilds the
    # network from its layers' configs (Sequential.from_config), which carry the activation with every layer;
    # what can now be lost there is the config and the dtype (sklearn-unpickle-config, sklearn-unpickle-dtype)
    ("sklearn-predict-range", "sklearn.py", "            check_range(X, self.model_.dtype)\n", "            pass\n"),
    ("sklearn-logistic", "sklearn.py", "\"logistic\": \"sigmoid\",", "\"logistic\": \"tanh\","),
    ("sklearn-max-iter", "sklearn.py", "epochs=done + (1 if incremental else self.max_iter),",
     "epochs=done + (1 if incremental else max(1, self.max_iter - 1)),"),
    ("sklearn-lr", "sklearn.py", "return Adam(self.learning_rate_init,", "return Adam(0.001,"),
    ("sklearn-classes-order", "sklearn.py", "return self.classes_[dev.to_numpy(index)]", "return self.classes_[::-1][dev.to_numpy(index)]"),
    ("sklearn-dtype", "sklearn.py", "seed=init_seed, dtype=self.dtype)", "seed=init_seed)"),
    # == issue #18: losses, schedules, Dropout and normalization, History metrics, scikit-learn ===================
    # -- losses.py: the new losses and cross-entropy's options ---------------------------------------------------
    ("losses-mse-grad-two", "losses.py", "return diff * (2.0 * scale / k), squares / k, squares",
     "return diff * (scale / k), squares / k, squares"),
    ("losses-mse-mean-outputs", "losses.py", "return diff * (2.0 * scale / k), squares / k, squares",
     "return diff * (2.0 * scale / k), squares, squares"),
    ("losses-huber-no-clip", "losses.py", "grad = xp.minimum(xp.maximum(diff, -delta), delta) * (scale / k)",
     "grad = diff * (scale / k)"),
    ("losses-huber-half", "losses.py", "terms = inner * (size - 0.5 * inner)",
     "terms = inner * (size - inner)"),
    ("losses-bce-sigmoid-sign", "losses.py", "sigmoid = xp.where(logits >= 0, 1.0, e) / (1.0 + e)",
     "sigmoid = 1.0 / (1.0 + e)"),
    ("losses-bce-grad-mean", "losses.py", "grad = (sigmoid - y) * (scale / k)", "grad = (sigmoid - y) * scale"),
    ("losses-bce-loss-mean", "losses.py", "return grad, _sum(xp, terms) / k, wrong", "return grad, _sum(xp, terms), wrong"),
    ("losses-bce-target-threshold", "losses.py", "(logits > 0) != (y >= 0.5)", "(logits > 0) != (y > 0.5)"),
    ("losses-bce-error-entries", "losses.py", "return {\"error\": metric_sums / (n * outputs)}",
     "return {\"error\": metric_sums / n}"),
    ("losses-bce-proba-sign", "losses.py", "return xp.where(outputs >= 0, 1.0, e) / (1.0 + e)",
     "return 1.0 / (1.0 + e)"),
    ("losses-bce-strata-multilabel", "losses.py", "if len(y.shape) not in (1, 2) or (len(y.shape) == 2 and y.shape[1] != 1):",
     "if len(y.shape) not in (1, 2):"),
    ("losses-smoothing-share", "losses.py", "rows = rows * (1.0 - eps) + eps / outputs", "rows = rows * (1.0 - eps) + eps"),
    ("losses-class-weight-loss", "losses.py", "loss_sum = _sum(xp, weight * xp.log(total)) - _sum(xp, shifted * target)",
     "loss_sum = _sum(xp, xp.log(total)) - _sum(xp, shifted * target)"),
    ("losses-class-weight-grad", "losses.py", "grad = (exp / total * weight - target) * scale",
     "grad = (exp / total - target) * scale"),
    ("losses-sum-per-member", "losses.py", "return xp.sum(a, axis=(-2, -1))", "return xp.sum(a)"),
    ("stack-loss-takes-members", "stack_fit.py", "    if loss.takes_members():\n        return loss.value_and_grad",
     "    if True:\n        return loss.value_and_grad"),
    ("cupy-stacked-xent-member-sums", "backends/cupy_kernels.py", "            sums = stats.sum(axis=2)",
     "            sums = stats.sum(axis=1)"),
    ("cupy-stacked-xent-loss-axis", "backends/cupy_kernels.py", "onehot, axis=(1, 2))", "onehot, axis=(0, 2))"),
    ("validation-sample-weight-mean", "validation.py", "    return w * (n_samples / w.sum())", "    return w"),
    ("step-weighted-fused", "step.py", "loss.value_and_grad if weighted else loss_function(loss, kernels)",
     "loss_function(loss, kernels)"),
    ("losses-mse-weight-grad", "losses.py", "return weighted * (2.0 * scale / k), _sum(xp, weighted * diff) / k",
     "return diff * (2.0 * scale / k), _sum(xp, weighted * diff) / k"),
    ("losses-xent-sample-weight", "losses.py", "            target = target * weight[0]", "            pass"),
    ("split-weight-rows", "split.py", "np.asarray(sample_weight)[train]", "np.asarray(sample_weight)[:len(train)]"),
    ("sklearn-sample-weight-dropped", "sklearn.py", "log_every=1, sample_weight=sample_weight)",
     "log_every=1, sample_weight=None)"),
    ("losses-class-weight-count", "losses.py", "if self.class_weight is not None and len(self.class_weight) != outputs:",
     "if False:"),
    ("losses-fused-with-options", "losses.py", "plain = self.class_weight is None and not self.label_smoothing",
     "plain = True"),
    ("losses-rmse-outputs", "losses.py", "\"rmse\": (metric_sums / (n * outputs)) ** 0.5", "\"rmse\": (metric_sums / n) ** 0.5"),
    ("losses-r2-rows", "losses.py", "r2 = 1.0 - metric_sums / sst if sst", "r2 = 1.0 - metric_sums / n / sst if sst"),
    ("losses-sst-column-mean", "losses.py", "centred = y - xp.mean(y, axis=0)", "centred = y - xp.mean(y)"),
    ("losses-regression-range", "losses.py", "        check_range(y, dtype, \"y\")  #", "        pass  #"),
    ("losses-onehot-compare", "losses.py", "return xp.astype(labels[:, None] == columns, dtype)",
     "return xp.astype(labels[:, None] != columns, dtype)"),
    # -- schedules.py and the scheduled lr (optim.py, step.py, train.py) -----------------------------------------
    ("sched-epoch-off-by-one", "schedules.py", "return (_integer(\"step\", step, 1) - 1) // self.steps_per_epoch",
     "return _integer(\"step\", step, 1) // self.steps_per_epoch"),
    ("sched-step-floor", "schedules.py", "self.gamma ** (self.epoch(step) // self.step_size)",
     "self.gamma ** (self.epoch(step) / self.step_size)"),
    ("sched-warmup-last", "schedules.py", "        if step <= warm:\n", "        if step < warm:\n"),
    ("sched-cosine-t", "schedules.py", "t = step - 1 - warm", "t = step - warm"),
    ("sched-cosine-floor", "schedules.py", "return self.min_factor + (1.0 - self.min_factor) * 0.5",
     "return (1.0 - self.min_factor) * 0.5"),
    ("sched-warmup-round", "schedules.py", "math.floor(self.warmup * steps_per_epoch + 0.5)",
     "math.floor(self.warmup * steps_per_epoch)"),
    ("sched-cosine-epochs", "schedules.py", "length, steps_per_epoch = self.epochs or self.fit_epochs,",
     "length, steps_per_epoch = self.fit_epochs,"),
    ("sched-plateau-threshold-mode", "schedules.py",
     "bar = best * (1.0 - self.threshold) if self.threshold_mode == \"rel\" else best - self.threshold",
     "bar = best * (1.0 - self.threshold)"),
    ("sched-plateau-mode", "schedules.py", "        if self.mode == \"min\":\n            best = math.inf",
     "        if True:\n            best = math.inf"),
    ("sched-plateau-patience", "schedules.py", "if self.num_bad_epochs > self.patience:",
     "if self.num_bad_epochs >= self.patience:"),
    ("sched-plateau-cooldown", "schedules.py", "            self.cooldown_counter -= 1\n            self.num_bad_epochs = 0\n",
     "            self.cooldown_counter -= 1\n"),
    ("sched-plateau-min-lr", "schedules.py", "new = max(old * self.reduce_factor, self.min_lr)", "new = old * self.reduce_factor"),
    ("sched-plateau-load-scale", "schedules.py", "self.scale, self.best = checked[\"scale\"], checked[\"best\"]",
     "self.best = checked[\"best\"]"),
    ("sched-adaptive-tol", "schedules.py", "if sign * value > best - self.tol:", "if sign * value > best:"),
    ("sched-adaptive-best", "schedules.py", "        if sign * value < best:\n", "        if sign * value < best - self.tol:\n"),
    ("sched-adaptive-mode", "schedules.py", "sign = 1.0 if self.mode == \"min\" else -1.0", "sign = 1.0"),
    ("sched-adaptive-count-reset", "schedules.py", "                self.scale /= self.divisor\n                self.count = 0\n",
     "                self.scale /= self.divisor\n"),
    ("sched-adaptive-stop", "schedules.py", "                self.stop_training = True\n", "                pass\n"),
    ("sched-invscaling-rows", "schedules.py", "(self.epoch(step) * self.rows + 1) ** self.power_t",
     "(self.epoch(step) + 1) ** self.power_t"),
    ("optim-schedule-ignored", "optim.py", "return self.lr if self._schedule is None else self.lr * self._schedule.factor(step)",
     "return self.lr"),
    ("optim-schedule-base-lr", "optim.py", "            schedule.base_lr = self.lr\n", "            pass\n"),
    ("optim-replayable-schedule", "optim.py", "return self.constant_hyper and self._schedule is None", "return self.constant_hyper"),
    ("optim-adam-scheduled-lr", "optim.py", "return self.lr_at(step) * root2 / correction1", "return self.lr * root2 / correction1"),
    ("optim-hyper-step", "optim.py", "        return (self.lr_at(step),)\n", "        return (self.lr_at(step + 1),)\n"),
    ("step-lr-fold-step", "step.py", "lr = optimizer.lr_at(optimizer.steps + 1) if", "lr = optimizer.lr_at(optimizer.steps) if"),
    ("static-replayable-check", "static_step.py", "        if not optimizer.replayable:\n", "        if False:\n"),
    ("train-schedule-attached", "train.py", "    optimizer.schedule = schedule  #", "    pass  #"),
    ("train-schedule-resume", "train.py", "schedule.start(steps_per_epoch=steps, epochs=epochs, rows=data.n)",
     "schedule.start(steps_per_epoch=steps, epochs=epochs - initial_epoch, rows=data.n)"),
    ("train-plateau-stop", "train.py", "if plateau.stop_training:", "if False:"),
    ("train-plateau-log-every", "train.py", "if schedule is not None and schedule.reads_metrics and log_every != 1:",
     "if False:"),
    # -- counter_rng.py and dropout.py ---------------------------------------------------------------------------
    ("rng-mul-high-half", "counter_rng.py", "return ((x & _LOW) * c + ((((x >> 16) * c) & _LOW) << 16)) & MASK",
     "return ((x & _LOW) * c) & MASK"),
    ("rng-shift", "counter_rng.py", "x = x ^ (x >> 15)", "x = x ^ (x >> 16)"),
    ("rng-constant", "counter_rng.py", "_mul32(x, 0x846CA68B)", "_mul32(x, 0x846CA68A)"),
    ("rng-one-round", "counter_rng.py", "return lowbias32(hashed_index ^ key)", "return hashed_index ^ key"),
    ("rng-counter-wrap", "counter_rng.py", "return lowbias32(seed_hash ^ (counter & MASK))",
     "return lowbias32(seed_hash ^ counter)"),
    ("rng-derive-length", "counter_rng.py", "h = lowbias32(lowbias32(index & MASK) ^ len(words))",
     "h = lowbias32(index & MASK)"),
    ("rng-derive-words", "counter_rng.py", "    while seed >> 32:\n", "    if seed >> 32:\n"),
    ("dropout-no-scale", "dropout.py", "        return 1.0 / (1.0 - self.p)\n", "        return 1.0\n"),
    ("dropout-backward-scale", "dropout.py", "self.xp.where(self._keep, grad_output * self._scale, 0.0)",
     "self.xp.where(self._keep, grad_output, 0.0)"),
    ("dropout-counter-stuck", "dropout.py", "self._set_buffer(\"counter\", counter + 1)", "self._set_buffer(\"counter\", counter)"),
    ("dropout-in-eval", "dropout.py", "if not self.training or not self.p:", "if not self.p:"),
    ("dropout-threshold-scale", "dropout.py", "min(round(self.p * 2.0**32), MASK)", "min(round(self.p * 2.0**31), MASK)"),
    ("dropout-seed-unhashed", "dropout.py", "self._seed_hash = lowbias32(self.seed)", "self._seed_hash = self.seed"),
    ("dropout-row-offset", "dropout.py", "size, first = 1, offset", "size, first = 1, 0"),
    ("dropout-seed-for-index", "dropout.py", "return derive_seed(seed, index)", "return derive_seed(seed, 0)"),
    ("dropout-seed-range", "dropout.py", "not 0 <= seed <= MASK:", "not 0 <= seed:"),
    ("dropout-p-range", "dropout.py", "not 0 <= p < 1:", "not 0 <= p <= 1:"),
    # -- normalization.py, the buffers (layers.py) and the builder (models.py) ----------------------------------
    # LayerNorm and BatchNorm1d share _Norm._normalise and _normalised_backward; the axis is the one difference
    ("norm-eps-outside", "normalization.py", "self._inv = 1.0 / self.xp.sqrt(var + self.eps)",
     "self._inv = 1.0 / (self.xp.sqrt(var) + self.eps)"),
    ("ln-axis", "normalization.py", "xc = x - xp.mean(x, axis=-1, keepdims=True)", "xc = x - xp.mean(x, axis=0, keepdims=True)"),
    ("norm-backward-mean", "normalization.py", "(g - xp.mean(g, axis=axis, keepdims=True)\n", "(g\n"),
    ("norm-backward-xhat", "normalization.py", "\n                            - xhat * xp.mean(g * xhat, axis=axis, keepdims=True))", ")"),
    ("ln-backward-axis", "normalization.py", "self._normalised_backward(g, -1)", "self._normalised_backward(g, 0)"),
    ("bn-backward-axis", "normalization.py", "self._normalised_backward(g, 0)", "self._normalised_backward(g, -1)"),
    ("bn-unbiased", "normalization.py", "(m * rows / (rows - 1)) * var", "m * var"),
    ("bn-momentum-swapped", "normalization.py", "(1.0 - m) * b[\"running_mean\"] + m * mean",
     "m * b[\"running_mean\"] + (1.0 - m) * mean"),
    ("bn-eval-batch-stats", "normalization.py", "        if self.training:\n            if rows < 2:",
     "        if True:\n            if rows < 2:"),
    ("bn-count", "normalization.py", "            self._set_buffer(\"num_batches_tracked\", b[\"num_batches_tracked\"] + 1)\n", ""),
    ("bn-eval-backward", "normalization.py", "self._normalised_backward(g, 0) if self._batch_stats else g * self._inv",
     "self._normalised_backward(g, 0)"),
    ("bn-rows-check", "normalization.py", "            if rows < 2:\n", "            if rows < 1:\n"),
    ("bn-running-var-init", "normalization.py", "self.buffers[\"running_var\"] = xp.ones(", "self.buffers[\"running_var\"] = xp.zeros("),
    ("bn-couples-rows", "normalization.py", "    couples_rows = True\n", "    couples_rows = False\n"),
    ("norm-bias-grad", "normalization.py", "self.grads[\"bias\"] = xp.sum(grad_output, axis=0)",
     "self.grads[\"bias\"] = xp.mean(grad_output, axis=0)"),
    ("norm-weight-grad", "normalization.py", "xp.sum(grad_output * self._xhat, axis=0)", "xp.sum(grad_output, axis=0)"),
    ("norm-decayed", "normalization.py", "    _features = None  #", "    decayed = (\"weight\",)\n    _features = None  #"),
    ("layers-shared-buffers", "layers.py", "if layer.params or layer.buffers:", "if layer.params:"),
    ("layers-to-buffer-int", "layers.py", "dtype=\"int64\" if name in layer.integer_buffers else dtype)",
     "dtype=dtype)"),
    ("layers-state-no-buffers", "layers.py", "for store in (layer.params, layer.buffers) for name in store]",
     "for store in (layer.params,) for name in store]"),
    ("layers-load-int-check", "layers.py", "            if integer and value.dtype.kind not in \"iu\":\n",
     "            if False:\n"),
    ("layers-set-buffer-rebind", "layers.py", "            self.buffers[name][...] = value\n",
     "            self.buffers[name] = value\n"),
    ("models-norm-after-act", "models.py",
     "            if norm is not None:\n                configs.append(NORMS[norm](int(fan_in)))\n            configs.append(dict(act))\n",
     "            configs.append(dict(act))\n            if norm is not None:\n                configs.append(NORMS[norm](int(fan_in)))\n"),
    ("models-dropout-same-seed", "models.py", "                drops += 1\n", ""),
    ("models-bn-momentum", "models.py", "\"momentum\": 0.1}", "\"momentum\": 0.9}"),
    ("models-config-seed", "models.py", "model.config.update(dropout=float(dropout), seed=int(seed))",
     "model.config.update(dropout=float(dropout))"),
    # -- History metrics and the loop's hooks (history.py, train.py, split.py) ----------------------------------
    ("history-val-metric-rows", "history.py", "loss.metrics(values[:, VAL_METRIC], val.n,", "loss.metrics(values[:, VAL_METRIC], n,"),
    ("history-val-statistics", "history.py", "val.outputs, val.statistics)", "val.outputs, data.statistics)"),
    ("history-val-fields", "history.py", "return names + [f\"val_{name}\" for name in names] if validation else names",
     "return names + [\"val_loss\"] if validation else names"),
    ("train-metric-running", "train.py", "metric = metric + step_metric", "metric = step_metric"),
    ("train-monitor-check", "train.py", "if monitor is not None and monitor not in recorded:", "if False:"),
    ("train-strata", "train.py", "validation_fraction, seed, loss.strata, sample_weight)",
     "validation_fraction, seed, True, sample_weight)"),
    ("train-es-finish", "train.py", "                early_stopping.finish(model)\n", "                pass\n"),
    ("train-coupled-last-batch", "train.py", "if coupled and (batch == 1 or rows % batch == 1):",
     "if coupled and batch == 1:"),
    ("train-coupled-parallel", "train.py", "if coupled and (comm is not None or reducer is not None):", "if False:"),
    ("train-row-offset", "train.py", "layer.row_offset = lo - start", "layer.row_offset = 0"),
    ("train-mode-restored", "train.py", "            model.train(was_training)\n", "            model.train()\n"),
    ("split-strata-callable", "split.py", "labels = stratify(y_host) if callable(stratify) else",
     "labels = y_host if callable(stratify) else"),
    # -- early_stopping.py: the mode -----------------------------------------------------------------------------
    ("stopping-mode-max", "early_stopping.py", "higher = mode == \"max\" or mode == \"auto\" and",
     "higher = mode == \"auto\" and"),
    ("stopping-mode-min", "early_stopping.py", "or mode == \"auto\" and monitor.removeprefix", "or monitor.removeprefix"),
    ("stopping-auto-r2", "early_stopping.py", "_HIGHER_IS_BETTER = (\"r2\",)", "_HIGHER_IS_BETTER = ()"),
    ("stopping-val-prefix", "early_stopping.py", "monitor.removeprefix(\"val_\") in _HIGHER_IS_BETTER",
     "monitor in _HIGHER_IS_BETTER"),
    ("stopping-start-best", "early_stopping.py", "= self._sign * math.inf, None, None, 0, None", "= math.inf, None, None, 0, None"),
    ("stopping-min-delta", "early_stopping.py", "self._sign * self.best - self.min_delta:",
     "self._sign * self.best + self.min_delta:"),
    ("stopping-no-buffers", "early_stopping.py",
     "\n                                 + [(layer.buffers, name) for _, layer, name in model.named_buffers()]]", "]"),
    ("stopping-no-copy", "early_stopping.py", "xp.asarray(store[name], copy=True)", "store[name]"),
    ("stopping-mode-check", "early_stopping.py", "if mode not in (\"auto\", \"min\", \"max\"):", "if False:"),
    # -- sklearn.py: MLPRegressor, scikit-learn's stopping rule and rates, pickling --------------------------------
    ("sklearn-unpickle-config", "sklearn.py", "                model.config = config\n", "                pass\n"),
    ("sklearn-unpickle-dtype", "sklearn.py", "Sequential.from_config(layers, dtype=dtype)", "Sequential.from_config(layers)"),
    ("sklearn-stop-at-equal", "sklearn.py", "if est._no_improvement_count <= est.n_iter_no_change:",
     "if est._no_improvement_count < est.n_iter_no_change:"),
    ("sklearn-adaptive", "sklearn.py", "optimizer.lr /= 5.0", "optimizer.lr /= 10.0"),
    ("sklearn-es-restore", "sklearn.py", "            store[name] = value\n", "            pass\n"),
    ("sklearn-partial-optimizer", "sklearn.py", "if not incremental or getattr(self, \"_optimizer\", None) is None:",
     "if True:"),
    ("sklearn-invscaling-t", "sklearn.py", "/ (est.t_ + 1) ** est.power_t", "/ (est.n_iter_ + 1) ** est.power_t"),
    ("sklearn-t-rows", "sklearn.py", "est.t_ += self.rows", "est.t_ += 1"),
    ("sklearn-loss-tol", "sklearn.py", "if loss > est.best_loss_ - est.tol else 0", "if loss > est.best_loss_ else 0"),
    ("sklearn-score-tol", "sklearn.py", "if score < est.best_validation_score_ + est.tol", "if score < est.best_validation_score_"),
    ("sklearn-adaptive-reset", "sklearn.py", "                est._no_improvement_count = 0\n", "                pass\n"),
    ("sklearn-adaptive-floor", "sklearn.py", "if optimizer.lr > 1e-6:", "if optimizer.lr > 0:"),
    ("sklearn-squared-error-half", "sklearn.py", "squares * (0.5 / outputs.shape[1])", "squares * (1.0 / outputs.shape[1])"),
    ("sklearn-squared-error-grad", "sklearn.py", "return diff * scale, squares", "return diff * (2.0 * scale), squares"),
    ("sklearn-glorot-logistic", "sklearn.py", "2.0 if self.activation == \"logistic\" else 6.0", "6.0"),
    ("sklearn-glorot-bias", "sklearn.py", "state[f\"{index}.bias\"] = rng.uniform(-bound, bound, fan_out)",
     "state[f\"{index}.bias\"] = np.zeros(fan_out)"),
    ("sklearn-regressor-ravel", "sklearn.py", "        if outputs.shape[1] == 1:\n", "        if False:\n"),
    ("sklearn-stratify", "sklearn.py", "    _stratify = True  #", "    _stratify = False  #"),
    ("sklearn-regressor-outputs", "sklearn.py", "        elif targets.shape[1] != self.n_outputs_:\n", "        elif False:\n",
     "equivalent: fit's own target check (DeviceData, check_real_targets) refuses the same y before any epoch with "
     "one InputError, a ValueError naming its columns and the model's outputs; this check only words it as "
     "scikit-learn does"),
    ("sklearn-es-best-score", "sklearn.py", "if score > est.best_validation_score_:", "if score >= est.best_validation_score_:"),
    # == checkpoints, outputs and file readers (issue #16: the checkpoint and reader part) =======================
    # -- checkpoint.py: the checksum ------------------------------------------------------------------------------
    ("ckpt-digest-names", "checkpoint.py", "h.update(json.dumps([key, array.dtype.name, list(array.shape)])",
     "h.update(json.dumps([array.dtype.name, list(array.shape)])"),
    ("ckpt-digest-dtypes", "checkpoint.py", "h.update(json.dumps([key, array.dtype.name, list(array.shape)])",
     "h.update(json.dumps([key, list(array.shape)])"),
    ("ckpt-digest-shapes", "checkpoint.py", "h.update(json.dumps([key, array.dtype.name, list(array.shape)])",
     "h.update(json.dumps([key, array.dtype.name])"),
    ("ckpt-digest-bytes", "checkpoint.py", "        h.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(\"<\")).tobytes())\n",
     "        pass\n"),
    ("ckpt-digest-meta-keys", "checkpoint.py", "h.update(json.dumps([key, meta[key]]).encode()",
     "h.update(json.dumps(meta[key]).encode()"),
    ("ckpt-digest-no-meta", "checkpoint.py", "    for key in sorted(meta):\n        if key != \"sha256\":",
     "    for key in sorted(meta)[:0]:\n        if key != \"sha256\":"),
    ("ckpt-checksum-presence-only", "checkpoint.py", "if meta.get(\"sha256\") != _digest(tensors, meta):",
     "if \"sha256\" not in meta:"),
    # -- checkpoint.py: what the loader checks -------------------------------------------------------------------
    ("ckpt-optim-gaps", "checkpoint.py", "if sorted(buffers) != list(range(len(buffers))):", "if False:"),
    ("ckpt-optim-index-name", "checkpoint.py", "            if not re.fullmatch(r\"[0-9]{1,4}\", index):",
     "            if not re.fullmatch(r\"[0-9]{1,9}\", index):"),
    ("ckpt-optim-index-unchecked", "checkpoint.py", "            if not re.fullmatch(r\"[0-9]{1,4}\", index):",
     "            if False:"),
    ("ckpt-optim-buffer-dtype", "checkpoint.py", "            if buffer.dtype.kind != \"f\":", "            if False:"),
    ("ckpt-optim-order", "checkpoint.py", "tuple(buffers[i] for i in range(len(buffers)))",
     "tuple(buffers[i] for i in reversed(range(len(buffers))))"),
    ("ckpt-param-dtype", "checkpoint.py", "        if key not in integers and value.dtype.kind != \"f\":",
     "        if False:"),
    ("ckpt-shape-row-bias", "checkpoint.py", "if got != shape and not (key.endswith(\".bias\") and got == (1,) + shape):",
     "if got != shape:"),
    ("ckpt-shape-any", "checkpoint.py", "if got != shape and not (key.endswith(\".bias\") and got == (1,) + shape):",
     "if got != shape and not got == (1,) + shape:"),
    ("ckpt-shape-unexpected", "checkpoint.py", "    unexpected = sorted(set(state) - set(expected))\n    if unexpected:",
     "    unexpected = sorted(set(state) - set(expected))\n    if False:"),
    ("ckpt-newer-format", "checkpoint.py", "if int(version) > FORMAT_VERSION:", "if int(version) > FORMAT_VERSION + 1:"),
    ("ckpt-dtype-float16", "checkpoint.py", "if meta[\"dtype\"] not in (\"float32\", \"float64\"):",
     "if meta[\"dtype\"] not in (\"float32\", \"float64\", \"float16\"):"),
    ("ckpt-natural-order", "checkpoint.py", "sorted(tensors.items(), key=lambda item: _natural(item[0]))",
     "sorted(tensors.items())"),
    ("ckpt-number-open-low", "checkpoint.py", "(value > low if low_open else value >= low)", "(value >= low)"),
    ("ckpt-int-high", "checkpoint.py", "not isinstance(value, int) or not low <= value <= high:",
     "not isinstance(value, int) or not low <= value:"),
    # -- checkpoint.py: save and restore_optimizer ---------------------------------------------------------------
    ("ckpt-save-foreign-state", "checkpoint.py", "            if key not in keys:", "            if False:"),
    ("ckpt-save-reserved", "checkpoint.py", "if key in _RESERVED or key == \"__metadata__\":", "if key == \"__metadata__\":"),
    ("ckpt-restore-dtype", "checkpoint.py", "dev.asarray(np.array(b, dtype=model.dtype, copy=True))",
     "dev.asarray(np.array(b, copy=True))"),
    ("ckpt-restore-count", "checkpoint.py", "if count is not None and len(buffers) != count:", "if False:"),
    ("ckpt-restore-shape", "checkpoint.py", "            if tuple(buffer.shape) != shape:", "            if False:"),
    ("ckpt-restore-unknown", "checkpoint.py", "    if unknown:\n        raise CheckpointError(f\"the checkpoint's optimizer",
     "    if False:\n        raise CheckpointError(f\"the checkpoint's optimizer"),
    ("ckpt-restore-l2", "checkpoint.py", "optimizer.bind(model, config.get(\"l2\", optimizer.l2))",
     "optimizer.bind(model, optimizer.l2)"),
    ("ckpt-restore-steps", "checkpoint.py", "optimizer.steps = int(config.get(\"steps\", 0))", "optimizer.steps = 0"),
    ("ckpt-write-error", "checkpoint.py", "    except OSError as exc:\n        raise CheckpointError(f\"cannot write {what}",
     "    except ValueError as exc:\n        raise CheckpointError(f\"cannot write {what}"),
    # -- outputs.py: atomic replacement -----------------------------------------------------------------------------
    ("out-no-flush", "outputs.py", "            fh.flush()\n", "            pass\n"),
    ("out-no-fsync", "outputs.py", "            os.fsync(fh.fileno())\n", "            pass\n"),
    ("out-tmp-elsewhere", "outputs.py", "suffix=\".tmp\",\n                                   dir=directory)",
     "suffix=\".tmp\",\n                                   dir=None)"),
    ("out-no-dir-fsync", "outputs.py", "    fsync_directory(directory)\n    return path", "    return path"),
    ("out-dir-fsync-first", "outputs.py",
     "        os.replace(tmp, path)\n        tmp = None\n    finally:\n        if tmp is not None:\n            try:\n"
     "                os.unlink(tmp)\n            except OSError:\n                pass\n    fsync_directory(directory)\n",
     "        fsync_directory(directory)\n        os.replace(tmp, path)\n        tmp = None\n    finally:\n"
     "        if tmp is not None:\n            try:\n                os.unlink(tmp)\n            except OSError:\n"
     "                pass\n"),
    ("out-rename-unfsynced", "outputs.py", "            fh.flush()\n            os.fsync(fh.fileno())\n        os.replace(tmp, path)\n",
     "            fh.flush()\n        os.replace(tmp, path)\n        os.fsync(os.open(path, os.O_RDONLY))\n"),
    ("out-keep-tmp", "outputs.py", "                os.unlink(tmp)\n", "                pass\n"),
    ("out-mode", "outputs.py", "                os.fchmod(fh.fileno(), mode)\n", "                pass\n"),
    # -- outputs.py: sweeping temporaries, recognising its own files, checking outputs --------------------------
    ("out-stale-age", "outputs.py", "now - st.st_mtime > STALE_SECONDS", "now - st.st_mtime < STALE_SECONDS"),
    ("out-sweep-any-host", "outputs.py", "(match.group(1) == _HOST and not _alive(int(match.group(2))))",
     "(not _alive(int(match.group(2))))"),
    ("out-dead-alive", "outputs.py", "    except ProcessLookupError:\n        return False", "    except ProcessLookupError:\n        return True"),
    ("out-sweep-special", "outputs.py", "            if not stat.S_ISREG(st.st_mode):\n                continue",
     "            if stat.S_ISDIR(st.st_mode):\n                continue"),
    ("out-pattern-dot", "outputs.py", "re.compile(r\"^\\..*\\.portablenn-", "re.compile(r\"^.*\\.portablenn-"),
    ("out-input-check", "outputs.py", "        if source is not None and _same(path, source):", "        if False:"),
    ("out-overwrite-anything", "outputs.py", "if overwrite or st.st_size == 0 or is_ours(path, kind):", "if True:"),
    ("out-empty-file", "outputs.py", "if overwrite or st.st_size == 0 or is_ours(path, kind):",
     "if overwrite or is_ours(path, kind):"),
    ("out-header-length", "outputs.py", "if not 2 <= length <= 100_000_000:", "if not 2 <= length <= 10_000:"),
    ("out-log-cut-line", "outputs.py", "return records > 0 and not line.endswith(\"\\n\")", "return False"),
    ("out-distinct-paths", "outputs.py", "if resolved == other or _same(resolved, other):", "if _same(resolved, other):"),
    ("out-distinct-abspath", "outputs.py", "resolved = Path(os.path.realpath(path))",
     "resolved = Path(os.path.abspath(path))"),
    ("out-header-past-the-file", "outputs.py", "if length > os.fstat(fh.fileno()).st_size - 8:", "if False:"),
    ("out-name-cut-by-characters", "outputs.py", "    while len(os.fsencode(name)) > limit:\n        name = name[:-1]\n",
     ""),
    ("out-empty-path", "outputs.py", "    if os.fspath(path) == \"\":\n", "    if False:\n"),
    ("out-png-any-picture", "outputs.py", "            if kind in (b\"IDAT\", b\"IEND\"):\n                return False\n",
     "            return True\n"),
    ("out-trailing-separator", "outputs.py", "if os.fspath(path).endswith((\"/\", os.sep)):", "if False:"),
    ("onnx-export-in-place", "onnx.py", "    _save(onnx, proto, path)\n", "    onnx.save(proto, os.fspath(path))\n"),
    # -- _fileio.py: the directory fsync -----------------------------------------------------------------------------
    ("fileio-no-fsync", "_fileio.py", "        os.fsync(fd)\n", "        pass\n"),
    ("fileio-write-only", "_fileio.py", "os.open(directory, os.O_RDONLY)", "os.open(directory, os.O_WRONLY)"),
    ("fileio-no-close", "_fileio.py", "        os.close(fd)", "        pass"),
    ("fileio-fsync-raises", "_fileio.py", "    except OSError:\n        pass", "    except ValueError:\n        pass"),
    ("fileio-open-raises", "_fileio.py", "    except OSError:\n        return", "    except ValueError:\n        return"),
    # -- datasets/files.py: CSV -----------------------------------------------------------------------------------
    ("csv-range-negative", "datasets/files.py", "too_large = np.abs(data) > _FLOAT32_MAX",
     "too_large = data > _FLOAT32_MAX"),
    ("csv-range-labels", "datasets/files.py", "            too_large[:, -1] = False  # a label",
     "            pass  # a label"),
    ("csv-range-max", "datasets/files.py", "too_large = np.abs(data) > _FLOAT32_MAX",
     "too_large = np.abs(data) >= _FLOAT32_MAX"),
    ("csv-range-float64", "datasets/files.py", "    if dtype == np.float32:\n        too_large", "    if True:\n        too_large"),
    ("csv-header-pandas-1", "datasets/files.py", "for offset in (0, 1):", "for offset in (0,):"),
    ("csv-header-pandas-0", "datasets/files.py", "for offset in (0, 1):", "for offset in (1,):"),
    ("csv-header-nonfinite", "datasets/files.py", " or not math.isfinite(float(v))", ""),
    ("csv-header-line", "datasets/files.py", "            return number\n", "            return 1\n"),
    ("csv-header-strip", "datasets/files.py", "v.strip() == str(c + offset)", "v == str(c + offset)"),
    ("csv-row-after-header", "datasets/files.py", "if row[0] > header)", "if row[0] >= header)"),
    ("csv-slow-header", "datasets/files.py", "        if number <= header:\n            continue", "        if number < header:\n            continue"),
    ("csv-cell-line", "datasets/files.py", "    number, line = _data_row(path, header, r)\n", "    number, line = _data_row(path, 0, r)\n"),
    ("csv-one-column", "datasets/files.py", "if data.shape[1] < k + 1:", "if data.shape[1] < k + 2:"),
    ("csv-label-negative", "datasets/files.py", "    if (labels < 0).any():", "    if (labels < -1).any():"),
    ("csv-label-max", "datasets/files.py", "if (labels > _MAX_LABEL).any():", "if (labels >= _MAX_LABEL).any():"),
    ("csv-class-limit", "datasets/files.py", "classes, rows = int(labels.max()) + 1, labels.shape[0]\n    if classes > class_limit(rows):",
     "classes, rows = int(labels.max()) + 1, labels.shape[0]\n    if classes > class_limit(rows) + 1:"),
    # -- datasets/files.py: NPZ and NPY -----------------------------------------------------------------------------
    ("npz-fewer-labels", "datasets/files.py", "if y.shape[0] != X.shape[0]:", "if y.shape[0] > X.shape[0]:"),
    ("npz-no-columns", "datasets/files.py", "if X.shape[0] == 0 or X.shape[1] == 0:", "if X.shape[0] == 0:"),
    ("npz-range-negative", "datasets/files.py", "largest = float(np.max(np.abs(X)))", "largest = float(np.max(X))"),
    ("npz-range-max", "datasets/files.py", "        if largest > _FLOAT32_MAX:", "        if largest >= _FLOAT32_MAX:"),
    ("npz-labels-infinite", "datasets/files.py", "if not np.isfinite(y).all() or (y != np.round(y)).any():",
     "if (y != np.round(y)).any():"),
    ("npz-label-negative", "datasets/files.py", "if y.size and y.min() < 0:", "if y.size and y.min() < -1:"),
    ("npz-label-max", "datasets/files.py", "if y.size and y.max() > _MAX_LABEL:", "if y.size and y.max() >= _MAX_LABEL:"),
    ("npz-class-limit", "datasets/files.py", "    classes = int(y.max()) + 1\n    if classes > class_limit(rows):",
     "    classes = int(y.max()) + 1\n    if classes > class_limit(rows) + 1:"),
    ("npz-default-dtype", "datasets/files.py", "dtype = np.dtype(np.float64) if X.dtype == np.float64 else np.dtype(np.float32)",
     "dtype = np.dtype(np.float32)"),
    ("npz-complex", "datasets/files.py", "    if X.dtype.kind not in \"biuf\":", "    if X.dtype.kind not in \"biufc\":"),
    ("npz-stored-bytes", "datasets/files.py", "    stored = info.file_size - offset\n    if nbytes > stored:",
     "    stored = info.file_size - offset\n    if False:"),
    ("npz-deflate-ratio", "datasets/files.py", "if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size",
     "if False and info.file_size"),
    ("npz-memory", "datasets/files.py", "check_memory(2 * nbytes, f\"NPZ file", "check_memory(0, f\"NPZ file"),
    ("npy-stored-bytes", "datasets/files.py", "    stored = path.stat().st_size - offset\n    if nbytes > stored:",
     "    stored = path.stat().st_size - offset\n    if nbytes > stored + 1:"),
    ("npy-object", "datasets/files.py", "    if dtype.hasobject:\n        raise DatasetError(f\"NPY file", "    if False:\n        raise DatasetError(f\"NPY file"),
    # -- datasets/mnist.py: IDX -----------------------------------------------------------------------------------
    ("idx-label-10", "datasets/mnist.py", "labels.max() > 9:", "labels.max() > 10:"),
    ("idx-empty-split", "datasets/mnist.py", "if labels.size and labels.max() > 9:", "if labels.max() > 9:"),
    ("idx-rows-28x28", "datasets/mnist.py", "images.ndim != 3 or images.shape[1:] != (28, 28)",
     "images.ndim != 3 or images.shape[1] != 28"),
    ("idx-images-dtype", "datasets/mnist.py", "if images.dtype != np.uint8 or images.ndim", "if images.ndim"),
    ("idx-labels-dtype", "datasets/mnist.py", "if labels.dtype != np.uint8 or labels.ndim != 1:", "if labels.ndim != 1:"),
    ("idx-magic-second", "datasets/mnist.py", "magic[0] != 0 or magic[1] != 0", "magic[0] != 0"),
    ("idx-magic-first", "datasets/mnist.py", "magic[0] != 0 or magic[1] != 0", "magic[1] != 0"),
    ("idx-magic-short", "datasets/mnist.py", "if len(magic) < 4 or", "if len(magic) < 3 or"),
    ("idx-header-short", "datasets/mnist.py", "if len(raw_dims) < 4 * ndim:", "if len(raw_dims) < 4 * ndim - 4:"),
    ("idx-raw-size", "datasets/mnist.py", "if not gz and size - header != expected:", "if not gz and size - header < expected:"),
    ("idx-gzip-ratio", "datasets/mnist.py", "if gz and expected + header > size * _DEFLATE_RATIO:", "if False:"),
    ("idx-gzip-extra", "datasets/mnist.py", "extra = len(fh.read(_CHUNK))", "extra = 0"),
    ("idx-gzip-extra-chunk", "datasets/mnist.py", "if extra < _CHUNK else", "if extra <= _CHUNK else"),
    ("idx-native-order", "datasets/mnist.py", "return array.astype(dtype.newbyteorder(\"=\"), copy=True)", "return array.copy()"),
    ("idx-memory", "datasets/mnist.py", "check_memory(2 * expected,", "check_memory(0,"),
    ("idx-scale", "datasets/mnist.py", "X /= np.float32(255)", "X /= np.float32(256)"),
    # -- validation.py ------------------------------------------------------------------------------------------
    ("valid-class-limit-min", "validation.py", "return max(MIN_CLASS_LIMIT, CLASSES_PER_ROW * int(rows))",
     "return min(MIN_CLASS_LIMIT, CLASSES_PER_ROW * int(rows))"),
    ("valid-class-limit-rows", "validation.py", "return max(MIN_CLASS_LIMIT, CLASSES_PER_ROW * int(rows))",
     "return max(MIN_CLASS_LIMIT, CLASSES_PER_ROW * int(rows) + 1)"),
    ("valid-memory-limit", "validation.py", "if limit is not None and nbytes > limit:", "if limit is not None and nbytes >= limit:"),
    ("valid-memory-rlimit", "validation.py", "if limit is None or left < limit:", "if limit is None:"),
    ("valid-format-bytes", "validation.py", "if n < 1024 or unit == \"PiB\":", "if n <= 1024 or unit == \"PiB\":"),
    ("valid-training-grads", "validation.py", "params * itemsize * (2 + optimizer_buffers)", "params * itemsize * (1 + optimizer_buffers)"),
    ("valid-training-eval-rows", "validation.py", "pass_rows = max(int(batch_rows), min(int(rows), eval_rows))",
     "pass_rows = max(int(batch_rows), int(rows))"),
    ("valid-range-max", "validation.py", "if float(_host(xp.max(X))) > largest", "if float(_host(xp.max(X))) >= largest"),
    ("valid-labels-infinite", "validation.py", "if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):",
     "if not np.all(y == np.round(y)):"),
    ("valid-labels-high", "validation.py", "if high >= num_classes:", "if high > num_classes:"),
    ("valid-labels-count", "validation.py", "if y.shape[0] != n_samples:\n        raise InputError(f\"X has {n_samples} samples but {name} has {y.shape[0]} labels",
     "if y.shape[0] > n_samples:\n        raise InputError(f\"X has {n_samples} samples but {name} has {y.shape[0]} labels"),
    ("valid-batch-size-n", "validation.py", "if not 1 <= batch_size <= n_samples:", "if not 1 <= batch_size < n_samples:"),
    ("valid-epochs-zero", "validation.py", "or epochs < 0:", "or epochs < 1:"),
    ("valid-l2-finite", "validation.py", "if not (l2 >= 0 and math.isfinite(l2)):", "if not (l2 >= 0):"),
    ("valid-finite-sum", "validation.py", "and not _finite(_host(_sum(xp, X))):", "and False:"),
    # the pure step of immutable arrays (JAX), #19
    ("pure-hyper-baked", "pure_step.py", "hyper = optimizer.hyper(optimizer.steps + 1)", "hyper = optimizer.hyper(1)"),
    ("pure-loss-slot", "pure_step.py", "dtype=self.dev.index_dtype) == index\n", "dtype=self.dev.index_dtype) == 0\n"),
    ("pure-metric-dropped", "pure_step.py", "return state, (losses, total + metric)", "return state, (losses, total)"),
    ("pure-state-kept", "pure_step.py", "        state, self.sums = self._run(self._collect(),",
     "        state, self.sums = self._run(getattr(self, '_first', None) or setattr(self, '_first', self._collect()) "
     "or self._first,"),
    ("pure-no-restore", "pure_step.py", "            self._restore(saved)\n", "            pass\n"),
    ("pure-order-ignored", "pure_step.py", "        if order is not None:\n            positions",
     "        if False:\n            positions"),
    ("pure-steps-count", "pure_step.py", "        optimizer.steps += 1\n        self._rebind(state)",
     "        self._rebind(state)"),
    ("pure-reuse-ignores-settings", "pure_step.py", "           clip_norm, type(optimizer), tuple(settings))",
     "           clip_norm, type(optimizer), ())"),
    ("pure-reuse-no-adopt", "pure_step.py", "        held[1].adopt(data)\n", "        pass\n"),
    ("jax-dtype-x64", "backends/jax.py", "jax.config.update(\"jax_enable_x64\", True)", "pass"),
    # a stack's NumPy fast paths (portablenn.stack, the fused SGD step in portablenn.stack_optim)
    ("stack-lazy-unscaled", "stack.py", "/ self._scale[1]\n", "/ 1.0\n"),
    ("stack-lazy-forward", "stack.py", "                members *= self._scale[1]\n            if \"bias\"",
     "                pass\n            if \"bias\""),
    ("stack-lazy-no-fold", "stack.py", "self._scale[0].min() * min(keep_host) < self.lazy_min_scale", "False"),
    ("stack-lazy-penalty", "stack_optim.py", "                term = term * scale\n", "                term = term\n"),
    ("stack-lazy-unread", "stack_fit.py", "                    stacked.materialize()  # the members'",
     "                    pass  # the members'"),
    ("stack-joint-bias-grad", "stack.py", "g[:, :-1, :], g[:, -1:, :]", "g[:, :-1, :], 0 * g[:, -1:, :]"),
    ("stack-joint-decays-bias", "stack_optim.py", "                    weight *= a[\"keep\"]  # the weight rows",
     "                    joint *= a[\"keep\"]  # the weight rows"),
    ("sweep-schedule-ignored", "stack_optim.py", "        if self.schedules is None:\n            return a[\"lr\"]",
     "        if True:\n            return a[\"lr\"]"),
    ("sweep-schedule-one-factor", "stack_optim.py", "                lr = a[\"lr\"] * self.model.device.asarray(",
     "                lr = a[\"lr\"] * factors[0] + 0 * self.model.device.asarray("),
    ("sweep-schedule-keep-stale", "stack_optim.py", "            a[\"keep\"] = 1.0 - lr * a[\"l2\"]\n", "            pass\n"),
    ("sweep-clip-ignored", "stack_optim.py", "        layer.grads[name] = layer.grads[name] * factor\n",
     "        layer.grads[name] = layer.grads[name] * 1.0\n"),
    ("sweep-early-no-restore", "stack_fit.py", "            stops.finish()\n", "            pass\n"),
    ("sweep-early-zeroed", "stack_fit.py", "opt.freeze(active, zero=[i in history.diverged for i in range(M)])",
     "opt.freeze(active)"),
    ("sweep-final-not-restored", "sweep.py",
     "            records = [r for r in records if r[\"epoch\"] == self.restored[i]] or records\n", "            pass\n"),
    ("sweep-save-no-stopping-state", "cli/sweep.py", "        keep[\"early_stopping_state\"], _ = rule.state_dict(model)",
     "        pass"),
    ("sweep-save-no-schedule", "stack_optim.py", "            opt.schedule = copy.deepcopy(self.schedules[i])", "            pass"),
    ("sweep-gemm-per-member-on-gpu", "stack_optim.py", "            if least is not None and weight[0].size >= least:",
     "            if weight[0].size >= (least or 0):"),
    ("sweep-jax-hyper-baked", "stack_optim.py", "        hyper = self.hyper(self.steps) if hyper is None else hyper",
     "        hyper = self.hyper(self.steps)"),
    ("sweep-jax-eager", "stack_fit.py", "    if not dev.backend.mutable and not own_orders:", "    if False:"),
    ("sweep-stopped-state-zeroed", "stack_optim.py", "        steps, held = self._stopped.get(i, (self.steps, None))",
     "        steps, held = self.steps, None"),
    ("sweep-stopped-counters", "stack.py", "            for name, value in (own or {}).items():",
     "            for name, value in {}.items():"),
    ("sweep-schedule-restarted", "stack_optim.py", "        elif self.schedules is None or (schedule is not getattr(",
     "        elif True or (schedule is not getattr("),
    ("sweep-stopped-bn-drift", "stack_fit.py", "                    stops.settle()\n", "\n"),
    ("sweep-adam-layout-lost", "stack_optim.py", "        if mutable:  # the rule made new arrays: NumPy",
     "        if False:  # the rule made new arrays: NumPy"),
    # random search (portablenn.sweep.sample, portablenn sweep --trials)
    ("search-log-as-linear", "sweep.py", "        return np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))",
     "        return rng.uniform(self.low, self.high, n)"),
    ("search-no-clamp", "sweep.py", "        return min(max(float(f\"{v:.{min(digits, 6)}g}\"), self.low), self.high)",
     "        return float(f\"{v:.{min(digits, 6)}g}\")"),
    ("search-with-replacement", "sweep.py", "        while combo in seen:", "        while False and combo in seen:"),
    ("search-one-stream", "sweep.py", "v, rng = values[key], np.random.default_rng([int(search_seed), k])",
     "v, rng = values[key], np.random.default_rng([int(search_seed), 0])"),
    ("search-cli-seed-ignored", "cli/sweep.py", "sample(args.trials, search_seed=args.search_seed, **lists)",
     "sample(args.trials, search_seed=0, **lists)"),
    ("search-scatter-missing", "cli/sweep_plots.py", "    if random:\n", "    if False:\n"),
    ("stack-joint-unused", "stack.py", "            self.params[\"weight\"], self.params[\"bias\"] = self._joint[1:]\n",
     "            self._joint = None\n"),
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
        shutil.copytree(REPO / "docs", copy / "docs", ignore=shutil.ignore_patterns("img"))  # tests read docs/*.md
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
