"""The Messages API as a front door: what a request must hold, and how a failure is told. Pure.

The checks are the ones the gateway relies on (the model, a whole-number `max_tokens`, the shape of `messages`,
`stream`); the rest is the upstream's to judge, as on the OpenAI side.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson

from gateway.errors import BadRequest, GatewayError
from gateway.jsonbody import json_type
from gateway.protocols import sse

# Anthropic's error types by HTTP status, as its SDKs map them to exceptions.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_ROLES = ("user", "assistant")
# The events that end a Messages stream, completed or not.
_ENDS = frozenset({"message_stop", "error"})


class Endpoint(enum.Enum):
    """A Messages API endpoint, by its path below /v1."""

    MESSAGES = "/messages"
    COUNT_TOKENS = "/messages/count_tokens"

    @property
    def path(self) -> str:
        return self.value

    @property
    def replayable(self) -> bool:
        return False

    @property
    def stream_end(self) -> str:
        return "`message_stop`"

    def stream_ended(self, last: bytes) -> bool:
        return sse.last_event_type(last) in _ENDS


def error_type(status: int) -> str:
    """The Anthropic error type the SDK expects for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_payload(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(error_payload(error.status, error.message))


def error_event(error: GatewayError) -> bytes:
    """`event: error`: the Anthropic SDK raises when it reads it (and no `message_stop` follows)."""
    return event_bytes(error_payload(error.status, error.message))


def event_bytes(data: dict[str, Any]) -> bytes:
    """One Messages stream event, named by its type as Anthropic sends them."""
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def read(endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, bool]:
    """The model and whether a stream is asked for, once the fields the gateway reads are checked."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        problem = "Field required" if model is None else "must be a non-empty string"
        raise BadRequest(f"model: {problem}", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest(f"messages: must be an array, not {json_type(messages)}", param="messages")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise BadRequest(f"{where}: must be an object, not {json_type(message)}", param=where)
        if message.get("role") not in _ROLES:
            raise BadRequest(f"{where}.role: must be `user` or `assistant`", param=f"{where}.role")
        content = message.get("content")
        blocks = isinstance(content, list) and all(isinstance(block, dict) for block in content)
        if not isinstance(content, str) and not blocks:
            raise BadRequest(f"{where}.content: must be a string or an array of blocks", param=f"{where}.content")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise BadRequest("system: must be a string or an array of text blocks", param="system")
    if endpoint is Endpoint.MESSAGES:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise BadRequest("max_tokens: Field required", param="max_tokens")
        if max_tokens.__class__ is not int or max_tokens < 1:
            raise BadRequest("max_tokens: must be a whole number of at least 1", param="max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream: must be a boolean, not {json_type(stream)}", param="stream")
    return model, stream and endpoint is Endpoint.MESSAGES
