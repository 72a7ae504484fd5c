"""Where portablenn may write: every output path checked before any work, files replaced atomically, and
temporary files that never outlive the save that made them.

The rule (the command line's): an output may replace only a regular file that portablenn itself wrote
as that kind of output (a checkpoint, a JSON-lines log of epoch records, a PNG plot, a predictions file,
an ONNX export), an empty file, or anything when the user passed ``--overwrite``. Never a file the
command is reading (a dataset, a checkpoint, an input), a directory, or something that is not a regular
file (a FIFO, a device, a socket), not even with ``--overwrite``.
"""
import hashlib
import io
import json
import os
import re
import socket
import stat
import struct
import tempfile
import time
import zipfile
from pathlib import Path

from ._fileio import fsync_directory

__all__ = ["OutputError", "KINDS", "check", "check_directory", "check_distinct", "prepare", "is_ours",
           "atomic_write", "refuse_special", "sweep_temporaries", "temporary_prefix", "STALE_SECONDS"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_SOFTWARE = "portablenn"  # the start of the Software text chunk of every PNG portablenn writes (plots._save)
STALE_SECONDS = 3600  # a temporary file untouched this long is abandoned, whoever made it
KINDS = {  # kind -> what portablenn's own file of that kind is, for the messages
    "checkpoint": "a portablenn checkpoint",
    "log": "a portablenn log (JSON lines of epoch records)",
    "png": "a PNG image portablenn wrote",
    "predictions-npz": "a portablenn predictions file (arrays classes and probabilities, labels and "
                       "probabilities, or values)",
    "predictions-csv": "a portablenn predictions file (header class,p0,..., label0,...,p0,..., or value0,...)",
    "onnx": "an ONNX model exported by portablenn",
    "animation": "an animation portablenn wrote",
}
_WHY_NOT = {  # kind -> how portablenn tells its own file of that kind, where a user may think a file is its own
    "png": " (portablenn marks the PNGs it writes in their Software field; plots written by older versions of "
           "portablenn have no mark)",
}
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# .<target name>.portablenn-<host hash>-<pid>-<mkstemp's 8 characters>.tmp
_TEMPORARY = re.compile(r"^\..*\.portablenn-([0-9a-f]{8})-(\d+)-[A-Za-z0-9_]+\.tmp$")


_ESCAPES = {i: repr(chr(i))[1:-1] for i in (*range(32), 127)}  # "\n" -> "\\n", "\x1b" -> "\\x1b"


class OutputError(ValueError):
    """An output path portablenn refuses to write; the message names the flag, the path and why, on one line (a
    control character of a name, a newline one, is shown escaped)."""

    def __init__(self, message):
        super().__init__(str(message).translate(_ESCAPES))


# -- is this file ours? -------------------------------------------------------------------------------
def is_ours(path, kind):
    """Whether the regular file ``path`` is portablenn's own output of ``kind`` (see `KINDS`).

    Reads at most the file's header (a checkpoint's, a PNG's, an archive's directory, a CSV's first
    line); a log is read line by line up to its first line that is not an epoch record.
    """
    try:
        return bool(_RECOGNISERS[kind](Path(path)))
    except Exception:  # whatever a reader raises on a file that is not what it reads (protobuf's DecodeError...)
        return False


def _is_checkpoint(path):
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if not 2 <= length <= 100_000_000:  # safetensors' own limit on the header
            return False
        if length > os.fstat(fh.fileno()).st_size - 8:  # the number is the file's: it must not size the read buffer
            return False  # (a 10-byte file claiming a 99 MB header)
        header = json.loads(fh.read(length))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and all(key in meta for key in ("format_version", "architecture", "dtype"))


_LOG_LINE = 1 << 20  # characters: a line of a log is read up to this many (an epoch record is far shorter)


def _is_log(path):
    """Every line an epoch record (a JSON object with epoch and loss); a last line cut short by a
    kill (no newline at its end) is forgiven."""
    records = 0
    with open(path, encoding="utf-8") as fh:
        for line in iter(lambda: fh.readline(_LOG_LINE), ""):
            if len(line) >= _LOG_LINE and not line.endswith("\n"):  # no epoch record is that long: a user's file
                return False
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                return records > 0 and not line.endswith("\n")
            if not (isinstance(record, dict) and {"epoch", "loss"} <= set(record)
                    and isinstance(record["epoch"], int)):
                return False
            records += 1
    return records > 0


def _is_png(path):
    """A PNG whose ``Software`` text chunk, before the image data, starts with ``PNG_SOFTWARE``: a user's own
    picture (a camera's, a screenshot, matplotlib's own) is not ours."""
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_MAGIC:
            return False
        for _ in range(64):  # chunks before the image data: the header, a few text and layout chunks
            head = fh.read(8)
            if len(head) < 8:
                return False
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return False
            if kind == b"tEXt" and length <= 4096:
                keyword, _, text = fh.read(length).partition(b"\0")
                if keyword == b"Software" and text.startswith(PNG_SOFTWARE.encode()):
                    return True
                length = 0
            fh.seek(length + 4, os.SEEK_CUR)  # the data left, and the CRC
    return False


# the arrays of ``portablenn predict``'s .npz: softmax cross-entropy, binary cross-entropy, regression
_PREDICTION_ARRAYS = (["classes.npy", "probabilities.npy"], ["labels.npy", "probabilities.npy"], ["values.npy"])


def _is_predictions_npz(path):
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist()) in _PREDICTION_ARRAYS


