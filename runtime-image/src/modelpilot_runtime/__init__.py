"""modelpilot runtime: ONNX models served with Open Inference Protocol v2 and TF-Serving REST."""

__version__ = "0.1.0"
