"""CuPy: the "cuda", "cuda:N" (and "cupy[:N]") devices; its fast kernels live in ``cupy_kernels`` (which
imports CuPy, so it is loaded only when a CUDA device's kernels are first used)."""
import os

from ..backend import Device, DeviceError, parse_index
from . import Backend, register


def cuda_problem(index):
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


def cupy_device(index, mode):
    """The Device of GPU ``index`` (already checked usable)."""
    import array_api_compat.cupy as xp
    import cupy

    return Device(f"cupy:{index}", xp, cupy.cuda.Device(index), "cuda", kernels=mode)


class CupyBackend(Backend):
    library, words = "cupy", ("cuda", "cupy")

    def resolve(self, spec, rest, mode):
        index = parse_index(spec, rest or "0")
        reason = cuda_problem(index)
        if reason:
            raise DeviceError(f"cannot use {spec}: {reason}")
        return cupy_device(index, mode)

    def specs(self):
        return ["cuda"]

    def fast_kernels(self, dev):
        from .cupy_kernels import CupyKernels

        return CupyKernels(dev.xp)

    def asarray(self, dev, array, dtype):
        from . import library_of, to_host

        return dev.xp.asarray(array if library_of(array) == "cupy" else to_host(array), dtype=dtype)

    def to_host(self, array):
        return array.get()

    def activate(self, dev):
        import cupy

        return cupy.cuda.Device(dev.native.id)

    def synchronize(self, dev):
        import cupy

        with self.activate(dev):
            cupy.cuda.get_current_stream().synchronize()


register(CupyBackend())
