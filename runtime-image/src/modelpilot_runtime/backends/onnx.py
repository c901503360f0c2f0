"""The ONNX backend: onnxruntime sessions with ordered execution providers, thread and graph
optimisation settings, optional dynamic int8 quantisation (cached beside the model), and
warm-up with inputs synthesised from the model's input metadata.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from modelpilot_runtime.backends.base import BackendInfo
from modelpilot_runtime.config import ModelConfig
from modelpilot_runtime.errors import BadRequestError
from modelpilot_runtime.tensors import ONNX_TO_V2, Array, TensorSpec

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def provider_name(name: str) -> str:
    return PROVIDER_NAMES.get(name.lower(), name)


def resolve_providers(wanted: list[str], available: list[str]) -> list[str]:
    """The wanted providers that this onnxruntime build has, in order, CPU always last."""
    chosen: list[str] = []
    for name in wanted:
        full = provider_name(name)
        if full in available:
            if full not in chosen:
                chosen.append(full)
        else:
            log.warning("execution provider %s is not in this onnxruntime build; skipping it", full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _spec(arg: Any) -> TensorSpec:
    datatype = ONNX_TO_V2.get(arg.type)
    if datatype is None:
        raise ValueError(f"tensor {arg.name!r} has type {arg.type}, which the runtime cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


class OnnxBackend:
    """One model version run by one onnxruntime InferenceSession (thread-safe for `run`)."""

    def __init__(self, version_dir: Path, config: ModelConfig, cache_dir: Path) -> None:
        self.version_dir = version_dir
        self.config = config
        self.cache_dir = cache_dir
        self.session: ort.InferenceSession | None = None
        self.info = BackendInfo("onnxruntime_onnx", "", [], [], batchable=False)
        self._output_names: list[str] = []
        self._run: Any = None

    def load(self) -> BackendInfo:
        started = time.perf_counter()
        settings = self.config.onnx
        path = self.version_dir / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        if settings.quantize == "dynamic_int8":
            path = self._quantized(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.graph_optimization_level = GRAPH_LEVELS[settings.graph_optimization]
        options.log_severity_level = 3  # onnxruntime's own warnings duplicate our log lines
        providers = resolve_providers(settings.execution_providers, ort.get_available_providers())
        session = ort.InferenceSession(str(path), options, providers=providers)
        used = session.get_providers()
        if used[0] != providers[0]:
            log.warning(
                "%s: asked for %s, running on %s (others failed to start; see onnxruntime log)",
                self.version_dir,
                " > ".join(providers),
                used[0],
            )
        inputs = [_spec(a) for a in session.get_inputs()]
        outputs = [_spec(a) for a in session.get_outputs()]
        self.session = session
        self._run = getattr(session, "_sess", session).run
        self._output_names = [o.name for o in outputs]
        self.info = BackendInfo(
            platform="onnxruntime_onnx",
            provider=used[0],
            inputs=inputs,
            outputs=outputs,
            batchable=all(i.shape and i.shape[0] == -1 for i in inputs)
            and all(o.shape and o.shape[0] == -1 for o in outputs),
            load_seconds=time.perf_counter() - started,
            details={"model_file": path.name, "providers": ",".join(used)},
        )
        return self.info

    def _quantized(self, path: Path) -> Path:
        """The dynamically int8-quantised model, made once and cached next to the original
        (or in the cache directory when the model's directory is read-only)."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        name = f"model.int8-{digest}.onnx"
        for folder in (self.version_dir, self.cache_dir):
            if (folder / name).is_file():
                return folder / name
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for folder in (self.version_dir, self.cache_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".quant-", suffix=".onnx", dir=folder)
                os.close(fd)
            except OSError:
                continue
            try:
                quantize_dynamic(path, tmp, weight_type=QuantType.QInt8)
                os.replace(tmp, folder / name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            log.info("quantised %s to int8 as %s", path, folder / name)
            return folder / name
        raise OSError(f"no writable place for the quantised copy of {path}")

    def synthetic_inputs(self, batch: int) -> dict[str, Array]:
        rng = np.random.default_rng(0)
        feeds: dict[str, Array] = {}
        for spec in self.info.inputs:
            dims = [
                batch if i == 0 and d == -1 else (1 if d == -1 else d)
                for i, d in enumerate(spec.shape)
            ]
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(dims, "", dtype=object)
            elif spec.datatype == "BOOL":
                feeds[spec.name] = rng.integers(0, 2, dims).astype(np.bool_)
            elif spec.dtype.kind in "iu":
                feeds[spec.name] = rng.integers(0, 2, dims).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.random(dims).astype(spec.dtype)
        return feeds

    def warmup(self, runs: int, batch_sizes: list[int]) -> None:
        started = time.perf_counter()
        batch1 = 0.0
        for batch in batch_sizes:
            if batch > 1 and not self.info.batchable:
                continue
            feeds = self.synthetic_inputs(batch)
            for i in range(runs):
                t = time.perf_counter()
                self.predict(feeds, None)
                # The first run pays for allocations; later ones tell what a request costs.
                if batch == 1 and i == runs - 1:
                    batch1 = time.perf_counter() - t
        self.info.warmup_seconds = time.perf_counter() - started
        self.info.batch1_seconds = batch1

    def predict(self, inputs: dict[str, Array], outputs: list[str] | None) -> dict[str, Array]:
        assert self.session is not None, "predict before load"
        names = outputs or self._output_names
        try:
            # The binding's own run: InferenceSession.run re-checks input names and graph
            # capture on every call (microseconds that matter for small models); the inputs
            # were already checked against the model's metadata.
            results = self._run(names, inputs, None)
        except Exception:
            # The public path, for its error messages and its execution-provider fallback.
            try:
                results = self.session.run(names, inputs)
            except InvalidArgument as exc:
                # A kernel refused the values at run time (an index out of range for a Gather,
                # a shape a Reshape cannot take). The request already matched the model's
                # metadata, so it is outside the model's domain: the client's mistake, a 400.
                raise BadRequestError(f"the model refused the input: {exc}") from None
        return dict(zip(names, results, strict=True))

    def unload(self) -> None:
        self.session = None
