"""Device resolution, errors, host transfers and the fast/generic kernel choice."""
import sys

import numpy as np
import pytest
from array_api_compat import array_namespace

import portablenn as pn
from portablenn import backend
from portablenn.backends import cupy as cuda_backend
from portablenn.backends.numpy import NumpyKernels
from portablenn.kernels import Kernels

from _support import classification_data

STRICT_NAMES = ["CPU_DEVICE", "device1", "device2", "no_float64"]


def _cuda_usable():
    return backend.probe("cuda")[0] is not None


# -- resolution ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["cpu", "numpy", "numpy:cpu", "CPU", " cpu ", "NumPy"])
def test_cpu_specs_resolve_to_fast_numpy(spec):
    dev = pn.device(spec)
    assert dev.name == "numpy" and dev.library == "numpy" and dev.kind == "cpu"
    assert dev.fast is True and dev.native is None
    assert type(dev.kernels) is NumpyKernels
    assert dev == pn.device("numpy") and hash(dev) == hash(pn.device("numpy"))


def test_default_spec_is_cpu():
    assert pn.device() == pn.device("cpu")


def test_auto_matches_cuda_availability(monkeypatch):
    monkeypatch.delenv("PORTABLENN_DISABLE_CUDA", raising=False)
    expected = "cupy:0" if _cuda_usable() else "numpy"
    assert pn.device("auto").name == expected


def test_auto_is_numpy_when_cuda_disabled(monkeypatch, capsys):
    monkeypatch.setenv("PORTABLENN_DISABLE_CUDA", "1")
    dev = pn.device("auto", verbose=True)
    assert dev.name == "numpy" and type(dev.kernels) is NumpyKernels
    out = capsys.readouterr().out
    assert out.startswith("device auto -> numpy") and "PORTABLENN_DISABLE_CUDA" in out


def test_auto_follows_cuda_availability_after_the_first_call(monkeypatch):
    """Simulated GPU: 'auto' picks CuPy, then PORTABLENN_DISABLE_CUDA must make it pick NumPy."""
    import os

    monkeypatch.setattr(backend, "_CACHE", {}, raising=False)  # isolate the module cache, if there is one
    monkeypatch.delenv("PORTABLENN_DISABLE_CUDA", raising=False)
    fake_gpu = pn.Device("cupy:0", pn.device("numpy").xp, None, "cuda", False)
    monkeypatch.setattr(cuda_backend, "cuda_problem",
                        lambda index: "disabled" if os.environ.get("PORTABLENN_DISABLE_CUDA") else None)
    monkeypatch.setattr(cuda_backend, "cupy_device", lambda index, mode: fake_gpu)
    assert pn.device("auto", fast=False).name == "cupy:0"
    monkeypatch.setenv("PORTABLENN_DISABLE_CUDA", "1")
    assert pn.device("auto", fast=False).name == "numpy"
    with pytest.raises(pn.DeviceError):
        pn.device("cuda", fast=False)


def test_auto_generic(monkeypatch):
    monkeypatch.setenv("PORTABLENN_DISABLE_CUDA", "1")
    dev = pn.device("auto", fast=False)
    assert dev.name == "numpy" and dev.fast is False and type(dev.kernels) is Kernels


@pytest.mark.parametrize("name", STRICT_NAMES)
def test_array_api_strict_specs(name):
    strict = pytest.importorskip("array_api_strict")
    dev = pn.device(f"array_api_strict:{name}")
    assert dev.name == f"array_api_strict:{name}" and dev.library == "array_api_strict"
    assert dev.native == strict.Device(name) and dev.kind == "cpu"
    assert type(dev.kernels) is Kernels  # no fast twin for the strict namespace


def test_array_api_strict_default_is_cpu_device():
    strict = pytest.importorskip("array_api_strict")
    dev = pn.device("array_api_strict")
    assert dev.name == "array_api_strict:CPU_DEVICE" and dev.native == strict.Device("CPU_DEVICE")


@pytest.mark.parametrize("spec", ["torch", "torch:cpu", "TORCH:CPU"])
def test_torch_cpu_specs(spec):
    torch = pytest.importorskip("torch")
    dev = pn.device(spec)
    assert dev.name == "torch:cpu" and dev.library == "torch" and dev.kind == "cpu"
    assert dev.native == torch.device("cpu")
    assert type(dev.kernels) is Kernels


