"""modelpilot operator: reconciles ModelDeployments and drives metric-based rollouts."""

__version__ = "0.1.0"
