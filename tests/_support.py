"""Small shared helpers for the test modules (device/dtype checks, host reference maths, snapshots)."""
import numpy as np
import pytest

import portablenn as pn


def require_dtype(dev, dtype):
    """Skip the calling test where ``dev`` cannot hold ``dtype`` (float64 on array_api_strict:no_float64)."""
    if not dev.supports(dtype):
        pytest.skip(f"{dev.name} does not support {dtype}")


def central_difference(f, x):
    """Numerical gradient of the scalar function ``f`` of the host array ``x`` (not modified)."""
    from _tolerances import FD_STEP

    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += FD_STEP
        minus[index] -= FD_STEP
        grad[index] = (f(plus) - f(minus)) / (2 * FD_STEP)
    return grad


def fd_close(analytic, numeric, err_msg=""):
    """``analytic`` equals the finite-difference gradient ``numeric`` to FD_RTOL (absolute: FD_RTOL times its scale)."""
    from _tolerances import FD_RTOL

    numeric = np.asarray(numeric)
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL,
                               atol=FD_RTOL * max(1.0, float(np.max(np.abs(numeric)))), err_msg=err_msg)


def copy_state(state):
    """Deep copy of a host state dict (``load_state_dict`` may keep references to what it is given)."""
    return {k: np.array(v, copy=True) for k, v in state.items()}


def host(dev, array):
    """Device array -> float64/int host NumPy array."""
    return np.asarray(dev.to_numpy(array))


def activation_fn(name):
    return {"relu": lambda z: np.maximum(z, 0.0),
            "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
            "tanh": np.tanh}[name]


def host_forward(state, X, activation="relu"):
    """Reference forward pass of an ``mlp`` in float64 NumPy from its state dict."""
    act = activation_fn(activation)
    indices = sorted({int(k.split(".")[0]) for k in state})
    a = np.asarray(X, dtype=np.float64)
    for j, i in enumerate(indices):
        a = a @ np.asarray(state[f"{i}.weight"], dtype=np.float64)
        if f"{i}.bias" in state:
            a = a + np.asarray(state[f"{i}.bias"], dtype=np.float64)
        if j < len(indices) - 1:
            a = act(a)
    return a


def host_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def host_xent(logits, labels):
    """Mean softmax cross-entropy in float64."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_total - z[np.arange(len(labels)), labels]))


def fit_with_snapshots(model, X, y, **kwargs):
    """``fit`` with ``log_every=1`` and a callback recording ``model.state_dict()`` after every epoch.

    Returns ``(history, states, records)``; ``states[k]`` is the state after epoch ``k + 1``.
    """
    states, records = [], []

    def callback(record):
        records.append(dict(record))
        states.append(model.state_dict())

    history = pn.fit(model, X, y, log_every=1, callback=callback, **kwargs)
    return history, states, records


def classification_data(n=60, features=5, classes=3, seed=0):
    """A small learnable problem: labels from a random linear teacher, float64 X."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features))
    teacher = rng.standard_normal((features, classes))
    y = np.argmax(X @ teacher + 0.3 * rng.standard_normal((n, classes)), axis=1)
    return X, y.astype(np.int64)


def cli_run(capsys, *argv):
    """``portablenn ARGV`` in this process -> (exit code, stdout, stderr)."""
    from portablenn.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out):
    """A printed table's rows (``| a | b |`` lines, the rule excluded) as lists of cells, the header first."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
