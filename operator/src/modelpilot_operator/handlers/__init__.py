"""Thin kopf handlers: kopf watches the ModelDeployments and runs start-up and clean-up;
the :class:`~modelpilot_operator.controller.Controller` does the rest. Nothing imports
this package but the ``modelpilot operator run`` command, which calls :func:`register`
with its :class:`~modelpilot_operator.settings.Settings`.
"""

from .registry import register

__all__ = ["register"]
