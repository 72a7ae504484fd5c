"""SIGINT/SIGTERM during train: stop at the next epoch boundary and save, rather than die."""
import contextlib
import signal
import sys


class Stop(Exception):
    """Raised from the epoch callback after SIGINT/SIGTERM: stop at this epoch boundary."""


@contextlib.contextmanager
def graceful_stop(quiet=False):
    """SIGINT/SIGTERM set a flag (training stops after the epoch and saves); a second one aborts.

    ``train`` holds it from before the first epoch until after its last save, so a signal during the
    final evaluation or save still ends with the model saved. ``quiet``: say nothing (MPI ranks but 0).
    """
    state = {"signum": None}

    def handler(signum, frame):
        if state["signum"] is not None:
            raise KeyboardInterrupt
        state["signum"] = signum
        if not quiet:
            print("\nportablenn: stopping after this epoch to save (signal again to abort)", file=sys.stderr)
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave the handlers alone
            pass
    try:
        yield state
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
