"""Model backends: what runs a loaded model version. `base.Backend` is the interface the
repository, batcher and protocols use; `onnx.OnnxBackend` implements it with onnxruntime.
A TorchServe backend (a supervised TorchServe on loopback) fits the same interface."""

from modelpilot_runtime.backends.base import Backend, BackendInfo, create_backend

__all__ = ["Backend", "BackendInfo", "create_backend"]
