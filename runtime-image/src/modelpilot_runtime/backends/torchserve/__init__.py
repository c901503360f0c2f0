"""TorchServe `.mar` models (a supported legacy path: TorchServe upstream is in limited
maintenance). `backend.TorchServeBackend` fits the runtime's backend interface;
`process.TorchServeProcess` owns one TorchServe instance; `sample` builds a small `.mar`
for tests, the demo and the benchmarks. Nothing here imports torch: only TorchServe's
workers and `sample` do.
"""

from modelpilot_runtime.backends.torchserve.backend import TorchServeBackend

__all__ = ["TorchServeBackend"]
