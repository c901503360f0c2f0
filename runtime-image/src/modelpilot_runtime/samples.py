"""Sample ONNX models for tests, the demo and the benchmarks, built with `onnx` (no download).

    python -m modelpilot_runtime.samples DEST [--models tiny,mlp,cnn,multi,echo,lookup]

writes `DEST/<model>/1/model.onnx` for each, i.e. a ready model repository:

- `tiny`:  FP32 [N, 8] -> 16 -> 3, softmax "probabilities" (serving overhead dominates)
- `mlp`:   FP32 [N, 784] -> 256 -> 10, softmax "probabilities"
- `cnn`:   FP32 [N, 3, 64, 64], four convolutions, 10 classes (a few ms per image on a core)
- `multi`: inputs a FP32 [N,4], b INT64 [N,4], flag BOOL [N,1]; outputs sum, argmax, masked, half
- `echo`:  one input per v2 datatype `in_<TYPE>` [N, -1], returned as `out_<TYPE>`
- `lookup`: INT64 "ids" [N, 2] -> Gather from a [4, 3] table -> FP32 "vectors" [N, 2, 3]; an id
  outside 0..3 (or -4..-1) makes onnxruntime fail the run (a request out of the model's domain)

Weights come from a fixed seed, so every run writes the same files. `onnx` is a development
dependency; the server itself never imports this module.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14 unless told otherwise.
IR_VERSION = 10
OPSET = 17


def _helpers() -> Any:
    import onnx
    from onnx import helper, numpy_helper

    return onnx, helper, numpy_helper


def _finish(graph: Any) -> bytes:
    onnx, helper, _ = _helpers()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def dense_classifier(sizes: list[int], seed: int, name: str) -> bytes:
    """An MLP classifier ``sizes[0] -> ... -> sizes[-1]`` with softmax ``probabilities``;
    the same seed gives the same weights, another seed a model that predicts differently."""
    onnx, helper, numpy_helper = _helpers()
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [out], [out + "r"]))
            out += "r"
        current = out
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", sizes[0]])],
        [
            helper.make_tensor_value_info(
                "probabilities", onnx.TensorProto.FLOAT, ["batch", sizes[-1]]
            )
        ],
        inits,
    )
    return _finish(graph)


def tiny() -> bytes:
    return dense_classifier([8, 16, 3], seed=1, name="tiny")


def mlp() -> bytes:
    return dense_classifier([784, 256, 10], seed=2, name="mlp")


def cnn() -> bytes:
    onnx, helper, numpy_helper = _helpers()
    rng = np.random.default_rng(3)
    nodes, inits = [], []
    current, channels = "input", 3
    for i, (out_ch, stride) in enumerate([(64, 1), (128, 2), (256, 2), (256, 1)]):
        w = (rng.standard_normal((out_ch, channels, 3, 3)) / np.sqrt(channels * 9)).astype(
            np.float32
        )
        b = np.zeros(out_ch, np.float32)
        inits += [numpy_helper.from_array(w, f"cw{i}"), numpy_helper.from_array(b, f"cb{i}")]
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"cw{i}", f"cb{i}"],
                [f"c{i}"],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        current, channels = f"r{i}", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    w = (rng.standard_normal((channels, 10)) / np.sqrt(channels)).astype(np.float32)
    inits += [
        numpy_helper.from_array(w, "fw"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fb"),
    ]
    nodes.append(helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _finish(graph)


def multi() -> bytes:
    onnx, helper, _ = _helpers()
    tp = onnx.TensorProto
    nodes = [
        helper.make_node("Cast", ["b"], ["b_float"], to=tp.FLOAT),
        helper.make_node("Add", ["a", "b_float"], ["sum"]),
        helper.make_node("ArgMax", ["a"], ["argmax"], axis=1, keepdims=0),
        helper.make_node("Constant", [], ["zero"], value_float=0.0),
        helper.make_node("Where", ["flag", "a", "zero"], ["masked"]),
        helper.make_node("Cast", ["a"], ["half"], to=tp.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "multi",
        [
            helper.make_tensor_value_info("a", tp.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", tp.INT64, ["batch", 4]),
            helper.make_tensor_value_info("flag", tp.BOOL, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("sum", tp.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("argmax", tp.INT64, ["batch"]),
            helper.make_tensor_value_info("masked", tp.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("half", tp.FLOAT16, ["batch", 4]),
        ],
    )
    return _finish(graph)


ECHO_TYPES = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
    "BYTES": "STRING",
}


def echo() -> bytes:
    onnx, helper, _ = _helpers()
    inputs, outputs, nodes = [], [], []
    for v2, onnx_name in ECHO_TYPES.items():
        elem = getattr(onnx.TensorProto, onnx_name)
        inputs.append(helper.make_tensor_value_info(f"in_{v2}", elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{v2}", elem, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"in_{v2}"], [f"out_{v2}"]))
    return _finish(helper.make_graph(nodes, "echo", inputs, outputs))


def lookup() -> bytes:
    onnx, helper, numpy_helper = _helpers()
    tp = onnx.TensorProto
    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("ids", tp.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("vectors", tp.FLOAT, ["batch", 2, 3])],
        [table],
    )
    return _finish(graph)


MODELS: dict[str, Callable[[], bytes]] = {
    "tiny": tiny,
    "mlp": mlp,
    "cnn": cnn,
    "multi": multi,
    "echo": echo,
    "lookup": lookup,
}


def write_repository(dest: Path, names: list[str] | None = None, version: str = "1") -> Path:
    """Write the named sample models (all by default) as `dest/<model>/<version>/model.onnx`."""
    for name in names or list(MODELS):
        target = dest / name / version / "model.onnx"
        data = MODELS[name]()
        if target.is_file() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown sample models: {', '.join(unknown)}")
    write_repository(args.dest, names)
    for name in names:
        print(args.dest / name / "1" / "model.onnx")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