def _is_predictions_csv(path):
    """The header ``portablenn predict`` writes for k outputs: ``class,p0,...,p{k-1}``,
    ``label0,...,label{k-1},p0,...,p{k-1}`` or ``value0,...,value{k-1}``."""
    with open(path, encoding="utf-8") as fh:
        names = fh.readline(1 << 20).rstrip("\r\n").split(",")  # 1 MiB: p0..p99999 fit

    def numbered(prefix, count):
        return [f"{prefix}{i}" for i in range(count)]

    k = sum(name.startswith("p") for name in names)
    return ((k >= 1 and names in (["class"] + numbered("p", k), numbered("label", k) + numbered("p", k)))
            or names == numbered("value", len(names)))


def _is_onnx(path):
    """A model ``export_onnx`` wrote: its graph's inputs ``[INPUT]``, its outputs ``[LOGITS, PROBABILITIES]`` or
    ``[OUTPUTS]`` (a regression model's). The protobuf is walked field by field, each read bounded and a weight
    skipped by seeking, so a user's multi-GB file is never loaded whole to find out it is not ours."""
    from .onnx import INPUT, LOGITS, OUTPUTS, PROBABILITIES

    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        graphs = [(at, length) for number, at, length in _protobuf_fields(fh, 0, end) if number == 7]  # .graph
        if len(graphs) != 1:
            return False
        names = {11: [], 12: []}  # GraphProto.input, .output: ValueInfoProto, whose field 1 is the name
        for number, at, length in _protobuf_fields(fh, graphs[0][0], graphs[0][0] + graphs[0][1]):
            if number in names:
                if length > 1 << 16:  # a name and a shape: never this long
                    return False
                fh.seek(at)
                info = io.BytesIO(fh.read(length))
                names[number] += [info.getvalue()[a:a + n].decode() for k, a, n in _protobuf_fields(info, 0, length)
                                  if k == 1]
    return names[11] == [INPUT] and names[12] in ([LOGITS, PROBABILITIES], [OUTPUTS])


def _varint(fh):
    value = 0
    for shift in range(0, 70, 7):
        byte = fh.read(1)
        if not byte:
            raise ValueError("a protobuf varint cut short")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("a protobuf varint of more than 10 bytes")


