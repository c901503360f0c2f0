#!/usr/bin/env bash
# Installs what the TorchServe backend needs into a Python environment: torch, TorchServe
# 0.12.0 and torch-model-archiver from PyPI (the `torchserve` extra), and a Java runtime.
#
#   runtime-image/torchserve/install.sh PYTHON [--no-java]
#
# PyPI's only torch wheel for Linux x86-64 is a CUDA build; it runs on CPU-only machines but
# needs the nvidia-* wheels it depends on to import at all (about 3 GB). triton (1 GB) is only
# used by torch.compile on GPUs, so the override file leaves it out. Java: TorchServe's
# frontend needs 11 or later; Debian's openjdk-17-jre-headless when none is on the PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${1:?usage: install.sh PYTHON [--no-java]}"
java_wanted=1
[[ "${2:-}" == "--no-java" ]] && java_wanted=0

started=$SECONDS
if ! "$python" -m uv --version >/dev/null 2>&1; then
  "$python" -m pip install -q uv
fi
"$python" -m uv pip install -q --python "$python" --override "$here/overrides.txt" \
  -e "$root[torchserve]"
echo ">> torch, torchserve, torch-model-archiver installed in $((SECONDS - started)) s"

java_major() {
  java -version 2>&1 | sed -nE 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/p' | head -n1
}

if [[ $java_wanted == 1 ]]; then
  major="$(command -v java >/dev/null && java_major || true)"
  if [[ -n "$major" && "$major" -ge 11 ]]; then
    echo ">> java $major found"
  elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    started=$SECONDS
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openjdk-17-jre-headless >/dev/null
    echo ">> openjdk-17-jre-headless installed in $((SECONDS - started)) s"
  else
    echo "install.sh: TorchServe needs Java 11 or later on the PATH (e.g. apt-get install" \
      "openjdk-17-jre-headless as root)" >&2
    exit 1
  fi
fi
