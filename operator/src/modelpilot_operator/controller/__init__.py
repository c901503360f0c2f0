"""The control loop: watch caches, a work queue, workers, leader gating (see
:mod:`.manager`); the rollout step and the analysis runner it drives."""

from .manager import Controller
from .workqueue import ShutDownError, WorkQueue

__all__ = ["Controller", "ShutDownError", "WorkQueue"]
