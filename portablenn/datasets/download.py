"""Download MNIST from public mirrors into the cache, checksum-verified, resumable, atomic (standard library only)."""
import gzip
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from .._fileio import fsync_directory
from .mnist import ALL_FILES, DatasetError, _candidate_dirs

__all__ = ["MIRRORS", "SHA256", "DownloadError", "cache_dir", "download_mnist"]

# Tried in order; each holds the four ``<name>.gz`` files.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# SHA-256 of the DECOMPRESSED IDX files, so any faithful gzip of them is accepted. Tests replace
# entries (the dict is read at call time).
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

BACKOFF_SECONDS = 0.5  # first retry waits this long, then twice as long each time
_CHUNK = 1 << 16


class DownloadError(DatasetError):
    """MNIST could not be downloaded (no mirror reachable) or a download failed its checksum."""


class _MirrorDown(Exception):
    """The mirror cannot be reached at all (DNS, refused, unroutable, connect timeout): skip it."""


class _Retry(Exception):
    """A transient failure (5xx, dropped connection, short read) worth another attempt."""


class _Skip(Exception):
    """This mirror cannot serve this file (404, 403, ...): try the next mirror."""


def cache_dir(root=None):
    """Where `download_mnist` puts the files.

    Parameters
    ----------
    root : str or os.PathLike, optional

    Returns
    -------
    pathlib.Path
        ``root``, else ``$PORTABLENN_DATA``, else ``$XDG_CACHE_HOME/portablenn/mnist`` (default
        ``~/.cache/portablenn/mnist``), the directories `portablenn.datasets.mnist` searches.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PORTABLENN_DATA")
    if env:
        return Path(env).expanduser()
    return _candidate_dirs()[-1]


def download_mnist(root=None, *, mirrors=None, timeout=10, retries=2, quiet=False):
    """Fetch the four MNIST ``.gz`` files into the cache, unless valid copies are already there.

    Each file is streamed to ``<name>.gz.part`` (an interrupted download resumes with an HTTP Range
    request where the server supports it), its decompressed SHA-256 is checked against `SHA256`,
    and only then is it renamed to ``<name>.gz``. Mirrors are tried in order; on a transient error
    (5xx, dropped connection) a mirror is retried ``retries`` times with exponential backoff; a
    mirror that cannot be reached at all is skipped at once, so an offline machine fails in about
    one connection attempt per mirror.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Target directory; see `cache_dir` for the default.
    mirrors : sequence of str, optional
        Base URLs ending in ``/``; default `MIRRORS`.
    timeout : float
        Seconds to wait for a connection or for data.
    retries : int
        Extra attempts per mirror after a transient failure.
    quiet : bool
        Print nothing (otherwise one line per file on stderr).

    Returns
    -------
    pathlib.Path
        The directory holding the four files, ready for ``mnist(root=...)``.

    Raises
    ------
    DownloadError
        No mirror could deliver a file (the message says where to put the files by hand), or a
        download failed its checksum on every mirror that served it (nothing is kept), or a file
        already in the directory is not MNIST.
    """
    directory = cache_dir(root)
    mirrors = [mirrors] if isinstance(mirrors, str) else list(MIRRORS if mirrors is None else mirrors)
    mirrors = [m if m.endswith("/") else m + "/" for m in mirrors]
    if int(retries) < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    todo = [name for name in ALL_FILES if not _present(directory, name)]
    if not todo:
        return directory
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the MNIST directory {directory}: {exc.strerror or exc}") from None
    down = {}  # mirror -> why it is unreachable, shared by the four files
    try:
        for name in todo:
            _fetch(name, directory, mirrors, down, float(timeout), int(retries), quiet)
    except DownloadError:
        if created and not any(directory.iterdir()):
            directory.rmdir()  # leave no empty directory behind (its parents may stay)
        raise
    return directory


def _say(quiet, text):
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _gz_sha256(path):
    """SHA-256 of the decompressed content of ``path``, or None if it is not a complete gzip stream."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _raw_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _present(directory, name):
    """Whether a valid copy of ``name`` (raw or .gz) is in ``directory``; a raw impostor is an error."""
    raw, gz = directory / name, directory / (name + ".gz")
    if raw.is_file():  # the MNIST reader prefers the raw file, so a wrong one would shadow a download
        if _raw_sha256(raw) == SHA256[name]:
            return True
        raise DownloadError(f"{raw} is not the expected MNIST file (SHA-256 mismatch); delete it and run again")
    return gz.is_file() and _gz_sha256(gz) == SHA256[name]


