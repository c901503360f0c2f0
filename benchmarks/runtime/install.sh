#!/usr/bin/env bash
# Installs the benchmark's load generators and plotting library:
#   wrk (HTTP, from Debian), ghz (gRPC, built from its Go module into ~/.cache/modelpilot/bin),
#   grpcload (the lean gRPC client in benchmarks/runtime/grpcload, built into the same place),
#   matplotlib and uvicorn (into the project's .venv; only the benchmarks use them).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN_DIR="${MODELPILOT_BIN:-$HOME/.cache/modelpilot/bin}"
GHZ_VERSION=v0.121.0

if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk
fi
if [ ! -x "$BIN_DIR/ghz" ]; then
  command -v go >/dev/null || { echo "ghz needs Go (https://go.dev/dl/)" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  GOBIN="$BIN_DIR" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
fi
command -v go >/dev/null || { echo "grpcload needs Go (https://go.dev/dl/)" >&2; exit 1; }
(cd benchmarks/runtime/grpcload && go build -o "$BIN_DIR/grpcload" .)
make venv >/dev/null
.venv/bin/uv pip install -q --python .venv/bin/python "matplotlib>=3.8" "uvicorn>=0.30"
echo "wrk: $(command -v wrk)  ghz: $BIN_DIR/ghz  grpcload: $BIN_DIR/grpcload"