def _protobuf_fields(fh, start, end, most=100_000):
    """``(field number, offset, length)`` of each length-delimited field of the protobuf message at bytes
    ``start..end`` of ``fh``, the others skipped; ValueError where the bytes are not one (at most ``most`` fields)."""
    fh.seek(start)
    for _ in range(most):
        if fh.tell() >= end:
            if fh.tell() > end:
                raise ValueError("a protobuf field past its message")
            return
        key = _varint(fh)
        wire = key & 7
        if wire == 0:
            _varint(fh)
        elif wire in (1, 5):
            fh.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        elif wire == 2:
            length = _varint(fh)
            at = fh.tell()
            if at + length > end:
                raise ValueError("a protobuf field past its message")
            yield key >> 3, at, length
            fh.seek(at + length)
        else:
            raise ValueError("not a protobuf")
    raise ValueError("more protobuf fields than a model's")


def _is_animation(path):
    from .animation import is_animation

    return is_animation(path)


_RECOGNISERS = {"checkpoint": _is_checkpoint, "log": _is_log, "png": _is_png,
                "predictions-npz": _is_predictions_npz, "predictions-csv": _is_predictions_csv, "onnx": _is_onnx,
                "animation": _is_animation}


# -- the checks, before any work --------------------------------------------------------------------
def _what(mode):
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _same(a, b):
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check(path, kind, *, flag, overwrite=False, inputs=()):
    """Refuse to write ``path`` as ``kind`` unless portablenn may; no side effects.

    Parameters
    ----------
    path : str or os.PathLike
    kind : str
        A key of `KINDS`: what the command writes there.
    flag : str
        The option that named the path (``--save``), for the message.
    overwrite : bool
        The user allowed replacing a regular file that is not portablenn's.
    inputs : iterable of (path, description)
        Files the command reads (``("data.csv", "the --dataset file")``): never written.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputError
        ``path`` is an input, a directory, not a regular file, or a file that is not portablenn's
        ``kind`` (without ``overwrite``); or a component of its folder is not a directory.
    """
    _refuse_empty(path, flag)
    if os.fspath(path).endswith(("/", os.sep)):  # Path() would drop it, and write a file named as the folder
        raise OutputError(f"{flag} {os.fspath(path)} ends with a path separator, so it names a folder; name a "
                          "file in it")
    path = Path(path)
    st = _inspect(path, flag, inputs, "portablenn never writes over its input (not even with --overwrite): "
                                      "choose another file")
    if st is None:
        return path
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{flag} {path} is a directory; name a file (portablenn does not replace a directory, "
                          "not even with --overwrite)")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{flag} {path} is {_what(st.st_mode)}, not a regular file; portablenn writes only regular "
                          "files (not even with --overwrite)")
    if overwrite or st.st_size == 0 or is_ours(path, kind):
        return path
    raise OutputError(f"{flag} {path} exists and is not {KINDS[kind]}{_WHY_NOT.get(kind, '')}; portablenn replaces "
                      "only its own files: choose another name, or pass --overwrite to replace it")


def _refuse_empty(path, flag, what="a file"):
    """An empty path (``--save "$OUT"`` with OUT unset) names nothing: Path("") would be the working directory."""
    if os.fspath(path) == "":
        raise OutputError(f"{flag} is empty: name {what} (an unset shell variable?)")


def _inspect(path, flag, inputs, advice):
    """``os.stat(path)``, or None where nothing is there yet; refuses an input of this command (``advice`` says
    what to do instead) and a path through a file."""
    for source, description in inputs:
        if source is not None and _same(path, source):
            raise OutputError(f"{flag} {path} is {description}, which this command reads; {advice}")
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise OutputError(f"{flag} {path}: a folder on that path is a file, not a directory") from None
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot inspect it: {exc.strerror or exc}") from None


def check_directory(path, *, flag, inputs=(), contents="PNG files"):
    """Refuse a ``--plot``-style output folder (for ``contents``) that exists and is not a directory (or is an
    input)."""
    _refuse_empty(path, flag, "a directory")
    path = Path(path)
    st = _inspect(path, flag, inputs, "choose another directory")
    if st is None:
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{flag} {path} exists and is not a directory; name a directory for the {contents} "
                          "(not even --overwrite replaces a file with a directory)")
    return path


