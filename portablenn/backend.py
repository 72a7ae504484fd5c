"""Devices: resolve a spec such as "cpu", "cuda:1" or "array_api_strict:device1" to (xp, device, kernels)."""
from __future__ import annotations

import contextlib
import os

import numpy as np

__all__ = ["Device", "DeviceError", "device", "device_specs", "probe"]


class DeviceError(ValueError):
    """A device spec that is unknown here or that cannot run on this machine."""


class Device:
    """An array namespace ``xp`` bound to one native device, plus host transfers and fast kernels.

    Parameters
    ----------
    name : str
        Canonical spec, e.g. ``"numpy"``, ``"cupy:0"``, ``"array_api_strict:device1"``.
    xp : module
        The array-api-compat namespace.
    native : object
        The library's own device object (``None`` where it has one device only).
    kind : {"cpu", "cuda"}
        Where the memory lives.
    fast : bool
        Use the backend's hand-tuned kernels (``out=``, fused GPU kernels) instead of the generic
        Array API ones. Both give the same results; parity tests run both.
    """

    def __init__(self, name, xp, native=None, kind="cpu", fast=True):
        self.name = name
        self.xp = xp
        self.native = native
        self.kind = kind
        self.fast = fast
        self.kernels = _make_kernels(self, fast)

    def __repr__(self):
        return f"Device({self.name!r}{'' if self.fast else ', fast=False'})"

    def __eq__(self, other):
        return isinstance(other, Device) and (self.name, self.fast) == (other.name, other.fast)

    def __hash__(self):
        return hash((self.name, self.fast))

    @property
    def library(self):
        """The array library's name: numpy, cupy, array_api_strict or torch."""
        return self.name.split(":")[0]

    # -- dtypes ----------------------------------------------------------------------------------
    def dtype(self, name):
        """The namespace's dtype for ``name`` ("float32", "int64", ...); DeviceError if unsupported."""
        if not self.supports(name):
            raise DeviceError(f"device {self.name} does not support {name}; use float32")
        return getattr(self.xp, name)

    def supports(self, name):
        """Whether this device holds arrays of dtype ``name``."""
        info = getattr(self.xp, "__array_namespace_info__", None)
        if info is None:
            return hasattr(self.xp, name)
        try:  # kind=None explicitly: some namespaces (ndonnx) require the keyword
            return name in info().dtypes(device=self.native, kind=None)
        except TypeError:  # older compat wrappers take no device
            return name in info().dtypes()

    # -- transfers (the only ways data crosses the host/device boundary) -------------------------
    def asarray(self, array, dtype=None):
        """Copy a host (NumPy) array, or an array of any supported library, onto this device.

        Arrays already of this library move directly (no trip through the host); others go
        through a host NumPy copy.
        """
        if dtype is not None and isinstance(dtype, str):
            dtype = self.dtype(dtype)
        same = _library(array) == self.library
        with self.activate():
            if self.library == "numpy":
                return np.asarray(_host(array), dtype=dtype)
            if self.library == "cupy":
                return self.xp.asarray(array if same else _host(array), dtype=dtype)
            if self.library == "torch" and same:
                return array.to(device=self.native, dtype=dtype)
            if self.library == "array_api_strict" and same:
                array = array.to_device(self.native)
                return array if dtype is None else self.xp.astype(array, dtype)
            return self.xp.asarray(_host(array), dtype=dtype, device=self.native)

    def to_numpy(self, array):
        """Copy an array of this device to a host NumPy array (a host sync on accelerators)."""
        return _host(array)

    def synchronize(self):
        """Wait until all work queued on this device is done (a no-op on the CPU)."""
        if self.library == "cupy":
            import cupy

            with self.activate():
                cupy.cuda.get_current_stream().synchronize()
        elif self.name.startswith("torch:cuda"):
            import torch

            torch.cuda.synchronize(self.native)

    def activate(self):
        """Context in which creation functions allocate on this device (CuPy ignores ``device=``)."""
        if self.library == "cupy":
            import cupy

            return cupy.cuda.Device(self.native.id)
        return contextlib.nullcontext()

    @property
    def index_dtype(self):
        """The integer dtype this device uses for indices (int64, or int32 where 64-bit is missing)."""
        info = getattr(self.xp, "__array_namespace_info__", None)
        if info is None:
            return self.xp.int64
        try:
            return info().default_dtypes(device=self.native)["indexing"]
        except TypeError:
            return info().default_dtypes()["indexing"]

    def zeros(self, shape, dtype):
        """Zeros of ``shape`` on this device; ``dtype`` is a name or a dtype of ``xp``."""
        with self.activate():
            return self.xp.zeros(shape, dtype=self.dtype(dtype) if isinstance(dtype, str) else dtype,
                                 device=self.native)

    def arange(self, n, dtype=None):
        """``0, 1, ..., n-1`` on this device, in ``dtype`` (default the index dtype)."""
        dtype = self.index_dtype if dtype is None else self.dtype(dtype) if isinstance(dtype, str) else dtype
        with self.activate():
            return self.xp.arange(n, dtype=dtype, device=self.native)


