"""The gateway's error tree and how an error becomes an OpenAI-shaped response.

Every error the gateway itself produces is one of these, carrying its HTTP status and the OpenAI ``type``/``code``
so the OpenAI SDK raises the matching exception, and its ``error_class`` for metrics and logs: a closed vocabulary
whose prefix says whose failure it was (``client_*``, ``policy_*``, ``upstream_*``, ``gateway_*``), so that a
provider's 429 (``upstream_rate_limited``) is never counted as one of ours (``policy_rate_limit``)::

    GatewayError
     ├── ClientError                 the request is wrong or not allowed
     │    ├── BadRequest             400 invalid_request_error
     │    │    └── InvalidConfig      400 invalid_config (admin reload)
     │    ├── AuthenticationFailed   401 invalid_api_key
     │    │    └── AdminAuthFailed   401 invalid_admin_key
     │    ├── PermissionDenied       403 model_not_allowed
     │    ├── NotFound               404 (unknown path)
     │    │    ├── ModelNotFound     404 model_not_found
     │    │    ├── KeyNotFound       404 key_not_found
     │    │    └── SessionNotFound   404 session_not_found (unknown, expired, or another key's)
     │    ├── MethodNotAllowed       405 method_not_allowed
     │    ├── KeyRevoked             409 key_revoked (rotating a revoked key)
     │    ├── PayloadTooLarge        413 request_too_large
     │    ├── RequestHeadersTooLarge 431 request_headers_too_large (answered by the server layer, server.py)
     │    ├── RateLimited            429 rate_limit_exceeded (a bucket or a concurrency limit; with Retry-After)
     │    │    └── QuotaExceeded     429 insufficient_quota
     │    └── ValidationFailed       422 validation_error (admin bodies)
     ├── UpstreamError               the provider failed us
     │    ├── UpstreamUnreachable    502 upstream_unreachable
     │    ├── UpstreamBadResponse    502 upstream_bad_response
     │    ├── UpstreamNotConfigured  503 upstream_not_configured
     │    ├── UpstreamUnavailable    503 upstream_unavailable (every target's circuit is open)
     │    └── UpstreamTimeout        504 upstream_timeout
     ├── StoreUnavailable            503 store_unavailable (Redis or the state directory is failing; Retry-After)
     ├── ShuttingDown                503 gateway_shutting_down (cut at the drain timeout or a forced stop)
     └── InternalError               500 internal_error (a bug; logged with its traceback)
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    error_class: ClassVar[str] = "gateway_internal"
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = "internal_error"
    # Seconds the client should wait before trying again (`Retry-After`), where the error knows.
    retry_after: float | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


class ClientError(GatewayError):
    status = 400
    error_class = "client_bad_request"
    type = "invalid_request_error"
    code: ClassVar[str | None] = None


class BadRequest(ClientError):
    code = "invalid_request"


class InvalidConfig(BadRequest):
    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("The route config was not reloaded: " + "; ".join(problems))
        self.problems = problems  # each `file: field.path: message`


class AuthenticationFailed(ClientError):
    status = 401
    error_class = "client_unauthenticated"
    code = "invalid_api_key"


class AdminAuthFailed(AuthenticationFailed):
    code = "invalid_admin_key"


class PermissionDenied(ClientError):
    status = 403
    error_class = "client_forbidden"
    code = "model_not_allowed"


class NotFound(ClientError):
    status = 404
    error_class = "client_not_found"
    code = "unknown_url"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class KeyNotFound(NotFound):
    code = "key_not_found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"No key with id `{key_id}`.", param="key_id")


class SessionNotFound(NotFound):
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        # The same answer for a session that never existed, has expired or belongs to another key: an id must not
        # tell another key that it exists.
        super().__init__(f"No session with id `{session_id}` (it may have expired).", param="session_id")


class MethodNotAllowed(ClientError):
    status = 405
    error_class = "client_bad_request"
    code = "method_not_allowed"


class KeyRevoked(ClientError):
    status = 409
    code = "key_revoked"


class PayloadTooLarge(ClientError):
    status = 413
    error_class = "client_too_large"
    code = "request_too_large"


class RequestHeadersTooLarge(ClientError):
    status = 431
    error_class = "client_too_large"
    code = "request_headers_too_large"


class ValidationFailed(ClientError):
    status = 422
    code = "validation_error"


class RateLimited(ClientError):
    status = 429
    error_class = "policy_rate_limit"
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # for limits with no bucket to compute it from (concurrency)
        self.kind = kind  # "tokens" for a tokens bucket: OpenAI's `type` says which kind of limit

    def payload(self) -> dict[str, Any]:
        body = super().payload()
        if self.kind is not None:
            body["error"]["type"] = self.kind
        return body


class QuotaExceeded(RateLimited):
    error_class = "policy_quota"
    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamError(GatewayError):
    status = 502
    error_class = "upstream_error"
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    error_class = "upstream_unreachable"
    code = "upstream_unreachable"


class UpstreamBadResponse(UpstreamError):
    error_class = "upstream_bad_response"
    code = "upstream_bad_response"


class UpstreamNotConfigured(UpstreamError):
    status = 503
    error_class = "upstream_not_configured"
    code = "upstream_not_configured"


class UpstreamUnavailable(UpstreamError):
    status = 503
    error_class = "upstream_circuit_open"
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    error_class = "upstream_timeout"
    code = "upstream_timeout"


class StoreUnavailable(GatewayError):
    status = 503
    error_class = "gateway_store_unavailable"
    type = "server_error"
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(GatewayError):
    """The process stopped before the request was done. A 503, so that the SDK's retry goes to another replica."""

    status = 503
    error_class = "gateway_shutdown"
    type = "server_error"
    code = "gateway_shutting_down"


class InternalError(GatewayError):
    """A bug in the gateway; the client learns only the request id, the log holds the traceback."""