def check_distinct(named):
    """Refuse two outputs of one command that are the same file: ``named`` is ``[(flag, path), ...]``."""
    seen = []
    for flag, path in named:
        if path is None:
            continue
        # realpath: a symlink (dangling too: the file is made later) or a '..' after a linked folder leads there
        resolved = Path(os.path.realpath(path))
        for other_flag, other in seen:
            if resolved == other or _same(resolved, other):
                raise OutputError(f"{other_flag} and {flag} both name {path}; give each output its own file")
        seen.append((flag, resolved))


def prepare(path, *, flag, directory=False, append=False):
    """Make the folder ``path`` is written in (``mkdir -p``; ``path`` itself when ``directory``) and prove
    it writable by creating and removing a temporary file there; ``append``: the existing file itself
    must be writable too. Raises `OutputError`."""
    path = Path(path)
    folder = path if directory else (path.parent if str(path.parent) else Path("."))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{flag} {path}: {folder} exists and is not a directory") from None
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot create the directory {folder}: {exc.strerror or exc}") from None
    try:
        # named as atomic_write names its temporary files, so that a kill right here leaves one a later save sweeps
        fd, probe = tempfile.mkstemp(prefix=f".probe.portablenn-{_HOST}-{os.getpid()}-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot write in {folder}: {exc.strerror or exc}") from None
    if append and path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path}: the file is not writable")
    return path


# -- atomic replacement and its temporary files -------------------------------------------------------
def _alive(pid):
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows: age decides there
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def sweep_temporaries(directory, *, now=None):
    """Remove the abandoned temporary files of `atomic_write` in ``directory``; returns their names.

    Only names of `atomic_write`'s own pattern (``.NAME.portablenn-HOST-PID-XXXXXXXX.tmp``), and of
    those only the ones whose writer is gone: made on this host by a process that no longer exists,
    or untouched for `STALE_SECONDS` (any host; a live writer keeps touching its file). A file a live
    process is still writing is left alone. Errors are ignored: sweeping is best effort.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match is None:
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            abandoned = (match.group(1) == _HOST and not _alive(int(match.group(2)))) or \
                now - st.st_mtime > STALE_SECONDS
            if abandoned:
                os.unlink(full)
                removed.append(name)
        except OSError:
            continue
    return removed


def refuse_special(path, what="file"):
    """Refuse to replace a directory or a non-regular file (FIFO, device, socket) at ``path``."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {what} {path}: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"cannot write {what} {path}: it is {_what(st.st_mode)}, not a regular file")


def file_mode(path):
    """The permission bits of the file being replaced, else those a new file gets under the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def temporary_prefix(path):
    """The start of a temporary file's name beside ``path`` (``mkstemp`` adds 8 characters, then ``.tmp``): this
    host and process in it, so that `sweep_temporaries` removes it when a kill left it behind; under 255 bytes,
    whatever the name."""
    return f".{_shortened(Path(path).name)}.portablenn-{_HOST}-{os.getpid()}-"


def _shortened(name, limit=100):
    """``name`` cut to at most ``limit`` bytes as the file system encodes it, at a whole character: the temporary
    file's name beside it must fit the 255 bytes of a name, however many bytes a character takes."""
    name = name[:limit]
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


def atomic_write(path, data, what="file"):
    """Replace ``path`` by ``data`` through a fsynced temporary file in the same directory and a rename.

    A crash leaves the old file or the new one, never a partial one; the temporary file carries this
    host and process in its name, so the next write into the directory removes it when a kill left it
    behind (`sweep_temporaries`). Raises `OutputError` for a directory or a non-regular file at
    ``path``, OSError when writing fails (no temporary file is left then).
    """
    path = Path(path)
    refuse_special(path, what)
    directory = path.parent if str(path.parent) else Path(".")
    sweep_temporaries(directory)
    tmp = None
    try:
        mode = file_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp",
                                   dir=directory)
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # mkstemp creates 0600; give the file the mode open() would
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    fsync_directory(directory)
    return path
