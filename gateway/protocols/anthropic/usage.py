"""Token usage of Messages answers and streams, and what an agent's Anthropic upstream is sent. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.config.agents import Agent
from gateway.errors import BadRequest
from gateway.protocols import sse
from gateway.protocols.openai.usage import estimate_tokens, text_chars
from gateway.protocols.wire import MAX_TOKENS, Outbound, Usage

# Generated text inside stream events: text, thinking and tool-argument deltas.
_GENERATED = re.compile(rb'"(?:text|thinking|partial_json)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_USAGE_EVENTS = (b'"message_start"', b'"message_delta"')


def usage_of(answer: Any) -> Usage | None:
    """A whole message's usage: Anthropic counts cached input apart, the gateway counts all input as prompt."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = [usage.get(name, 0) for name in ("input_tokens", "cache_read_input_tokens",
                                                "cache_creation_input_tokens", "output_tokens")]  # fmt: skip
    if not all(type(c) is int and 0 <= c <= MAX_TOKENS for c in counts):
        return None
    return Usage(counts[0] + counts[1] + counts[2], counts[3])


def prompt_estimate(body: dict[str, Any]) -> int:
    """The input tokens a Messages body will cost, from its text (system and messages) at four characters a
    token."""
    return estimate_tokens(text_chars(body.get("system")) + text_chars(body.get("messages")))


def outbound(
    body: dict[str, Any],
    agent: Agent,
    *,
    stream: bool,
    default_max_tokens: int,
    history: Sequence[dict[str, Any]] = (),
) -> Outbound:
    """A Messages request rewritten for the agent's Anthropic upstream, without touching `body`: the upstream
    model, the agent's defaults, its system prompt before the client's, `max_tokens` held to the agent's
    ceiling (clamped, or refused)."""
    if history:
        raise BadRequest("Sessions are not kept for agents on an Anthropic upstream yet.", param="session_id")
    if stream and not agent.streams:
        raise BadRequest(f"Model `{agent.name}` does not stream.", param="stream")
    out = dict(body)
    out.pop("session_id", None)
    out["model"] = agent.upstream_model
    for name, value in agent.defaults.items():
        if name in ("temperature", "top_p", "top_k", "max_tokens") and name not in out:
            out[name] = value
    if agent.system_prompt:
        system = out.get("system")
        if isinstance(system, list):
            out["system"] = [{"type": "text", "text": agent.system_prompt}, *system]
        else:
            out["system"] = agent.system_prompt + (f"\n\n{system}" if system else "")
    asked = out.get("max_tokens")
    requested: int = asked if isinstance(asked, int) and not isinstance(asked, bool) else default_max_tokens
    ceiling = agent.spec.limits.max_tokens_per_request
    if ceiling is not None and requested > ceiling:
        if agent.spec.limits.over_max_tokens != "clamp":
            raise BadRequest(
                f"max_tokens: {requested}, but model `{agent.name}` allows at most {ceiling} tokens per request",
                param="max_tokens",
            )
        out["max_tokens"] = requested = ceiling
    return Outbound(out, requested, stream, simulated=False, hide_usage=False)


class StreamMeter:
    """Watches a Messages stream as it is relayed, unchanged: the input tokens of `message_start`, the output
    tokens of the last `message_delta`, and the generated text, to estimate a stream cut short."""

    __slots__ = ("generated_chars", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.generated_chars = 0
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def feed(self, events: bytes) -> bytes:
        for match in _GENERATED.finditer(events):
            self.generated_chars += len(match.group(1))
        if any(kind in events for kind in _USAGE_EVENTS):
            for event in sse.iter_events(events):
                self._usage(sse.event_data(event))
        return events

    def _usage(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            counted = usage_of(event["message"])
            if counted is not None:
                self.input_tokens = counted.prompt_tokens
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            output = event["usage"].get("output_tokens")
            if type(output) is int and 0 <= output <= MAX_TOKENS:
                self.output_tokens = output

    def result(self, prompt_estimate: int) -> Usage:
        if self.input_tokens is not None and self.output_tokens is not None:
            return Usage(self.input_tokens, self.output_tokens)
        return Usage(
            self.input_tokens if self.input_tokens is not None else prompt_estimate,
            estimate_tokens(self.generated_chars),
            estimated=True,
        )
