"""TorchServe's worker sockets live under the instance folder: a deep TMPDIR (as in a pod
whose temp folder is a long emptyDir path) must not push them past the AF_UNIX limit."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from modelpilot_runtime.backends.torchserve.process import (
    _INSTANCE_SUFFIX,
    _SOCKET_PATH_MAX,
    _short_tempdir,
)


def test_a_short_tempdir_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert _short_tempdir() is None


def test_a_deep_tempdir_is_replaced_by_a_short_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    chosen = _short_tempdir()
    assert chosen is not None
    assert len(chosen) + _INSTANCE_SUFFIX <= _SOCKET_PATH_MAX
