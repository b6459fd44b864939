"""Request bodies: parse once, check what the gateway relies on, rewrite for the agent. Pure functions."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from gateway.config.agents import Agent
from gateway.errors import BadRequest
from gateway.jsonbody import json_type
from gateway.protocols import sse
from gateway.protocols.wire import Outbound, output_limit

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
    def replayable(self) -> bool:
        """Whether a whole answer from this endpoint can be replayed as the stream a client asked for."""
        return self in REPLAYABLE

    @property
    def stream_end(self) -> str:
        """What a complete stream from this endpoint ends with, as an error message names it."""
        return "its `response.completed` event" if self is Endpoint.RESPONSES else "`data: [DONE]`"

    def stream_ended(self, last: bytes) -> bool:
        """Whether `last`, the stream's last block of whole events, ends it as this endpoint ends a complete
        stream: `data: [DONE]`, or for the Responses API a terminal event (`response.completed`, `.incomplete`,
        `.failed`, or `error`). A stream that stops short of it failed, and the client must hear so."""
        if self is not Endpoint.RESPONSES:
            return sse.ends_with_done(last)
        return sse.last_event_type(last) in _RESPONSES_ENDS


# The events that end a Responses API stream, completed or not.
_RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
# The endpoints whose whole answer can be replayed as the stream a client asked for.
REPLAYABLE = (Endpoint.CHAT, Endpoint.COMPLETIONS)
# Per endpoint: which agent defaults apply, and under which body field (the Responses API names it differently).
_DEFAULT_FIELDS: dict[Endpoint, dict[str, str]] = {
    Endpoint.CHAT: {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens"},
    Endpoint.COMPLETIONS: {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens"},
    Endpoint.RESPONSES: {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_output_tokens"},
    Endpoint.EMBEDDINGS: {},
}
# A client that sets any of these has chosen its output limit (OpenAI rejects max_tokens beside the newer name).
_OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_OUTPUT_LIMIT_FIELDS = frozenset(_OUTPUT_LIMITS)
# Which of them sets the reservation when several are sent (OpenAI itself refuses max_tokens beside the newer one).
_RESERVED_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
# The roles OpenAI's chat API accepts, in the order its own error message lists them.
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ROLES = frozenset(ROLES)


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        kind = "an empty string" if model == "" else json_type(model)
        raise BadRequest(f"`model` must be a non-empty string, not {kind}.", param="model")
    return model


def wants_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequest(f"`stream` must be a boolean, not {json_type(stream)}.", param="stream")
    return stream


def check(endpoint: Endpoint, body: dict[str, Any]) -> None:
    """Check the client's fields the gateway itself reads, before anything is done with them: every message's shape
    (a chat request), and the output limits (which reserve tokens). Session history is not checked again: it was
    checked when it was sent."""
    if endpoint is Endpoint.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list):
            messages = _checked_messages(body)  # raises, naming what is wrong
        for index, message in enumerate(messages):
            # Most messages are a known role and a string, and nothing else: a few lookups settle those.
            if message.__class__ is dict:
                role = message.get("role")
                if (
                    role.__class__ is str
                    and role in _ROLES
                    and message.get("content").__class__ is str
                    and len(message) == 2
                ):
                    continue
            _check_message(index, message)
    if endpoint is not Endpoint.EMBEDDINGS:
        for name in _OUTPUT_LIMITS:
            if name in body:
                _check_output_limit(name, body[name])


def outbound(
    endpoint: Endpoint,
    body: dict[str, Any],
    agent: Agent,
    *,
    stream: bool,
    default_max_tokens: int,
    history: Sequence[dict[str, Any]] = (),
) -> Outbound:
    """The client's `body` rewritten for `agent`'s upstream, in one place and without touching `body`: fields only
    the gateway reads taken out, the upstream model, the agent's defaults, its system prompt and the session's
    `history` in front of the client's messages, the output limit held to the agent's ceiling (clamped, or refused
    with 400), and a stream's usage asked for. A fallback agent gets its own, from the same client body."""
    out = dict(body)
    for name in GATEWAY_FIELDS:
        out.pop(name, None)
    out["model"] = agent.upstream_model
    fields = _DEFAULT_FIELDS[endpoint]
    limit_chosen = not _OUTPUT_LIMIT_FIELDS.isdisjoint(out)
    for name, value in agent.defaults.items():
        target = fields.get(name, name if endpoint is not Endpoint.EMBEDDINGS else None)
        if target is None or target in out or (target in _OUTPUT_LIMIT_FIELDS and limit_chosen):
            continue
        out[target] = value
    if endpoint is Endpoint.CHAT:
        system = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
        out["messages"] = [*system, *history, *_checked_messages(body)]
    elif endpoint is Endpoint.RESPONSES and agent.system_prompt:
        instructions = out.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise BadRequest("`instructions` must be a string.", param="instructions")
        out["instructions"] = agent.system_prompt + (f"\n\n{instructions}" if instructions else "")
    output_tokens = _output_limit(endpoint, out, agent, default_max_tokens)
    simulated = stream and not agent.streams
    if simulated and endpoint not in REPLAYABLE:
        raise BadRequest(f"Model `{agent.name}` does not stream on /v1{endpoint.path}.", param="stream")
    hide_usage = stream and _ask_for_stream_usage(endpoint, out)
    if simulated:
        out["stream"] = False
        out.pop("stream_options", None)
    return Outbound(out, output_tokens, stream and not simulated, simulated, hide_usage, endpoint.path)


