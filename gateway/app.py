"""`create_app(settings)`: the routes, the middleware and the lifespan that owns every connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from gateway import __version__
from gateway.accounting import Accountant
from gateway.api.admin import AdminAPI
from gateway.api.chat import ChatAPI
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.sessions import SessionsAPI
from gateway.auth.authenticator import Authenticator, AuthMode, is_loopback, resolve_mode
from gateway.config.reload import Reloader
from gateway.config.routing import ConfigError, RoutingTable, load_routes
from gateway.errors import (
    GatewayError,
    InvalidConfig,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    StoreUnavailable,
)
from gateway.exchange import Exchange, exchange_of
from gateway.http import JSONResponse
from gateway.limits.admission import Guard
from gateway.limits.limiter import Limiter, MemoryLimiter
from gateway.limits.policy import Defaults
from gateway.observability.logs import AccessLog
from gateway.observability.metrics import Metrics
from gateway.protocols.mock import MockUpstream
from gateway.protocols.openai.payload import Endpoint
from gateway.proxy.dispatcher import Dispatcher
from gateway.proxy.pipeline import Proxy
from gateway.sessions.service import Sessions
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore
from gateway.upstream.http import HTTPUpstream, Upstream

logger = logging.getLogger("gateway")


def make_store(settings: Settings) -> Store:
    if settings.store == "redis":
        # Imported only when used: the redis client adds ~15 MB to a process that does not need it.
        from gateway.store.redis import RedisStore  # noqa: PLC0415

        return RedisStore(settings.redis_url)
    return SQLiteStore(settings.state_dir)


def make_limiter(settings: Settings) -> Limiter:
    if (settings.rate_limit_storage or settings.store) == "redis":
        from gateway.limits.redis import RedisLimiter  # noqa: PLC0415 (see make_store)

        return RedisLimiter(settings.redis_url, settings.rate_limit_failure)
    return MemoryLimiter()


def preflight(settings: Settings) -> None:
    """Refuse, before binding, what the lifespan would refuse anyway, with a one-line message instead of a failed
    startup: an embedded state directory held by another process (`StateDirInUse`), and `auto` auth that would
    leave a non-loopback address without keys (`AuthRefused`). Redis is opened only to count keys, and only when
    that decides: a Redis that is down at start makes the gateway unready, not absent."""
    needs_count = settings.auth == "auto" and settings.admin_key is None and not is_loopback(settings.host)
    if settings.store == "redis" and not needs_count:
        return

    async def count() -> int:
        store = make_store(settings)
        await store.open()
        try:
            return await store.count_keys()
        finally:
            await store.close()

    key_count = asyncio.run(count())
    resolve_mode(settings.auth, admin_key_set=settings.admin_key is not None, key_count=key_count, host=settings.host)


class Runtime:
    """What one gateway process holds: the routing table, the store, and the clients and tasks around them."""

    def __init__(
        self,
        settings: Settings,
        *,
        environ: Mapping[str, str],
        routes: RoutingTable,
        upstreams: Mapping[str, Upstream],
        store: Store,
        limiter: Limiter,
    ) -> None:
        self.settings = settings
        self.environ = environ
        self.routes = routes
        self.http: HTTPUpstream | None = None
        self.upstreams = {"mock": MockUpstream(), **upstreams}
        self.store = store
        self.authenticator = Authenticator(store, "keys", store.cache_ttl)
        self.accountant = Accountant(store)
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.upstream_for, self.current_routes, self.metrics)
        self.sessions = Sessions(
            self.current_routes,
            default_storage=settings.session_storage or settings.store,
            redis_url=settings.redis_url,
            ttl_seconds=settings.session_ttl,
            metrics=self.metrics,
        )
        limiter.on_error = lambda: self.metrics.redis_error("limiter")
        self.guard = Guard(
            limiter,
            store,
            defaults=Defaults(settings.rate_limit_requests_per_minute),
            queue_timeout=settings.queue_timeout,
            default_max_tokens=settings.default_max_tokens,
            trusted_proxies=settings.trusted_proxies,
        )
        self.reloader = Reloader(
            self._load_routes,
            settings.config,
            watch=settings.watch_config,
            redis_url=settings.redis_url if settings.store == "redis" else None,
        )
        # Set by `gateway serve` on SIGTERM: /readyz says 503 while the requests in flight finish.
        self.draining = False

    def current_routes(self) -> RoutingTable:
        return self.routes

    def reload(self) -> RoutingTable:
        """Re-read the route config here and on every replica (POST /admin/reload); a bad one raises
        `InvalidConfig` and the old one keeps serving."""
        return self.reloader.reload("POST /admin/reload")

    def _load_routes(self, trigger: str) -> RoutingTable:
        """Re-read the route config; the new table replaces the old one whole (requests in flight keep theirs)."""
        try:
            table = load_routes(self.settings.config, self.environ)
        except ConfigError as exc:
            logger.warning(
                "route config not reloaded (%s), the old one keeps serving: %s", trigger, "; ".join(exc.problems)
            )
            raise InvalidConfig("The route config was not reloaded: " + "; ".join(exc.problems)) from None
        self.routes = table
        logger.info("route config reloaded (%s): %d agent(s)", trigger, len(table.agents))
        return table

    async def _auth_mode(self) -> AuthMode:
        settings = self.settings
        if settings.auth != "auto" or settings.admin_key is not None:
            return resolve_mode(settings.auth, admin_key_set=settings.admin_key is not None, key_count=0, host="")
        try:
            key_count = await self.store.count_keys()
        except self.store.errors as exc:
            # Whether keys exist cannot be known: require them (fail closed) rather than let anyone in.
            logger.warning("cannot count keys (%s): requiring keys until restart", exc)
            return "keys"
        return resolve_mode(settings.auth, admin_key_set=False, key_count=key_count, host=settings.host)

    def upstream_for(self, provider: str) -> Upstream:
        chosen = self.upstreams.get(provider)
        if chosen is not None:
            return chosen
        if self.http is None:
            raise RuntimeError("the upstream client is opened by the app's lifespan, which has not run")
        return self.http

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        await self.store.open()
        try:
            self.authenticator.mode = await self._auth_mode()
            await self.accountant.start()
            self.http = HTTPUpstream.open(settings.upstream_max_connections, settings.upstream_connect_timeout)
            names = ", ".join(agent.name for agent in self.routes.agents)
            logger.info("agent-gateway %s ready with %d agent(s): %s", __version__, len(self.routes.agents), names)
            logger.info(
                "auth: %s; store: %s; rate limits: %s; admin API: %s",
                self.authenticator.mode,
                self.store.name,
                self.guard.limiter.name,
                "on" if settings.admin_key else "off (set GATEWAY_ADMIN_KEY)",
            )
            kept = {
                agent.name: self.sessions.describe(agent) for agent in self.routes.agents if agent.spec.session.enabled
            }
            if kept:
                logger.info("sessions: %s", ", ".join(f"{name} in {where}" for name, where in kept.items()))
            for problem in self.routes.problems():
                logger.warning("%s", problem)
            for agent in self.routes.agents:
                if (
                    agent.spec.rate_limit.enabled
                    and agent.spec.rate_limit.storage == "redis" != self.guard.limiter.name
                ):
                    logger.warning(
                        "agent '%s' asks for Redis rate limiting; the gateway's limiter is %s "
                        "(set RATE_LIMIT_STORAGE=redis to share buckets between processes)",
                        agent.name,
                        self.guard.limiter.name,
                    )
            await self.reloader.start()
            yield
        finally:
            await self.reloader.stop()
            if self.http is not None:
                await self.http.close()
                self.http = None
            await self.guard.close()
            await self.sessions.close()
            await self.accountant.stop()  # after the last request: what they used is written before we exit
            await self.store.close()


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
        key = await self.runtime.authenticator.authenticate(request.scope["headers"])
        routes = self.runtime.routes
        visible = [a for a in routes.agents if key is None or key.allows(a.name)]
        return JSONResponse({"object": "list", "data": [_model(a.name, routes) for a in visible]})

    async def get_model(self, request: Request) -> Response:
        key = await self.runtime.authenticator.authenticate(request.scope["headers"])
        model = request.path_params["model"]
        agent = self.runtime.routes.match(model)
        if agent is None or (key is not None and not (key.allows(model) or key.allows(agent.name))):
            raise ModelNotFound(model)
        return JSONResponse(_model(model, self.runtime.routes))

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        # A 503 here is an answer, not a failure: it must not count with the gateway's own errors.
        exchange_of(request.scope).error_class = "gateway_not_ready"
        if self.runtime.draining:
            # Shutting down: load balancers should stop sending here while the requests in flight finish.
            draining = {"status": "draining", "agents": len(self.runtime.routes.agents), "problems": ["shutting down"]}
            return JSONResponse(draining, status_code=503)
        problems = list(self.runtime.routes.problems())
        if self.runtime.http is None:
            problems.append("the upstream client is not open")
        if not await self.runtime.store.ping():
            problems.append(f"the {self.runtime.store.name} store is not reachable")
        status = "ready" if not problems else "not_ready"
        body: dict[str, Any] = {"status": status, "agents": len(self.runtime.routes.agents), "problems": problems}
        # Session stores that are `unavailable` refuse only the requests naming a session: shown, not a reason to be
        # unready (the rest of the traffic is served).
        sessions = self.runtime.sessions.status()
        if sessions:
            body["sessions"] = sessions
        if not problems:
            exchange_of(request.scope).error_class = None
        return JSONResponse(body, status_code=503 if problems else 200)


def _model(model: str, routes: RoutingTable) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": routes.loaded_at, "owned_by": "agent-gateway"}


# The refusals of our own limits, by the kind of limit the guard noted.
_POLICY_CLASSES = {"rate": "policy_rate_limit", "quota": "policy_quota", "concurrency": "policy_concurrency",
                   "cooldown": "policy_cooldown"}  # fmt: skip


async def _render_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    exchange = request.scope.get("state", {}).get("exchange")
    if isinstance(exchange, Exchange):
        exchange.error_class = _POLICY_CLASSES.get(exchange.limited or "", exc.error_class)
    response = Response(exc.body(), status_code=exc.status, media_type="application/json")
    if exc.retry_after is not None:
        wait = exc.retry_after
        response.raw_headers += [(b"retry-after", str(math.ceil(wait)).encode()),
                                 (b"retry-after-ms", str(math.ceil(wait * 1000)).encode())]  # fmt: skip
    return response


async def _render_store_error(request: Request, exc: Exception) -> Response:
    logger.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
    runtime: Runtime = request.app.state.runtime
    if runtime.store.name == "redis":
        runtime.metrics.redis_error("store")
    error = StoreUnavailable("The gateway's key and usage store is unavailable; retry shortly.", retry_after=1.0)
    return await _render_gateway_error(request, error)


async def _render_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"({request.method} {request.url.path})"
    # The router raises only these two; nothing else in the app raises HTTPException.
    if exc.status_code != 405:
        return await _render_gateway_error(request, NotFound(f"Invalid URL {where}."))
    allowed = ", ".join(_allowed_methods(request))
    error = MethodNotAllowed(f"Method not allowed {where}; this path allows {allowed}.")
    response = await _render_gateway_error(request, error)
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


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    routes: RoutingTable | None = None,
    upstreams: Mapping[str, Upstream] | None = None,
    store: Store | None = None,
    limiter: Limiter | None = None,
) -> Starlette:
    """Build a gateway app. Loading the route config happens here, so a bad config fails before serving.

    `routes` replaces the config files, `upstreams` the client per provider name and `store` the one the settings
    name (tests inject them). The store is opened by the lifespan.
    """
    settings = settings or Settings()
    environ = os.environ if environ is None else environ
    table = routes or load_routes(settings.config, environ)
    runtime = Runtime(
        settings,
        environ=environ,
        routes=table,
        upstreams=upstreams or {},
        store=store or make_store(settings),
        limiter=limiter or make_limiter(settings),
    )
    hooks: list[Callable[[Exchange], None]] = [
        runtime.guard.finish,
        runtime.accountant.record,
        runtime.metrics.finished,
    ]
    # Access lines are INFO: a quieter log level turns them off as it would any logger's.
    if settings.access_log and settings.log_level in ("debug", "info"):
        hooks.append(AccessLog(settings.log_format).write)
    proxy = Proxy(
        runtime.current_routes,
        runtime.dispatcher,
        runtime.authenticator,
        runtime.guard,
        runtime.sessions,
        metrics=runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
    )
    endpoints = Endpoints(runtime, proxy)
    sessions = SessionsAPI(runtime.sessions, runtime.authenticator, runtime.current_routes, settings.max_body_bytes)
    chat = ChatAPI(proxy, runtime.sessions, runtime.authenticator, runtime.current_routes, settings.max_body_bytes)
    admin_routes: list[BaseRoute] = []
    if settings.admin_key is not None:
        admin = AdminAPI(
            settings.admin_key.get_secret_value(),
            runtime.store,
            runtime.current_routes,
            runtime.reload,
            runtime.authenticator.forget,
            usage_reset=runtime.guard.reset_quotas,
            max_body_bytes=settings.max_body_bytes,
        )
        admin_routes = [
            *admin.routes(),
            Route("/admin/sessions", admin.guard(sessions.admin_list), methods=["GET"]),
            Route("/admin/sessions/{session_id}", admin.guard(sessions.admin_show), methods=["GET"]),
            Route("/admin/sessions/{session_id}", admin.guard(sessions.admin_delete), methods=["DELETE"]),
        ]
    app = Starlette(
        routes=[
            *admin_routes,
            Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
            Route("/v1/completions", endpoints.completions, methods=["POST"]),
            Route("/v1/embeddings", endpoints.embeddings, methods=["POST"]),
            Route("/v1/responses", endpoints.responses, methods=["POST"]),
            Route("/v1/chat", chat.chat, methods=["POST"]),
            Route("/v1/chat/stream", chat.chat_stream, methods=["POST"]),
            Route("/v1/sessions", sessions.create, methods=["POST"]),
            Route("/v1/sessions", sessions.list, methods=["GET"]),
            Route("/v1/sessions/{session_id}", sessions.show, methods=["GET"]),
            Route("/v1/sessions/{session_id}", sessions.delete, methods=["DELETE"]),
            Route("/v1/models", endpoints.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", endpoints.get_model, methods=["GET"]),
            Route("/healthz", endpoints.healthz, methods=["GET"]),
            Route("/readyz", endpoints.readyz, methods=["GET"]),
            Route("/metrics", runtime.metrics.endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(RequestContextMiddleware, on_complete=hooks)],
        exception_handlers={
            GatewayError: _render_gateway_error,
            HTTPException: _render_http_exception,
            # Redis away, or the state directory failing: 503, never a 500 with a traceback.
            **dict.fromkeys(runtime.store.errors, _render_store_error),
        },
        lifespan=runtime.lifespan,
    )
    # Starlette answers a path with a trailing slash too many (or too few) with a redirect built from the
    # caller's Host header, which anyone can set: an unknown path is a 404 here, as it is at OpenAI.
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    return app
