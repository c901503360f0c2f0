"""modelpilot runtime: serves ONNX and TorchServe models with the Open Inference Protocol."""
