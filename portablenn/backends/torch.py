"""PyTorch through array-api-compat: "torch" / "torch:cpu" and "torch:cuda[:N]" (eager, generic kernels)."""
from ..backend import Device, DeviceError, parse_index
from . import Backend, register


class TorchBackend(Backend):
    library, words = "torch", ("torch",)

    def resolve(self, spec, rest, mode):
        try:
            import torch
            import array_api_compat.torch as xp
        except ImportError:
            raise DeviceError(f"cannot use {spec}: PyTorch is not installed") from None
        rest = rest or "cpu"
        if rest == "cpu":
            return Device("torch:cpu", xp, torch.device("cpu"), "cpu", kernels=mode)
        if rest == "cuda" or rest.startswith("cuda:"):
            index = parse_index(spec, rest.split(":", 1)[1] if ":" in rest else "0")
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise DeviceError(f"cannot use {spec}: PyTorch sees no CUDA GPU {index}")
            return Device(f"torch:cuda:{index}", xp, torch.device("cuda", index), "cuda", kernels=mode)
        raise DeviceError(f"unknown torch device {spec!r}; expected torch, torch:cpu or torch:cuda[:N]")

    def specs(self):
        return ["torch:cpu", "torch:cuda"]

    def asarray(self, dev, array, dtype):
        from . import library_of, to_host

        if library_of(array) == "torch":
            return array.to(device=dev.native, dtype=dtype)
        return dev.xp.asarray(to_host(array), dtype=dtype, device=dev.native)

    def to_host(self, array):
        return array.detach().cpu().numpy()

    def synchronize(self, dev):
        if dev.kind == "cuda":
            import torch

            torch.cuda.synchronize(dev.native)


register(TorchBackend())
