"""`create_app(settings)`: the routes, the middleware and the error renderers, wired to one `Runtime`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from gateway.admin.operations import AdminOperations
from gateway.api.admin import AdminAPI
from gateway.api.anthropic import AnthropicEndpoints
from gateway.api.chat import ChatAPI
from gateway.api.errors import render_gateway_error, render_http_exception, render_store_error
from gateway.api.health import Health
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.openai import OpenAIEndpoints
from gateway.api.sessions import SessionsAPI
from gateway.auth.console import ConsoleAuth
from gateway.auth.door import AuthDoor
from gateway.config.routing import RoutingTable, load_routes
from gateway.console.pages import Console
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.limits.base import Limiter
from gateway.observability.logs import AccessLog
from gateway.proxy.pipeline import Proxy
from gateway.runtime import Runtime, make_limiter, make_store
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.upstream.base import Upstream


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
        runtime.guard,
        runtime.sessions,
        metrics=runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        default_max_tokens=settings.default_max_tokens,
    )
    endpoints = OpenAIEndpoints(runtime, proxy)
    anthropic = AnthropicEndpoints(proxy, runtime.current_routes, settings.max_body_bytes)
    health = Health(runtime)
    sessions = SessionsAPI(runtime.sessions, runtime.current_routes, settings.max_body_bytes)
    chat = ChatAPI(proxy, runtime.sessions, runtime.current_routes, settings.max_body_bytes)
    admin_routes: list[BaseRoute] = []
    console_auth: ConsoleAuth | None = None
    if settings.admin_key is not None:
        operations = AdminOperations(
            runtime.store,
            runtime.current_routes,
            runtime.reload,
            runtime.authenticator.forget,
            usage_reset=runtime.guard.reset_quotas,
            circuit=runtime.dispatcher.breakers.state,
        )
        admin = AdminAPI(operations, max_body_bytes=settings.max_body_bytes)
        console_auth = ConsoleAuth(settings.admin_key.get_secret_value())
        console = Console(operations, runtime.sessions, console_auth, runtime.metrics, sleep=asyncio.sleep)
        admin_routes = [
            *admin.routes(),
            Route("/admin/sessions", sessions.admin_list, methods=["GET"]),
            Route("/admin/sessions/{session_id}", sessions.admin_show, methods=["GET"]),
            Route("/admin/sessions/{session_id}", sessions.admin_delete, methods=["DELETE"]),
            *console.routes(),
        ]
    app = Starlette(
        routes=[
            *admin_routes,
            Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
            Route("/v1/completions", endpoints.completions, methods=["POST"]),
            Route("/v1/embeddings", endpoints.embeddings, methods=["POST"]),
            Route("/v1/responses", endpoints.responses, methods=["POST"]),
            Route("/v1/messages", anthropic.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", anthropic.count_tokens, methods=["POST"]),
            Route("/v1/chat", chat.chat, methods=["POST"]),
            Route("/v1/chat/stream", chat.chat_stream, methods=["POST"]),
            Route("/v1/sessions", sessions.create, methods=["POST"]),
            Route("/v1/sessions", sessions.list, methods=["GET"]),
            Route("/v1/sessions/{session_id}", sessions.show, methods=["GET"]),
            Route("/v1/sessions/{session_id}", sessions.delete, methods=["DELETE"]),
            Route("/v1/models", endpoints.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", endpoints.get_model, methods=["GET"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", runtime.metrics.endpoint, methods=["GET"]),
        ],
        middleware=[
            Middleware(RequestContextMiddleware, on_complete=hooks),
            Middleware(
                AuthDoor,
                authenticator=runtime.authenticator,
                admin_key=settings.admin_key.get_secret_value() if settings.admin_key is not None else None,
                render=render_gateway_error,
                render_store_error=render_store_error,
                store_errors=runtime.store.errors,
                console=console_auth,
            ),
        ],
        exception_handlers={
            GatewayError: render_gateway_error,
            HTTPException: render_http_exception,
            # Redis away, or the state directory failing: 503, never a 500 with a traceback.
            **dict.fromkeys(runtime.store.errors, render_store_error),
        },
        lifespan=runtime.lifespan,
    )
    # Starlette answers a path with a trailing slash too many (or too few) with a redirect built from the
    # caller's Host header, which anyone can set: an unknown path is a 404 here, as it is at OpenAI.
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    return app
