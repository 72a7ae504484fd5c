"""Devices: resolve a spec such as "cpu", "cuda:1" or "array_api_strict:device1" to (xp, device, kernels)."""
from __future__ import annotations

import threading
import warnings

import numpy as np

__all__ = ["Device", "DeviceError", "KERNEL_MODES", "KernelFallbackWarning", "device", "device_specs", "probe"]

KERNEL_MODES = ("auto", "fast", "generic")


class DeviceError(ValueError):
    """A device spec that is unknown here or that cannot run on this machine."""


class KernelFallbackWarning(RuntimeWarning):
    """An accelerator's fast kernels failed their self-test: the device uses the generic kernels instead."""


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
    fast : bool, optional
        The old spelling of ``kernels``: True is "fast", False is "generic".
    kernels : {"auto", "fast", "generic"}, optional
        Which kernels run the hot path (default "auto"). "fast": the backend's hand-tuned ones
        (``out=`` buffers, fused GPU kernels, BLAS updates); "generic": the Array API ``Kernels``
        they must match. "auto" is "fast", except that on an accelerator the fast kernels first
        prove themselves on a tiny problem against the generic ones (``kernel_check``); if they
        fail, a ``KernelFallbackWarning`` says why, once, and the generic kernels run.
    """

    def __init__(self, name, xp, native=None, kind="cpu", fast=None, *, kernels=None):
        self.name = name
        self.xp = xp
        self.native = native
        self.kind = kind
        mode = _kernel_mode(fast, kernels)
        # only an accelerator's kernels are checked: the CPU ones are tested wherever the tests run
        self.kernel_mode = "fast" if mode == "auto" and kind == "cpu" else mode
        self.kernel_status = None  # "fast", "generic", "fast (self-test passed)", "generic (fallback: ...)"
        self._kernels = None
        self._backend = None
        self._choosing = threading.RLock()  # re-entered only by mistake: then an error, not a deadlock

    @property
    def fast(self):
        """Whether the hand-tuned kernels may run (kernel mode "fast" or "auto")."""
        return self.kernel_mode != "generic"

    @property
    def kernels(self):
        """The hot-path kernels (``portablenn.kernels.Kernels`` or a backend twin), chosen on first use."""
        if self._kernels is None:
            with self._choosing:
                if self._kernels is None:
                    if self.kernel_status == "choosing":  # asked again by the self-test itself, same thread
                        raise RuntimeError(f"the kernels of {self.name} were asked for while being chosen")
                    self.kernel_status = "choosing"
                    try:
                        self._kernels, self.kernel_status = _choose_kernels(self)
                    finally:
                        if self._kernels is None:
                            self.kernel_status = None
        return self._kernels

    @kernels.setter
    def kernels(self, value):
        self._kernels, self.kernel_status = value, type(value).__name__

    def __repr__(self):
        default = "auto" if self.kind != "cpu" else "fast"
        return f"Device({self.name!r}{'' if self.kernel_mode == default else f', kernels={self.kernel_mode!r}'})"

    def __eq__(self, other):
        return isinstance(other, Device) and (self.name, self.kernel_mode) == (other.name, other.kernel_mode)

    def __hash__(self):
        return hash((self.name, self.kernel_mode))

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
    @property
    def backend(self):
        """The ``portablenn.backends.Backend`` of this device's library (the default one for others)."""
        if self._backend is None:
            from . import backends

            self._backend = backends.for_library(self.library)
        return self._backend

    def asarray(self, array, dtype=None):
        """Copy a host (NumPy) array, or an array of any supported library, onto this device.

        Arrays already of this library move directly (no trip through the host); others go
        through a host NumPy copy.
        """
        if dtype is not None and isinstance(dtype, str):
            dtype = self.dtype(dtype)
        with self.activate():
            return self.backend.asarray(self, array, dtype)

    def to_numpy(self, array):
        """Copy an array of this device to a host NumPy array (a host sync on accelerators)."""
        return _host(array)

    def synchronize(self):
        """Wait until all work queued on this device is done (a no-op on the CPU)."""
        self.backend.synchronize(self)

    def activate(self):
        """Context in which creation functions allocate on this device (CuPy ignores ``device=``)."""
        return self.backend.activate(self)

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


def _host(array):
    """Any supported array -> NumPy array on the host."""
    if isinstance(array, np.ndarray):
        return array
    from .backends import to_host

    return to_host(array)


def _kernel_mode(fast, kernels):
    """The kernel mode from ``device``'s two keywords (``fast`` is the old spelling)."""
    if kernels is None:
        return "auto" if fast is None else "fast" if fast else "generic"
    if kernels not in KERNEL_MODES:
        raise DeviceError(f"unknown kernels {kernels!r}; expected one of " + ", ".join(KERNEL_MODES))
    if fast is not None and bool(fast) != (kernels != "generic"):
        raise DeviceError(f"fast={fast!r} contradicts kernels={kernels!r}")
    return kernels


def _fast_kernels(dev):
    """The backend's hand-tuned twin of ``Kernels`` for ``dev``, or None where its library has none."""
    return dev.backend.fast_kernels(dev)


