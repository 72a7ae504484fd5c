"""download_mnist against a local HTTP server: success, cache hits, dead mirrors, corruption, resume, retries."""
import gzip
import hashlib
import http.server
import socket
import struct
import threading
import time

import numpy as np
import pytest

from portablenn.datasets import DatasetError, mnist
from portablenn.datasets import download
from portablenn.datasets.download import DownloadError, cache_dir, download_mnist
from portablenn.datasets.mnist import ALL_FILES


def _idx(array):
    code = {np.uint8: 0x08}[array.dtype.type]
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _fixtures():
    """Tiny MNIST look-alikes: 5 training and 3 test images, raw IDX bytes by file name."""
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              "t10k": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)}
    labels = {"train": np.array([5, 0, 4, 1, 9], np.uint8), "t10k": np.array([7, 2, 1], np.uint8)}
    raw = {}
    for split in ("train", "t10k"):
        raw[f"{split}-images-idx3-ubyte"] = _idx(images[split])
        raw[f"{split}-labels-idx1-ubyte"] = _idx(labels[split])
    return raw, images, labels


REAL_SHA256 = dict(download.SHA256)  # before the autouse fixture swaps in the fixtures' checksums
RAW, IMAGES, LABELS = _fixtures()
GZ = {name + ".gz": gzip.compress(data, mtime=0) for name, data in RAW.items()}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        server = self.server
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        server.log.append((name, rng))
        if server.errors.get(name):
            code = server.errors[name].pop(0)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if name not in server.files:
            self.send_error(404)
            return
        data, start = server.files[name], 0
        if rng and server.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = server.drop.pop(name, None)
        if cut is not None:  # announce the whole body, send part of it, hang up
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)
        server.sent[name] = server.sent.get(name, 0) + len(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files, ranges=True):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.ranges = dict(files), ranges
        self.log, self.sent, self.errors, self.drop = [], {}, {}, {}

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/mnist/"


