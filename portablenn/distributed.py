"""Data-parallel training over MPI (CPU, or CUDA-aware MPI) and NCCL (multi-GPU), identical to one process.

``fit(model, X, y, ..., comm=comm)`` with ``comm`` an mpi4py communicator or a :class:`Communicator`
from :func:`make_communicator` trains the same model on every rank of the communicator:

* at the start every rank receives rank 0's weights and optimizer state (one broadcast), after a
  check that all ranks were given the same arguments (same data size, batch, epochs, seed, model,
  optimizer, dtype and kind of device);
* ``batch_size`` is the **global** minibatch: each rank holds the whole training set (the shuffling
  permutation, drawn from ``(seed, epoch)``, is the same on every rank) and computes the gradient on
  its contiguous slice of every minibatch, rank r taking rows ``m*r//size .. m*(r+1)//size`` of a
  minibatch of ``m`` rows. The loss gradient is scaled by the minibatch's global row count, so the
  sum over ranks is the single-process gradient;
* every step, ONE allreduce (sum) over a single flat buffer holding all parameters' gradients, then
  the same optimizer step on every rank: all ranks hold the same weights, bit for bit, and the same
  weights as one process with the same global batch up to floating-point summation order;
* once per epoch, one small allreduce of the epoch's per-step loss sums, error count and
  validation sums (each rank evaluates its slice of the validation set), so every rank returns the
  same History as one process would.

Transports, chosen per training device by the communicator's ``kind``:

======  ========================================================================================
mpi     MPI on host (NumPy) buffers; arrays of other libraries go through a host copy. With a
        CUDA-aware MPI (detected, or forced with ``PORTABLENN_CUDA_AWARE_MPI=1``) CuPy buffers are
        passed to MPI directly.
nccl    NCCL (``cupy.cuda.nccl``) on CuPy device buffers, bootstrapped over MPI; CUDA devices only.
auto    NCCL for CuPy devices when every rank has NCCL and a GPU of its own, else as ``mpi``.
======  ========================================================================================

Failures: every collective runs non-blocking with a deadline (``timeout``, default
``$PORTABLENN_COMM_TIMEOUT`` or 300 seconds) and MPI errors are returned, not fatal. A rank that
died or hangs makes the others raise :class:`CommunicationError` (one sentence) instead of waiting
forever; the communicator is then unusable, and the process exits without MPI_Finalize (which would
wait for the dead rank) with status 1.
"""
from __future__ import annotations

import atexit
import collections
import hashlib
import json
import os
import pickle
import socket
import sys
import time

import numpy as np

from .reducer import Reducer, register_comm_adapter
from .validation import InputError

__all__ = ["CommunicationError", "Communicator", "DataParallel", "DEFAULT_TIMEOUT", "TIMEOUT_ENV", "as_communicator",
           "failed", "guard", "launched_by_mpi", "make_communicator", "mpi_cuda_aware", "nccl_available"]

TIMEOUT_ENV = "PORTABLENN_COMM_TIMEOUT"
CUDA_AWARE_ENV = "PORTABLENN_CUDA_AWARE_MPI"
DEFAULT_TIMEOUT = 300.0  # seconds; generous: rank 0 may load data or compile GPU kernels for a while
KINDS = ("auto", "mpi", "nccl")
_NCCL_LAG = 2  # NCCL steps allowed in flight before the host waits (bounded, so a dead peer is noticed)


class CommunicationError(RuntimeError):
    """A collective failed or did not complete in time: another rank died, hangs or diverged.

    The communicator cannot be used afterwards. The process will exit with status 1 without calling
    MPI_Finalize (which would wait for the missing rank).
    """


# -- process-wide failure state ------------------------------------------------------------------
_BROKEN = []  # the message of the first CommunicationError
_EXIT = []  # the exit status of a failure seen by guard()
_CREATED = []  # a Communicator exists in this process


