"""The backend interface: load, warm up, predict, unload.

A backend turns a dict of named numpy arrays into a dict of named numpy arrays. `predict` is
synchronous and must be safe to call from a worker thread; the scheduler decides whether to
call it on the event loop (cheap models) or in a thread (everything else), so a backend
whose work happens elsewhere (a TorchServe process behind loopback HTTP) just blocks in its
thread. Everything protocol-specific (datatypes on the wire, errors) stays outside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modelpilot_runtime.config import ModelConfig
from modelpilot_runtime.tensors import Array, TensorSpec


@dataclass(slots=True)
class BackendInfo:
    """What a loaded backend reports in model metadata and metric labels."""

    platform: str  # v2 metadata "platform", e.g. "onnxruntime_onnx"
    provider: str  # the execution provider actually used, e.g. "CPUExecutionProvider"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # True when every input's first dimension is free: requests can be stacked into batches.
    batchable: bool
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    # Mean seconds of one batch-1 run during warm-up (0 when not warmed up): picks inline or
    # threaded execution.
    batch1_seconds: float = 0.0
    details: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    info: BackendInfo

    def load(self) -> BackendInfo:
        """Load the model (slow, called in a worker thread); fills and returns `info`."""

    def warmup(self, runs: int, batch_sizes: list[int]) -> None:
        """Run synthetic inputs built from the input metadata, so the first request is fast."""

    def predict(self, inputs: dict[str, Array], outputs: list[str] | None) -> dict[str, Array]:
        """Run one (possibly batched) request; `outputs` None means all outputs."""

    def unload(self) -> None:
        """Release the model's resources; called once no request uses it any more."""


def create_backend(
    model_dir: Path, version_dir: Path, config: ModelConfig, cache_dir: Path
) -> Backend:
    """The backend for one model version, by the model's configured format."""
    if config.backend == "onnx":
        from modelpilot_runtime.backends.onnx import OnnxBackend

        return OnnxBackend(version_dir, config, cache_dir)
    if config.backend == "torchserve":
        # Imported here: TorchServe (and torch) are an optional extra.
        from modelpilot_runtime.backends.torchserve import TorchServeBackend

        return TorchServeBackend(model_dir, version_dir, config, cache_dir)
    raise ValueError(f"{model_dir}: unknown backend {config.backend!r}")  # pragma: no cover
