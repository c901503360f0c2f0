"""`modelpilot-runtime fetch URI DEST`: copy a model into DEST, all or nothing.

Sources: `file:///path` and plain paths (a PVC), `http(s)://` (streamed, with progress in
the log, a SHA-256 check when one is given, retries on connection errors and 5xx, `.tar.gz`,
`.tgz` and `.zip` unpacked), and `s3://bucket/prefix` (boto3; the endpoint from
`--s3-endpoint` or `AWS_ENDPOINT_URL`, credentials from the usual AWS variables or roles).

Atomicity: everything is first written to a staging directory beside or inside DEST and only
moved into place once complete, and a marker file `.modelpilot-fetch.json` naming the URI is
written last. A failed or interrupted fetch leaves DEST as it was. Running the same fetch
again (a restarted init container) finds the marker and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

MARKER = ".modelpilot-fetch.json"
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK = 1024 * 1024


class FetchError(Exception):
    """The model could not be fetched; DEST is unchanged."""


def fetch(
    uri: str,
    dest: Path,
    sha256: str | None = None,
    s3_endpoint: str | None = None,
    force: bool = False,
    retries: int = 3,
) -> Path:
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.removeprefix("sha256:")  # the ModelDeployment's `checksum` form
    marker = dest / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("uri") == uri:
                log.info("%s already holds %s; nothing to do", dest, uri)
                return dest
        except (OSError, ValueError):
            pass
    in_place = dest.is_dir()
    if in_place and any(dest.iterdir()) and not force:
        raise FetchError(
            f"{dest} is not empty and holds no fetch of {uri}; use --force to replace it"
        )
    if in_place:
        stage = dest / f".partial-{uuid.uuid4().hex[:8]}"
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        _download(uri, stage, sha256, s3_endpoint, retries)
        if not any(stage.iterdir()):
            raise FetchError(f"{uri} holds no files")
        (stage / MARKER).write_text(
            json.dumps({"uri": uri, "sha256": sha256, "fetched_at": time.time()})
        )
        if in_place:
            for old in dest.iterdir():
                if old != stage:
                    shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            # The marker moves last: without it the directory is not a complete fetch.
            entries = sorted(stage.iterdir(), key=lambda p: p.name == MARKER)
            for entry in entries:
                os.replace(entry, dest / entry.name)
            stage.rmdir()
        else:
            os.replace(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("fetched %s into %s", uri, dest)
    return dest


def _download(
    uri: str, stage: Path, sha256: str | None, s3_endpoint: str | None, retries: int
) -> None:
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = Path(unquote(parsed.path) if scheme == "file" else uri)
        _copy_local(path, stage, sha256)
    elif scheme in ("http", "https"):
        _fetch_http(uri, stage, sha256, retries)
    elif scheme == "s3":
        _fetch_s3(parsed.netloc, parsed.path.lstrip("/"), stage, sha256, s3_endpoint)
    else:
        raise FetchError(
            f"unsupported URI scheme {scheme!r} in {uri}; use file://, a path, http(s):// or s3://"
        )


def _check_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != expected.lower():
        raise FetchError(
            f"checksum mismatch for {path.name}: sha256 {h.hexdigest()}, expected {expected}"
        )


def _copy_local(path: Path, stage: Path, sha256: str | None) -> None:
    if path.is_dir():
        if sha256:
            raise FetchError("--sha256 applies to a single file, and the source is a directory")
        for entry in path.iterdir():
            if entry.name == MARKER:
                continue
            target = stage / entry.name
            if entry.is_dir():
                shutil.copytree(entry, target)
            else:
                shutil.copy2(entry, target)
    elif path.is_file():
        _check_sha256(path, sha256)
        shutil.copy2(path, stage / path.name)
        _unpack_if_archive(stage / path.name, stage)
    else:
        raise FetchError(f"{path} does not exist")


def _unpack_if_archive(path: Path, stage: Path) -> None:
    name = path.name.lower()
    if not name.endswith(ARCHIVES):
        return
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    target = (stage / member).resolve()
                    if not target.is_relative_to(stage.resolve()):
                        raise FetchError(
                            f"{path.name}: member {member!r} points outside the archive"
                        )
                zf.extractall(stage)
        else:
            with tarfile.open(path) as tf:
                tf.extractall(stage, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"cannot unpack {path.name}: {exc}") from exc
    path.unlink()


def _fetch_http(uri: str, stage: Path, sha256: str | None, retries: int) -> None:
    import httpx

    name = Path(unquote(urlparse(uri).path)).name or "model.onnx"
    target = stage / name
    delay = 1.0
    for attempt in range(1, retries + 1):
        try:
            _stream(uri, target, _progress_logger(uri))
            break
        except (httpx.TransportError, _RetryableError) as exc:
            if attempt == retries:
                raise FetchError(f"{uri}: {exc} (after {retries} attempts)") from exc
            log.warning(
                "%s: %s; retrying in %.0fs (attempt %d of %d)", uri, exc, delay, attempt, retries
            )
            time.sleep(delay)
            delay *= 2
    _check_sha256(target, sha256)
    _unpack_if_archive(target, stage)


class _RetryableError(Exception):
    pass


def _progress_logger(uri: str) -> Callable[[int, int | None], None]:
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 2.0 and (total is None or done < total):
            return
        last[0] = now
        if total:
            log.info(
                "%s: %.1f of %.1f MiB (%d%%)", uri, done / 2**20, total / 2**20, 100 * done // total
            )
        else:
            log.info("%s: %.1f MiB", uri, done / 2**20)

    return report


def _stream(uri: str, target: Path, progress: Callable[[int, int | None], None]) -> None:
    import httpx

    with httpx.stream("GET", uri, follow_redirects=True, timeout=httpx.Timeout(30.0)) as response:
        if response.status_code >= 500:
            raise _RetryableError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise FetchError(f"{uri}: HTTP {response.status_code}")
        length = response.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with target.open("wb") as f:
            for chunk in response.iter_bytes(CHUNK):
                f.write(chunk)
                done += len(chunk)
                progress(done, total)
        if total is not None and done != total:
            raise _RetryableError(f"connection closed after {done} of {total} bytes")


def _fetch_s3(
    bucket: str, prefix: str, stage: Path, sha256: str | None, endpoint: str | None
) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    if not bucket:
        raise FetchError("s3:// URI without a bucket")
    client = boto3.client("s3", endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        keys: list[tuple[str, int]] = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
        if prefix and not prefix.endswith("/"):
            # "models/fraud/1" means the object itself or the "directory", not "fraud/10".
            keys = [(k, n) for k, n in keys if k == prefix or k.startswith(prefix + "/")]
        if not keys:
            raise FetchError(f"s3://{bucket}/{prefix} holds no objects")
        single = len(keys) == 1 and keys[0][0] == prefix
        if sha256 and not single:
            raise FetchError("--sha256 applies to a single object, and the prefix holds several")
        total = sum(size for _, size in keys)
        done = 0
        report = _progress_logger(f"s3://{bucket}/{prefix}")
        base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        for key, size in keys:
            if key.endswith("/"):
                continue  # a "directory" placeholder object
            rel = Path(key).name if single else key[len(base) :] if key.startswith(base) else key
            target = (stage / rel).resolve()
            if not target.is_relative_to(stage.resolve()):
                raise FetchError(f"object key {key!r} points outside DEST")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
            done += size
            report(done, total)
        if single:
            target = stage / Path(keys[0][0]).name
            _check_sha256(target, sha256)
            _unpack_if_archive(target, stage)
    except (BotoCoreError, ClientError) as exc:
        raise FetchError(f"s3://{bucket}/{prefix}: {exc}") from exc