def _output_limit(endpoint: Endpoint, body: dict[str, Any], agent: Agent, default: int) -> int:
    """The output tokens to reserve: the request's own limit, else `default`; held to the agent's
    `max_tokens_per_request` (clamped in `body`, or refused)."""
    if endpoint is Endpoint.EMBEDDINGS:
        return 0
    # check() refused anything but whole numbers of at least 1 (booleans are ints to isinstance).
    field = next((f for f in _RESERVED_FIELDS if type(body.get(f)) is int), None)
    named = field or ("max_output_tokens" if endpoint is Endpoint.RESPONSES else "max_tokens")
    limit, say = output_limit(agent, body[field] if field is not None else None, default, field=named)
    if say:
        body[named] = limit
    return limit


def _ask_for_stream_usage(endpoint: Endpoint, body: dict[str, Any]) -> bool:
    """Make a chat or completions stream report usage; True when the client had not asked (so the usage chunk
    and the `"usage": null` OpenAI then adds to every chunk must be taken out again)."""
    if endpoint not in REPLAYABLE:
        return False
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat request's `messages`, checked to be an array of objects."""
    return _checked_messages(body)


def _checked_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("You must provide a messages parameter.", param="messages")
    if not isinstance(messages, list):
        raise BadRequest(f"`messages` must be an array, not {json_type(messages)}.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"`messages[{index}]` must be an object, not {json_type(message)}.",
                param=f"messages[{index}]",
            )
    return messages


def _check_message(index: int, message: Any) -> None:
    """The fields of a chat message that the gateway reads (history bounding, token estimates) or stores. Where a
    field is named only when it is wrong: building the names costs more than the checks."""
    if not isinstance(message, dict):
        raise _wrong(f"messages[{index}]", "an object", message)
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        where = f"messages[{index}].role"
        if role is None:
            raise BadRequest(f"`{where}` is required.", param=where)
        if not isinstance(role, str):
            raise _wrong(where, "a string", role)
        raise BadRequest(f"`{where}` must be one of {', '.join(ROLES)}, not {_excerpt(role)}.", param=where)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        if not isinstance(content, list):
            raise _wrong(f"messages[{index}].content", "a string, an array of content parts or null", content)
        for number, part in enumerate(content):
            if not isinstance(part, dict):
                raise _wrong(f"messages[{index}].content[{number}]", "an object", part)
    # null stands for absent, as OpenAI reads it: SDKs echo an answer's message back with `"tool_calls": null`.
    _check_strings(message, ("name", "tool_call_id"), f"messages[{index}]")
    calls = message.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _wrong(f"messages[{index}].tool_calls", "an array", calls)
    for number, call in enumerate(calls):
        where = f"messages[{index}].tool_calls[{number}]"
        if not isinstance(call, dict):
            raise _wrong(where, "an object", call)
        _check_strings(call, ("id", "type"), where)
        function = call.get("function")
        if function is None:
            continue
        if not isinstance(function, dict):
            raise _wrong(f"{where}.function", "an object", function)
        _check_strings(function, ("name", "arguments"), f"{where}.function")


def _check_strings(fields: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    """Each of `names` in `fields` is a string or absent (null counts as absent)."""
    for name in names:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise _wrong(f"{where}.{name}", "a string", value)


def _wrong(where: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(f"`{where}` must be {expected}, not {json_type(value)}.", param=where)


def _check_output_limit(name: str, value: Any) -> None:
    """OpenAI's rule: an output limit is a whole number of at least 1 (null: none). A negative or zero one would
    reserve nothing or less than nothing against the key's token limits."""
    if value is None or (value.__class__ is int and value >= 1):
        return
    shown = str(value) if value.__class__ is int else json_type(value)
    raise BadRequest(f"`{name}` must be an integer of at least 1, not {shown}.", param=name)


def _excerpt(text: str) -> str:
    """A client's string quoted in an error message, cut short: the message must stay readable."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
