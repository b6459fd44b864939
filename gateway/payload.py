"""Request bodies: parse once, check what the gateway relies on, rewrite for the agent. Pure functions."""

from __future__ import annotations

import enum
from typing import Any

import orjson

from gateway.agents import Agent
from gateway.errors import BadRequest

# Fields only the gateway reads; never sent upstream.
GATEWAY_FIELDS = ("session_id",)


class Endpoint(enum.Enum):
    """An OpenAI endpoint the gateway forwards, by its path below /v1."""

    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"
    EMBEDDINGS = "/embeddings"
    RESPONSES = "/responses"

    @property
    def path(self) -> str:
        return self.value

    @property
    def ends_with_done(self) -> bool:
        """Whether a complete stream from this endpoint ends with `data: [DONE]` (the Responses API does not)."""
        return self in (Endpoint.CHAT, Endpoint.COMPLETIONS)


# Per endpoint: which agent defaults apply, and under which body field (the Responses API names it differently).
_DEFAULT_FIELDS: dict[Endpoint, dict[str, str]] = {
    Endpoint.CHAT: {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens"},
    Endpoint.COMPLETIONS: {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens"},
    Endpoint.RESPONSES: {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_output_tokens"},
    Endpoint.EMBEDDINGS: {},
}
# A client that sets any of these has chosen its output limit (OpenAI rejects max_tokens beside the newer name).
_OUTPUT_LIMIT_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})


def parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}.") from None
    if not isinstance(data, dict):
        raise BadRequest(f"The request body must be a JSON object, not {_json_type(data)}.")
    return data


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise BadRequest(f"`model` must be a non-empty string, not {_json_type(model)}.", param="model")
    return model


def wants_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequest(f"`stream` must be a boolean, not {_json_type(stream)}.", param="stream")
    return stream


def copy_body(body: dict[str, Any]) -> dict[str, Any]:
    """A copy `prepare` can rewrite without touching `body`: it sets top-level fields and inserts into `messages`."""
    copied = dict(body)
    if isinstance(copied.get("messages"), list):
        copied["messages"] = list(copied["messages"])
    return copied


def prepare(endpoint: Endpoint, body: dict[str, Any], agent: Agent) -> dict[str, Any]:
    """Rewrite the client's body for the agent's upstream (in place, and returned)."""
    for name in GATEWAY_FIELDS:
        body.pop(name, None)
    body["model"] = agent.upstream_model
    fields = _DEFAULT_FIELDS[endpoint]
    limit_chosen = not _OUTPUT_LIMIT_FIELDS.isdisjoint(body)
    for name, value in agent.defaults.items():
        target = fields.get(name, name if endpoint is not Endpoint.EMBEDDINGS else None)
        if target is None or target in body or (target in _OUTPUT_LIMIT_FIELDS and limit_chosen):
            continue
        body[target] = value
    if endpoint is Endpoint.CHAT:
        _check_messages(body)
        if agent.system_prompt:
            body["messages"].insert(0, {"role": "system", "content": agent.system_prompt})
    elif endpoint is Endpoint.RESPONSES and agent.system_prompt:
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise BadRequest("`instructions` must be a string.", param="instructions")
        body["instructions"] = agent.system_prompt + (f"\n\n{instructions}" if instructions else "")
    return body


def messages_of(body: dict[str, Any]) -> list[Any]:
    """The chat request's `messages`, checked to be an array of objects."""
    _check_messages(body)
    messages: list[Any] = body["messages"]
    return messages


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("You must provide a messages parameter.", param="messages")
    if not isinstance(messages, list):
        raise BadRequest(f"`messages` must be an array, not {_json_type(messages)}.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"`messages[{index}]` must be an object, not {_json_type(message)}.",
                param=f"messages[{index}]",
            )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
