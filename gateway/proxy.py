"""The proxy path, in the order the product does it: match the agent, rewrite, forward, relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import payload
from gateway.errors import ModelNotFound, PayloadTooLarge, UpstreamBadResponse
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
        max_body_bytes: int,
    ) -> None:
        self._routes = routes
        self._upstream_for = upstreams
        self._max_body_bytes = max_body_bytes

    async def forward(self, request: Request, endpoint: Endpoint) -> Response:
        body = payload.parse(await read_body(request, self._max_body_bytes))
        model = payload.model_of(body)
        stream = payload.wants_stream(body)
        agent = self._routes().match(model)
        if agent is None:
            raise ModelNotFound(model)
        state = request.scope.setdefault("state", {})
        state["agent"] = agent.name
        upstream_request = UpstreamRequest(
            agent=agent,
            path=endpoint.path,
            payload=payload.prepare(endpoint, body, agent),
            stream=stream,
            headers=forward_headers(request.scope["headers"], state.get("request_id", "")),
        )
        response = await self._upstream_for(agent.provider).send(upstream_request)
        state["upstream_status"] = response.status
        if stream and response.status < 300 and response.content_type == "text/event-stream":
            return StreamRelay(response, ends_with_done=endpoint.ends_with_done)
        return await buffered(response)


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


async def buffered(upstream: UpstreamResponse) -> Response:
    """A whole upstream response: success bodies as they are, errors made OpenAI-shaped if they are not."""
    body = await upstream.read()
    parsed = _json(body)
    if upstream.status < 300:
        if parsed is None:
            raise UpstreamBadResponse(f"The upstream answered HTTP {upstream.status} with a body that is not JSON.")
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
