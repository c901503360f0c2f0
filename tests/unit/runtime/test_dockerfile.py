"""The runtime image cannot be built here (no container engine): check what can be checked.
It parses, runs as a non-root user, writes only under /tmp, and its entrypoint is the
console script that, with the image's environment, starts the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx

from modelpilot_runtime.cli import build_parser
from tests.unit.runtime.conftest import Subprocess, _wait_ready, free_port

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "runtime-image" / "Dockerfile"
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments), with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if line.endswith("\\"):
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "a continued line never ends"
    return out


def final_stage() -> list[tuple[str, str]]:
    items = instructions()
    last_from = max(i for i, (word, _) in enumerate(items) if word == "FROM")
    return items[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in final_stage():
        if word == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_dockerfile_parses() -> None:
    items = instructions()
    assert items[0][0] in ("ARG", "FROM")
    assert {word for word, _ in items} <= INSTRUCTIONS
    assert any(word == "FROM" and "cuda" in rest.lower() for word, rest in items) or any(
        word == "ARG" and "nvidia/cuda" in rest for word, rest in items
    )


def test_runs_as_non_root_and_writes_only_under_tmp() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0  # numeric, so runAsNonRoot can verify it
    env = image_env()
    assert env["HOME"].startswith("/tmp")
    assert env["MODELPILOT_CACHE_DIR"].startswith("/tmp/")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_copied_sources_exist() -> None:
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_entrypoint_is_the_console_script() -> None:
    stage = final_stage()
    entrypoint = json.loads(next(rest for word, rest in stage if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in stage if word == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["modelpilot-runtime"]
    assert scripts["modelpilot-runtime"] == "modelpilot_runtime.cli:main"
    assert build_parser().parse_args(cmd).command == "serve"


def test_the_image_command_starts_the_server(sample_repo: Path, tmp_path: Path) -> None:
    stage = final_stage()
    cmd = json.loads(next(rest for word, rest in stage if word == "CMD"))
    env = image_env()
    env.pop("PATH")
    http_port, grpc_port = free_port(), free_port()
    env.update(
        # Where the pod's volumes would be mounted, here temporary directories.
        MODELPILOT_MODEL_REPOSITORY=str(sample_repo),
        MODELPILOT_CACHE_DIR=str(tmp_path / "cache"),
        HOME=str(tmp_path),
        MODELPILOT_HTTP_PORT=str(http_port),
        MODELPILOT_GRPC_PORT=str(grpc_port),
        MODELPILOT_HOST="127.0.0.1",
    )
    log = tmp_path / "server.log"
    script = Path(sys.executable).parent / entrypoint_name()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(script), *cmd], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    server = _wait_ready(Subprocess(proc, http_port, grpc_port, log))
    try:
        assert httpx.get(server.url + "/v2/models/tiny/ready").status_code == 200
        # The image asks for TensorRT, then CUDA; without a GPU it says it runs on the CPU.
        meta = httpx.get(server.url + "/v2/models/tiny").json()
        if meta["parameters"]["execution_provider"] == "CPUExecutionProvider":
            assert "running on CPUExecutionProvider" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def entrypoint_name() -> str:
    return str(json.loads(next(rest for word, rest in final_stage() if word == "ENTRYPOINT"))[0])


def test_log_level_goes_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--log-level", "debug"]).log_level == "debug"
    assert parser.parse_args(["--log-level", "warning", "serve"]).log_level == "warning"
    assert parser.parse_args(["fetch", "a", "b"]).log_level == "info"
