#!/usr/bin/env bash
# GPU check for the ONNX backend, for a machine with an NVIDIA GPU (and, for TensorRT, the
# TensorRT libraries onnxruntime-gpu was built against on the library path):
#   - the CUDA and TensorRT execution providers load (or the report says why not),
#   - asking for an absent provider falls back to CPU (onnxruntime and the runtime's chain),
#   - every provider gives the CPU's answers within rtol 1e-3 / atol 1e-4,
#   - the cnn model's batched throughput per provider (in-process, batch 1/8/32/64), and
#     through the runtime server over HTTP with batching (concurrency 32).
# Writes benchmarks/runtime/gpu-results.json and prints a summary; exit status 1 when a
# provider that loaded gives different answers from the CPU.
#
#   benchmarks/runtime/gpu.sh [--seconds 5] [--batches 1,8,32,64]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${MODELPILOT_GPU_OUT:-benchmarks/runtime/gpu-results.json}"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  echo "nvidia-smi not found: no NVIDIA GPU here; the report will show the CPU fallback only" >&2
fi
make venv >/dev/null
.venv/bin/python benchmarks/runtime/gpu_check.py "$OUT" "$@"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
bad = [p for p, e in report["onnxruntime_alone"]["providers"].items()
       if "error" not in e and not e["same_answers_as_cpu"]]
if bad or report["runtime_server"].get("same_answers_as_cpu") is False:
    print("answers differ from CPU:", bad or "runtime server", file=sys.stderr)
    sys.exit(1)
print(f"report: {sys.argv[1]}")
PY
