"""Anthropic's front door: `POST /v1/messages` (through the proxy, translated where the agent's upstream speaks
OpenAI) and `POST /v1/messages/count_tokens`."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from gateway import jsonbody
from gateway.auth.door import agent_for, key_of
from gateway.config.routing import RoutingTable
from gateway.http import JSONResponse, read_body
from gateway.protocols.anthropic import messages
from gateway.protocols.anthropic.wire import ANTHROPIC
from gateway.protocols.anthropic_to_openai import chat_request
from gateway.protocols.openai.usage import estimate_prompt_tokens
from gateway.protocols.registry import wire_of
from gateway.proxy.pipeline import Proxy


class AnthropicEndpoints:
    def __init__(self, proxy: Proxy, routes: Callable[[], RoutingTable], max_body_bytes: int) -> None:
        self._proxy = proxy
        self._routes = routes
        self._max_body_bytes = max_body_bytes

    async def messages(self, request: Request) -> Response:
        return await self._proxy.forward(request, messages.Endpoint.MESSAGES)

    async def count_tokens(self, request: Request) -> Response:
        """An agent on Anthropic's API: its upstream's count, for the request as the agent sends it. Any other:
        the gateway's estimate of the request's input tokens, its text (system, messages, tool definitions) at
        four characters a token, as the token limits reserve them. The model must be one the key may use."""
        body = jsonbody.parse(await read_body(request, self._max_body_bytes))
        model, _ = messages.read(messages.Endpoint.COUNT_TOKENS, body)
        agent = agent_for(self._routes(), key_of(request), model)
        if wire_of(agent.provider) is ANTHROPIC:
            return await self._proxy.serve(request, messages.Endpoint.COUNT_TOKENS, body)
        chat = chat_request(body)
        tools = len(str(chat.get("tools", ""))) // 4 if chat.get("tools") else 0
        return JSONResponse({"input_tokens": estimate_prompt_tokens(chat) + tools})
