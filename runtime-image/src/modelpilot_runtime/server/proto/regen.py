"""Regenerate (or, with --check, verify) the Python modules made from `inference.proto`.

    python -m modelpilot_runtime.server.proto.regen [--check]

The generated modules are committed so that the runtime image needs no protoc; a unit test
runs the check, so the .proto and the modules cannot drift apart. Needs grpcio-tools (a
development dependency).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2]  # runtime-image/src
PROTO = "modelpilot_runtime/server/proto/inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")
HEADER = (
    "# Generated from inference.proto by modelpilot_runtime.server.proto.regen; do not edit.\n"
    "# ruff: noqa\n"
    "# fmt: off\n"
)
UNTYPED = "# mypy: ignore-errors\n"
STUB = '# mypy: disable-error-code="type-arg"\n'


def generate(out: Path) -> dict[str, str]:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    argv = [
        "protoc",
        f"-I{SRC}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(SRC / PROTO),
    ]
    if protoc.main(argv) != 0:
        raise SystemExit("protoc failed")
    made = out / "modelpilot_runtime" / "server" / "proto"
    texts = {}
    for name in GENERATED:
        text = (made / name).read_text()
        if name == "inference_pb2.py":
            text = _private_pool(text)
        header = HEADER + {"inference_pb2_grpc.py": UNTYPED, "inference_pb2.pyi": STUB}.get(
            name, ""
        )
        texts[name] = header + text
    return texts


POOL_CALL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("


def _private_pool(text: str) -> str:
    """Register the messages in a pool of their own: other v2 clients in the same process
    (tritonclient, kserve) define the same `inference.*` names in the default pool."""
    if POOL_CALL not in text:
        raise SystemExit("unexpected generated code: no default-pool registration to replace")
    return text.replace(
        POOL_CALL,
        "# A private pool: see modelpilot_runtime.server.proto.regen._private_pool.\n"
        "_POOL = _descriptor_pool.DescriptorPool()\n"
        "DESCRIPTOR = _POOL.AddSerializedFile(",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="regenerate the gRPC modules from inference.proto")
    parser.add_argument("--check", action="store_true", help="fail if the committed modules differ")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        texts = generate(Path(tmp))
    stale = [n for n, t in texts.items() if not (HERE / n).is_file() or (HERE / n).read_text() != t]
    if args.check:
        if stale:
            names = ", ".join(stale)
            print(f"stale generated modules: {names}; run {__spec__.name}", file=sys.stderr)
            return 1
        return 0
    for name in stale:
        (HERE / name).write_text(texts[name])
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
