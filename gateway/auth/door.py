"""The door: who is calling is decided here, once, before any handler runs.

Every path needs a credential unless it is on the short public list (the probes and `/metrics`): `/admin/...`
the admin key, compared in constant time; the console under `/ui` a signed session cookie (auth/console.py; its
sign-in page and static files aside), its absence a redirect to the sign-in page; every other path a virtual key
(none in auth mode `none`). A route
added later is closed until someone puts it on the list, and a handler cannot forget to check: it reads the
caller with `key_of`. A refusal is answered here, by the same renderers the app uses for every error.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.authenticator import Authenticator, presented_secret
from gateway.auth.console import COOKIE, ConsoleAuth, ConsoleSession
from gateway.config.agents import Agent
from gateway.config.routing import RoutingTable
from gateway.errors import AdminAuthFailed, GatewayError, ModelNotFound, PermissionDenied
from gateway.exchange import exchange_of
from gateway.keys import KeyRecord

# Paths anyone may call: what probes and scrapers reach without credentials.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ADMIN_PREFIX = "/admin/"
CONSOLE = "/ui"
# Console paths open without a session: the sign-in page and what it is drawn with.
CONSOLE_OPEN = ("/ui/login", "/ui/static/")
_KEY = "key"
_OPERATOR = "console_session"

Renderer = Callable[[Request, Exception], Awaitable[Response]]


class AuthDoor:
    """Pure ASGI middleware: puts the caller's key (or None, for the admin and in auth mode `none`) in the
    request's state, or answers 401 itself."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        admin_key: str | None,
        render: Renderer,
        render_store_error: Renderer,
        store_errors: tuple[type[Exception], ...],
        console: ConsoleAuth | None = None,
        public: frozenset[str] = PUBLIC_PATHS,
    ) -> None:
        self._console = console
        self.app = app
        self._auth = authenticator
        self._admin_key = admin_key.encode() if admin_key is not None else None
        self._render = render
        self._render_store_error = render_store_error
        self._store_errors = store_errors
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self._public:
            await self.app(scope, receive, send)
            return
        if path == CONSOLE or path.startswith(CONSOLE + "/"):
            await self._console_door(scope, receive, send)
            return
        key: KeyRecord | None = None
        try:
            if path.startswith(ADMIN_PREFIX):
                self._check_admin(scope)
            else:
                key = await self._check_key(scope)
        except GatewayError as exc:
            response = await self._render(Request(scope, receive), exc)
        except self._store_errors as exc:
            response = await self._render_store_error(Request(scope, receive), exc)
        else:
            scope["state"][_KEY] = key
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _console_door(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The console: an operator with a live session, or the sign-in page (where the page asked for is
        remembered); without an admin key there is no console, and the router answers 404."""
        path: str = scope["path"]
        if self._console is not None and not path.startswith(CONSOLE_OPEN):
            session = self._console.session(Request(scope).cookies.get(COOKIE))
            if session is None:
                target = "/ui/login" if scope["method"] != "GET" else "/ui/login?" + urlencode({"next": path})
                await RedirectResponse(target, status_code=303)(scope, receive, send)
                return
            scope["state"][_OPERATOR] = session
        scope["state"][_KEY] = None
        await self.app(scope, receive, send)

    def _check_admin(self, scope: Scope) -> None:
        if self._admin_key is None:
            return  # no admin API: the router answers 404
        presented = presented_secret(scope["headers"]) or ""
        if not presented or not hmac.compare_digest(presented.encode(), self._admin_key):
            raise AdminAuthFailed("Missing or wrong admin key: send `Authorization: Bearer $GATEWAY_ADMIN_KEY`.")

    async def _check_key(self, scope: Scope) -> KeyRecord | None:
        key = await self._auth.authenticate(scope["headers"])
        if key is not None:
            exchange_of(scope).key_id = key.id
        return key


def operator_of(request: Request) -> ConsoleSession:
    """The console session the door found (on every console page but the sign-in page)."""
    session: ConsoleSession = request.scope["state"][_OPERATOR]
    return session


def key_of(request: Request) -> KeyRecord | None:
    """The caller's virtual key, as the door found it (None: auth mode `none`, or the admin)."""
    key: KeyRecord | None = request.scope["state"][_KEY]
    return key


def key_id_of(request: Request) -> str | None:
    key = key_of(request)
    return key.id if key is not None else None


def agent_for(routes: RoutingTable, key: KeyRecord | None, model: str, *, hide: bool = False) -> Agent:
    """The agent `model` names, if the key may use it: 404 for an unknown model; 403 for one the key's allow-list
    covers neither by the name asked for nor by its agent (404 with `hide`, where a model's existence is not
    to be told)."""
    agent = routes.match(model)
    if agent is None:
        raise ModelNotFound(model)
    if key is not None and not (key.allows(model) or key.allows(agent.name)):
        if hide:
            raise ModelNotFound(model)
        raise PermissionDenied(f"This API key may not use the model `{model}`.", param="model")
    return agent
