"""PURE: the desired child objects (plain dicts) of a ModelDeployment, from its spec and status."""
