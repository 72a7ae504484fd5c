"""Does ``portablenn._blas`` (ctypes into the OpenBLAS NumPy's wheel bundles) beat a public route? (issue #17)

Times the in-place weight update of a Linear layer's backward,

    W = beta * W + alpha * (A.T @ G)      A: (batch, in) input, G: (batch, out) gradient, W: (in, out)

with ``A.T`` a transposed view, as ``Linear.backward`` passes it, for the shapes that matter:

  - MNIST: 784x100 and 100x10, batch 100, float32
  - CS231n spiral: 2x100 and 100x3, batch 300 (full batch), float64
  - wide: 784x1024, 1024x1024, 1024x10, batch 1024, float32

each with alpha = -lr and beta = 1 (plain SGD) and beta = 1 - lr * l2 (weight decay as GEMM's beta),
plus alpha = -1, beta = 1, the call a built step makes when it folds plain SGD into the backward GEMMs
(``portablenn.step``: the gradient already holds lr).

Variants (all checked against a float64 reference with allclose before timing):

  a  ctypes     ``_blas.gemm_update(W, A.T, G, alpha, beta)``: one BLAS call (the module under test)
  b1 np-out     ``np.matmul(A.T, G, out=tmp)``; ``W *= beta``; ``tmp *= alpha``; ``W += tmp``
  b2 np-fold    alpha folded into the smaller operand: ``np.multiply(G, alpha, out=g)``, then
                ``np.matmul(A.T, g, out=tmp)``; ``W *= beta``; ``W += tmp`` (``W -= tmp`` for alpha -1
                with no fold). The fastest public NumPy form found.
  c  scipy      ``scipy.linalg.blas.sgemm/dgemm`` on the Fortran-order views: ``W.T`` (out, in) is
                F-contiguous, ``W.T = alpha * G.T @ A + beta * W.T``, i.e.
                ``gemm(alpha, G.T, A.T, beta=beta, c=W.T, overwrite_c=True, trans_b=1)``: G.T and
                A.T are F-contiguous, so f2py copies nothing and writes W in place (checked with
                ``np.shares_memory``). SciPy is NOT a dependency of portablenn: this row is
                information only, a route that would add one.
  d  generic    ``W *= beta; W += alpha * (A.T @ G)`` (``Kernels.matmul_update_``)

Then the fit-level effect: ``portablenn.fit`` for one MNIST-shaped epoch (synthetic 60000x784
float32, mlp([784, 100, 10]), SGD(0.1), batch 100, in order) with ``NumpyKernels.blas_update_min``
as shipped (32768: the 784x100 update goes through ctypes, the 100x10 one does not), 0 (every
update through ctypes) and huge (never: the generic kernel), and with ``NumpyKernels.matmul_update_``
replaced by the public route (b1 into a buffer kept per shape), all monkeypatched in-process and
interleaved; and the same for the wide regime, mlp([784, 1024, 1024, 10]) with batch 1024 on
``--wide-rows`` rows. The column "ctypes updates per epoch" counts the calls ``_blas`` accepted, so a
row that claims the ctypes path shows it ran.

On a 2-core machine shared with other work, OpenBLAS's two threads make single samples swing by 10x
and more: compare minima over many rounds, repeat, and also run with OPENBLAS_NUM_THREADS=1.

Timing as ``scripts/bench.py``: variants interleaved, the order rotated every round, minima over
rounds (a shared 2-core machine), each sample a loop long enough (~``--sample-ms``) to swamp the
timer.

    python scripts/bench_blas.py                 # everything, 9 rounds
    python scripts/bench_blas.py --rounds 15 --no-fit
    python scripts/bench_blas.py --no-scipy      # without SciPy (its own OpenBLAS and thread pool)
    python scripts/bench_blas.py --no-fit --shapes mnist        # only the update rows whose label has "mnist"
    OPENBLAS_NUM_THREADS=1 python scripts/bench_blas.py         # one BLAS thread: steadier on a busy machine
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import portablenn as pn  # noqa: E402
from portablenn import _blas  # noqa: E402
from portablenn.backends.numpy import NumpyKernels  # noqa: E402
from portablenn.kernels import Kernels  # noqa: E402

LR, L2 = 0.1, 1e-4

# (name, in, out, batch, dtype)
SHAPES = [("mnist W1 784x100 b100", 784, 100, 100, np.float32),
          ("mnist W2 100x10 b100", 100, 10, 100, np.float32),
          ("spiral W1 2x100 b300", 2, 100, 300, np.float64),
          ("spiral W2 100x3 b300", 100, 3, 300, np.float64),
          ("wide W1 784x1024 b1024", 784, 1024, 1024, np.float32),
          ("wide W2 1024x1024 b1024", 1024, 1024, 1024, np.float32),
          ("wide W3 1024x10 b1024", 1024, 10, 1024, np.float32)]
# (label, alpha, beta)
COEFFS = [("a=-lr b=1", -LR, 1.0), ("a=-lr b=1-lr*l2", -LR, 1.0 - LR * L2), ("a=-1 b=1", -1.0, 1.0)]


# -- the variants: each make_* returns update(c) that applies W = beta W + alpha A.T @ G to c in place --
def make_ctypes(a, b, alpha, beta):
    gemm_update = _blas.gemm_update

    def update(c):
        if not gemm_update(c, a, b, alpha, beta):
            raise RuntimeError("gemm_update declined")
    return update


def make_np_out(a, b, alpha, beta):
    tmp = np.empty((a.shape[0], b.shape[1]), a.dtype)
    alpha_t = a.dtype.type(alpha)
    beta_t = a.dtype.type(beta)
    matmul, multiply, add, subtract = np.matmul, np.multiply, np.add, np.subtract

    def update(c):
        matmul(a, b, out=tmp)
        if beta != 1.0:
            multiply(c, beta_t, out=c)
        if alpha == -1.0:
            subtract(c, tmp, out=c)
        else:
            multiply(tmp, alpha_t, out=tmp)
            add(c, tmp, out=c)
    return update


def make_np_fold(a, b, alpha, beta):
    """alpha into G (batch x out) when that is smaller than W (in x out), else onto tmp."""
    tmp = np.empty((a.shape[0], b.shape[1]), a.dtype)
    g = np.empty_like(b)
    alpha_t = a.dtype.type(alpha)
    beta_t = a.dtype.type(beta)
    fold = alpha not in (1.0, -1.0) and b.size < tmp.size
    matmul, multiply, add, subtract = np.matmul, np.multiply, np.add, np.subtract

    def update(c):
        if fold:
            multiply(b, alpha_t, out=g)
            matmul(a, g, out=tmp)
        else:
            matmul(a, b, out=tmp)
        if beta != 1.0:
            multiply(c, beta_t, out=c)
        if fold or alpha == 1.0:
            add(c, tmp, out=c)
        elif alpha == -1.0:
            subtract(c, tmp, out=c)
        else:
            multiply(tmp, alpha_t, out=tmp)
            add(c, tmp, out=c)
    return update


def make_scipy(a, b, alpha, beta):
    from scipy.linalg import blas as sblas
    gemm = sblas.sgemm if a.dtype == np.float32 else sblas.dgemm
    # a = A.T (in, batch) is F-contiguous; b = G (batch, out) C-contiguous, so b.T (out, batch) is F-contiguous.
    # W.T (out, in) = alpha * b.T @ a.T + beta * W.T, with a.T = A given as the F-array a and trans_b=1.
    bt = b.T
    if not (a.flags.f_contiguous and bt.flags.f_contiguous):
        raise ValueError("operands are not Fortran-ordered views; scipy would copy")

    def update(c):
        ct = c.T
        out = gemm(alpha, bt, a, beta=beta, c=ct, overwrite_c=True, trans_b=1)
        if out is not ct and not np.shares_memory(out, c):
            raise RuntimeError("scipy copied c")
    return update


def make_generic(a, b, alpha, beta):
    generic = Kernels(np)  # the generic Array API kernel itself, the definition the fast path must match

    def update(c):
        generic.matmul_update_(c, a, b, alpha, beta)
    return update


VARIANTS = {"a ctypes": make_ctypes, "b1 np-out": make_np_out, "b2 np-fold": make_np_fold,
            "c scipy": make_scipy, "d generic": make_generic}


def operands(n_in, n_out, batch, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((batch, n_in)).astype(dtype)
    G = (rng.standard_normal((batch, n_out)) / batch).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    return A.T, G, W  # a = A.T: the transposed view Linear.backward passes


def check(variants, a, b, w0, alpha, beta):
    """Every variant's one update equals the float64 one; scipy's writes W in place."""
    expected = beta * w0.astype(np.float64) + alpha * (a.astype(np.float64) @ b.astype(np.float64))
    tol = dict(rtol=1e-4, atol=1e-5) if w0.dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for name, update in variants.items():
        c = w0.copy()
        before = c.__array_interface__["data"][0]
        update(c)
        assert c.__array_interface__["data"][0] == before
        np.testing.assert_allclose(c, expected, err_msg=name, **tol)
    if "c scipy" in variants:
        from scipy.linalg import blas as sblas
        gemm = sblas.sgemm if w0.dtype == np.float32 else sblas.dgemm
        c = w0.copy()
        out = gemm(alpha, b.T, a, beta=beta, c=c.T, overwrite_c=True, trans_b=1)
        assert np.shares_memory(out, c), "scipy gemm did not update c in place"
        np.testing.assert_allclose(c, expected, err_msg="scipy in place", **tol)


def interleave(fns, rounds):
    """{name: [seconds per call, one per round]}: every round runs each sample once, the order rotated."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        for n in order:
            fn, reps = fns[n]
            t = time.perf_counter()
            fn(reps)
            times[n].append((time.perf_counter() - t) / reps)
    return times