@pytest.fixture
def serve():
    """``serve(files, ranges=True)`` -> a running local server; all are shut down afterwards."""
    servers = []

    def start(files=GZ, ranges=True):
        server = _Server(files, ranges)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _dead_url():
    """A URL on a local port nobody listens on: the connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the internet or the real cache: fixture checksums, dead default mirrors."""
    for name, data in RAW.items():
        monkeypatch.setitem(download.SHA256, name, hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(download, "MIRRORS", (_dead_url(),))
    monkeypatch.setattr(download, "BACKOFF_SECONDS", 0.01)
    monkeypatch.delenv("PORTABLENN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _names(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _check_loaded(directory):
    for split, prefix in (("train", "train"), ("test", "t10k")):
        X, y = mnist(directory, split=split)
        np.testing.assert_array_equal(y, LABELS[prefix])
        np.testing.assert_array_equal(X, IMAGES[prefix].reshape(-1, 784).astype(np.float32) / np.float32(255))


def test_download_success_and_mnist_reads_it(serve, tmp_path):
    server = serve()
    root = tmp_path / "cache" / "mnist"
    assert download_mnist(root, mirrors=[server.url], quiet=True) == root
    assert _names(root) == sorted(GZ)
    for name, data in GZ.items():
        assert (root / name).read_bytes() == data
    _check_loaded(root)
    assert sorted(name for name, _ in server.log) == sorted(GZ)


def test_second_call_downloads_nothing(serve, tmp_path):
    server = serve()
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    requests = len(server.log)
    assert requests == 4
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    download_mnist(tmp_path, mirrors=[_dead_url()], quiet=True)  # cached: no network needed at all
    assert len(server.log) == requests


def test_a_raw_file_already_there_counts(serve, tmp_path):
    server = serve()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(RAW["train-images-idx3-ubyte"])
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    assert "train-images-idx3-ubyte.gz" not in [n for n, _ in server.log] and len(server.log) == 3
    _check_loaded(tmp_path)


def test_an_invalid_cached_file_is_replaced(serve, tmp_path):
    server = serve()
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    assert (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes() == GZ["train-labels-idx1-ubyte.gz"]
    assert len(server.log) == 4


def test_a_wrong_raw_file_is_reported_not_shadowed(serve, tmp_path):
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"impostor")
    with pytest.raises(DownloadError, match=r"t10k-labels-idx1-ubyte is not the expected MNIST file.*delete it"):
        download_mnist(tmp_path, mirrors=[serve().url], quiet=True)


def test_unreachable_mirror_then_the_next_one(serve, tmp_path, capsys):
    server = serve()
    began = time.perf_counter()
    download_mnist(tmp_path, mirrors=[_dead_url(), server.url])
    assert time.perf_counter() - began < 5
    assert _names(tmp_path) == sorted(GZ)
    err = capsys.readouterr().err
    assert err.count("downloading ") == 4 and server.url in err and "saved" in err
    _check_loaded(tmp_path)


def test_missing_file_on_one_mirror_falls_back(serve, tmp_path):
    partial = serve({k: v for k, v in GZ.items() if not k.startswith("t10k")})
    full = serve()
    download_mnist(tmp_path, mirrors=[partial.url, full.url], quiet=True)
    assert sorted(n for n, _ in full.log) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    _check_loaded(tmp_path)


@pytest.mark.parametrize("damage", ["bit-flip", "not-gzip"])
def test_corrupted_download_leaves_nothing(serve, tmp_path, damage):
    bad = bytearray(RAW["train-labels-idx1-ubyte"])
    bad[-1] ^= 1
    files = dict(GZ)
    files["train-labels-idx1-ubyte.gz"] = gzip.compress(bytes(bad)) if damage == "bit-flip" else b"<html>oops</html>"
    server = serve(files)
    with pytest.raises(DownloadError, match=r"train-labels-idx1-ubyte\.gz downloaded from .* is corrupted") as info:
        download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    assert ("not a valid gzip" in str(info.value)) == (damage == "not-gzip")
    assert isinstance(info.value, DatasetError)
    assert not [n for n in _names(tmp_path) if n.startswith("train-labels")]
    assert not [n for n in _names(tmp_path) if n.endswith(".part")]


def test_corrupted_mirror_then_a_good_one(serve, tmp_path):
    files = dict(GZ, **{"t10k-images-idx3-ubyte.gz": gzip.compress(b"\0\0\x08\x01" + b"\0" * 8)})
    bad, good = serve(files), serve()
    download_mnist(tmp_path, mirrors=[bad.url, good.url], quiet=True)
    _check_loaded(tmp_path)
    assert [n for n, _ in good.log] == ["t10k-images-idx3-ubyte.gz"]


def test_all_mirrors_unreachable_fails_fast(tmp_path):
    root = tmp_path / "cache"
    began = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        download_mnist(root, mirrors=[_dead_url(), _dead_url(), _dead_url()], timeout=2, quiet=True)
    assert time.perf_counter() - began < 5
    message = str(info.value)
    assert message.startswith("could not reach any MNIST mirror (http://127.0.0.1:")
    assert str(root) in message and all(name in message for name in ALL_FILES)
    assert "\n" not in message
    assert not root.exists()


def test_default_mirrors_and_cache_dir_are_used(tmp_path, monkeypatch):
    with pytest.raises(DownloadError, match=str(tmp_path / "xdg" / "portablenn" / "mnist")):
        download_mnist(quiet=True)  # the autouse fixture points MIRRORS at a dead local port
    assert cache_dir() == tmp_path / "xdg" / "portablenn" / "mnist"
    monkeypatch.setenv("PORTABLENN_DATA", str(tmp_path / "data"))
    assert cache_dir() == tmp_path / "data"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    assert download.MIRRORS[0].startswith("http://127.0.0.1:")


def test_resume_a_part_file_with_range(serve, tmp_path):
    server = serve()
    name = "train-images-idx3-ubyte.gz"
    half = len(GZ[name]) // 2
    (tmp_path / (name + ".part")).write_bytes(GZ[name][:half])
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    assert (name, f"bytes={half}-") in server.log
    assert server.sent[name] == len(GZ[name]) - half
    assert (tmp_path / name).read_bytes() == GZ[name]
    assert not (tmp_path / (name + ".part")).exists()
    _check_loaded(tmp_path)


def test_a_part_file_without_range_support_restarts(serve, tmp_path):
    server = serve(ranges=False)
    name = "train-labels-idx1-ubyte.gz"
    (tmp_path / (name + ".part")).write_bytes(GZ[name][:10])
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    assert server.sent[name] == len(GZ[name])
    assert (tmp_path / name).read_bytes() == GZ[name]


def test_a_complete_part_file_is_verified_and_kept(serve, tmp_path):
    server = serve()
    name = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / (name + ".part")).write_bytes(GZ[name])
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    assert (name, f"bytes={len(GZ[name])}-") in server.log and name not in server.sent  # 416: nothing sent
    assert (tmp_path / name).read_bytes() == GZ[name]


def test_a_stale_part_file_from_another_file_is_discarded(serve, tmp_path):
    server = serve()
    name = "t10k-images-idx3-ubyte.gz"
    (tmp_path / (name + ".part")).write_bytes(GZ["train-images-idx3-ubyte.gz"][:100])
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    requests = [r for n, r in server.log if n == name]
    assert requests == ["bytes=100-", None]  # the glued file failed its checksum; fetched again whole
    _check_loaded(tmp_path)


def test_a_dropped_connection_resumes(serve, tmp_path):
    server = serve()
    name = "train-images-idx3-ubyte.gz"
    server.drop[name] = 1000
    download_mnist(tmp_path, mirrors=[server.url], quiet=True)
    assert [r for n, r in server.log if n == name] == [None, "bytes=1000-"]
    assert (tmp_path / name).read_bytes() == GZ[name]


def test_server_errors_are_retried_with_backoff(serve, tmp_path, monkeypatch):
    server = serve()
    server.errors["train-labels-idx1-ubyte.gz"] = [503, 500]
    sleeps = []
    monkeypatch.setattr(download.time, "sleep", sleeps.append)
    download_mnist(tmp_path, mirrors=[server.url], retries=2, quiet=True)
    assert sleeps == [0.01, 0.02]
    _check_loaded(tmp_path)
    server.errors["t10k-labels-idx1-ubyte.gz"] = [503, 503, 503]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DownloadError, match=r"HTTP 503"):
        download_mnist(tmp_path, mirrors=[server.url], retries=2, quiet=True)


