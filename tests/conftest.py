"""Shared fixtures: the device matrix, dtypes and the MNIST location.

``device`` is parametrised over every backend present here:

* ``numpy``                        NumPy with the hand-tuned ``NumpyKernels`` (the reference)
* ``numpy-generic``                NumPy with the generic Array API ``Kernels`` (``fast=False``)
* ``array_api_strict``             the strict namespace on its CPU_DEVICE
* ``array_api_strict:device1``     a CPU stand-in for an accelerator: no cross-device mixing, no
                                   implicit conversion to NumPy
* ``array_api_strict:no_float64``  a device without float64 (float64 cases skip, see ``dtype``)
* ``torch:cpu``                    only when PyTorch imports
* ``jax:cpu``                      only when JAX imports: immutable arrays, the step compiled by ``jax.jit``
* ``cuda``, ``cuda-generic``       CuPy with its fused kernels / with the generic ones, marked ``gpu``;
                                   they skip unless ``probe("cuda")`` succeeds

Tolerances live in ``tests/_tolerances.py``; shared helpers in ``tests/_support.py``.
"""
import os
from pathlib import Path

import pytest

import portablenn as pn
from portablenn import backend
from portablenn.datasets.mnist import ALL_FILES

REPO = Path(__file__).resolve().parents[1]


def _torch_importable():
    try:
        import array_api_compat.torch  # noqa: F401
        import torch  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything
        return False
    return True


HAS_TORCH = _torch_importable()


def _jax_importable():
    # on a GPU machine JAX would take 75% of the GPU's memory when its backends start (the jax:cpu tests start
    # them all), leaving CuPy's tests in this process short: allocate as needed instead
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax  # noqa: F401
    except Exception:
        return False
    return True


HAS_JAX = _jax_importable()
if HAS_JAX:  # every fit on jax:cpu compiles its step; the same step in another test (or worker) reuses it
    import tempfile

    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "portablenn-test-jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# (spec, fast) per backend; ids are what ``-k`` selects on.
DEVICE_PARAMS = [
    pytest.param(("numpy", True), id="numpy"),
    pytest.param(("numpy", False), id="numpy-generic"),
    pytest.param(("array_api_strict:CPU_DEVICE", True), id="array_api_strict"),
    pytest.param(("array_api_strict:device1", True), id="array_api_strict:device1"),
    pytest.param(("array_api_strict:no_float64", True), id="array_api_strict:no_float64"),
]
if HAS_TORCH:
    DEVICE_PARAMS.append(pytest.param(("torch:cpu", True), id="torch:cpu"))
if HAS_JAX:
    DEVICE_PARAMS.append(pytest.param(("jax:cpu", True), id="jax:cpu"))
DEVICE_PARAMS.append(pytest.param(("cuda", True), id="cuda", marks=pytest.mark.gpu))
DEVICE_PARAMS.append(pytest.param(("cuda", False), id="cuda-generic", marks=pytest.mark.gpu))

DTYPES = ["float32", "float64"]


def make_device(spec, fast=True):
    """Resolve ``spec`` with the given ``fast`` flag; skip where it cannot run here."""
    if spec == "cuda":
        dev, reason = backend.probe("cuda")
        if dev is None:
            pytest.skip(f"no usable CUDA GPU: {reason}")
    return pn.device(spec, fast=fast)


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    """A ``portablenn.Device`` for each backend present (see the module docstring)."""
    spec, fast = request.param
    return make_device(spec, fast)


@pytest.fixture
def numpy_device():
    """The reference: NumPy with the fast kernels."""
    return pn.device("numpy")


@pytest.fixture(params=DTYPES)
def dtype(request):
    """"float32" and "float64"; skips float64 where the test's ``device`` does not support it."""
    if "device" in request.fixturenames:
        dev = request.getfixturevalue("device")
        if not dev.supports(request.param):
            pytest.skip(f"{dev.name} does not support {request.param}")
    return request.param


def _has_mnist(directory):
    return all((directory / name).is_file() or (directory / (name + ".gz")).is_file() for name in ALL_FILES)


@pytest.fixture(scope="session")
def mnist_dir():
    """Directory with the four MNIST IDX files: ``$PORTABLENN_DATA`` (or its ``mnist/``), else
    ``../shared/data/mnist`` relative to the repository; skips when neither has them."""
    candidates = []
    env = os.environ.get("PORTABLENN_DATA")
    if env:
        candidates += [Path(env).expanduser(), Path(env).expanduser() / "mnist"]
    candidates.append(REPO.parent / "shared" / "data" / "mnist")
    for directory in candidates:
        if _has_mnist(directory):
            return directory
    pytest.skip("MNIST not found in " + ", ".join(map(str, candidates)) + " (set $PORTABLENN_DATA)")


@pytest.fixture(scope="session")
def mnist_train(mnist_dir):
    """``(X, y)`` of the MNIST training split, loaded once per session."""
    from portablenn.datasets import mnist

    return mnist(mnist_dir, split="train")