def _choose_kernels(dev):
    """``(kernels, status)`` for ``dev``'s kernel mode; "auto" runs the self-test (``kernel_check``)."""
    from .kernels import Kernels

    if dev.kernel_mode == "generic":
        return Kernels(dev.xp), "generic"
    if dev.kernel_mode == "fast":
        fast = _fast_kernels(dev)
        return (Kernels(dev.xp), "generic (no fast kernels for this library)") if fast is None else (fast, "fast")
    from . import kernel_check

    try:
        fast = _fast_kernels(dev)
    except Exception as exc:  # a broken install, a library that refuses to load
        fast, problem = None, f"loading them raised {kernel_check.describe(exc)}"
    else:
        if fast is None:
            return Kernels(dev.xp), "generic (no fast kernels for this library)"
        problem = kernel_check.check(dev, fast, Kernels(dev.xp))
    if problem is None:
        return fast, "fast (self-test passed)"
    warnings.warn(f"the fast kernels of {dev.name} failed their self-test ({problem}), so it trains with the "
                  f"generic Array API kernels (kernels='fast' forces the fast ones)", KernelFallbackWarning,
                  stacklevel=2)
    return Kernels(dev.xp), f"generic (fallback: {problem})"


# -- spec resolution: the backend registered for the spec's first word ---------------------------
def device(spec="cpu", *, fast=None, kernels=None, verbose=False):
    """Resolve a device spec.

    Parameters
    ----------
    spec : str or Device
        ``"cpu"`` | ``"numpy"`` | ``"cuda"`` | ``"cuda:N"`` | ``"auto"`` | ``"array_api_strict"`` |
        ``"array_api_strict:NAME"`` (NAME in CPU_DEVICE, device1, device2, no_float64) |
        ``"torch"`` | ``"torch:cpu"`` | ``"torch:cuda"`` | ``"torch:cuda:N"`` | ``"jax"`` (JAX's default
        device) | ``"jax:cpu"`` | ``"jax:cuda"`` | ``"jax:cuda:N"``.
    kernels : {"auto", "fast", "generic"}, optional
        Which kernels run the hot path (see ``Device``); default "auto" for a spec string (the fast
        ones, proven on first use on an accelerator), unchanged for a Device.
    fast : bool, optional
        The old spelling: True is ``kernels="fast"``, False is ``kernels="generic"``.
    verbose : bool
        For ``"auto"``: print which device was chosen and why.

    Raises
    ------
    DeviceError
        For an unknown spec or a device that cannot run here, with the reason in one sentence.
    """
    if isinstance(spec, Device):
        if fast is None and kernels is None:
            return spec
        mode = _kernel_mode(fast, kernels)
        mode = "fast" if mode == "auto" and spec.kind == "cpu" else mode  # as Device does
        return spec if mode == spec.kernel_mode else device(spec.name, kernels=mode)
    if not isinstance(spec, str):
        raise DeviceError(f"device spec must be a string such as 'cpu' or 'cuda:0', not {type(spec).__name__}")
    dev = _resolve(spec, _kernel_mode(fast, kernels), verbose)  # checks availability every time
    return _CACHE.setdefault((dev.name, dev.kernel_mode), dev)  # but one Device (and its kernels) per device


_CACHE = {}


def _resolve(spec, mode, verbose):
    from . import backends
    from .backends import cupy as cuda

    text = spec.strip()
    word, _, rest = text.partition(":")
    if word != "array_api_strict":  # its device names are case-sensitive
        word, rest = word.lower(), rest.lower()
    if word == "auto" and not rest:
        reason = cuda.cuda_problem(0)
        dev = backends.for_word("cpu").resolve("cpu", None, mode) if reason else cuda.cupy_device(0, mode)
        if verbose:
            print(f"device auto -> {dev.name}" + (f" ({reason})" if reason else ""))
        return dev
    backend = backends.for_word(word)
    if backend is None:
        raise DeviceError(f"unknown device {spec!r}; expected cpu, cuda, cuda:N, auto, "
                          "array_api_strict[:NAME], torch[:cpu|cuda[:N]] or jax[:cpu|cuda[:N]]")
    return backend.resolve(spec, rest if ":" in text else None, mode)


def parse_index(spec, text):
    """The device index in ``text`` ("1" of "cuda:1"); DeviceError naming ``spec`` otherwise."""
    if not text.isdigit():
        raise DeviceError(f"bad device index in {spec!r}: expected a number such as cuda:0")
    return int(text)


def device_specs():
    """Every spec this package knows, for ``portablenn info`` and the test matrix."""
    from . import backends

    specs = [spec for backend in backends.BACKENDS.values() for spec in backend.specs()]
    return specs[:2] + ["auto"] + specs[2:]  # cpu, cuda, auto, then the others


def probe(spec):
    """``(Device, None)`` if ``spec`` is usable here, else ``(None, reason)``."""
    try:
        return device(spec), None
    except DeviceError as exc:
        return None, str(exc)
