"""Per-model settings: server-wide defaults from the command line, overridden per model by
`<repository>/<model>/config.yaml` (or `config.json`).

Example `config.yaml`:

    version_policy: {latest: 2}        # or {specific: ["1", "3"]} or {all: true}
    onnx:
      execution_providers: [tensorrt, cuda, cpu]
      intra_op_threads: 1
      inter_op_threads: 1
      graph_optimization: all          # disable | basic | extended | all
      quantize: dynamic_int8           # or none
    batching: {max_batch_size: 32, max_delay_ms: 2, max_queue: 256, timeout_ms: 30000}
    execution: auto                    # auto | inline | thread
    warmup: {runs: 2}
    cache: {max_entries: 0}            # 0: off
    classification: {output: auto, max_classes: 32}
    faults: {error_ratio: 0.0, added_latency_ms: 0}
    backend: onnx                      # or torchserve: <version>/model.mar, settings below
    torchserve:
      inputs: [{name: input, datatype: FP32, shape: [-1, 8]}]
      outputs: [{name: probabilities, datatype: FP32, shape: [-1, 3]}]
      request_format: json             # or raw (one BYTES input sent as the body)
      workers: 1
      response_timeout_s: 60
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionPolicy(_Strict):
    """Which version directories are served: the latest N, a fixed list, or all of them."""

    latest: int | None = Field(default=None, ge=1)
    specific: list[str] | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.specific is not None, self.all])
        if chosen > 1:
            raise ValueError("version_policy takes one of latest, specific, all")
        return self

    def select(self, versions: list[str]) -> list[str]:
        ordered = sorted(versions, key=version_sort_key)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numeric versions in numeric order, after them names in natural order (v2 < v10)."""
    if version.isdigit():
        return (0, int(version), "")
    digits = "".join(c for c in version if c.isdigit())
    return (1, int(digits) if digits else -1, version)


class OnnxSettings(_Strict):
    execution_providers: list[str] = Field(default_factory=lambda: ["cpu"])
    intra_op_threads: int = Field(default=0, ge=0)
    inter_op_threads: int = Field(default=0, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    quantize: Literal["none", "dynamic_int8"] = "none"


class BatchingSettings(_Strict):
    max_batch_size: int = Field(default=1, ge=1)
    max_delay_ms: float = Field(default=0.0, ge=0)
    max_queue: int = Field(default=256, ge=1)
    timeout_ms: float = Field(default=30_000.0, gt=0)

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


class WarmupSettings(_Strict):
    runs: int = Field(default=2, ge=0)


class CacheSettings(_Strict):
    max_entries: int = Field(default=0, ge=0)


class ClassificationSettings(_Strict):
    output: str = "auto"  # an output name, "auto" (a 2-D float output), or "none"
    max_classes: int = Field(default=32, ge=1, le=1000)


class FaultSettings(_Strict):
    """Injected faults for rollout tests; off unless set."""

    error_ratio: float = Field(default=0.0, ge=0, le=1)
    added_latency_ms: float = Field(default=0.0, ge=0)

    @property
    def active(self) -> bool:
        return self.error_ratio > 0 or self.added_latency_ms > 0


class TensorDeclaration(_Strict):
    """One input or output of a model whose file carries no signature (a TorchServe .mar)."""

    name: str = Field(min_length=1)
    datatype: Literal[
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
    shape: list[int] = Field(min_length=1)  # -1 is any size; a first -1 makes it batchable

    @model_validator(mode="after")
    def _dims(self) -> TensorDeclaration:
        if any(d < -1 or d == 0 for d in self.shape):
            raise ValueError(f"{self.name}: dimensions are positive or -1, got {self.shape}")
        return self


class TorchServeSettings(_Strict):
    """How the runtime runs a `.mar` in a supervised TorchServe (see docs/torchserve.md).

    A `.mar` has no signature, so its inputs and outputs are declared here. A batch goes to
    TorchServe as one request, and the runtime's handler in TorchServe's worker hands the
    `.mar`'s handler one request per row: for `json` the row's
    `{"inputs": [{"name", "datatype", "shape", "data"}]}`, for `raw` the bytes of a single
    BYTES input as they are (image handlers and the like).
    """

    inputs: list[TensorDeclaration] = Field(default_factory=list)
    outputs: list[TensorDeclaration] = Field(default_factory=list)
    request_format: Literal["json", "raw"] = "json"
    workers: int = Field(default=1, ge=1)
    response_timeout_s: int = Field(default=60, ge=1)
    startup_timeout_s: float = Field(default=180.0, gt=0)
    java: str = "java"
    jvm_options: list[str] = Field(default_factory=lambda: ["-Xmx512m", "-XX:+UseSerialGC"])

    @model_validator(mode="after")
    def _raw_takes_one_bytes_input(self) -> TorchServeSettings:
        if self.request_format == "raw" and (
            len(self.inputs) != 1 or self.inputs[0].datatype != "BYTES"
        ):
            raise ValueError("request_format raw takes exactly one BYTES input")
        return self


class ModelConfig(_Strict):
    backend: Literal["onnx", "torchserve"] = "onnx"
    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy(latest=1))
    onnx: OnnxSettings = Field(default_factory=OnnxSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    execution: Literal["auto", "inline", "thread"] = "auto"
    warmup: WarmupSettings = Field(default_factory=WarmupSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    classification: ClassificationSettings = Field(default_factory=ClassificationSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)
    torchserve: TorchServeSettings = Field(default_factory=TorchServeSettings)


class ConfigError(Exception):
    """A model's config file is unreadable or invalid; the message names the file and field."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "version_policy":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")


def load_model_config(model_dir: Path, defaults: dict[str, Any]) -> ModelConfig:
    """The model's settings: `defaults` (from the command line) overridden by its config file."""
    data: dict[str, Any] = {}
    for name in CONFIG_NAMES:
        path = model_dir / name
        if path.is_file():
            try:
                text = path.read_text()
                loaded = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: cannot read: {exc}") from exc
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: must be a mapping")
            data = loaded or {}
            break
    try:
        return ModelConfig.model_validate(deep_merge(defaults, data))
    except ValidationError as exc:
        raise ConfigError(f"{model_dir}: invalid model config: {exc}") from exc
