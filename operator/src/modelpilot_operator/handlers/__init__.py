"""Thin kopf handlers: read, call the pure code, apply, patch status. Nothing imports them.

``kopf run -m modelpilot_operator.handlers`` (or ``modelpilot operator run``) loads every
handler module below; settings come from ``MODELPILOT_*`` variables (see
:mod:`modelpilot_operator.settings`).
"""

from . import modeldeployment, rollout, startup

__all__ = ["modeldeployment", "rollout", "startup"]