def _exit_without_finalize():
    """atexit hook, run before mpi4py's MPI_Finalize: skip it when this rank failed.

    MPI_Finalize waits for the other ranks, which may be dead or still inside a collective that
    this rank left: after a CommunicationError, an error that left ``guard()``, ``failed(code)``, or
    an uncaught exception, the process exits at once (status 1, or the status given to
    ``failed``/seen by ``guard``).
    """
    if _BROKEN or _EXIT or (_CREATED and getattr(sys, "last_value", None) is not None):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream must not hide the exit
                pass
        os._exit(_EXIT[0] if _EXIT and not _BROKEN else 1)


def failed(code=1):
    """Record that this rank ends with exit status ``code`` != 0: it will exit without MPI_Finalize.

    For entry points that return an exit status instead of raising (the CLI's ``main``): the other
    ranks may still be waiting for this one, and MPI_Finalize would wait for them.
    """
    if code:
        _EXIT.append(int(code) if isinstance(code, int) else 1)


class guard:
    """Context for a rank's whole distributed run (a script's main body).

    An exception or non-zero ``SystemExit`` leaving the block means this rank stops while the
    others may still wait for it: the process then exits without MPI_Finalize (which would hang), with
    the SystemExit status (or 1). The exception itself propagates unchanged.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            return False
        if issubclass(kind, SystemExit):
            code = exc.code
            if code is None or code == 0:
                return False
            _EXIT.append(code if isinstance(code, int) else 1)
        else:
            _EXIT.append(1)
        return False


def _fail(message):
    """Mark the process's communication as broken and build the error to raise."""
    if not _BROKEN:
        _BROKEN.append(message)
    return CommunicationError(message)


# -- environment ---------------------------------------------------------------------------------
def _timeout(value=None):
    """Seconds to wait for one collective: ``value``, else ``$PORTABLENN_COMM_TIMEOUT``, else 300."""
    source = "timeout"
    if value is None:
        value = os.environ.get(TIMEOUT_ENV)
        source = TIMEOUT_ENV
        if value is None or not value.strip():
            return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{source} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise InputError(f"{source} must be a positive number of seconds, got {value!r}")
    return seconds


def launched_by_mpi():
    """Whether this process was started by an MPI launcher (mpiexec/mpirun/srun with PMI) with >1 ranks.

    Reads only environment variables (no MPI initialisation): Hydra/PMI (MPICH, Intel MPI), Open MPI
    and Slurm's PMI2/PMIx set them.
    """
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return name != "SLURM_NTASKS" or "PMI_RANK" in os.environ or "PMIX_RANK" in os.environ
    return False


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise CommunicationError("distributed training needs mpi4py and an MPI library: "
                                 f"pip install 'portablenn[mpi]' ({exc})") from None
    except Exception as exc:  # the MPI library is missing or fails to initialise
        raise CommunicationError(f"MPI could not be initialised ({type(exc).__name__}: {exc}); "
                                 "install one with pip install 'portablenn[mpi]'") from None
    if _exit_without_finalize not in _REGISTERED:  # after mpi4py's own atexit finalizer: runs before it
        atexit.register(_exit_without_finalize)
        _REGISTERED.append(_exit_without_finalize)
    return MPI


_REGISTERED = []


