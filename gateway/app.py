"""`create_app(settings)`: the routes, the middleware and the lifespan that owns every connection."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.errors import GatewayError, MethodNotAllowed, ModelNotFound, NotFound
from gateway.middleware import RequestContextMiddleware
from gateway.mock import MockUpstream
from gateway.observability import AccessLog
from gateway.payload import Endpoint
from gateway.proxy import Proxy
from gateway.routing import RoutingTable, load_routes
from gateway.settings import Settings
from gateway.upstream import HTTPUpstream, Upstream

logger = logging.getLogger("gateway")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Runtime:
    """What one gateway process holds: the current routing table and the upstream clients."""

    def __init__(self, settings: Settings, routes: RoutingTable, upstreams: Mapping[str, Upstream]) -> None:
        self.settings = settings
        self.routes = routes
        self.http: HTTPUpstream | None = None
        self.upstreams = {"mock": MockUpstream(), **upstreams}

    def current_routes(self) -> RoutingTable:
        return self.routes

    def upstream_for(self, provider: str) -> Upstream:
        chosen = self.upstreams.get(provider)
        if chosen is not None:
            return chosen
        if self.http is None:
            raise RuntimeError("the upstream client is opened by the app's lifespan, which has not run")
        return self.http

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.http = HTTPUpstream.open(self.settings.upstream_max_connections, self.settings.upstream_connect_timeout)
        names = ", ".join(agent.name for agent in self.routes.agents)
        logger.info("agent-gateway %s ready with %d agent(s): %s", __version__, len(self.routes.agents), names)
        for problem in self.routes.problems():
            logger.warning("%s", problem)
        try:
            yield
        finally:
            await self.http.close()
            self.http = None


class Endpoints:
    """The HTTP handlers. Thin: the proxy does the work."""

    def __init__(self, runtime: Runtime, proxy: Proxy) -> None:
        self.runtime = runtime
        self.proxy = proxy

    async def chat_completions(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.COMPLETIONS)

    async def embeddings(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.EMBEDDINGS)

    async def responses(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.RESPONSES)

    async def list_models(self, request: Request) -> Response:
        routes = self.runtime.routes
        return JSONResponse({"object": "list", "data": [_model(a.name, routes) for a in routes.agents]})

    async def get_model(self, request: Request) -> Response:
        model = request.path_params["model"]
        if self.runtime.routes.match(model) is None:
            raise ModelNotFound(model)
        return JSONResponse(_model(model, self.runtime.routes))

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = list(self.runtime.routes.problems())
        if self.runtime.http is None:
            problems.append("the upstream client is not open")
        status = "ready" if not problems else "not_ready"
        body = {"status": status, "agents": len(self.runtime.routes.agents), "problems": problems}
        return JSONResponse(body, status_code=503 if problems else 200)


def _model(model: str, routes: RoutingTable) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": routes.loaded_at, "owned_by": "agent-gateway"}


async def _render_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return Response(exc.body(), status_code=exc.status, media_type="application/json")


async def _render_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"({request.method} {request.url.path})"
    # The router raises only these two; nothing else in the app raises HTTPException.
    error = (
        MethodNotAllowed(f"Method not allowed {where}.")
        if exc.status_code == 405
        else NotFound(f"Invalid URL {where}.")
    )
    return await _render_gateway_error(request, error)


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    routes: RoutingTable | None = None,
    upstreams: Mapping[str, Upstream] | None = None,
) -> Starlette:
    """Build a gateway app. Loading the route config happens here, so a bad config fails before serving.

    `routes` replaces the config files and `upstreams` the client per provider name (tests inject both).
    """
    settings = settings or Settings()
    environ = os.environ if environ is None else environ
    runtime = Runtime(settings, routes or load_routes(settings.config, environ), upstreams or {})
    # Access lines are INFO: a quieter log level turns them off as it would any logger's.
    access_log = (
        AccessLog(settings.log_format) if settings.access_log and settings.log_level in ("debug", "info") else None
    )
    proxy = Proxy(runtime.current_routes, runtime.upstream_for, settings.max_body_bytes)
    endpoints = Endpoints(runtime, proxy)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
            Route("/v1/completions", endpoints.completions, methods=["POST"]),
            Route("/v1/embeddings", endpoints.embeddings, methods=["POST"]),
            Route("/v1/responses", endpoints.responses, methods=["POST"]),
            Route("/v1/models", endpoints.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", endpoints.get_model, methods=["GET"]),
            Route("/healthz", endpoints.healthz, methods=["GET"]),
            Route("/readyz", endpoints.readyz, methods=["GET"]),
        ],
        middleware=[Middleware(RequestContextMiddleware, access_log=access_log)],
        exception_handlers={GatewayError: _render_gateway_error, HTTPException: _render_http_exception},
        lifespan=runtime.lifespan,
    )
    app.state.runtime = runtime
    return app
