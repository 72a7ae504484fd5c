"""Backends: one module per array library, each registering the device specs it resolves, how arrays cross
to and from the host, and its fast kernels (the twins of the generic ``portablenn.kernels.Kernels``).

``portablenn.backend.device(spec)`` reads the first word of a spec ("cpu", "cuda:1", "torch:cpu") and asks
the backend registered for that word. A new array library is one module here with one ``register``
call (see docs/architecture.md); the training code never names a library.
"""
import contextlib

import numpy as np

__all__ = ["Backend", "BACKENDS", "register", "for_word", "for_library", "to_host"]


class Backend:
    """What portablenn needs to know about one array library. The defaults suit a library whose arrays
    live on the host and convert with ``numpy.asarray`` (array_api_strict's CPU device, ndonnx)."""

    library = None  # the top-level module name of its arrays ("numpy", "cupy", ...), and its Device names' prefix
    words = ()  # the first words of the device specs it resolves ("cpu", "numpy")
    aliases = ()  # other top-level modules its array types live in (JAX's arrays are ``jaxlib`` objects)
    mutable = True  # arrays can be changed in place (the in-place optimizer rules and buffers may be used)

    def resolve(self, spec, rest, mode):
        """The Device for ``spec`` (``rest``: the text after the first ':' or None; ``mode``: the kernel mode);
        ``DeviceError`` with the reason in one sentence where it cannot run here."""
        raise NotImplementedError

    def specs(self):
        """The specs this backend knows, for ``portablenn info`` and the test matrix."""
        return []

    def fast_kernels(self, dev):
        """The library's hand-tuned twin of ``Kernels`` for ``dev``, or None where it has none."""
        return None

    def asarray(self, dev, array, dtype):
        """``array`` (host NumPy, or any supported library's) on ``dev``, of ``dtype`` (a dtype of ``dev.xp``
        or None); arrays already of this library should move without a trip through the host."""
        return dev.xp.asarray(to_host(array), dtype=dtype, device=dev.native)

    def to_host(self, array):
        """An array of this library as a host NumPy array (a device sync on accelerators)."""
        return np.asarray(array)

    def activate(self, dev):
        """Context in which creation functions allocate on ``dev``."""
        return contextlib.nullcontext()

    def synchronize(self, dev):
        """Wait for the work queued on ``dev``."""

    def reserve_heap(self, dev):
        """Prepare ``dev``'s allocator for a training loop that makes and frees arrays of a few MB at every step
        (a stacked sweep, ``portablenn.stack_fit``). By default nothing: a library's own memory pool (CuPy's, torch's)
        already keeps freed blocks."""

    def compile(self, step, dev):
        """``step`` (a callable of no arguments with fixed shapes and buffers that never reads data back to
        the host: ``static_step.StaticStep``) as the function to call once per minibatch. A backend may record
        it once and replay it (CuPy: a CUDA graph; JAX compiles a pure function instead: ``compile_pure``). The result may have a ``close()``,
        called when training ends. By default the device's kernels record it where they can (CuPy's fast
        kernels: a CUDA graph, whose GEMMs go through their private cuBLAS handle), else ``step`` itself
        runs every time."""
        capture = getattr(dev.kernels, "capture", None)
        return step if capture is None else capture(step)

    def compile_pure(self, fn, dev, donate_argnums=(), static_argnames=()):
        """``fn``, a pure function of device arrays (and of the keyword arguments ``static_argnames``, Python
        values fixed per compilation), as the function to call instead: JAX's ``jax.jit``, the arguments
        ``donate_argnums`` donated (their memory reused for the results; the caller never reads them again).
        By default ``fn`` itself, run eagerly every time (``portablenn.pure_step`` on a library that neither
        changes arrays in place nor compiles)."""
        return fn


BACKENDS = {}  # library -> Backend, in registration order
_WORDS = {}  # spec word -> Backend
_ALIASES = {}  # other top-level module of a library's arrays -> Backend


def register(backend):
    """Register a Backend instance (its ``library`` and ``words``); returns it."""
    BACKENDS[backend.library] = backend
    for alias in backend.aliases:
        _ALIASES[alias] = backend
    for word in backend.words:
        _WORDS[word] = backend
    return backend


def for_word(word):
    """The backend resolving specs that start with ``word``, or None."""
    return _WORDS.get(word)


_DEFAULT = Backend()


def for_library(library):
    """The backend of arrays whose top-level module is ``library`` (the default Backend for others)."""
    return BACKENDS.get(library) or _ALIASES.get(library, _DEFAULT)


def library_of(array):
    """The top-level module of an array's type: numpy, cupy, torch, array_api_strict, ..."""
    return type(array).__module__.split(".")[0]


def to_host(array):
    """Any supported array -> NumPy array on the host."""
    if isinstance(array, np.ndarray):
        return array
    return for_library(library_of(array)).to_host(array)


from . import numpy, cupy, strict, torch, jax  # noqa: E402,F401  (the built-in backends register themselves)
