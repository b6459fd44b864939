"""The simple agent API: `POST /v1/chat` and `/v1/chat/stream`, one message in, the agent's reply out.

A thin layer over the proxy: the request becomes a chat completion with one user message (in a session, created
here when the agent keeps sessions and none was named), and the answer is cut down to what this API promises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.door import agent_for, key_id_of, key_of
from gateway.config.routing import RoutingTable
from gateway.errors import BadRequest, UpstreamBadResponse
from gateway.http import JSONResponse, read_model
from gateway.protocols.openai.payload import Endpoint
from gateway.proxy.pipeline import Proxy
from gateway.sessions.service import Sessions, requested_id


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_name: str = Field(min_length=1, validation_alias=AliasChoices("agent_name", "model"))
    message: str = Field(min_length=1)
    session_id: str | None = None
    stream: bool = False


class ChatAPI:
    def __init__(
        self,
        proxy: Proxy,
        sessions: Sessions,
        routes: Callable[[], RoutingTable],
        max_body_bytes: int,
    ) -> None:
        self._proxy = proxy
        self._sessions = sessions
        self._routes = routes
        self._max_body_bytes = max_body_bytes

    async def chat(self, request: Request) -> Response:
        return await self._chat(request, always_stream=False)

    async def chat_stream(self, request: Request) -> Response:
        return await self._chat(request, always_stream=True)

    async def _chat(self, request: Request, *, always_stream: bool) -> Response:
        body = await read_model(request, ChatRequest, self._max_body_bytes, error=BadRequest)
        agent = agent_for(self._routes(), key_of(request), body.agent_name)
        session_id = requested_id(request.scope["headers"], {"session_id": body.session_id})
        if session_id is None and agent.spec.session.enabled:
            session, _ = await self._sessions.create(agent, key_id_of(request))
            session_id = session.id
        stream = always_stream or body.stream
        completion: dict[str, Any] = {
            "model": body.agent_name,
            "messages": [{"role": "user", "content": body.message}],
            "stream": stream,
        }
        if session_id is not None:
            completion["session_id"] = session_id
        response = await self._proxy.serve(request, Endpoint.CHAT, completion)
        if stream or response.status_code >= 300:
            return response  # a stream is OpenAI's chunk format already; errors are OpenAI-shaped already
        return _simple(response, session_id)


def _simple(response: Response, session_id: str | None) -> Response:
    """A chat completion cut down to `{session_id, message, usage}`, with the headers it came with."""
    completion = orjson.loads(response.body)
    choices = completion.get("choices") if isinstance(completion, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise UpstreamBadResponse("The upstream's chat completion holds no message.")
    reply = {"role": message.get("role", "assistant"), "content": message.get("content")}
    simple = JSONResponse({"session_id": session_id, "message": reply, "usage": completion.get("usage")})
    simple.raw_headers = [
        *(h for h in response.raw_headers if h[0] not in (b"content-length", b"content-type")),
        *(h for h in simple.raw_headers if h[0] in (b"content-length", b"content-type")),
    ]
    return simple
