"""Fetching models into a local directory (the init container's job): `file://`, plain paths,
`http(s)://` and `s3://`, never leaving a half-written model behind."""

from modelpilot_runtime.storage.fetch import FetchError, fetch

__all__ = ["FetchError", "fetch"]
