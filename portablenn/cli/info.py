"""portablenn info: versions, and which devices are usable here (and why not)."""
import warnings

import numpy as np

from .. import __version__, backend


def add_parser(commands):
    return commands.add_parser("info", help="versions, and which devices are usable here (and why not)")


def run(args):
    import array_api_compat

    print(f"portablenn {__version__}\nnumpy {np.__version__}\narray-api-compat {array_api_compat.__version__}")
    for name in ("cupy", "array_api_strict", "torch"):
        try:
            print(f"{name} {__import__(name).__version__}")
        except Exception:
            print(f"{name}: not installed")
    print("devices (kernels: what --kernels auto runs there):")
    for spec in backend.device_specs():
        dev, why = backend.probe(spec)
        if dev is None:
            print(f"  {spec:28s} not usable: {why}")
            continue
        with warnings.catch_warnings():  # the fallback is said here, in the kernels column
            warnings.simplefilter("ignore", backend.KernelFallbackWarning)
            dev.kernels  # noqa: B018 (chooses them: on a GPU, the self-test)
        print(f"  {spec:28s} usable -> {dev.name}, kernels {dev.kernel_status}")
    if backend.probe("cuda")[0] is not None:
        import cupy

        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            print(f"  GPU {i}: {props['name'].decode()}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
    return 0
