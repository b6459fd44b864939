"""The door (auth/door.py): every route the app has, read from its router, refuses a caller without credentials
unless it is on the public list; a route added later is closed without doing anything for it. A real uvicorn."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.auth.door import CONSOLE, CONSOLE_OPEN, PUBLIC_PATHS
from gateway.settings import Settings
from tests.support.serve import served

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "admin-secret-for-door-tests"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def keyed_app(tmp_path: Path) -> Starlette:
    settings = Settings(config=ROOT / "config", state_dir=tmp_path / "state", admin_key=ADMIN_KEY, auth="keys")
    return create_app(settings, environ={})


def concrete(path: str) -> str:
    """A route's path with each parameter filled in (`/v1/sessions/{session_id}` → `/v1/sessions/x`)."""
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.mark.anyio
async def test_every_route_but_the_public_ones_refuses_an_anonymous_caller(tmp_path: Path) -> None:
    app = keyed_app(tmp_path)
    routes = [route for route in app.routes if isinstance(route, Route)]
    assert len(routes) >= 25  # the whole API, admin included: not a router that lost its routes
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        for route in routes:
            for method in sorted((route.methods or set()) - {"HEAD"}):
                path = concrete(route.path)
                # A body that would be served if it got that far: the door must refuse before any handler reads it.
                answer = await client.request(method, path, json={"model": "demo", "messages": []})
                if route.path in PUBLIC_PATHS:
                    assert answer.status_code != 401, (method, path)
                    continue
                if path.startswith(CONSOLE_OPEN):  # the sign-in page: its form, or its refusal of a bad post
                    assert answer.status_code in (200, 403), (method, path, answer.status_code)
                    continue
                if path == CONSOLE or path.startswith(CONSOLE + "/"):  # the console: to the sign-in page
                    assert answer.status_code == 303, (method, path, answer.status_code)
                    assert answer.headers["location"].startswith("/ui/login"), (method, path)
                    continue
                assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
                error = answer.json()["error"]
                if path.startswith("/v1/messages"):  # Anthropic's door: its error shape
                    assert error["type"] == "authentication_error", (method, path, error)
                    continue
                expected = "invalid_admin_key" if path.startswith("/admin/") else "invalid_api_key"
                assert error["code"] == expected, (method, path, error)


@pytest.mark.anyio
async def test_a_route_added_later_is_closed_without_a_word_from_its_handler(tmp_path: Path) -> None:
    app = keyed_app(tmp_path)

    async def careless(request: Request) -> Response:  # checks nobody
        return PlainTextResponse("served")

    app.router.routes.append(Route("/v1/new-thing", careless, methods=["GET"]))
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/v1/new-thing")).status_code == 401
        wrong = await client.get("/v1/new-thing", headers={"authorization": "Bearer sk-gw-made-up"})
        assert wrong.status_code == 401
        admin = await client.get("/v1/new-thing", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert admin.status_code == 401  # the admin key is not a virtual key
        created = await client.post(
            "/admin/keys", json={"name": "door"}, headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
        secret = created.json()["secret"]
        allowed = await client.get("/v1/new-thing", headers={"authorization": f"Bearer {secret}"})
        assert allowed.status_code == 200
        assert allowed.text == "served"


@pytest.mark.anyio
async def test_the_probes_and_metrics_need_no_key(tmp_path: Path) -> None:
    app = keyed_app(tmp_path)
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        for path in sorted(PUBLIC_PATHS):
            assert (await client.get(path)).status_code in (200, 503), path  # 503: /readyz, if not ready
        assert {"/healthz", "/readyz", "/metrics"} == PUBLIC_PATHS
