"""A command's errors as one line on stderr and an exit code (2: usage or input, 1: a failed run or GPU)."""
import contextlib
import os
import sys

from .. import backend
from ..datasets import DatasetError
from ..validation import InputError


class CLIError(Exception):
    """A usage problem found after parsing (exit code 2)."""


class Quiet(CLIError):
    """A problem rank 0 reports: the other MPI ranks exit 2 without repeating it."""


def one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run(command, args):
    """``command(args)``'s exit code; an error a user can act on is one line, a bug keeps its traceback."""
    from ..distributed import CommunicationError  # does not import mpi4py

    try:
        code = command(args)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's last flush
        return code
    except CommunicationError as exc:
        print(f"portablenn: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Quiet:  # rank 0 said it
        return 2
    except BrokenPipeError:  # the reader went away (`portablenn train | head`): stop quietly, as on SIGPIPE
        with contextlib.suppress(OSError, ValueError):  # nothing left to flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, backend.DeviceError, InputError, DatasetError, ValueError, OSError) as exc:
        print(f"portablenn: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"portablenn: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("portablenn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower():
            # cupy.cuda.memory.OutOfMemoryError, torch.cuda.OutOfMemoryError
            print(f"portablenn: error: the device ran out of memory ({one_line(exc)}); "
                  "try a smaller --batch-size or a smaller model", file=sys.stderr)
            return 2
        if isinstance(exc, MemoryError):  # numpy names the array: "Unable to allocate 149. GiB for an array ..."
            print(f"portablenn: error: not enough memory ({one_line(exc)}); try a smaller model, --batch-size "
                  "or dataset", file=sys.stderr)
            return 2
        if not _from_cuda(exc):
            raise
        print(f"portablenn: error: the GPU failed ({type(exc).__name__}: {one_line(exc)}); rerun with "
              "--kernels generic, and please report it with the output of 'portablenn info'", file=sys.stderr)
        return 1


def _from_cuda(exc):
    """Whether ``exc`` comes from CUDA through CuPy (its runtime, driver, cuBLAS, NVRTC, compiler) or PyTorch."""
    modules = [cls.__module__ or "" for cls in type(exc).__mro__]
    return (any(m.split(".")[0] in ("cupy", "cupy_backends") for m in modules)
            or str(exc).startswith(("CUDA error", "CUBLAS_STATUS", "cuDNN error")))


def show_warning(message, category, filename, lineno, file=None, line=None):
    """`warnings.showwarning` for the command line: a warning is one line, as an error is."""
    print(f"portablenn: warning: {message}", file=sys.stderr if file is None else file)