def _fetch(name, directory, mirrors, down, timeout, retries, quiet):
    """Download ``name``.gz from the first mirror that delivers a file with the right checksum."""
    filename = name + ".gz"
    final, part = directory / filename, directory / (filename + ".part")
    problems, corrupted = [], None
    for mirror in mirrors:
        if mirror in down:
            continue
        url = urllib.parse.urljoin(mirror, filename)
        attempt = 0
        while attempt <= retries:
            if attempt:
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            attempt += 1
            try:
                resumed = _download(url, part, timeout, quiet)
            except _MirrorDown as exc:
                down[mirror] = str(exc)
                break
            except _Skip as exc:
                problems.append(f"{url}: {exc}")
                break
            except _Retry as exc:
                problems.append(f"{url}: {exc}")
                continue
            digest = _gz_sha256(part)
            if digest == SHA256[name]:
                _commit(part, final)
                _say(quiet, f"saved {final}")
                return
            _remove(part)
            corrupted = (url, digest)
            if not resumed:  # a fresh download that is wrong will be wrong again here: next mirror
                break
            # a resumed one may have glued two different files together: retry from scratch
    if corrupted is not None:
        url, digest = corrupted
        got = f"its decompressed SHA-256 is {digest}" if digest else "it is not a valid gzip file"
        raise DownloadError(f"{filename} downloaded from {url} is corrupted ({got}, expected {SHA256[name]}); "
                            f"nothing was kept in {directory}")
    reasons = "; ".join([f"{m}: {why}" for m, why in down.items()] + problems[-3:]) or "no mirrors given"
    what = "reach any MNIST mirror" if not problems else f"download {filename} from any MNIST mirror"
    raise DownloadError(f"could not {what} ({reasons}); put the four files " + ", ".join(ALL_FILES)
                        + f" (raw or .gz) into {directory} by hand, or set $PORTABLENN_DATA to a directory "
                        "holding them")


def _download(url, part, timeout, quiet):
    """Stream ``url`` into ``part``, resuming from its current size; returns whether it resumed."""
    from .. import __version__

    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"portablenn/{__version__} (+python urllib)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing left to send: the part may already be complete
            return True
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise _Skip(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _MirrorDown(_reason(exc.reason)) from None
    except (OSError, ValueError) as exc:  # timeouts and resets before any response; bad URLs
        raise _MirrorDown(_reason(exc)) from None
    with response:
        resumed = bool(offset) and response.status == 206
        if resumed:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start.strip() != str(offset):
                _remove(part)
                raise _Retry(f"server answered the range request with Content-Range "
                             f"{response.headers.get('Content-Range')!r}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        _say(quiet, f"downloading {url}" + (f" (resuming at {offset} bytes)" if resumed else "")
             + (f", {(expected + (offset if resumed else 0)) / 1e6:.1f} MB" if expected is not None else ""))
        received = 0
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    received += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if isinstance(exc, (ConnectionError, TimeoutError)) or exc.errno is None:
                raise _Retry(f"connection lost after {received} bytes ({_reason(exc)})") from None
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from None
        except http.client.HTTPException as exc:  # IncompleteRead and friends
            raise _Retry(f"connection lost after {received} bytes ({type(exc).__name__})") from None
    if expected is not None and received < expected:
        raise _Retry(f"connection closed after {received} of {expected} bytes")
    return resumed


def _reason(reason):
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(reason, (TimeoutError,)) or "timed out" in str(reason):
        return "timed out"
    return str(reason) or type(reason).__name__


def _commit(part, final):
    """Rename the verified ``part`` over ``final`` and make the rename durable (best effort)."""
    os.replace(part, final)
    fsync_directory(final.parent)


def _remove(path):
    path.unlink(missing_ok=True)