def loop(update, c):
    def run(reps):
        for _ in range(reps):
            update(c)
    return run


def reps_for(update, c, sample_ms):
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < 0.02:
        update(c)
        reps += 1
    per = (time.perf_counter() - t) / reps
    return max(1, int(sample_ms * 1e-3 / per))


def bench_updates(names, rounds, sample_ms, only=""):
    rows = []
    print(f"\nWeight update W = beta W + alpha A.T @ G, min over {rounds} interleaved rounds (us per update); "
          f"ratio = min / min of a ctypes (>1: slower than ctypes)")
    print("| shape | alpha, beta | " + " | ".join(names) + " | " + " | ".join(f"{n.split()[0]}/a" for n in names[1:])
          + " |\n|---|---|" + "---:|" * (2 * len(names) - 1))
    for label, n_in, n_out, batch, dtype in SHAPES:
        if only not in label:
            continue
        for clabel, alpha, beta in COEFFS:
            a, b, w0 = operands(n_in, n_out, batch, dtype)
            variants = {n: VARIANTS[n](a, b, alpha, beta) for n in names}
            check(variants, a, b, w0, alpha, beta)
            fns = {}
            for n, update in variants.items():
                c = w0.copy()
                fns[n] = (loop(update, c), reps_for(update, c, sample_ms))
            times = interleave(fns, rounds)
            best = {n: min(ts) for n, ts in times.items()}
            ref = best[names[0]]
            rows.append((label, clabel, best))
            print(f"| {label} | {clabel} | " + " | ".join(f"{best[n] * 1e6:.1f}" for n in names) + " | "
                  + " | ".join(f"{best[n] / ref:.2f}" for n in names[1:]) + " |", flush=True)
    return rows


