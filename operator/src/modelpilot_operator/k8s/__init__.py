"""The only module that talks to the Kubernetes API server."""
