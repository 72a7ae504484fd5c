"""Durable file replacement helpers shared by checkpoints and downloads."""
import os

__all__ = ["fsync_directory"]


def fsync_directory(directory):
    """Make a rename inside ``directory`` durable where the platform allows it (best effort: not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