def test_device_instance_passes_through():
    dev = pn.device("array_api_strict:device1")
    assert pn.device(dev) is dev
    generic = pn.device(dev, fast=False)
    assert generic.fast is False and generic.name == dev.name and generic.native == dev.native
    assert generic != dev
    assert "kernels='generic'" in repr(generic) and "kernels" not in repr(dev)


def test_device_specs_lists_everything_resolvable_here():
    specs = backend.device_specs()
    for spec in ["cpu", "cuda", "auto", "torch:cpu", "torch:cuda"] + [f"array_api_strict:{n}" for n in STRICT_NAMES]:
        assert spec in specs
    for spec in ["cpu", "auto"] + [f"array_api_strict:{n}" for n in STRICT_NAMES]:
        dev, reason = backend.probe(spec)
        assert dev is not None and reason is None, (spec, reason)


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, fragment", [
    ("gpu", "unknown device 'gpu'"),
    ("", "unknown device ''"),
    ("tpu:0", "unknown device"),
    ("cuda:x", "bad device index"),
    ("cuda:-1", "bad device index"),
    ("cuda:1.5", "bad device index"),
    ("cupy:abc", "bad device index"),
    ("array_api_strict:device9", "unknown array_api_strict device 'device9'"),
    ("array_api_strict:cpu", "unknown array_api_strict device"),
    ("torch:xla", "unknown torch device"),
    ("torch:cuda:x", "bad device index"),
])
def test_bad_specs_raise_one_line_device_error(spec, fragment, monkeypatch):
    monkeypatch.delenv("PORTABLENN_DISABLE_CUDA", raising=False)
    if spec.startswith("torch"):
        pytest.importorskip("torch")
    with pytest.raises(pn.DeviceError) as info:
        pn.device(spec)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and message.strip() == message
    assert isinstance(info.value, ValueError)
    dev, reason = backend.probe(spec)
    assert dev is None and reason == message


@pytest.mark.parametrize("spec", [3, None, 1.5, ["cpu"]])
def test_non_string_spec_raises_device_error(spec):
    with pytest.raises(pn.DeviceError, match="must be a string"):
        pn.device(spec)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cupy", "cuda:3"])
def test_cuda_disabled_by_environment(spec, monkeypatch):
    monkeypatch.setenv("PORTABLENN_DISABLE_CUDA", "1")
    with pytest.raises(pn.DeviceError) as info:
        pn.device(spec)
    assert str(info.value) == f"cannot use {spec}: CUDA is disabled by PORTABLENN_DISABLE_CUDA"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_usable_gpu_raises(spec, monkeypatch):
    monkeypatch.delenv("PORTABLENN_DISABLE_CUDA", raising=False)
    if _cuda_usable():
        pytest.skip("a CUDA GPU is usable here")
    with pytest.raises(pn.DeviceError) as info:
        pn.device(spec)
    message = str(info.value)
    assert message.startswith(f"cannot use {spec}: ") and "\n" not in message


def _fake_cupy(count):
    """A CuPy module that imports and sees ``count`` GPUs, so device resolution reaches the index check."""
    import types

    fake = types.ModuleType("cupy")
    fake.is_available = lambda: True
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: count))
    return fake


def test_cuda_index_beyond_count_raises(monkeypatch):
    """On a machine with two GPUs, cuda:2 and beyond are refused naming the count; cuda:0 and cuda:1 pass the
    check (without a GPU here: a fake CuPy that imports, is available and counts two devices)."""
    monkeypatch.delenv("PORTABLENN_DISABLE_CUDA", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(2))
    for index in (0, 1):
        assert cuda_backend.cuda_problem(index) is None, index
    for index in (2, 3, 999):
        reason = f"there is no GPU {index}; this machine has 2 (cuda:0..cuda:1)"
        assert cuda_backend.cuda_problem(index) == reason
        with pytest.raises(pn.DeviceError) as info:
            pn.device(f"cuda:{index}")
        assert str(info.value) == f"cannot use cuda:{index}: {reason}"


def test_torch_cuda_without_gpu_raises():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("PyTorch sees a GPU here")
    with pytest.raises(pn.DeviceError, match="PyTorch sees no CUDA GPU 0"):
        pn.device("torch:cuda")


