"""The gateway's errors: the status and OpenAI type/code the SDK maps to its exceptions, and the body shape."""

from __future__ import annotations

import orjson
import pytest

from gateway import errors
from gateway.errors import GatewayError

CASES = [
    (errors.BadRequest, 400, "invalid_request_error", "invalid_request"),
    (errors.AuthenticationFailed, 401, "invalid_request_error", "invalid_api_key"),
    (errors.PermissionDenied, 403, "invalid_request_error", "model_not_allowed"),
    (errors.NotFound, 404, "invalid_request_error", "unknown_url"),
    (errors.MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed"),
    (errors.PayloadTooLarge, 413, "invalid_request_error", "request_too_large"),
    (errors.RequestHeadersTooLarge, 431, "invalid_request_error", "request_headers_too_large"),
    (errors.UpstreamUnreachable, 502, "upstream_error", "upstream_unreachable"),
    (errors.UpstreamBadResponse, 502, "upstream_error", "upstream_bad_response"),
    (errors.UpstreamNotConfigured, 503, "upstream_error", "upstream_not_configured"),
    (errors.UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
    (errors.InternalError, 500, "server_error", "internal_error"),
]


@pytest.mark.parametrize(("cls", "status", "type_", "code"), CASES, ids=[c[0].__name__ for c in CASES])
def test_each_error_carries_its_status_type_and_code(
    cls: type[GatewayError], status: int, type_: str, code: str
) -> None:
    error = cls("something went wrong")

    assert (error.status, error.type, error.code) == (status, type_, code)


@pytest.mark.parametrize("cls", [c[0] for c in CASES], ids=[c[0].__name__ for c in CASES])
def test_the_body_is_openai_shaped(cls: type[GatewayError]) -> None:
    error = cls("something went wrong", param="messages")

    body = orjson.loads(error.body())

    assert body == {
        "error": {"message": "something went wrong", "type": cls.type, "param": "messages", "code": cls.code}
    }


def test_param_is_null_unless_given() -> None:
    body = orjson.loads(errors.BadRequest("bad").body())

    assert body["error"]["param"] is None


def test_client_and_upstream_errors_are_told_apart_by_class() -> None:
    assert issubclass(errors.ModelNotFound, errors.ClientError)
    assert issubclass(errors.PayloadTooLarge, errors.ClientError)
    assert issubclass(errors.UpstreamTimeout, errors.UpstreamError)
    assert not issubclass(errors.UpstreamTimeout, errors.ClientError)


def test_model_not_found_names_the_model_and_points_at_the_model_param() -> None:
    error = errors.ModelNotFound("gpt-5-turbo")

    body = orjson.loads(error.body())["error"]

    assert error.status == 404
    assert body["code"] == "model_not_found"
    assert body["type"] == "invalid_request_error"
    assert body["param"] == "model"
    assert "`gpt-5-turbo`" in body["message"]


def test_the_message_is_the_exception_text() -> None:
    error = errors.UpstreamTimeout("took too long")

    assert str(error) == "took too long"
    assert error.message == "took too long"
