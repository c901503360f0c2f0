"""A sample TorchServe model for tests, the demo and the benchmarks, made here (torch and
torch-model-archiver, nothing downloaded):

    python -m modelpilot_runtime.backends.torchserve.sample DEST [--onnx] [--batch N --delay MS]

writes a model repository entry `DEST/tiny_ts/` (`1/model.mar` and a `config.yaml` that
declares the inputs and outputs), and with `--onnx` also `DEST/tiny_onnx/1/model.onnx`: the
same weights exported with `torch.onnx.export`, for side-by-side comparisons.

The network is the runtime's `tiny` sample (FP32 [N, 8] -> 16 -> 3, softmax); the handler is
`sample_handler.py` beside this file. Weights come from a fixed seed. Only this module and
TorchServe's workers import torch; the server never imports this module.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

HANDLER = Path(__file__).with_name("sample_handler.py")
MODEL_NAME = "tiny_ts"
ONNX_NAME = "tiny_onnx"
# onnxruntime 1.31 reads IR versions up to 13.
MAX_IR_VERSION = 10
OPSET = 17


def _network() -> Any:
    import torch

    sys.path.insert(0, str(HANDLER.parent))
    try:
        from sample_handler import build_model  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(HANDLER.parent))
    torch.manual_seed(1)
    return build_model().eval()


def model_config(batch: int, delay_ms: float, workers: int = 1) -> dict[str, Any]:
    return {
        "backend": "torchserve",
        "batching": {"max_batch_size": batch, "max_delay_ms": delay_ms},
        "torchserve": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "handler_batch", "datatype": "INT64", "shape": [-1, 1]},
            ],
            "workers": workers,
        },
        "classification": {"output": "probabilities"},
    }


def write_mar(dest: Path, batch: int = 8, delay_ms: float = 5.0, onnx: bool = False) -> Path:
    """Write the sample into the model repository `dest`; the path of the `.mar`."""
    import torch

    model = _network()
    version_dir = dest / MODEL_NAME / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), weights)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "model_archiver.model_packaging",
                "--model-name",
                "model",
                "--version",
                "1",
                "--serialized-file",
                str(weights),
                "--handler",
                str(HANDLER),
                "--export-path",
                tmp,
                "--force",
            ],
            check=True,
            capture_output=True,
        )
        shutil.move(Path(tmp) / "model.mar", version_dir / "model.mar")
    (dest / MODEL_NAME / "config.yaml").write_text(
        yaml.safe_dump(model_config(batch, delay_ms), sort_keys=False)
    )
    if onnx:
        export_onnx(model, dest / ONNX_NAME / "1" / "model.onnx")
    return version_dir / "model.mar"


def export_onnx(model: Any, path: Path) -> None:
    """The sample's network as ONNX (input `input`, output `probabilities`, batch axis free)."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch warns that this exporter is the older one; it is the one without onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(torch, model, path)
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    onnx.save(proto, str(path))


def _export(torch: Any, model: Any, path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 8),),
        str(path),
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript-based exporter: no onnxscript needed
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--onnx", action="store_true", help="also write the ONNX export")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size in config.yaml")
    parser.add_argument("--delay", type=float, default=5.0, help="max_delay_ms in config.yaml")
    args = parser.parse_args(argv)
    print(write_mar(args.dest, args.batch, args.delay, args.onnx))


if __name__ == "__main__":
    main()
