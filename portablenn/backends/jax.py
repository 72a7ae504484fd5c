"""JAX: "jax" (JAX's default device), "jax:cpu", "jax:cuda" and "jax:cuda:N", with the whole training step compiled.

JAX's arrays cannot change in place (``mutable = False``), so a step updates through the optimizers'
functional rules and the training loop threads parameters, optimizer state and buffers through a pure
function of them (``portablenn.pure_step``), which ``compile_pure`` hands to ``jax.jit`` with that state
donated (XLA reuses its memory: no copy per step).

Resolving a JAX device turns on JAX's 64-bit mode (``jax_enable_x64``), process-wide: float64 models need it,
and so does Dropout's counter hash (int64 arithmetic). portablenn names the dtype of every array it makes,
so float32 training stays float32; JAX code elsewhere in the process sees 64-bit defaults (``jnp.arange``
gives int64).
"""
from ..backend import Device, DeviceError, parse_index
from . import Backend, register

PLATFORMS = {"cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}  # spec word -> JAX platform


class JaxBackend(Backend):
    library, words, aliases = "jax", ("jax",), ("jaxlib",)
    mutable = False

    def resolve(self, spec, rest, mode):
        try:
            import jax
            import jax.numpy as jnp
        except ImportError:
            raise DeviceError(f"cannot use {spec}: JAX is not installed (pip install jax)") from None
        jax.config.update("jax_enable_x64", True)
        if rest is None:
            native = jax.devices()[0]
        else:
            word, _, index = rest.partition(":")
            if word not in PLATFORMS:
                raise DeviceError(f"unknown JAX device {spec!r}; expected jax, jax:cpu, jax:cuda or jax:cuda:N")
            index = parse_index(spec, index) if index else 0
            try:
                natives = jax.devices(PLATFORMS[word])
            except RuntimeError:
                raise DeviceError(f"cannot use {spec}: JAX has no {PLATFORMS[word]} platform here "
                                  f"(it sees {', '.join(sorted({d.platform for d in jax.devices()}))}; "
                                  "a CUDA build is pip install 'jax[cuda13]')") from None
            if index >= len(natives):
                raise DeviceError(f"cannot use {spec}: JAX sees {len(natives)} {PLATFORMS[word]} device(s)")
            native = natives[index]
        kind = "cpu" if native.platform == "cpu" else "cuda"
        name = "jax:cpu" if kind == "cpu" else f"jax:cuda:{native.id}"
        return Device(name, jnp, native, kind, kernels=mode)

    def specs(self):
        return ["jax:cpu", "jax:cuda"]

    def asarray(self, dev, array, dtype):
        import jax

        from . import library_of, to_host

        if library_of(array) != "jaxlib":
            array = to_host(array)
        return jax.device_put(dev.xp.asarray(array, dtype=dtype), dev.native)

    def to_host(self, array):
        import numpy as np

        return np.asarray(array)

    def synchronize(self, dev):
        import jax

        jax.effects_barrier()

    def compile_pure(self, fn, dev, donate_argnums=(), static_argnames=()):
        import jax

        return jax.jit(fn, donate_argnums=donate_argnums, static_argnames=static_argnames)


register(JaxBackend())