# -- transfers -------------------------------------------------------------------------------------
def test_asarray_to_numpy_round_trip(device, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype(dtype)
    arr = device.asarray(x)
    assert array_namespace(arr) is array_namespace(device.zeros((1,), "float32"))
    assert device.xp.isdtype(arr.dtype, "real floating")
    back = device.to_numpy(arr)
    assert isinstance(back, np.ndarray) and back.dtype == np.dtype(dtype) and back.shape == (4, 3)
    np.testing.assert_array_equal(back, x)
    if device.library == "array_api_strict":
        assert arr.device == device.native


def test_asarray_casts_to_named_dtype(device, dtype):
    x = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    arr = device.asarray(x, dtype=dtype)
    assert arr.dtype == device.dtype(dtype)
    np.testing.assert_array_equal(device.to_numpy(arr), x.astype(dtype))


def test_index_dtype_round_trip(device):
    labels = np.array([0, 2, 1, 2], dtype=np.int64)
    arr = device.asarray(labels, dtype=device.index_dtype)
    assert device.index_dtype == device.xp.int64
    np.testing.assert_array_equal(device.to_numpy(arr), labels)
    np.testing.assert_array_equal(device.to_numpy(device.arange(5)), np.arange(5))
    z = device.zeros((2, 3), "float32")
    assert z.shape == (2, 3) and not np.any(device.to_numpy(z))


def test_asarray_accepts_arrays_from_other_devices(device, request):
    """``Device.asarray`` is documented to copy "any array-API array" onto the device."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    source = device.asarray(x)
    targets = ["numpy", "array_api_strict:CPU_DEVICE", "array_api_strict:device1"]
    for spec in targets:
        target = pn.device(spec)
        np.testing.assert_array_equal(target.to_numpy(target.asarray(source)), x, err_msg=spec)


def test_float64_unsupported_on_no_float64():
    dev = pn.device("array_api_strict:no_float64")
    assert not dev.supports("float64") and dev.supports("float32")
    with pytest.raises(pn.DeviceError, match="does not support float64"):
        dev.dtype("float64")
    with pytest.raises(pn.DeviceError, match="does not support float64"):
        dev.asarray(np.zeros(3), dtype="float64")
    with pytest.raises(pn.DeviceError, match="does not support float64"):
        dev.zeros((2,), "float64")
    with pytest.raises(pn.DeviceError, match="does not support float64"):
        pn.mlp([3, 2], dtype="float64").to(dev)
    assert dev.asarray(np.zeros(3), dtype="float32").dtype == dev.xp.float32


def test_synchronize_and_activate_are_harmless_on_cpu(device):
    device.synchronize()
    with device.activate():
        arr = device.zeros((3,), "float32")
    assert device.to_numpy(arr).shape == (3,)


# -- kernels choice --------------------------------------------------------------------------------
def test_fast_numpy_uses_numpy_kernels():
    dev = pn.device("cpu", fast=True)
    assert type(dev.kernels) is NumpyKernels and isinstance(dev.kernels, Kernels)


@pytest.mark.parametrize("spec", ["cpu", "array_api_strict", "array_api_strict:device1", "torch:cpu"])
def test_generic_devices_use_generic_kernels(spec):
    if spec.startswith("torch"):
        pytest.importorskip("torch")
    dev = pn.device(spec, fast=False)
    assert dev.fast is False and type(dev.kernels) is Kernels
    assert dev != pn.device(spec, fast=True)


def test_fixture_devices_kernels(device):
    if not device.fast or device.library not in ("numpy", "cupy"):
        assert type(device.kernels) is Kernels
    elif device.library == "numpy":
        assert type(device.kernels) is NumpyKernels
    else:  # CuPy's fused twin
        assert type(device.kernels) is not Kernels and isinstance(device.kernels, Kernels)


def test_model_to_generic_device_keeps_generic_kernels():
    """Regression (in 89756fd): resolving a Device with the default fast=True swapped a fast=False device
    for the fast one, so training on NumPy never used the generic kernels."""
    generic = pn.device("cpu", fast=False)
    model = pn.mlp([2, 4, 3]).to(generic)
    assert model.device.fast is False
    assert all(type(layer.kernels) is Kernels for layer in model.layers)


def test_fit_on_generic_device_uses_generic_kernels():
    X, y = classification_data(n=20, features=2)
    generic = pn.device("cpu", fast=False)
    model = pn.mlp([2, 4, 3])
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), device=generic, epochs=1, batch_size=5)
    assert model.device.fast is False
    assert all(type(layer.kernels) is Kernels for layer in model.layers)
    assert pn.device(generic) is generic and pn.device(generic, fast=True).fast is True


def test_training_runs_the_devices_own_kernels(device):
    """Every fixture device trains with its own kernels (numpy-generic really runs ``Kernels``)."""
    X, y = classification_data(n=20, features=2)
    model = pn.mlp([2, 4, 3]).to(device)
    pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, batch_size=5)
    assert model.device == device
    assert all(type(layer.kernels) is type(device.kernels) for layer in model.layers)


def test_no_x64_is_refused_with_the_reason():
    """array-api-strict 2.6's argmax returns int64 on no_x64, which that device refuses: not offered."""
    with pytest.raises(pn.DeviceError, match="unknown array_api_strict device 'no_x64'"):
        pn.device("array_api_strict:no_x64")


@pytest.mark.parametrize("behaviour", ["unavailable", "raises", "broken import"])
def test_cupy_installed_without_a_usable_gpu(monkeypatch, behaviour):
    """CuPy imports but has no driver/GPU (or is broken): auto falls back to NumPy, cuda is a DeviceError."""
    import types

    fake = types.ModuleType("cupy")
    if behaviour == "unavailable":
        fake.is_available = lambda: False
    elif behaviour == "raises":
        def is_available():
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        fake.is_available = is_available
    else:
        def __getattr__(name):
            raise ImportError("libcudart.so.12: cannot open shared object file")
        fake.__getattr__ = __getattr__
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delenv("PORTABLENN_DISABLE_CUDA", raising=False)
    assert pn.device("auto").name == "numpy"
    with pytest.raises(pn.DeviceError) as info:
        pn.device("cuda:0")
    assert "cannot use cuda:0" in str(info.value) and "\n" not in str(info.value)


# -- kernels="auto": the self-test ---------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["cpu", "array_api_strict:device1", "array_api_strict:no_float64"])
def test_kernel_modes_resolve(spec):
    """On the CPU "auto" is "fast" (nothing to prove); the modes are distinct devices; bad names are refused."""
    auto, fast, generic = (pn.device(spec, kernels=m) for m in ("auto", "fast", "generic"))
    assert auto is fast and auto.kernel_mode == "fast" and generic.kernel_mode == "generic"
    assert pn.device(spec) is auto and pn.device(spec, fast=False) is generic
    assert pn.device(generic, kernels="auto") is auto and pn.device(auto, kernels="generic") is generic
    with pytest.raises(pn.DeviceError, match="unknown kernels 'turbo'"):
        pn.device(spec, kernels="turbo")
    with pytest.raises(pn.DeviceError, match="contradicts"):
        pn.device(spec, fast=False, kernels="fast")


@pytest.mark.parametrize("spec", ["cpu", "array_api_strict:device1", "array_api_strict:no_float64"])
def test_the_self_test_passes_where_the_kernels_are_right_and_names_a_wrong_one(spec):
    """``kernel_check.check`` runs on any device (array_api_strict:device1 too) and names the first bad kernel."""
    from portablenn import kernel_check

    dev = pn.device(spec)
    fast = dev.kernels if type(dev.kernels) is not Kernels else Kernels(dev.xp)
    assert kernel_check.check(dev, fast, Kernels(dev.xp)) is None

    class Wrong(type(fast)):
        def sq_sum(self, w):
            return super().sq_sum(w) * 1.001

    assert kernel_check.check(dev, Wrong(dev.xp), Kernels(dev.xp)).startswith(
        "sq_sum is off by 1.0e-03 relative to the generic kernel (output 0, tolerance 0.0001) in float32")


def test_the_self_test_names_a_kernel_that_raises_and_one_that_trains_wrong():
    from portablenn import kernel_check

    dev = pn.device("cpu")

    class Raises(NumpyKernels):
        def minibatch(self, *args):
            raise IndexError("index 12 is out of bounds")

    class TrainsWrong(NumpyKernels):  # right on every kernel case, wrong only in fit's order of calls
        calls = 0

        def softmax_xent(self, logits, labels, onehot, scale):
            TrainsWrong.calls += 1
            return super().softmax_xent(logits, labels, onehot, scale * (1.1 if TrainsWrong.calls > 4 else 1.0))

    assert kernel_check.check(dev, Raises(dev.xp), Kernels(dev.xp)) == (
        "minibatch raised IndexError: index 12 is out of bounds in float32")
    assert kernel_check.check(dev, TrainsWrong(dev.xp), Kernels(dev.xp)).startswith(
        "training a small MLP with SGD is off by")


@pytest.mark.gpu
def test_cuda_fast_kernels_pass_their_self_test_on_this_gpu():
    """The default ``kernels="auto"`` on a real GPU: every fused kernel matches its generic twin, no warning."""
    import warnings

    from conftest import make_device

    cuda = make_device("cuda")  # skips without a usable GPU
    dev = pn.Device(cuda.name, cuda.xp, cuda.native, "cuda")  # a fresh one: its self-test runs here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernels = dev.kernels
    assert [str(w.message) for w in caught if w.category is pn.KernelFallbackWarning] == []
    assert dev.kernel_status == "fast (self-test passed)" and type(kernels).__name__ == "CupyKernels"


@pytest.mark.parametrize("source, target", [("array_api_strict:CPU_DEVICE", "array_api_strict:device1"),
                                            ("array_api_strict:device1", "array_api_strict:device2"),
                                            ("numpy", "array_api_strict:device1"),
                                            ("array_api_strict:device2", "numpy")])
def test_asarray_puts_the_array_on_the_target_device(source, target):
    """Values alone cannot show it: the result must live on the target device (array-api-strict's devices refuse
    to mix, as a GPU's do), whatever library and device the input came from."""
    pytest.importorskip("array_api_strict")
    src, dst = pn.device(source), pn.device(target)
    moved = dst.asarray(src.asarray(np.arange(6.0).reshape(2, 3)), dtype="float32")
    if dst.library == "numpy":
        assert type(moved) is np.ndarray
    else:
        assert moved.device == dst.native and moved.dtype == dst.dtype("float32")
        moved + dst.zeros((2, 3), "float32")  # mixing with the target's own arrays works
    np.testing.assert_array_equal(dst.to_numpy(moved), np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("mutable", [True, False])
def test_a_backend_is_one_registered_module(monkeypatch, mutable):
    """The recipe of docs/architecture.md: a Backend subclass registered for a spec word resolves devices,
    moves arrays, trains with the generic kernels and shows in device_specs, with nothing else changed."""
    from portablenn import backends

    moved = []

    class Tracing(backends.Backend):
        library, words = "tracing", ("tracing",)
        mutable = True

        def resolve(self, spec, rest, mode):
            import array_api_compat.numpy as xp

            return pn.Device(f"tracing:{rest or 0}", xp, None, "cpu", kernels=mode)

        def specs(self):
            return ["tracing"]

        def asarray(self, dev, array, dtype):
            moved.append(dev.name)
            return np.asarray(backends.to_host(array), dtype=dtype)

    monkeypatch.setattr(backends, "BACKENDS", dict(backends.BACKENDS))
    monkeypatch.setattr(backends, "_WORDS", dict(backends._WORDS))
    Tracing.mutable = mutable  # immutable: the step updates through the optimizers' functional rules
    backends.register(Tracing())
    monkeypatch.setattr(backend, "_CACHE", {})
    dev = pn.device("tracing:3")
    assert dev.name == "tracing:3" and type(dev.kernels) is Kernels and "tracing" in backend.device_specs()
    X = np.random.default_rng(0).standard_normal((20, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    for optimizer in (lambda: pn.SGD(0.1), lambda: pn.SGD(0.1, momentum=0.9, nesterov=True), lambda: pn.Adam(0.01)):
        model, opt = pn.mlp([3, 4, 2], seed=1), optimizer()
        pn.fit(model, X, y, optimizer=opt, epochs=2, batch_size=5, device=dev, l2=1e-3)
        reference = pn.mlp([3, 4, 2], seed=1)
        pn.fit(reference, X, y, optimizer=optimizer(), epochs=2, batch_size=5, l2=1e-3,
               device=pn.device("cpu", kernels="generic"))
        for key, value in reference.state_dict().items():
            np.testing.assert_allclose(model.state_dict()[key], value, rtol=1e-6, atol=1e-7, err_msg=repr(opt))
            if mutable:  # the same in-place code: bit for bit
                np.testing.assert_array_equal(model.state_dict()[key], value)
    assert moved and set(moved) == {"tracing:3"}
