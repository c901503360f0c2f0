"""Errors that become protocol answers: each carries its HTTP status and a metric reason."""

from __future__ import annotations


class InferenceError(Exception):
    """A request that cannot be served; `status` is the HTTP status code to answer with."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequestError(InferenceError):
    """The client sent something wrong; the message names what."""

    status = 400


class NotFoundError(InferenceError):
    """No such model, version or endpoint."""

    status = 404


class RejectedError(InferenceError):
    """Turned away to protect the server: a full queue, a timeout, a draining or unready model.

    `reason` is the label of `modelpilot_inference_rejected_total`.
    """

    def __init__(self, message: str, reason: str, status: int = 503) -> None:
        super().__init__(message, status)
        self.reason = reason


class BackendError(InferenceError):
    """The model itself failed (or a fault was injected): the server's fault, a 500."""

    status = 500