def mpi_cuda_aware():
    """Whether the MPI library accepts CUDA device buffers.

    ``$PORTABLENN_CUDA_AWARE_MPI`` (1/0) decides if set; else the MPI-4.1 ``mpi_memory_alloc_kinds``
    info of MPI_COMM_WORLD, else ``MPIX_Query_cuda_support()`` (MPICH >= 4, Open MPI) when the
    loaded MPI library exports it. False when nothing says yes.
    """
    forced = os.environ.get(CUDA_AWARE_ENV)
    if forced is not None and forced.strip():
        return forced.strip().lower() not in ("0", "no", "false", "off")
    MPI = _import_mpi()
    try:
        kinds = MPI.COMM_WORLD.Get_info().Get("mpi_memory_alloc_kinds")
    except Exception:
        kinds = None
    if kinds and "cuda" in kinds.lower():
        return True
    import ctypes

    for soname in ("libmpi.so.12", "libmpi.so.40", "libmpi.so", "libmpi_abi.so.1", "libmpi_abi.so"):
        try:
            lib = ctypes.CDLL(soname, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # only if already loaded
            query = lib.MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        try:
            return bool(query())
        except Exception:
            return False
    return False


def nccl_available():
    """``(True, "")`` if CuPy with NCCL and a CUDA GPU are usable here, else ``(False, reason)``."""
    from .backends.cupy import cuda_problem

    reason = cuda_problem(0)
    if reason:
        return False, reason
    try:
        from cupy.cuda import nccl

        if not getattr(nccl, "available", True):
            return False, "CuPy was built without NCCL"
        nccl.get_version()
    except Exception as exc:
        return False, f"CuPy's NCCL is not usable ({type(exc).__name__}: {exc})"
    return True, ""


# -- the communicator ----------------------------------------------------------------------------
class Communicator:
    """An MPI communicator (duplicated, errors returned) plus, for CUDA devices, an NCCL one.

    Use :func:`make_communicator`. Attributes: ``rank``, ``size``, ``local_rank``, ``local_size``
    (ranks on this node), ``kind`` ("auto" | "mpi" | "nccl"), ``timeout`` (seconds per collective),
    ``mpi`` (the mpi4py communicator) and ``stats`` (allreduce calls, bytes and seconds since the
    last :meth:`reset_stats`, for benchmarks).
    """

    def __init__(self, mpi_comm, kind="auto", timeout=None):
        MPI = _import_mpi()
        if kind not in KINDS:
            raise InputError(f"unknown communicator kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.timeout = _timeout(timeout)
        self._MPI = MPI
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        try:
            mpi_comm.Set_errhandler(MPI.ERRORS_RETURN)
            # our own context, so user traffic on mpi_comm cannot interleave; non-blocking, so a rank
            # that never arrives is a CommunicationError after the timeout, not a hang
            self.mpi, request = mpi_comm.Idup()
            self._wait(request, "communicator set-up")
            self.mpi.Set_errhandler(MPI.ERRORS_RETURN)
            local = self.mpi.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks on this node
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        except MPI.Exception as exc:
            raise _fail(f"rank {self.rank} of {self.size}: could not set up the MPI communicator "
                        f"({exc.Get_error_string().strip()})") from None
        _CREATED.append(True)
        self._nccl = None  # (NcclCommunicator, device index) once set up
        self._events = collections.deque()
        self._cuda_aware = None
        self._transports = {}
        self.reset_stats()

    def __repr__(self):
        return (f"Communicator(kind={self.kind!r}, rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank}, timeout={self.timeout:g})")

    def reset_stats(self):
        self.stats = {"allreduce_calls": 0, "allreduce_bytes": 0, "allreduce_seconds": 0.0}

    # -- device selection ------------------------------------------------------------------------
    def device(self, spec="auto"):
        """The device spec this rank should train on: ``cuda``/``auto`` pick GPU ``local_rank % GPUs``.

        ``auto`` falls back to ``cpu`` where no GPU is usable; explicit specs (``cuda:1``, ``cpu``, ...)
        are returned unchanged. With ``CUDA_VISIBLE_DEVICES`` restricting each rank to one GPU (Slurm
        ``--gpus-per-task=1``) this is ``cuda:0`` on every rank.
        """
        from . import backend
        from .backends.cupy import cuda_problem

        if not isinstance(spec, str) or spec.strip().lower() not in ("auto", "cuda", "cupy"):
            return spec
        reason = cuda_problem(0)
        if reason:
            if spec.strip().lower() == "auto":
                return "cpu"
            raise backend.DeviceError(f"cannot use {spec}: {reason}")
        import cupy

        return f"cuda:{self.local_rank % cupy.cuda.runtime.getDeviceCount()}"

    def transport(self, dev):
        """How arrays of Device ``dev`` are reduced: ``"nccl"``, ``"mpi-cuda"`` or ``"mpi-host"``.

        Decided for all ranks together by :meth:`setup` (which ``fit`` calls); before that, from
        this rank's facts alone.
        """
        if dev not in self._transports:
            return self._decide(dev, [self._device_facts(dev)] * self.size)
        return self._transports[dev]

    def _device_facts(self, dev):
        """What this rank can do with Device ``dev`` (gathered from every rank by ``setup``)."""
        facts = {"library": dev.library, "host": socket.gethostname(), "gpu": None, "nccl": False,
                 "cuda_aware": False, "problem": ""}
        if dev.library == "cupy":
            try:
                facts["gpu"] = dev.native.pci_bus_id
            except Exception:  # older CuPy: the index is the best we have
                facts["gpu"] = f"index {dev.native.id}"
            facts["nccl"], facts["problem"] = nccl_available()
            if self._cuda_aware is None:
                self._cuda_aware = mpi_cuda_aware()
            facts["cuda_aware"] = self._cuda_aware
        return facts

    def _decide(self, dev, everyone):
        """The transport for ``dev`` from every rank's facts: the same answer on every rank."""
        if dev.library != "cupy":
            if self.kind == "nccl":
                raise InputError(f"comm kind 'nccl' needs a CUDA device, but fit runs on {dev.name}; "
                                 "use kind 'mpi' or 'auto'")
            return "mpi-host"
        own_gpus = len({(f["host"], f["gpu"]) for f in everyone}) == len(everyone)
        nccl_ok = all(f["nccl"] for f in everyone)
        if self.kind == "nccl":
            bad = next((r for r, f in enumerate(everyone) if not f["nccl"]), None)
            if bad is not None:
                raise CommunicationError(f"comm 'nccl' is not usable on rank {bad}: {everyone[bad]['problem']}")
            if not own_gpus:
                raise InputError("NCCL needs one GPU per rank, but some ranks share a GPU; launch at most one "
                                 "rank per GPU or use comm 'mpi'")
            return "nccl"
        if self.kind == "auto" and nccl_ok and own_gpus:
            return "nccl"
        return "mpi-cuda" if all(f["cuda_aware"] for f in everyone) else "mpi-host"

    # -- waiting with a deadline -----------------------------------------------------------------
    def _wait(self, request, what):
        """Complete an MPI request, polling until ``timeout``; CommunicationError on error or timeout."""
        MPI = self._MPI
        try:
            if request.Test():
                return
            deadline = time.monotonic() + self.timeout
            spins = 0
            while not request.Test():
                if time.monotonic() > deadline:
                    raise _fail(self._timeout_message(what))
                spins += 1
                if spins > 50:  # let other ranks on oversubscribed cores run; sleep once it is long
                    if spins < 20000:
                        os.sched_yield()
                    else:
                        time.sleep(0.001)
        except MPI.Exception as exc:
            raise _fail(f"rank {self.rank} of {self.size}: MPI {what} failed "
                        f"({exc.Get_error_string().strip()}); another rank has probably died") from None

    def _timeout_message(self, what):
        return (f"rank {self.rank} of {self.size}: the {what} did not complete within {self.timeout:g} s "
                f"(${TIMEOUT_ENV}); another rank has probably died, hung or was given different arguments")

    def _check_usable(self):
        if _BROKEN:
            raise CommunicationError(f"the communicator is unusable after an earlier failure: {_BROKEN[0]}")

    # -- collectives on host objects (setup only) ------------------------------------------------
    def bcast_object(self, obj, root=0, what="broadcast"):
        """Rank ``root``'s picklable ``obj`` on every rank."""
        self._check_usable()
        MPI = self._MPI
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        length = np.array([len(data)], dtype=np.int64)
        self._wait(self.mpi.Ibcast(length, root=root), what)
        buf = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(int(length[0]), np.uint8)
        self._wait(self.mpi.Ibcast([buf, MPI.BYTE], root=root), what)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather_object(self, obj, what="allgather"):
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        self._check_usable()
        MPI = self._MPI
        data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8).copy()
        lengths = np.zeros(self.size, dtype=np.int64)
        self._wait(self.mpi.Iallgather(np.array([data.size], dtype=np.int64), lengths), what)
        displs = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        out = np.empty(int(lengths.sum()), dtype=np.uint8)
        self._wait(self.mpi.Iallgatherv([data, MPI.BYTE], [out, (lengths, displs), MPI.BYTE]), what)
        return [pickle.loads(out[d:d + n].tobytes()) for d, n in zip(displs, lengths)]

    def barrier(self, what="barrier"):
        """Wait (with the deadline) until every rank has called ``barrier``."""
        self._check_usable()
        self._wait(self.mpi.Ibarrier(), what)

    def any(self, flag, what="agreement"):
        """True on every rank if ``flag`` is true on any rank: collective decisions (stop after a signal)."""
        self._check_usable()
        value = np.array([1 if flag else 0], dtype=np.int32)
        self._wait(self.mpi.Iallreduce(self._MPI.IN_PLACE, value, op=self._MPI.MAX), what)
        return bool(value[0])

    # -- the reduction of device arrays ------------------------------------------------------------
    def allreduce_(self, array, dev, what="gradient allreduce"):
        """Sum a 1-D contiguous array of Device ``dev`` over all ranks, in place where possible.

        Returns the reduced array: ``array`` itself for NumPy, CuPy and NCCL/CUDA-aware buffers, a
        new device array for other libraries (which go through a host copy).
        """
        self._check_usable()
        began = time.perf_counter()
        transport = self.transport(dev)
        MPI = self._MPI
        if transport == "nccl":
            self._nccl_allreduce(array, dev, what)
            result = array
        elif transport == "mpi-cuda":
            dev.synchronize()  # MPI does not know CuPy's stream: the buffer must be ready
            self._wait(self.mpi.Iallreduce(MPI.IN_PLACE, array, op=MPI.SUM), what)
            result = array
        elif dev.library == "numpy":
            self._wait(self.mpi.Iallreduce(MPI.IN_PLACE, array, op=MPI.SUM), what)
            result = array
        else:  # host round trip
            host = np.array(dev.to_numpy(array), copy=True, order="C")
            self._wait(self.mpi.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM), what)
            if dev.library == "cupy":
                with dev.activate():
                    array.set(host)  # back into the same device buffer (gradient views stay valid)
                result = array
            else:
                result = dev.asarray(host)
        stats = self.stats
        stats["allreduce_calls"] += 1
        stats["allreduce_bytes"] += int(array.shape[0]) * np.dtype(str(array.dtype).split(".")[-1]).itemsize
        stats["allreduce_seconds"] += time.perf_counter() - began
        return result

    # -- NCCL ----------------------------------------------------------------------------------------
    def setup(self, dev, everyone=None):
        """Collective: choose the transport for Device ``dev`` on all ranks alike, create NCCL once.

        ``everyone`` is every rank's ``_device_facts(dev)`` when the caller gathered them already.
        """
        if everyone is None:
            everyone = self.allgather_object(self._device_facts(dev), what="device check")
        self._transports[dev] = self._decide(dev, everyone)
        if self._transports[dev] != "nccl":
            return
        index = dev.native.id
        if self._nccl is not None:
            if self._nccl[1] != index:
                raise InputError(f"this NCCL communicator is bound to cuda:{self._nccl[1]}, "
                                 f"fit runs on cuda:{index}")
            return
        from cupy.cuda import nccl

        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.bcast_object(uid, what="NCCL set-up broadcast")
        try:
            with dev.activate():
                # blocks until every rank has joined; all ranks reached this point (the broadcast above)
                self._nccl = (nccl.NcclCommunicator(self.size, uid, self.rank), index)
        except Exception as exc:
            raise _fail(f"rank {self.rank} of {self.size}: NCCL initialisation failed on cuda:{index} "
                        f"({type(exc).__name__}: {exc})") from None

    def _nccl_allreduce(self, array, dev, what):
        import cupy
        from cupy.cuda import nccl

        if self._nccl is None:
            raise InputError("call Communicator.setup(device) before an NCCL allreduce (fit does)")
        comm = self._nccl[0]
        dtype = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[str(array.dtype)]
        with dev.activate():
            stream = cupy.cuda.get_current_stream()
            try:
                comm.allReduce(array.data.ptr, array.data.ptr, array.size, dtype, nccl.NCCL_SUM, stream.ptr)
            except Exception as exc:
                self._abort_nccl()
                raise _fail(f"rank {self.rank} of {self.size}: NCCL {what} failed ({exc})") from None
            event = cupy.cuda.Event(block=False, disable_timing=True)
            event.record(stream)
            self._events.append(event)
            # bounded lag: the host may run ahead of the GPU by a couple of steps, not forever (a dead
            # peer would otherwise fill the launch queue and block the host inside the CUDA driver)
            while len(self._events) > _NCCL_LAG:
                self._wait_event(self._events.popleft(), what)

    def drain(self, what="allreduce"):
        """Wait (with the deadline) until every queued NCCL collective has finished; no-op for MPI."""
        while self._events:
            self._wait_event(self._events.popleft(), what)

    def _wait_event(self, event, what):
        deadline = time.monotonic() + self.timeout
        spins = 0
        while not event.done:
            try:
                self._nccl[0].check_async_error()
            except Exception as exc:
                self._abort_nccl()
                raise _fail(f"rank {self.rank} of {self.size}: NCCL {what} failed ({exc}); "
                            "another rank has probably died") from None
            if time.monotonic() > deadline:
                self._abort_nccl()
                raise _fail(self._timeout_message(what))
            spins += 1
            if spins > 50:
                time.sleep(0.0001 if spins < 10000 else 0.001)

    def _abort_nccl(self):
        if self._nccl is not None:
            try:
                self._nccl[0].abort()  # ends the hung kernels so the process can exit
            except Exception:
                pass
        self._events.clear()

    # -- teardown ----------------------------------------------------------------------------------
    def abort(self, code=1):
        """MPI_Abort: end every rank of the job now (for an error that only this rank saw)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self.mpi.Abort(code)

    def close(self):
        """Free the duplicated MPI communicator and the NCCL one (collective; optional)."""
        if self._nccl is not None and not _BROKEN:
            self._nccl[0].destroy()
        self._nccl = None
        if not _BROKEN and self.mpi != self._MPI.COMM_NULL:
            self.mpi.Free()


def make_communicator(kind="auto", mpi_comm=None, *, timeout=None):
    """A :class:`Communicator` over ``mpi_comm`` (default MPI_COMM_WORLD); collective over its ranks.

    Parameters
    ----------
    kind : {"auto", "mpi", "nccl"}
        How device arrays are reduced (see the module docstring). "nccl" fails here unless CuPy with
        NCCL and a GPU are usable.
    mpi_comm : mpi4py.MPI.Comm, optional
    timeout : float, optional
        Seconds to wait for one collective before raising CommunicationError; default
        ``$PORTABLENN_COMM_TIMEOUT`` or 300.

    Raises
    ------
    CommunicationError
        mpi4py or the MPI library is missing, or NCCL was asked for and is not usable.
    """
    if kind not in KINDS:
        raise InputError(f"unknown communicator kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "nccl":
        ok, reason = nccl_available()
        if not ok:
            raise CommunicationError(f"comm 'nccl' is not usable here: {reason}; use --comm mpi")
    MPI = _import_mpi()
    return Communicator(MPI.COMM_WORLD if mpi_comm is None else mpi_comm, kind, timeout)


_WRAPPED = {}


def as_communicator(comm):
    """A :class:`Communicator` for ``comm``: itself, or (cached) one wrapping an mpi4py communicator."""
    if isinstance(comm, Communicator):
        return comm
    if type(comm).__module__.split(".")[0] == "mpi4py":
        MPI = _import_mpi()
        if isinstance(comm, MPI.Comm):
            key = comm.py2f()
            if key not in _WRAPPED:
                _WRAPPED[key] = Communicator(comm, "auto")
            return _WRAPPED[key]
    raise InputError("comm must be an mpi4py communicator or one made by portablenn.distributed."
                     f"make_communicator, not {type(comm).__name__}")


# -- fit's data-parallel reducer -----------------------------------------------------------------
class DataParallel(Reducer):
    """The :class:`portablenn.train.Reducer` over a communicator: set-up, each rank's slice, gradient and
    metric sums. ``fit(..., comm=comm)`` makes one (the adapter registered below); so can
    ``fit(..., reducer=DataParallel(comm))``.

    Collective: every rank must call ``fit`` with it and the same arguments (checked by :meth:`start`).
    """

    def __init__(self, comm):
        self.comm = as_communicator(comm)
        self.rank, self.size = self.comm.rank, self.comm.size

    # -- set-up --------------------------------------------------------------------------------------
    def start(self, model, optimizer, n, val_n, settings):
        """Check that all ranks got the same arguments, choose the transport, broadcast rank 0's state."""
        comm = self.comm
        self.model, self.optimizer = model, optimizer
        self.dev = dev = model.device
        everyone = self._agree(dict(settings, n=n, n_val=val_n, dtype=model.dtype, device=dev.library,
                                    optimizer=repr(optimizer), model=repr(model),
                                    parameters=[(k, tuple(int(s) for s in layer.params[name].shape))
                                                for k, layer, name in model.named_parameters()]),
                               comm._device_facts(dev))
        comm.setup(dev, everyone)
        self._broadcast_state()

    def _agree(self, settings, facts):
        """Every rank must pass the same arguments (InputError on every rank if not); one allgather
        that also collects every rank's device facts, which it returns."""
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode()).hexdigest()
        everyone = self.comm.allgather_object((digest, settings, facts), what="argument check")
        if len({d for d, _, _ in everyone}) == 1:
            return [f for _, _, f in everyone]
        reference = everyone[0][1]
        for rank, (_, other, _) in enumerate(everyone):
            for key in sorted(set(reference) | set(other)):
                if reference.get(key) != other.get(key):
                    raise InputError(f"fit arguments differ between ranks: {key} is {reference.get(key)!r} on "
                                     f"rank 0 but {other.get(key)!r} on rank {rank}; every rank must get the "
                                     "same data, model and settings")
        raise InputError("fit arguments differ between ranks; every rank must get the same data, model and settings")

    def _broadcast_state(self):
        """Rank 0's weights and optimizer state on every rank (a resumed run continues identically)."""
        model, opt, dev = self.model, self.optimizer, self.dev
        payload = None
        if self.rank == 0:
            payload = {"params": model.state_dict(), "steps": opt.steps,
                       "state": {k: tuple(np.array(dev.to_numpy(b), copy=True) for b in bufs)
                                 for k, bufs in opt.state.items()}}
        payload = self.comm.bcast_object(payload, what="broadcast of the initial weights")
        if self.rank != 0:
            model.load_state_dict(payload["params"])
            opt.steps = payload["steps"]
            opt.state = {k: tuple(dev.asarray(b) for b in bufs) for k, bufs in payload["state"].items()}

    # -- per step ------------------------------------------------------------------------------------
    def shard(self, start, stop):
        """This rank's contiguous rows ``(lo, hi)`` of the global minibatch ``start:stop``."""
        m = stop - start
        return start + m * self.rank // self.size, start + m * (self.rank + 1) // self.size

    def reduce_gradients(self, flat):
        """Sum the flat buffer of all gradients over the ranks in ONE allreduce."""
        return self.comm.allreduce_(flat, self.dev)

    # -- per epoch -----------------------------------------------------------------------------------
    def reduce_metrics(self, sums):
        """Sum an epoch's additive metrics over the ranks in one small allreduce, then wait for it."""
        reduced = self.comm.allreduce_(sums, self.dev, what="metrics allreduce")
        self.comm.drain("metrics allreduce")
        return reduced


def _reducer_for(comm):
    """fit's adapter for ``comm``: a DataParallel for an mpi4py communicator or a Communicator, else None."""
    if isinstance(comm, Communicator) or type(comm).__module__.split(".")[0] == "mpi4py":
        return DataParallel(comm)
    return None


register_comm_adapter(_reducer_for)
