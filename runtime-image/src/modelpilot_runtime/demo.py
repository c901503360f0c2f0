"""`make demo`: write the sample models and serve them, so anyone can try the runtime with curl.

    python -m modelpilot_runtime.demo [--http-port 8080] [--grpc-port 8081]

The models are generated (not downloaded) into ~/.cache/modelpilot/samples (or
$MODELPILOT_SAMPLES). Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from modelpilot_runtime.samples import write_repository
from modelpilot_runtime.server.app import ServerSettings, run

CURL = """
The runtime serves the sample models {models} on http://127.0.0.1:{http} (gRPC on :{grpc}).
Try:

  curl -s localhost:{http}/v2/health/ready -w '%{{http_code}}\\n'
  curl -s localhost:{http}/v2/models/tiny
  curl -s localhost:{http}/v2/models/tiny/infer -H 'content-type: application/json' \\
    -d '{{"inputs":[{{"name":"input","shape":[2,8],"datatype":"FP32",
          "data":[1,2,3,4,5,6,7,8, 0,0,0,0,1,1,1,1]}}]}}'
  curl -s localhost:{http}/v1/models/tiny:predict -d '{{"instances":[[1,2,3,4,5,6,7,8]]}}'
  curl -s localhost:{http}/metrics | grep '^modelpilot_inference_requests_total'

Ctrl-C stops it.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve the sample models")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    default = Path(os.path.expanduser("~/.cache/modelpilot/samples"))
    root = Path(os.environ.get("MODELPILOT_SAMPLES", default))
    models = ["tiny", "mlp", "multi"]
    write_repository(root, models)
    print(
        CURL.format(models=", ".join(models), http=args.http_port, grpc=args.grpc_port), flush=True
    )
    run(
        ServerSettings(
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            models={m: root / m for m in models},
            poll_interval=2.0,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
