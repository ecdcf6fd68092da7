"""The error of a request the API refuses: an HTTP status and a message naming the input or field."""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError


class ApiError(EdgeRuntimeError, ValueError):
    """A request that cannot be served; ``status`` is the HTTP status to answer with (4xx, or 503
    when busy). Answered as ``{"error": message}``, the error body of TF Serving's REST API and of
    the Open Inference Protocol."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