# -- fit level -----------------------------------------------------------------------------------------
def _public_update(buffers):
    """A ``NumpyKernels.matmul_update_`` through the public route alone (form b1 with a buffer per shape):
    what backend_numpy would do without ``_blas``, for the fit-level comparison."""
    def matmul_update_(self, c, a, b, alpha, beta=1.0):
        if c.size < self.blas_update_min:
            return Kernels.matmul_update_(self, c, a, b, alpha, beta)
        key = (c.shape, c.dtype)
        tmp = buffers.get(key)
        if tmp is None:
            tmp = buffers[key] = np.empty(c.shape, c.dtype)
        np.matmul(a, b, out=tmp)
        if beta != 1.0:
            np.multiply(c, c.dtype.type(beta), out=c)
        if alpha == -1.0:
            np.subtract(c, tmp, out=c)
        else:
            np.multiply(tmp, c.dtype.type(alpha), out=tmp)
            np.add(c, tmp, out=c)
    return matmul_update_


# name: (NumpyKernels.blas_update_min, NumpyKernels.matmul_update_ or None for the shipped one)
FIT_SETTINGS = {"ctypes, 32768 (shipped)": (32768, None), "ctypes, 0 (every update)": (0, None),
                "generic, huge (no ctypes)": (10 ** 12, None), "public np-out, 32768": (32768, "public")}


