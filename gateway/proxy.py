"""The proxy path, in the order the product does it: authenticate, match the agent, authorize, rewrite, forward,
relay, and note what accounting needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import payload, simulate, usage
from gateway.agents import Agent
from gateway.auth import Authenticator, authorize
from gateway.errors import BadRequest, ModelNotFound, PayloadTooLarge, UpstreamBadResponse
from gateway.exchange import Exchange, exchange_of
from gateway.guard import Guard
from gateway.keys import KeyRecord
from gateway.payload import Endpoint
from gateway.relay import StreamRelay
from gateway.routing import RoutingTable
from gateway.sessions.assembly import reply_from_completion
from gateway.sessions.service import Sessions, Turn, requested_id
from gateway.upstream import Upstream, UpstreamRequest, UpstreamResponse, forward_headers

JSON = "application/json"


class Proxy:
    """Forwards OpenAI requests to the agent named by `model`. Holds no per-request state."""

    def __init__(
        self,
        routes: Callable[[], RoutingTable],
        upstreams: Callable[[str], Upstream],
        authenticator: Authenticator,
        guard: Guard,
        sessions: Sessions,
        *,
        max_body_bytes: int,
    ) -> None:
        self._routes = routes
        self._upstream_for = upstreams
        self._auth = authenticator
        self._guard = guard
        self._sessions = sessions
        self._max_body_bytes = max_body_bytes

    async def forward(self, request: Request, endpoint: Endpoint) -> Response:
        key = await self._auth.authenticate(request.scope["headers"])
        body = payload.parse(await read_body(request, self._max_body_bytes))
        return await self.serve(request, endpoint, body, key)

    async def serve(
        self, request: Request, endpoint: Endpoint, body: dict[str, Any], key: KeyRecord | None
    ) -> Response:
        """The rest of the path, for a body already read and a key already authenticated."""
        exchange = exchange_of(request.scope)
        exchange.key_id = key.id if key is not None else None
        model = payload.model_of(body)
        stream = payload.wants_stream(body)
        agent = self._routes().match(model)
        if agent is None:
            raise ModelNotFound(model)
        exchange.agent = agent.name
        authorize(key, model, agent.name)
        turn = await self._continue_session(request, endpoint, body, agent, key)
        # An agent that cannot stream still serves stream clients: one whole answer, replayed as chunks.
        simulated = stream and not agent.streams
        if simulated and endpoint not in (Endpoint.CHAT, Endpoint.COMPLETIONS):
            raise BadRequest(f"Model `{agent.name}` does not stream on /v1{endpoint.path}.", param="stream")
        upstream_body = payload.prepare(endpoint, body, agent)
        await self._guard.admit(
            exchange, key=key, agent=agent, endpoint=endpoint, body=upstream_body, scope=request.scope
        )
        hide_usage = stream and usage.ask_for_stream_usage(endpoint, upstream_body)
        if simulated:
            upstream_body["stream"] = False
            upstream_body.pop("stream_options", None)
        upstream_request = UpstreamRequest(
            agent=agent,
            path=endpoint.path,
            payload=upstream_body,
            stream=stream and not simulated,
            headers=forward_headers(request.scope["headers"], exchange.request_id),
        )
        response = await self._upstream_for(agent.provider).send(upstream_request)
        exchange.upstream_status = response.status
        if simulated:
            response = await simulate.replay(response, endpoint, agent.streaming)
        if stream and response.status < 300 and response.content_type == "text/event-stream":
            meter = usage.StreamMeter(hide_usage=hide_usage)
            prompt_estimate = usage.estimate_prompt_tokens(upstream_body)
            relay = StreamRelay(response, meter, exchange, prompt_estimate, ends_with_done=endpoint.ends_with_done)
            if turn is not None:
                relay.keep_reply(turn)
            return relay
        return await buffered(response, exchange, turn)

    async def _continue_session(
        self, request: Request, endpoint: Endpoint, body: dict[str, Any], agent: Agent, key: KeyRecord | None
    ) -> Turn | None:
        """The session the request names, if any: its history goes in front of the client's messages."""
        session_id = requested_id(request.scope["headers"], body)
        if session_id is None:
            return None
        if endpoint is not Endpoint.CHAT:
            raise BadRequest("Sessions work with /v1/chat/completions only.", param="session_id")
        messages = payload.messages_of(body)
        turn = await self._sessions.open(agent, key.id if key is not None else None, session_id)
        exchange = exchange_of(request.scope)
        exchange.session_id = turn.session.id
        exchange.session_storage = turn.storage
        turn.new_messages = list(messages)
        body["messages"] = [*turn.history, *messages]
        return turn


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is {declared} bytes; this gateway accepts at most {limit}.")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit} bytes, the most this gateway accepts.")
        chunks.append(chunk)
    return b"".join(chunks)


async def buffered(upstream: UpstreamResponse, exchange: Exchange, turn: Turn | None = None) -> Response:
    """A whole upstream response: success bodies as they are, errors made OpenAI-shaped if they are not. A
    session's turn is stored before the answer goes out, so the client's next turn finds it."""
    body = await upstream.read()
    parsed = _json(body)
    if upstream.status < 300:
        if parsed is None:
            raise UpstreamBadResponse(f"The upstream answered HTTP {upstream.status} with a body that is not JSON.")
        counted = usage.from_body(parsed)
        if counted is not None:
            exchange.prompt_tokens = counted.prompt_tokens
            exchange.completion_tokens = counted.completion_tokens
        if turn is not None:
            await turn.store_reply(reply_from_completion(parsed) if isinstance(parsed, dict) else None)
    elif not (isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)):
        body = orjson.dumps(upstream_error_payload(upstream.status, body))
    # Both kinds are JSON now, whatever content type the upstream claimed.
    response = Response(body, status_code=upstream.status, media_type=JSON)
    response.raw_headers.extend(h for h in upstream.relay_headers() if h[0] != b"content-type")
    return response


def upstream_error_payload(status: int, body: bytes) -> dict[str, Any]:
    """An upstream error that is not OpenAI-shaped (an HTML page from a proxy, say), wrapped so SDKs can read it."""
    snippet = " ".join(body[:200].decode("utf-8", "replace").split())
    message = f"The upstream answered HTTP {status}" + (f": {snippet}" if snippet else ".")
    return {
        "error": {
            "message": message,
            "type": "upstream_error",
            "param": None,
            "code": f"upstream_http_{status}",
        }
    }


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
