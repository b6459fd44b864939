"""OpenAI's wire format behind the seam (protocols/wire.py): its error shapes, body rewrite, usage and streams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.config.agents import Agent, StreamingSpec
from gateway.errors import BadRequest, GatewayError
from gateway.protocols import sse
from gateway.protocols.openai import payload, simulate, usage
from gateway.protocols.openai.payload import Endpoint
from gateway.protocols.wire import Outbound, StreamMeter, Usage
from gateway.upstream.base import UpstreamResponse


class OpenAIWire:
    name = "openai"

    def read(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, bool]:
        model, stream = payload.model_of(body), payload.wants_stream(body)
        payload.check(endpoint, body)
        return model, stream

    def error_body(self, error: GatewayError) -> bytes:
        return error.body()  # the gateway's errors are OpenAI-shaped: `{"error": {message, type, param, code}}`

    def error_event(self, error: GatewayError) -> bytes:
        return sse.error_event(error.payload())

    def session_messages(self, endpoint: Endpoint, body: dict[str, Any]) -> list[dict[str, Any]]:
        if endpoint is not Endpoint.CHAT:
            raise BadRequest("Sessions work with /v1/chat/completions and /v1/messages only.", param="session_id")
        return payload.messages_of(body)

    def outbound(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        agent: Agent,
        *,
        stream: bool,
        default_max_tokens: int,
        history: Sequence[dict[str, Any]] = (),
    ) -> Outbound:
        return payload.outbound(
            endpoint, body, agent, stream=stream, default_max_tokens=default_max_tokens, history=history
        )

    def prompt_estimate(self, body: dict[str, Any]) -> int:
        return usage.estimate_prompt_tokens(body)

    def usage(self, answer: Any) -> Usage | None:
        return usage.from_body(answer)

    def meter(self, *, hide_usage: bool) -> StreamMeter:
        return usage.StreamMeter(hide_usage=hide_usage)

    async def replay(
        self, response: UpstreamResponse, endpoint: Endpoint, streaming: StreamingSpec
    ) -> UpstreamResponse:
        return await simulate.replay(response, endpoint, streaming)


OPENAI = OpenAIWire()
