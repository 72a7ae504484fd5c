"""The wide regime's reference loops in plain NumPy (no portablenn), shared by bench.py and bench_compare.py."""
import numpy as np

WIDE_SIZES, WIDE_BATCH, WIDE_ROWS, WIDE_LR = (784, 1024, 1024, 10), 1024, 8192, 0.05


def wide_numpy_loop(X, y, Ws, batch=WIDE_BATCH, lr=WIDE_LR):
    """The same step written by hand in NumPy: forward, softmax cross-entropy (mean), backward, SGD."""
    W1, W2, W3 = (W.copy() for W in Ws)
    for i in range(0, X.shape[0], batch):
        Xb, yb = X[i:i + batch], y[i:i + batch]
        Z1 = np.maximum(Xb @ W1, 0)
        Z2 = np.maximum(Z1 @ W2, 0)
        logits = Z2 @ W3
        E = np.exp(logits - logits.max(axis=1, keepdims=True))
        S = E / E.sum(axis=1, keepdims=True)
        S[np.arange(yb.size), yb] -= 1
        G2 = (Z2 > 0) * (S @ W3.T)
        G1 = (Z1 > 0) * (G2 @ W2.T)
        W3 -= lr / yb.size * (Z2.T @ S)
        W2 -= lr / yb.size * (Z1.T @ G2)
        W1 -= lr / yb.size * (Xb.T @ G1)
    return W1, W2, W3


def wide_gemms(X, Ws, batch=WIDE_BATCH):
    """The step's GEMMs alone, same shapes, nothing else: 3 forward, 2 input gradients, 3 weight gradients."""
    W1, W2, W3 = Ws
    G3 = np.full((batch, W3.shape[1]), 1e-3, X.dtype)
    G2 = np.full((batch, W2.shape[1]), 1e-3, X.dtype)
    G1 = np.full((batch, W1.shape[1]), 1e-3, X.dtype)
    for i in range(0, X.shape[0], batch):
        Xb = X[i:i + batch]
        Z1 = Xb @ W1
        Z2 = Z1 @ W2
        Z2 @ W3
        G3 @ W3.T
        G2 @ W2.T
        Z2.T @ G3
        Z1.T @ G2
        Xb.T @ G1
    return Ws
