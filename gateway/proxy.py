"""The proxy path, in the order the product does it: authenticate, match the agent, authorize, rewrite, forward,
relay, and note what accounting needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import payload, usage
from gateway.auth import Authenticator, authorize
from gateway.errors import ModelNotFound, PayloadTooLarge, UpstreamBadResponse
from gateway.exchange import Exchange, exchange_of
from gateway.guard import Guard
from gateway.payload import Endpoint
from gateway.relay import StreamRelay
from gateway.routing import RoutingTable
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
        max_body_bytes: int,
    ) -> None:
        self._routes = routes
        self._upstream_for = upstreams
        self._auth = authenticator
        self._guard = guard
        self._max_body_bytes = max_body_bytes

    async def forward(self, request: Request, endpoint: Endpoint) -> Response:
        exchange = exchange_of(request.scope)
        key = await self._auth.authenticate(request.scope["headers"])
        exchange.key_id = key.id if key is not None else None
        body = payload.parse(await read_body(request, self._max_body_bytes))
        model = payload.model_of(body)
        stream = payload.wants_stream(body)
        agent = self._routes().match(model)
        if agent is None:
            raise ModelNotFound(model)
        exchange.agent = agent.name
        authorize(key, model, agent.name)
        upstream_body = payload.prepare(endpoint, body, agent)
        await self._guard.admit(
            exchange, key=key, agent=agent, endpoint=endpoint, body=upstream_body, scope=request.scope
        )
        hide_usage = stream and usage.ask_for_stream_usage(endpoint, upstream_body)
        upstream_request = UpstreamRequest(
            agent=agent,
            path=endpoint.path,
            payload=upstream_body,
            stream=stream,
            headers=forward_headers(request.scope["headers"], exchange.request_id),
        )
        response = await self._upstream_for(agent.provider).send(upstream_request)
        exchange.upstream_status = response.status
        if stream and response.status < 300 and response.content_type == "text/event-stream":
            meter = usage.StreamMeter(hide_usage=hide_usage)
            prompt_estimate = usage.estimate_prompt_tokens(upstream_body)
            return StreamRelay(response, meter, exchange, prompt_estimate, ends_with_done=endpoint.ends_with_done)
        return await buffered(response, exchange)


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


async def buffered(upstream: UpstreamResponse, exchange: Exchange) -> Response:
    """A whole upstream response: success bodies as they are, errors made OpenAI-shaped if they are not."""
    body = await upstream.read()
    parsed = _json(body)
    if upstream.status < 300:
        if parsed is None:
            raise UpstreamBadResponse(f"The upstream answered HTTP {upstream.status} with a body that is not JSON.")
        counted = usage.from_body(parsed)
        if counted is not None:
            exchange.prompt_tokens = counted.prompt_tokens
            exchange.completion_tokens = counted.completion_tokens
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
