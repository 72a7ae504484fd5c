"""array-api-strict: the standard and nothing more, on its CPU device and its stand-ins for accelerators
("array_api_strict:device1" refuses to mix with other devices, as a GPU does)."""
import numpy as np

from ..backend import Device, DeviceError
from . import Backend, register

# not "no_x64": array-api-strict 2.6's argmax returns int64 there, which that device then refuses
DEVICES = ("CPU_DEVICE", "device1", "device2", "no_float64")


class StrictBackend(Backend):
    library, words = "array_api_strict", ("array_api_strict",)

    def resolve(self, spec, rest, mode):
        try:
            import array_api_strict as strict
        except ImportError:
            raise DeviceError(f"cannot use {spec}: array-api-strict is not installed "
                              "(pip install array-api-strict)") from None
        name = rest or "CPU_DEVICE"
        if name not in DEVICES:
            raise DeviceError(f"unknown array_api_strict device {name!r}; expected one of " + ", ".join(DEVICES))
        return Device(f"array_api_strict:{name}", strict, strict.Device(name), "cpu", kernels=mode)

    def specs(self):
        return [f"array_api_strict:{name}" for name in DEVICES]

    def asarray(self, dev, array, dtype):
        from . import library_of, to_host

        if library_of(array) == "array_api_strict":
            array = array.to_device(dev.native)
            return array if dtype is None else dev.xp.astype(array, dtype)
        return dev.xp.asarray(to_host(array), dtype=dtype, device=dev.native)

    def to_host(self, array):
        import array_api_strict as strict

        return np.asarray(array.to_device(strict.Device("CPU_DEVICE")))


register(StrictBackend())
