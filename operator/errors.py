"""The one error taxonomy of the control plane.

Every failure a client can see is one of these exceptions; each maps once to its HTTP status
and to the Elasticsearch error body
``{"error": {"root_cause": [{"type", "reason"}], "type", "reason"}, "status": N}``
so that curl users and the official clients see what Elasticsearch would send.
"""

from __future__ import annotations

from typing import Any, ClassVar


class InfernetesError(Exception):
    """Base of all client-visible errors."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "exception"

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        cause = {"type": self.error_type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


class StatusError(InfernetesError):
    """Elasticsearch's ``ElasticsearchStatusException``: a plain error with a status code."""

    status = 400
    error_type = "status_exception"


class BadRequest(StatusError):
    status = 400


class ParseError(InfernetesError):
    status = 400
    error_type = "parse_exception"


class ValidationFailed(InfernetesError):
    """One or more field rules broken; the reason lists each, as Elasticsearch's ValidationException does."""

    status = 400
    error_type = "validation_exception"

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        reason = "Validation Failed: " + "".join(f"{i}: {e};" for i, e in enumerate(self.errors, 1))
        super().__init__(reason)


class ResourceNotFound(InfernetesError):
    status = 404
    error_type = "resource_not_found_exception"


class ResourceAlreadyExists(InfernetesError):
    status = 400
    error_type = "resource_already_exists_exception"


class Conflict(StatusError):
    status = 409


class RequestTimeout(StatusError):
    status = 408


class TooManyRequests(InfernetesError):
    """Back-pressure: the caller may retry after ``retry_after`` seconds."""

    status = 429
    error_type = "es_rejected_execution_exception"

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason, headers={"Retry-After": str(max(1, round(retry_after)))})


class DiskFull(InfernetesError):
    """Not enough free disk for what a request would store: Elasticsearch's answer past its flood-stage watermark."""

    status = 429
    error_type = "cluster_block_exception"


class Unauthorized(InfernetesError):
    status = 401
    error_type = "security_exception"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers={"WWW-Authenticate": 'ApiKey, Basic realm="security", charset="UTF-8"'})


class Forbidden(InfernetesError):
    status = 403
    error_type = "security_exception"


class PayloadTooLarge(StatusError):
    status = 413


class ServiceUnavailable(StatusError):
    """Retriable: no allocation could take the request (a worker died, the deployment is stopping)."""

    status = 503

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason, headers={"Retry-After": str(max(1, round(retry_after)))})


class ModelFailure(StatusError):
    """The model deployment failed (could not load, crashed while loading)."""

    status = 500


class StorageFailure(InfernetesError):
    """The data directory cannot be written (read-only, full, out of file descriptors). Elasticsearch reports
    a java.io.IOException as ``i_o_exception``; the disk is the server's, so 503 (retry once it is fixed)."""

    status = 503
    error_type = "i_o_exception"


class StorageCorrupt(InfernetesError):
    """The stored state cannot be read back (a corrupt database page or header)."""

    status = 500
    error_type = "corrupt_state_exception"


class CapacityExceeded(StatusError):
    """Elasticsearch's answer when no ML node can hold a deployment: 429 with what would fit."""

    status = 429

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


def error_body(status: int, error_type: str, reason: str) -> dict[str, Any]:
    """An Elasticsearch-shaped body for errors raised outside the taxonomy (routing, framework)."""
    cause = {"type": error_type, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}
