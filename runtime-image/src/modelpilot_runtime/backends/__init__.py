"""Model backends: what runs a loaded model version. `base.Backend` is the interface the
repository, batcher and protocols use; `onnx.OnnxBackend` implements it with onnxruntime.
`torchserve.TorchServeBackend` serves `.mar` files through a supervised TorchServe on
loopback (a supported legacy path)."""

from modelpilot_runtime.backends.base import Backend, BackendInfo, create_backend

__all__ = ["Backend", "BackendInfo", "create_backend"]
