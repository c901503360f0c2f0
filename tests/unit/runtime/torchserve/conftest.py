"""Fixtures for the TorchServe backend tests: the sample `.mar` (archived here with
torch-model-archiver), its ONNX export, and runtime servers that serve them through a real
TorchServe. The tier needs torch, TorchServe and Java (`make torchserve-env`); with
MODELPILOT_SKIP_TORCHSERVE=1 it is skipped, otherwise a missing piece is an error."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.runtime.conftest import RunningServer, run_server

SKIP = os.environ.get("MODELPILOT_SKIP_TORCHSERVE") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
            if SKIP:
                item.add_marker(pytest.mark.skip(reason="MODELPILOT_SKIP_TORCHSERVE=1"))


@pytest.fixture(scope="session")
def ts_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with `tiny_ts` (a .mar) and `tiny_onnx` (the same weights)."""
    if shutil.which("java") is None:
        raise RuntimeError("TorchServe needs Java on the PATH: run `make torchserve-env`")
    from modelpilot_runtime.backends.torchserve.sample import write_mar

    repo = tmp_path_factory.mktemp("ts-repo")
    write_mar(repo, batch=8, delay_ms=5.0, onnx=True)
    return repo


@pytest.fixture(scope="module")
def ts_server(ts_repo: Path) -> Iterator[RunningServer]:
    with run_server(
        models={"tiny_ts": ts_repo / "tiny_ts", "tiny_onnx": ts_repo / "tiny_onnx"}
    ) as srv:
        yield srv


def backend_of(server: RunningServer, model: str = "tiny_ts") -> Any:
    """The TorchServe backend object behind a served version."""
    return server.runtime.repository.models[model]["1"].backend
