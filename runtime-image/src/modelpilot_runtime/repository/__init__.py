"""The model repository: `<root>/<model>/<version>/model.onnx` on disk, the versions chosen by
each model's version policy, loaded, warmed up, served, polled for changes and unloaded."""

from modelpilot_runtime.repository.model import ServedVersion
from modelpilot_runtime.repository.repository import ModelRepository

__all__ = ["ModelRepository", "ServedVersion"]
