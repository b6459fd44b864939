"""How errors leave the gateway: its own errors, store outages and the router's 404 and 405, as OpenAI-shaped
answers (with Retry-After where the error knows when to come back)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    StoreUnavailable,
)
from gateway.exchange import Exchange
from gateway.protocols.registry import door_for

if TYPE_CHECKING:
    from gateway.runtime import Runtime

logger = logging.getLogger("gateway")


# The refusals of our own limits, by the kind of limit the guard noted.
_POLICY_CLASSES = {"rate": "policy_rate_limit", "quota": "policy_quota", "concurrency": "policy_concurrency",
                   "cooldown": "policy_cooldown"}  # fmt: skip


async def render_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    exchange = request.scope.get("state", {}).get("exchange")
    if isinstance(exchange, Exchange):
        exchange.error_class = _POLICY_CLASSES.get(exchange.limited or "", exc.error_class)
    body = door_for(request.url.path).error_body(exc)  # in the wire format the client speaks
    response = Response(body, status_code=exc.status, media_type="application/json")
    if exc.retry_after is not None:
        wait = exc.retry_after
        response.raw_headers += [(b"retry-after", str(math.ceil(wait)).encode()),
                                 (b"retry-after-ms", str(math.ceil(wait * 1000)).encode())]  # fmt: skip
    return response


async def render_store_error(request: Request, exc: Exception) -> Response:
    logger.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
    runtime: Runtime = request.app.state.runtime
    if runtime.store.name == "redis":
        runtime.metrics.redis_error("store")
    error = StoreUnavailable("The gateway's key and usage store is unavailable; retry shortly.", retry_after=1.0)
    return await render_gateway_error(request, error)


async def render_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"({request.method} {request.url.path})"
    # The router raises only these two; nothing else in the app raises HTTPException.
    if exc.status_code != 405:
        return await render_gateway_error(request, NotFound(f"Invalid URL {where}."))
    allowed = ", ".join(_allowed_methods(request))
    error = MethodNotAllowed(f"Method not allowed {where}; this path allows {allowed}.")
    response = await render_gateway_error(request, error)
    response.raw_headers.append((b"allow", allowed.encode()))
    return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path: the router's own 405 names only the first route's,
    and a path here is often served by several routes, one per method."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)
