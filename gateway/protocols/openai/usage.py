"""Token usage: read from upstream answers, metered out of streams, estimated when missing. Pure functions."""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

import orjson

from gateway.protocols import sse
from gateway.protocols.wire import MAX_TOKENS, Usage

# Mean characters per token of English text with OpenAI's tokenizers: good enough for estimates.
CHARS_PER_TOKEN = 4
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null')
# Generated text inside stream events: chat deltas, completions text, Responses API deltas, tool arguments.
_GENERATED = re.compile(rb'"(?:content|text|delta|arguments|refusal)"\s*:\s*"((?:[^"\\]|\\.)*)"')


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def text_chars(value: Any) -> int:
    """Characters of text anywhere in a request field (strings, message contents, parts)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(text_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(text_chars(value.get(name)) for name in ("content", "text", "input", "instructions"))
    return 0


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    """Prompt tokens a request will cost, estimated from its text (messages, prompt, input, instructions)."""
    fields = ("messages", "prompt", "input", "instructions")
    return estimate_tokens(sum(text_chars(payload.get(name)) for name in fields))


def from_body(body: Any) -> Usage | None:
    """The `usage` of a whole upstream answer (chat, completions, embeddings or the Responses API)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    return _from_usage(usage)


def _from_usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not (_is_count(prompt) and _is_count(completion)):
        return None
    # Cached input, inside the prompt count: chat completions' `prompt_tokens_details`, the Responses API's
    # `input_tokens_details`.
    details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt, completion, cached_tokens=min(cached, prompt) if _is_count(cached) else 0)


def _is_count(value: Any) -> TypeGuard[int]:
    """A token count settlement and the usage store can take: a whole number from 0 to `MAX_TOKENS`. Anything else
    (negative, a boolean, beyond 64 bits) reads as no count at all, and the reservation is kept."""
    return type(value) is int and 0 <= value <= MAX_TOKENS


class StreamMeter:
    """Watches the events a relay forwards: takes the usage out of them, and counts the generated text so that a
    stream cut short can still be charged. `hide_usage` removes what the gateway itself asked the upstream for."""

    __slots__ = ("generated_chars", "hide_usage", "usage")

    def __init__(self, *, hide_usage: bool) -> None:
        self.hide_usage = hide_usage
        self.usage: Usage | None = None
        self.generated_chars = 0

    def feed(self, events: bytes) -> bytes:
        """Account for a block of whole events; returns the block the client should get."""
        for match in _GENERATED.finditer(events):
            self.generated_chars += len(match.group(1))
        if self.hide_usage and b'"usage"' in events:
            events = _USAGE_NULL.sub(b"", events)
        if _USAGE_OBJECT.search(events) is None:
            return events
        kept = []
        for event in sse.iter_events(events):
            usage = _event_usage(event) if _USAGE_OBJECT.search(event) else None
            if usage is not None:
                self.usage = usage
                if self.hide_usage:
                    continue
            kept.append(event)
        return b"".join(kept)

    def result(self, prompt_estimate: int) -> Usage:
        """The usage to charge: the upstream's own, or an estimate from what was relayed."""
        if self.usage is not None:
            return self.usage
        return Usage(prompt_estimate, estimate_tokens(self.generated_chars), estimated=True)


def _event_usage(event: bytes) -> Usage | None:
    try:
        data = orjson.loads(sse.event_data(event))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    response = data.get("response")  # Responses API: the usage is in response.completed's response
    if isinstance(response, dict) and "usage" in response:
        return _from_usage(response["usage"])
    return _from_usage(data.get("usage"))
