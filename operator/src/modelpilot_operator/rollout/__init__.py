"""PURE: the rollout state machine: (spec, status, observations, now) -> decision."""
