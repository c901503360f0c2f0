"""The ModelDeployment API: pydantic models are the one source of the CRD schema."""
