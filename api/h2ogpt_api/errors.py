"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from h2ogpt_api.auth import AuthError
from h2ogpt_api.backends.base import BackendError
from h2ogpt_api.backends.holding import NoReplicaError
from h2ogpt_api.core import EmbeddingsUnavailableError, InvalidRequestError, QueueFullError
from h2ogpt_api.ratelimit import RateLimitedError
from h2ogpt_api.retrieval.base import DocumentError, DocumentStoreUnavailableError

_BACKEND_STATUS = {"unavailable": 503, "timeout": 504, "bad_response": 502, "rejected": 400}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        # Every 429 says when to come back (1 s unless the limit knows better); a 503 does when it knows.
        retry_after = self.retry_after if self.retry_after is not None else 1 if self.status == 429 else None
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    def sse_event(self) -> bytes:
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def validation_error(exc: ValidationError, *, prefix: tuple[str, ...] = ()) -> ApiError:
    """The first pydantic error as a 400 naming the parameter."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"] if part not in prefix]
    param = ".".join(loc) or None
    return ApiError(
        400,
        f"invalid parameter {param}: {first['msg']}" if param else first["msg"],
        param=param,
        code="invalid_parameter",
    )


def as_api_error(exc: BaseException) -> ApiError:  # noqa: PLR0911 (one answer per exception kind)
    """Map a core, auth or backend exception to its OpenAI error; unknown ones are 500s."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthError):
        return ApiError(401, str(exc), type_="authentication_error", code="invalid_api_key")
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, exc.message, param=exc.param, code="invalid_parameter")
    if isinstance(exc, DocumentError):
        return ApiError(400, str(exc), param="langchain_mode", code="invalid_parameter")
    if isinstance(exc, RateLimitedError):
        return ApiError(
            429, str(exc), type_="rate_limit_error", code="rate_limit_exceeded", retry_after=exc.retry_after
        )
    if isinstance(exc, QueueFullError):
        return ApiError(429, str(exc), type_="rate_limit_error", code="queue_full")
    if isinstance(exc, ValidationError):
        return validation_error(exc)
    if isinstance(exc, NoReplicaError):
        return ApiError(
            503, exc.message, type_="server_error", code="no_replica", retry_after=exc.retry_after
        )
    if isinstance(exc, BackendError):
        status = _BACKEND_STATUS[exc.kind]
        type_ = "invalid_request_error" if status == 400 else "server_error"
        return ApiError(status, exc.message, type_=type_, code=f"backend_{exc.kind}")
    if isinstance(exc, EmbeddingsUnavailableError):
        return ApiError(503, str(exc), type_="server_error", code="embeddings_unavailable")
    if isinstance(exc, DocumentStoreUnavailableError):
        return ApiError(503, str(exc), type_="server_error", code="document_store_unavailable")
    return ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error", code="internal_error")
