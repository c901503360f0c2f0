"""`modelpilot-runtime fetch`: every scheme, checksums, archives, and no half model on failure.

S3 is a real S3-compatible server (moto in server mode) on loopback."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from modelpilot_runtime.storage import FetchError, fetch
from modelpilot_runtime.storage.fetch import MARKER

MODEL = b"\x08\x07fake onnx bytes" * 100


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "1").mkdir(parents=True)
    (src / "1" / "model.onnx").write_bytes(MODEL)
    (src / "config.yaml").write_text("batching: {max_batch_size: 4}\n")
    return src


def test_plain_path_directory(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest" / "m"
    fetch(str(source), dest)
    assert (dest / "1" / "model.onnx").read_bytes() == MODEL
    assert (dest / "config.yaml").is_file()
    assert (dest / MARKER).is_file()
    assert [p.name for p in dest.parent.iterdir()] == ["m"]  # no staging left beside it


def test_file_uri_single_file_with_checksum(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    digest = "sha256:" + hashlib.sha256(MODEL).hexdigest()
    fetch(f"file://{source / '1' / 'model.onnx'}", dest, sha256=digest)
    assert (dest / "model.onnx").read_bytes() == MODEL


def test_into_an_existing_empty_directory(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mount"
    dest.mkdir()  # an emptyDir volume: the directory exists and cannot be replaced
    fetch(str(source), dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted([MARKER, "1", "config.yaml"])


def test_same_fetch_again_is_a_no_op_and_other_content_is_refused(
    source: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    fetch(str(source), dest)
    (dest / "1" / "model.onnx").write_bytes(b"changed")
    fetch(str(source), dest)  # a restarted init container
    assert (dest / "1" / "model.onnx").read_bytes() == b"changed"
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.onnx").write_bytes(b"x")
    with pytest.raises(FetchError, match="not empty"):
        fetch(str(other), dest)
    fetch(str(other), dest, force=True)
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "x.onnx"]


@pytest.mark.parametrize(
    ("uri", "message"),
    [("/does/not/exist", "does not exist"), ("ftp://host/x", "unsupported URI scheme 'ftp'")],
)
def test_bad_sources(tmp_path: Path, uri: str, message: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=message):
        fetch(uri, dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    failures: dict[str, int] = {}
    truncate: set[str] = set()

    def do_GET(self) -> None:
        if self.failures.get(self.path, 0) > 0:
            self.failures[self.path] -= 1
            self.send_response(503)
            self.end_headers()
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.files, _Handler.failures, _Handler.truncate = {}, {}, set()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_http_with_checksum_and_retries(http_server: str, tmp_path: Path) -> None:
    _Handler.files["/m/model.onnx"] = MODEL
    _Handler.failures["/m/model.onnx"] = 1  # one 503 first: retried
    dest = tmp_path / "dest"
    fetch(f"{http_server}/m/model.onnx", dest, sha256=hashlib.sha256(MODEL).hexdigest())
    assert (dest / "model.onnx").read_bytes() == MODEL


def test_http_checksum_mismatch_leaves_nothing(http_server: str, tmp_path: Path) -> None:
    _Handler.files["/m/model.onnx"] = MODEL
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch(f"{http_server}/m/model.onnx", dest, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_http_truncated_download_leaves_nothing(http_server: str, tmp_path: Path) -> None:
    _Handler.files["/m/model.onnx"] = MODEL
    _Handler.truncate.add("/m/model.onnx")
    dest = tmp_path / "dest"
    with pytest.raises(FetchError):
        fetch(f"{http_server}/m/model.onnx", dest, retries=2)
    assert list(tmp_path.iterdir()) == []


def test_http_404_and_archive(http_server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{http_server}/missing.onnx", tmp_path / "a")
    _Handler.files["/m.tar.gz"] = _tarball({"1/model.onnx": MODEL})
    fetch(f"{http_server}/m.tar.gz", tmp_path / "b")
    assert (tmp_path / "b" / "1" / "model.onnx").read_bytes() == MODEL
    assert not (tmp_path / "b" / "m.tar.gz").exists()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> object:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="models")
    client.put_object(Bucket="models", Key="fraud/1/model.onnx", Body=MODEL)
    client.put_object(Bucket="models", Key="fraud/1/extra/vocab.txt", Body=b"a\nb\n")
    client.put_object(Bucket="models", Key="fraud/10/model.onnx", Body=b"other version")
    return client


def test_s3_prefix(s3: object, s3_endpoint: str, tmp_path: Path) -> None:
    dest = tmp_path / "fraud" / "1"
    fetch("s3://models/fraud/1/", dest, s3_endpoint=s3_endpoint)
    assert (dest / "model.onnx").read_bytes() == MODEL
    assert (dest / "extra" / "vocab.txt").read_bytes() == b"a\nb\n"
    # "fraud/1" must not pull in "fraud/10".
    fetch("s3://models/fraud/1", tmp_path / "again", s3_endpoint=s3_endpoint)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [MARKER, "extra", "model.onnx"]


def test_s3_single_object_with_checksum(s3: object, s3_endpoint: str, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    fetch(
        "s3://models/fraud/1/model.onnx",
        dest,
        sha256=hashlib.sha256(MODEL).hexdigest(),
        s3_endpoint=s3_endpoint,
    )
    assert (dest / "model.onnx").read_bytes() == MODEL


@pytest.mark.parametrize(
    ("uri", "message"),
    [("s3://models/nothing/", "holds no objects"), ("s3://no-such-bucket/x", "NoSuchBucket")],
)
def test_s3_errors_leave_nothing(
    s3: object, s3_endpoint: str, tmp_path: Path, uri: str, message: str
) -> None:
    dest = tmp_path / "d"
    with pytest.raises(FetchError, match=message):
        fetch(uri, dest, s3_endpoint=s3_endpoint)
    assert list(tmp_path.iterdir()) == []


def test_fetch_command(s3: object, s3_endpoint: str, tmp_path: Path) -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelpilot_runtime",
            "fetch",
            "s3://models/fraud/1/",
            str(tmp_path / "m" / "1"),
        ],
        env={**__import__("os").environ, "AWS_ENDPOINT_URL": s3_endpoint},
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == MODEL
    bad = subprocess.run(
        [sys.executable, "-m", "modelpilot_runtime", "fetch", "/nope", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "fetch failed: /nope does not exist" in bad.stderr