def _library(array):
    """The top-level module of an array's type: numpy, cupy, torch, array_api_strict, ..."""
    return type(array).__module__.split(".")[0]


def _host(array):
    """Any supported array -> NumPy array on the host."""
    if isinstance(array, np.ndarray):
        return array
    module = _library(array)
    if module == "cupy":
        return array.get()
    if module == "torch":
        return array.detach().cpu().numpy()
    if module == "array_api_strict":
        import array_api_strict as strict

        return np.asarray(array.to_device(strict.Device("CPU_DEVICE")))
    return np.asarray(array)


def _make_kernels(dev, fast):
    from . import kernels

    if fast and dev.library == "numpy":
        from .backend_numpy import NumpyKernels

        return NumpyKernels(dev.xp)
    if fast and dev.library == "cupy":
        from .backend_cupy import CupyKernels

        return CupyKernels(dev.xp)
    return kernels.Kernels(dev.xp)


# -- spec resolution -----------------------------------------------------------------------------
# not "no_x64": array-api-strict 2.6's argmax returns int64 there, which that device then refuses
_STRICT_DEVICES = ("CPU_DEVICE", "device1", "device2", "no_float64")


def device(spec="cpu", *, fast=None, verbose=False):
    """Resolve a device spec.

    Parameters
    ----------
    spec : str or Device
        ``"cpu"`` | ``"numpy"`` | ``"cuda"`` | ``"cuda:N"`` | ``"auto"`` | ``"array_api_strict"`` |
        ``"array_api_strict:NAME"`` (NAME in CPU_DEVICE, device1, device2, no_float64) |
        ``"torch"`` | ``"torch:cpu"`` | ``"torch:cuda"`` | ``"torch:cuda:N"``.
    fast : bool, optional
        Use backend fast paths where they exist (NumPy ``out=`` and BLAS, fused CuPy kernels);
        default True for a spec string, unchanged for a Device.
    verbose : bool
        For ``"auto"``: print which device was chosen and why.

    Raises
    ------
    DeviceError
        For an unknown spec or a device that cannot run here, with the reason in one sentence.
    """
    if isinstance(spec, Device):
        return spec if fast is None or spec.fast == fast else device(spec.name, fast=fast)
    if not isinstance(spec, str):
        raise DeviceError(f"device spec must be a string such as 'cpu' or 'cuda:0', not {type(spec).__name__}")
    dev = _resolve(spec, True if fast is None else bool(fast), verbose)  # checks availability every time
    return _CACHE.setdefault((dev.name, dev.fast), dev)  # but one Device (and its kernels) per device


_CACHE = {}


