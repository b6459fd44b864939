"""Token usage of Messages answers and streams, and what an agent's Anthropic upstream is sent. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.config.agents import Agent
from gateway.errors import BadRequest
from gateway.protocols import openai_to_anthropic, sse
from gateway.protocols.anthropic.messages import Endpoint
from gateway.protocols.openai.usage import estimate_tokens, text_chars
from gateway.protocols.wire import MAX_TOKENS, Outbound, Usage, output_limit

# Generated text inside stream events: text, thinking and tool-argument deltas.
_GENERATED = re.compile(rb'"(?:text|thinking|partial_json)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_USAGE_EVENTS = (b'"message_start"', b'"message_delta"')
# What a count_tokens request does not take: it generates nothing.
_GENERATION_FIELDS = ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata",
                      "service_tier")  # fmt: skip


def usage_of(answer: Any) -> Usage | None:
    """A whole message's usage: Anthropic counts cached input apart, the gateway counts all input as prompt."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = [usage.get(name, 0) for name in ("input_tokens", "cache_read_input_tokens",
                                                "cache_creation_input_tokens", "output_tokens")]  # fmt: skip
    if not all(type(c) is int and 0 <= c <= MAX_TOKENS for c in counts):
        return None
    return Usage(counts[0] + counts[1] + counts[2], counts[3], cached_tokens=counts[1])


def prompt_estimate(body: dict[str, Any]) -> int:
    """The input tokens a Messages body will cost, from its text (system and messages) at four characters a
    token."""
    return estimate_tokens(text_chars(body.get("system")) + text_chars(body.get("messages")))


def outbound(
    endpoint: Endpoint,
    body: dict[str, Any],
    agent: Agent,
    *,
    stream: bool,
    default_max_tokens: int,
    history: Sequence[dict[str, Any]] = (),
) -> Outbound:
    """A Messages request rewritten for the agent's Anthropic upstream, without touching `body`: the upstream
    model, a session's `history` (chat messages) in front of the client's messages, the agent's system prompt
    before the client's, its defaults, and `max_tokens` held to the agent's ceiling (clamped, or refused). A
    count_tokens request gets the model, history and system prompt only: it takes no generation settings."""
    if stream and not agent.streams:
        raise BadRequest(f"Model `{agent.name}` does not stream.", param="stream")
    out = dict(body)
    out.pop("session_id", None)
    out["model"] = agent.upstream_model
    if history:
        out["system"], out["messages"] = _with_history(history, out.get("system"), out.get("messages") or [])
    if agent.system_prompt:
        system = out.get("system")
        if isinstance(system, list):
            out["system"] = [{"type": "text", "text": agent.system_prompt}, *system]
        else:
            out["system"] = agent.system_prompt + (f"\n\n{system}" if system else "")
    if not out.get("system"):
        out.pop("system", None)
    if endpoint is Endpoint.COUNT_TOKENS:
        for name in _GENERATION_FIELDS:
            out.pop(name, None)
        return Outbound(out, 0, False, simulated=False, hide_usage=False, path=endpoint.path, metered=False)
    for name, value in agent.defaults.items():
        if name in ("temperature", "top_p", "top_k", "max_tokens") and name not in out:
            out[name] = value
    asked = out.get("max_tokens")
    stated = asked if asked.__class__ is int else None
    limit, _ = output_limit(agent, stated, default_max_tokens, field="max_tokens")
    out["max_tokens"] = limit  # required by the Messages API: an OpenAI client may have named none
    return Outbound(out, limit, stream, simulated=False, hide_usage=False, path=endpoint.path)


def _with_history(history: Sequence[dict[str, Any]], system: Any, client: list[Any]) -> tuple[Any, list[Any]]:
    """A session's history (chat messages) put in front of the client's Messages: the history's system text
    before the client's, and the client's first turn joined to the history's last when both are one role."""
    kept_system, earlier = openai_to_anthropic.messages_of(history)
    if kept_system:
        if isinstance(system, list):
            system = [{"type": "text", "text": kept_system}, *system]
        else:
            system = kept_system + (f"\n\n{system}" if system else "")
    messages = [*earlier, *client]
    if earlier and client and isinstance(client[0], dict) and client[0].get("role") == earlier[-1]["role"]:
        first = client[0].get("content")
        blocks = [{"type": "text", "text": first}] if isinstance(first, str) else list(first or [])
        messages[len(earlier) - 1 : len(earlier) + 1] = [
            {"role": earlier[-1]["role"], "content": [*earlier[-1]["content"], *blocks]}
        ]
    return system, messages


class StreamMeter:
    """Watches a Messages stream as it is relayed, unchanged: the input tokens of `message_start`, the output
    tokens of the last `message_delta`, and the generated text, to estimate a stream cut short."""

    __slots__ = ("cached_tokens", "generated_chars", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.generated_chars = 0
        self.cached_tokens = 0
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
                self.cached_tokens = counted.cached_tokens
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            output = event["usage"].get("output_tokens")
            if type(output) is int and 0 <= output <= MAX_TOKENS:
                self.output_tokens = output

    def result(self, prompt_estimate: int) -> Usage:
        if self.input_tokens is not None and self.output_tokens is not None:
            return Usage(self.input_tokens, self.output_tokens, cached_tokens=self.cached_tokens)
        return Usage(
            self.input_tokens if self.input_tokens is not None else prompt_estimate,
            estimate_tokens(self.generated_chars),
            estimated=True,
            cached_tokens=self.cached_tokens,
        )
