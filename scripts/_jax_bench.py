"""bench.py's "jax" section: portablenn on a JAX device (the whole step compiled by ``jax.jit``) beside portablenn on
NumPy, the hand-written NumPy loop and JAX written by hand with ``jax.grad``, on the MNIST epoch (784-100-10, batch
100, in-order SGD, float32) and the wide regime (784-1024-1024-10, batch 1024).

A JAX run compiles its step first, so every variant trains ``EPOCHS`` epochs per round and reports two figures:
the first epoch's extra time over a steady one (compilation, for the JAX rows; ~0 for NumPy) and the steady epoch
(the minimum over the later epochs and the rounds). The variants are interleaved, their order rotated each round.
"""
import statistics
import time

import numpy as np

import portablenn as pn

EPOCHS = 3


def jax_by_hand(X, y, Ws, batch, lr, platform="cpu"):
    """JAX as its users write it: the mean cross-entropy of a bias-free ReLU MLP, ``jax.grad``, SGD, one jitted
    step per minibatch (sliced in it by ``lax.dynamic_slice``), the weights donated. ``run(epochs) -> (weights,
    [seconds per epoch])``."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    device = jax.devices(platform)[0]
    Xd, yd = jax.device_put(X, device), jax.device_put(y, device)

    def loss(weights, xb, yb):
        a = xb
        for W in weights[:-1]:
            a = jnp.maximum(a @ W, 0.0)
        logits = a @ weights[-1]
        picked = jnp.take_along_axis(logits, yb[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)

    def step(weights, start):
        xb = jax.lax.dynamic_slice_in_dim(Xd, start, batch)
        yb = jax.lax.dynamic_slice_in_dim(yd, start, batch)
        grads = jax.grad(loss)(weights, xb, yb)
        return tuple(W - lr * g for W, g in zip(weights, grads))

    step = jax.jit(step, donate_argnums=(0,))

    def run(epochs=1):
        weights, seconds = tuple(jax.device_put(W, device) for W in Ws), []
        for _ in range(epochs):
            began = time.perf_counter()
            for i in range(0, X.shape[0] - batch + 1, batch):
                weights = step(weights, i)
            jax.block_until_ready(weights)
            seconds.append(time.perf_counter() - began)
        return [np.asarray(W) for W in weights], seconds
    return run


def portablenn_run(spec, X, y, Ws, batch, lr):
    """``run(epochs) -> (weights, [seconds per epoch])``: ``pn.fit`` of the bias-free MLP from ``Ws`` on ``spec``;
    the seconds are the History's (a compiling device's first epoch includes its compilation)."""
    dev = pn.device(spec)
    sizes = [Ws[0].shape[0]] + [W.shape[1] for W in Ws]
    keys = [f"{2 * i}.weight" for i in range(len(Ws))]
    model = pn.mlp(sizes, bias=False).to(dev)
    Xd, yd = dev.asarray(X), dev.asarray(y)

    def run(epochs=1):
        model.load_state_dict(dict(zip(keys, Ws)))
        history = pn.fit(model, Xd, yd, optimizer=pn.SGD(lr), epochs=epochs, batch_size=batch, shuffle=False)
        state = model.state_dict()
        return [state[k] for k in keys], history["seconds"]
    return run


def numpy_run(loop, X, y, Ws):
    """``run(epochs) -> (weights, [seconds per epoch])`` of ``loop(X, y, Ws)``, the hand-written NumPy epoch."""
    def run(epochs=1):
        seconds = []
        for _ in range(epochs):
            began = time.perf_counter()
            weights = loop(X, y, Ws)
            seconds.append(time.perf_counter() - began)
        return weights, seconds
    return run


def compare(title, loop, X, y, Ws, batch, lr, repeat, jax_spec="jax:cpu", reference="hand-written NumPy (reference)"):
    """Check every variant's one-epoch weights against the NumPy reference ``loop(X, y, Ws)``, then time them
    interleaved; prints a table and returns its rows."""
    variants, failed = {reference: numpy_run(loop, X, y, Ws)}, {}
    for name, make in (("portablenn numpy (fast path)", lambda: portablenn_run("cpu", X, y, Ws, batch, lr)),
                       (f"portablenn {jax_spec} (jax.jit of the whole step)",
                        lambda: portablenn_run(jax_spec, X, y, Ws, batch, lr)),
                       (f"JAX by hand, jax.grad + jit ({jax_spec.split(':')[1]})",
                        lambda: jax_by_hand(X, y, Ws, batch, lr, jax_spec.split(":")[1]))):
        try:
            variants[name] = make()
        except Exception as exc:
            failed[name] = f"set-up raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    expected, _ = variants[reference](1)
    scale = max(float(np.max(np.abs(W))) for W in expected)
    check = {}
    for name in list(variants):
        got, _ = variants[name](1)
        check[name] = max(float(np.max(np.abs(np.asarray(g, np.float64) - e))) for g, e in zip(got, expected)) / scale
        if not check[name] <= 1e-3:
            failed[name] = f"weights differ from the NumPy reference by {check[name]:.1e} relative"
            del variants[name]
    firsts, steady = {name: [] for name in variants}, {name: [] for name in variants}
    names = list(variants)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _, seconds = variants[name](EPOCHS)
            firsts[name].append(seconds[0])
            steady[name].extend(seconds[1:])
    ref = min(steady[reference])
    print(f"\n{title}, {EPOCHS} epochs per run, {repeat} interleaved rounds"
          "\n| variant | steady epoch, min ms | median ms | / NumPy loop | first epoch's extra (compile), median ms |"
          " max rel. weight diff |\n|---|---:|---:|---:|---:|---:|")
    rows = []
    for name in names:
        best, median = min(steady[name]), statistics.median(steady[name])
        extra = statistics.median(first - best for first in firsts[name])
        rows.append({"variant": name, "status": "ok", "min": best, "median": median, "ratio": best / ref,
                     "compile": extra, "max_rel_diff": check[name]})
        print(f"| {name} | {best * 1e3:.1f} | {median * 1e3:.1f} | {best / ref:.2f}x | {extra * 1e3:.0f} | "
              f"{check[name]:.1e} |")
    for name, reason in failed.items():
        rows.append({"variant": name, "status": "FAILED", "reason": reason})
        print(f"| {name} | FAILED: {reason} | | | | |")
    return rows, failed


def jax_section(repeat, mnist, wide, jax_spec="jax:cpu"):
    """Both workloads; ``mnist`` and ``wide`` are ``(loop, X, y, Ws, data name)``, ``loop(X, y, Ws)`` the
    hand-written NumPy epoch (bench.py's ``numpy_loop``, ``_wide.wide_numpy_loop``)."""
    loop, X, y, Ws, name = mnist
    rows, failed = compare(f"MNIST epoch on {jax_spec}, {name}, 784-100-10 no bias, batch 100, in-order SGD lr 0.2, "
                           "float32", loop, X, y, Ws, 100, 0.2, repeat, jax_spec)
    loop, X, y, Ws, name = wide
    wide_rows, wide_failed = compare(f"Wide regime on {jax_spec}, {name}, 784-1024-1024-10 no bias, batch 1024, "
                                     "SGD lr 0.05, float32", loop, X, y, Ws, 1024, 0.05, repeat, jax_spec)
    return {"mnist": rows, "wide": wide_rows}, {**failed, **{f"wide: {k}": v for k, v in wide_failed.items()}}