def _resolve(spec, fast, verbose):
    s = spec.strip().lower() if not spec.startswith("array_api_strict:") else spec.strip()
    if s in ("cpu", "numpy", "numpy:cpu"):
        return _numpy_device(fast)
    if s == "auto":
        reason = _cuda_problem(0)
        dev = _numpy_device(fast) if reason else _cupy_device(0, fast)
        if verbose:
            print(f"device auto -> {dev.name}" + (f" ({reason})" if reason else ""))
        return dev
    if s == "cuda" or s.startswith("cuda:") or s == "cupy" or s.startswith("cupy:"):
        index = _index(spec, s.split(":", 1)[1] if ":" in s else "0")
        reason = _cuda_problem(index)
        if reason:
            raise DeviceError(f"cannot use {spec}: {reason}")
        return _cupy_device(index, fast)
    if s == "array_api_strict" or s.startswith("array_api_strict:"):
        return _strict_device(spec, s.split(":", 1)[1] if ":" in s else "CPU_DEVICE", fast)
    if s == "torch" or s.startswith("torch:"):
        return _torch_device(spec, s.split(":", 1)[1] if ":" in s else "cpu", fast)
    raise DeviceError(f"unknown device {spec!r}; expected cpu, cuda, cuda:N, auto, "
                      "array_api_strict[:NAME] or torch[:cpu|cuda[:N]]")


def _index(spec, text):
    if not text.isdigit():
        raise DeviceError(f"bad device index in {spec!r}: expected a number such as cuda:0")
    return int(text)


def _numpy_device(fast):
    import array_api_compat.numpy as xp

    return Device("numpy", xp, None, "cpu", fast)


def _cuda_problem(index):
    """Why CUDA device ``index`` cannot be used here, or None if it can."""
    if os.environ.get("PORTABLENN_DISABLE_CUDA"):
        return "CUDA is disabled by PORTABLENN_DISABLE_CUDA"
    try:
        import cupy
    except Exception:  # ImportError, or a broken install raising anything
        return "CuPy is not installed (pip install 'portablenn[cuda12]' or 'portablenn[cuda13]')"
    try:
        if not cupy.is_available():
            return "CuPy is installed but no usable CUDA GPU or driver was found"
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CUDA is not usable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if index >= count:
        return f"there is no GPU {index}; this machine has {count} (cuda:0..cuda:{count - 1})"
    return None


def _cupy_device(index, fast):
    import array_api_compat.cupy as xp
    import cupy

    return Device(f"cupy:{index}", xp, cupy.cuda.Device(index), "cuda", fast)


def _strict_device(spec, name, fast):
    try:
        import array_api_strict as strict
    except ImportError:
        raise DeviceError(f"cannot use {spec}: array-api-strict is not installed "
                          "(pip install array-api-strict)") from None
    if name not in _STRICT_DEVICES:
        raise DeviceError(f"unknown array_api_strict device {name!r}; expected one of "
                          + ", ".join(_STRICT_DEVICES))
    return Device(f"array_api_strict:{name}", strict, strict.Device(name), "cpu", fast)


def _torch_device(spec, rest, fast):
    try:
        import torch
        import array_api_compat.torch as xp
    except ImportError:
        raise DeviceError(f"cannot use {spec}: PyTorch is not installed") from None
    if rest == "cpu":
        return Device("torch:cpu", xp, torch.device("cpu"), "cpu", fast)
    if rest == "cuda" or rest.startswith("cuda:"):
        index = _index(spec, rest.split(":", 1)[1] if ":" in rest else "0")
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DeviceError(f"cannot use {spec}: PyTorch sees no CUDA GPU {index}")
        return Device(f"torch:cuda:{index}", xp, torch.device("cuda", index), "cuda", fast)
    raise DeviceError(f"unknown torch device {spec!r}; expected torch, torch:cpu or torch:cuda[:N]")


def device_specs():
    """Every spec this package knows, for ``portablenn info`` and the test matrix."""
    return (["cpu", "cuda", "auto"] + [f"array_api_strict:{n}" for n in _STRICT_DEVICES]
            + ["torch:cpu", "torch:cuda"])


def probe(spec):
    """``(Device, None)`` if ``spec`` is usable here, else ``(None, reason)``."""
    try:
        return device(spec), None
    except DeviceError as exc:
        return None, str(exc)
