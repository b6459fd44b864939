"""Anthropic's Messages API behind the seam (protocols/wire.py): a front door, and an upstream whose requests and
streams pass through as they are (rewritten for the agent, metered)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.config.agents import Agent, StreamingSpec
from gateway.errors import BadRequest, GatewayError
from gateway.protocols import anthropic_to_openai
from gateway.protocols.anthropic import messages, usage
from gateway.protocols.wire import Outbound, StreamMeter, Usage
from gateway.upstream.base import UpstreamResponse


class AnthropicWire:
    name = "anthropic"

    def read(self, endpoint: messages.Endpoint, body: dict[str, Any]) -> tuple[str, bool]:
        return messages.read(endpoint, body)

    def error_body(self, error: GatewayError) -> bytes:
        return messages.error_body(error)

    def error_event(self, error: GatewayError) -> bytes:
        return messages.error_event(error)

    def session_messages(self, endpoint: messages.Endpoint, body: dict[str, Any]) -> list[dict[str, Any]]:
        if endpoint is not messages.Endpoint.MESSAGES:
            raise BadRequest("Sessions work with /v1/chat/completions and /v1/messages only.", param="session_id")
        return anthropic_to_openai.chat_messages(body)

    def outbound(
        self,
        endpoint: messages.Endpoint,
        body: dict[str, Any],
        agent: Agent,
        *,
        stream: bool,
        default_max_tokens: int,
        history: Sequence[dict[str, Any]] = (),
    ) -> Outbound:
        return usage.outbound(
            endpoint, body, agent, stream=stream, default_max_tokens=default_max_tokens, history=history
        )

    def prompt_estimate(self, body: dict[str, Any]) -> int:
        return usage.prompt_estimate(body)

    def usage(self, answer: Any) -> Usage | None:
        return usage.usage_of(answer)

    def meter(self, *, hide_usage: bool) -> StreamMeter:
        return usage.StreamMeter()

    async def replay(
        self, response: UpstreamResponse, endpoint: messages.Endpoint, streaming: StreamingSpec
    ) -> UpstreamResponse:
        return response  # an Anthropic upstream streams itself: nothing is ever replayed


ANTHROPIC = AnthropicWire()