def test_the_real_checksums_match_the_shared_mnist(mnist_dir):
    for name in ALL_FILES:
        raw, gz = mnist_dir / name, mnist_dir / (name + ".gz")
        data = raw.read_bytes() if raw.is_file() else gzip.decompress(gz.read_bytes())
        assert hashlib.sha256(data).hexdigest() == REAL_SHA256[name], name


# -- the same through the command line ---------------------------------------------------------------------
def test_cli_download_and_auto_download_on_first_use(serve, monkeypatch, tmp_path, capsys):
    from portablenn import cli

    server = serve()
    monkeypatch.setattr(download, "MIRRORS", (_dead_url(), server.url))
    target = tmp_path / "data"
    assert cli.main(["download", "mnist", "--data-dir", str(target)]) == 0
    assert str(target) in capsys.readouterr().out
    assert all((target / (name + ".gz")).is_file() or (target / name).is_file() for name in ALL_FILES)
    fresh = tmp_path / "fresh"
    code = cli.main(["train", "--dataset", "mnist", "--data-dir", str(fresh), "--epochs", "1", "--batch-size", "5",
                     "--quiet"])
    assert code == 0 and "mnist: 5 train, 3 test" in capsys.readouterr().out


def test_cli_download_corrupted_and_offline_are_one_line(serve, monkeypatch, tmp_path, capsys):
    from portablenn import cli

    bad = dict(GZ)
    bad["t10k-labels-idx1-ubyte.gz"] = gzip.compress(RAW["t10k-labels-idx1-ubyte"][:-1] + b"\x00", mtime=0)
    monkeypatch.setattr(download, "MIRRORS", (serve(bad).url,))
    target = tmp_path / "data"
    assert cli.main(["download", "mnist", "--data-dir", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the one error line
    assert err[-1].startswith("portablenn: error:") and "t10k-labels-idx1-ubyte" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not any(p.name.startswith("t10k-labels") for p in target.glob("*"))
    monkeypatch.setattr(download, "MIRRORS", (_dead_url(),))
    began = time.perf_counter()
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--quiet"]) == 2
    assert time.perf_counter() - began < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("portablenn: error:") and not any("Traceback" in line for line in err)
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--no-download"]) == 2
    assert "t10k-images-idx3-ubyte" in capsys.readouterr().err
