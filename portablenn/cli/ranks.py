"""train --distributed: the communicator, and checks that rank 0 runs for every rank."""
import sys

from .. import outputs
from .errors import CLIError, Quiet, one_line


def communicator(args):
    """The MPI/NCCL communicator for --distributed (None without it); maps the device to this rank's GPU."""
    from .. import distributed

    if not args.distributed:
        if args.comm != "auto":
            raise CLIError("--comm needs --distributed")
        if distributed.launched_by_mpi():
            print("portablenn: warning: started by mpiexec without --distributed: every rank trains its own copy",
                  file=sys.stderr)
        return None
    comm = distributed.make_communicator(args.comm)
    args.device = comm.device(args.device)
    return comm


def agreed(comm, root, check):
    """Run ``check`` on rank 0 (the rank that writes files); its problem ends every rank, said once."""
    problem = None
    if root:
        try:
            check()
        except (CLIError, outputs.OutputError, ImportError) as exc:
            if comm is None:
                raise
            problem = one_line(exc)
    if comm is not None:
        problem = comm.bcast_object(problem, what="output check")
        if problem is not None:
            raise CLIError(problem) if root else Quiet(problem)