def bench_fit(title, sizes, rows, batch, rounds, l2=0.0):
    rng = np.random.default_rng(0)
    X = rng.random((rows, sizes[0]), dtype=np.float32)
    y = X[:, :sizes[-1]].argmax(axis=1).astype(np.int64)
    dev = pn.device("cpu", kernels="fast")
    model = pn.mlp(sizes, seed=0).to(dev)
    start = model.state_dict()
    original = NumpyKernels.blas_update_min, NumpyKernels.matmul_update_
    public = _public_update({})
    results = {}

    def make(name, threshold, impl):
        def run():
            NumpyKernels.blas_update_min = threshold
            NumpyKernels.matmul_update_ = public if impl == "public" else original[1]
            try:
                model.load_state_dict(start)
                pn.fit(model, X, y, optimizer=pn.SGD(LR), epochs=1, batch_size=batch, shuffle=False, l2=l2)
            finally:
                NumpyKernels.blas_update_min, NumpyKernels.matmul_update_ = original
            results[name] = model.state_dict()
        return run

    runs = {name: make(name, *setting) for name, setting in FIT_SETTINGS.items()}
    update, taken = _blas.gemm_update, {}
    for name, run in runs.items():  # warm-up, the weights to compare, and how many updates went through ctypes
        calls = []
        _blas.gemm_update = lambda *args: calls.append(update(*args)) or calls[-1]
        try:
            run()
        finally:
            _blas.gemm_update = update
        taken[name] = sum(calls)
    names = list(runs)
    for name in names:
        for key, value in results[name].items():
            np.testing.assert_allclose(value, results[names[0]][key], rtol=2e-3, atol=2e-4, err_msg=f"{name} {key}")
    times = interleave({n: (lambda reps, f=f: f(), 1) for n, f in runs.items()}, rounds)
    base = min(times[names[0]])
    print(f"\n{title}: min / median over {rounds} interleaved rounds (s); ratio = min / min of {names[0]}")
    print("| update route, blas_update_min | ctypes updates per epoch | min s | median s | ratio |"
          "\n|---|---:|---:|---:|---:|")
    for n in names:
        ts = sorted(times[n])
        print(f"| {n} | {taken[n]} | {ts[0]:.3f} | {ts[len(ts) // 2]:.3f} | {ts[0] / base:.3f} |", flush=True)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (minima over them); at least 7")
    parser.add_argument("--sample-ms", type=float, default=20.0, help="length of one timed sample of an update")
    parser.add_argument("--no-scipy", action="store_true", help="leave SciPy's BLAS out")
    parser.add_argument("--no-fit", action="store_true", help="only the update micro-benchmark")
    parser.add_argument("--no-updates", action="store_true", help="only the fit-level epochs")
    parser.add_argument("--shapes", default="", help="only the update shapes whose label contains this")
    parser.add_argument("--wide-rows", type=int, default=10240, help="rows of the wide fit (0: skip it)")
    args = parser.parse_args(argv)

    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"NumPy {np.__version__}, BLAS {config.get('name')} {config.get('version')}; "
          f"_blas.available() = {_blas.available()}; {os.cpu_count()} CPUs; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    if not _blas.available():
        sys.exit("portablenn._blas found no BLAS here: nothing to compare")
    names = list(VARIANTS)
    if args.no_scipy:
        names.remove("c scipy")
    else:
        try:
            import scipy
            blas_name = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
            print(f"SciPy {scipy.__version__} (its own BLAS, {blas_name}, a second thread pool; "
                  "not a portablenn dependency: information only)")
        except ImportError:
            names.remove("c scipy")
            print("SciPy not installed: no scipy row")
    if not args.no_updates:
        bench_updates(names, args.rounds, args.sample_ms, args.shapes)
    if not args.no_fit:
        bench_fit("Fit: one MNIST-shaped epoch, 60000x784 float32, mlp([784, 100, 10]), SGD(0.1), batch 100",
                  [784, 100, 10], 60000, 100, args.rounds)
        if args.wide_rows:
            bench_fit(f"Fit: wide, {args.wide_rows}x784 float32, mlp([784, 1024, 1024, 10]), SGD(0.1), batch 1024",
                      [784, 1024, 1024, 10], args.wide_rows, 1024, args.rounds)

if __name__ == "__main__":
    main()
