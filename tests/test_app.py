"""The app in process (httpx.ASGITransport): error shapes, body limits, request ids, health. No streaming here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.middleware import RequestContextMiddleware
from gateway.app import create_app
from gateway.exchange import Exchange
from gateway.jsonbody import MAX_DEPTH
from gateway.settings import Settings
from gateway.upstream.base import UpstreamRequest, UpstreamResponse

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
ADMIN_KEY = "admin-secret-for-app-tests"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class BrokenUpstream:
    """Stands for a bug inside the gateway: the one kind of failure no upstream can cause."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise RuntimeError("a bug")


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run (store open, auth mode resolved), and a client for it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(config=ROOT / "config", state_dir=tmp_path / "state", **changes)


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings(tmp_path, max_body_bytes=2048), environ={})) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"", None, "empty"),
        (b"{not json", None, "could not parse"),
        (b"[1, 2]", None, "must be a JSON object, not an array"),
        (b'{"messages": []}', "model", "provide a model"),
        (b'{"model": 5, "messages": []}', "model", "not a number"),
        (b'{"model": "demo", "messages": "hi"}', "messages", "must be an array"),
        (b'{"model": "demo", "messages": ["hi"]}', "messages[0]", "must be an object"),
        (b'{"model": "demo", "stream": "yes", "messages": []}', "stream", "must be a boolean"),
    ],
)
async def test_bad_requests_are_openai_shaped_400s(
    http: httpx.AsyncClient, body: bytes, param: str | None, words: str
) -> None:
    response = await http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in str(error["message"])


def deep(levels: int) -> bytes:
    """JSON arrays nested `levels` deep."""
    return b"[" * levels + b"]" * levels


@pytest.fixture
async def roomy(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app with room for big bodies (deep JSON), the admin API on and client keys off."""
    async with running(create_app(settings(tmp_path, admin_key=ADMIN_KEY, auth="none"), environ={})) as client:
        yield client


ODD_CHATS = [
    ({"role": {}, "content": "x"}, "messages[0].role"),
    ({"role": "user", "content": "x", "name": ["n"]}, "messages[0].name"),
    ({"role": "tool", "content": "x", "tool_call_id": {}}, "messages[0].tool_call_id"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": ["x"]}]}, "messages[0].tool_calls[0].id"),
    ({"role": "user", "content": [3]}, "messages[0].content[0]"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("message", "param"), ODD_CHATS)
async def test_a_message_of_the_wrong_shape_is_a_400_naming_the_field_with_or_without_a_session(
    roomy: httpx.AsyncClient, message: dict[str, Any], param: str
) -> None:
    created = await roomy.post("/v1/sessions", json={"model": "demo"})
    session_id = created.json()["session_id"]
    for headers in ({}, {"x-session-id": session_id}):
        response = await roomy.post(CHAT, json={"model": "demo", "messages": [message]}, headers=headers)
        assert response.status_code == 400, response.text
        assert error_of(response)["param"] == param
    # The session took nothing from the refused turns, and goes on.
    good = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    assert (await roomy.post(CHAT, json=good, headers={"x-session-id": session_id})).status_code == 200
    shown = (await roomy.get(f"/v1/sessions/{session_id}")).json()
    assert [m["content"] for m in shown["messages"]][:1] == ["hi"]
    assert len(shown["messages"]) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [-(10**8), -1, 0, True, 2.5])
async def test_an_output_limit_below_one_or_not_an_integer_is_a_400(
    roomy: httpx.AsyncClient, field: str, value: Any
) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "x"}], field: value}
    response = await roomy.post(CHAT, json=body)
    assert response.status_code == 400
    assert error_of(response)["param"] == field
    responses = await roomy.post("/v1/responses", json={"model": "demo", "input": "x", "max_output_tokens": value})
    assert responses.status_code == 400
    assert error_of(responses)["param"] == "max_output_tokens"


@pytest.mark.anyio
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 255, 1024, 1025, 3000])
@pytest.mark.parametrize("path", [CHAT, "/v1/embeddings", "/v1/responses", "/v1/completions"])
async def test_json_nested_too_deep_is_a_400_saying_so(roomy: httpx.AsyncClient, path: str, levels: int) -> None:
    body = b'{"model": "demo", "messages": [], "input": "x", "prompt": "x", "metadata": ' + deep(levels - 1) + b"}"
    response = await roomy.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert f"deeper than {MAX_DEPTH} levels" in str(error_of(response)["message"])


@pytest.mark.anyio
async def test_json_nested_as_deep_as_allowed_is_answered(roomy: httpx.AsyncClient) -> None:
    message = {"role": "user", "content": "x"}
    body = b'{"model": "demo", "messages": [' + orjson.dumps(message) + b'], "metadata": ' + deep(MAX_DEPTH - 1) + b"}"
    response = await roomy.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/keys", b'{"name": "x", "metadata": {"x": ' + deep(300) + b"}}"),
        ("/admin/keys", b'{"name": "x", "metadata": {"x": ' + deep(MAX_DEPTH - 1) + b"}}"),
        ("/v1/sessions", b'{"model": "demo", "metadata": {"x": ' + deep(MAX_DEPTH - 1) + b"}}"),
        ("/v1/chat", b'{"model": "demo", "message": ' + deep(MAX_DEPTH) + b"}"),
    ],
)
async def test_deep_json_in_other_bodies_is_refused_saying_so(roomy: httpx.AsyncClient, path: str, body: bytes) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"}
    response = await roomy.post(path, content=body, headers=headers)
    assert response.status_code == (422 if path.startswith("/admin") else 400), response.text
    assert f"deeper than {MAX_DEPTH} levels" in str(error_of(response)["message"])


ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["²", "١٢", "1" * 5000, str(2**64), "-1", "1.5", "0x10", " 1", "1e3", "true"])
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/sessions", "limit"),
        ("/v1/sessions", "offset"),
        ("/admin/sessions", "limit"),
        ("/admin/sessions", "offset"),
        ("/admin/keys", "limit"),
        ("/admin/keys", "offset"),
        ("/admin/usage", "days"),
    ],
)
async def test_a_bad_whole_number_in_the_query_is_a_400_naming_it(
    roomy: httpx.AsyncClient, path: str, name: str, value: str
) -> None:
    response = await roomy.get(path, params={name: value}, headers=ADMIN)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == name
    assert "must be a whole number from" in str(error["message"])


@pytest.mark.anyio
async def test_whole_numbers_at_their_bounds_are_accepted(roomy: httpx.AsyncClient) -> None:
    key = (await roomy.post("/admin/keys", json={"name": "k"}, headers=ADMIN)).json()
    for path, params in [
        ("/admin/keys", {"offset": "1000000000", "limit": "500"}),
        ("/admin/sessions", {"offset": "0", "limit": "100"}),
        ("/v1/sessions", {"offset": "00", "limit": "1"}),
        ("/admin/usage", {"days": "400"}),
        (f"/admin/keys/{key['id']}/usage", {"days": "1"}),
    ]:
        response = await roomy.get(path, params=params, headers=ADMIN)
        assert response.status_code == 200, (path, response.text)


UNSTORABLE = [
    (b"18446744073709551616", "an integer beyond 64 bits"),
    (b"-9223372036854775809", "an integer beyond 64 bits"),
    (b"1" * 400, "an integer beyond 64 bits"),
    (b"1e400", "not a finite number"),
    (b"NaN", "not a finite number"),
    (b"-Infinity", "not a finite number"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "words"), UNSTORABLE)
async def test_metadata_that_no_store_can_keep_is_refused_naming_the_field(
    roomy: httpx.AsyncClient, value: bytes, words: str
) -> None:
    metadata = b'{"team": "a", "cost": {"cap": [1, ' + value + b"]}}"
    headers = {**ADMIN, "content-type": "application/json"}
    created = await roomy.post("/admin/keys", content=b'{"name": "x", "metadata": ' + metadata + b"}", headers=headers)
    assert created.status_code == 422, created.text
    assert error_of(created)["param"] == "metadata"
    assert f"`metadata.cost.cap[1]` is {words}" in str(error_of(created)["message"])
    key = (await roomy.post("/admin/keys", json={"name": "x"}, headers=ADMIN)).json()
    patched = await roomy.patch(f"/admin/keys/{key['id']}", content=b'{"metadata": ' + metadata + b"}", headers=headers)
    assert patched.status_code == 422, patched.text
    assert error_of(patched)["param"] == "metadata"
    session = await roomy.post(
        "/v1/sessions", content=b'{"model": "demo", "metadata": ' + metadata + b"}", headers=headers
    )
    assert session.status_code == 400, session.text
    assert error_of(session)["param"] == "metadata"
    # Nothing half-stored: every key and session listed can still be shown.
    assert (await roomy.get("/admin/keys", headers=ADMIN)).status_code == 200
    assert (await roomy.get("/admin/sessions", headers=ADMIN)).status_code == 200


@pytest.mark.anyio
async def test_metadata_within_64_bits_is_kept_exactly(roomy: httpx.AsyncClient) -> None:
    metadata = {"big": 2**63 - 1, "small": -(2**63), "ratio": 0.25, "nested": [{"ok": True, "none": None}]}
    created = await roomy.post("/admin/keys", json={"name": "x", "metadata": metadata}, headers=ADMIN)
    assert created.status_code == 201, created.text
    shown = await roomy.get(f"/admin/keys/{created.json()['id']}", headers=ADMIN)
    assert shown.json()["metadata"] == metadata
    session = await roomy.post("/v1/sessions", json={"model": "demo", "metadata": metadata})
    assert session.status_code == 201, session.text
    assert session.json()["metadata"] == metadata


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("limits.rpm", 2**63 - 1),
        ("limits.rpm", 1_000_000_001),
        ("limits.rpm_burst", 2**64),
        ("limits.tpm", 10**12 + 1),
        ("limits.tpm_burst", 10**30),
        ("limits.max_concurrent", 1_000_001),
        ("limits.cooldown_after", 2**63),
        ("quotas.tokens_per_day", 10**12 + 1),
        ("quotas.tokens_per_month", 2**70),
    ],
)
async def test_limits_and_quotas_beyond_their_ceiling_are_refused_naming_the_field(
    roomy: httpx.AsyncClient, field: str, value: int
) -> None:
    group, name = field.split(".")
    created = await roomy.post("/admin/keys", json={"name": "x", group: {name: value}}, headers=ADMIN)
    assert created.status_code == 422, created.text
    assert error_of(created)["param"] == field
    key = (await roomy.post("/admin/keys", json={"name": "x"}, headers=ADMIN)).json()
    patched = await roomy.patch(f"/admin/keys/{key['id']}", json={group: {name: value}}, headers=ADMIN)
    assert patched.status_code == 422, patched.text
    assert error_of(patched)["param"] == field


@pytest.mark.anyio
async def test_limits_at_their_ceiling_give_headers_that_add_up(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, admin_key=ADMIN_KEY), environ={})
    async with running(app) as client:
        limits = {"rpm": 1_000_000_000, "tpm": 10**12}
        quotas = {"tokens_per_day": 10**12, "tokens_per_month": 10**12}
        created = await client.post(
            "/admin/keys", json={"name": "x", "limits": limits, "quotas": quotas}, headers=ADMIN
        )
        assert created.status_code == 201, created.text
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        answer = await client.post(CHAT, json=body, headers={"authorization": f"Bearer {created.json()['secret']}"})
    assert answer.status_code == 200, answer.text
    for kind in ("requests", "tokens"):
        limit = int(answer.headers[f"x-ratelimit-limit-{kind}"])
        remaining = int(answer.headers[f"x-ratelimit-remaining-{kind}"])
        assert 0 < limit - remaining < 2000, (kind, limit, remaining)


@pytest.mark.anyio
async def test_the_admin_openapi_document_says_what_the_handlers_accept(roomy: httpx.AsyncClient) -> None:
    document = (await roomy.get("/admin/openapi.json", headers=ADMIN)).json()

    def query(path: str, name: str) -> dict[str, Any]:
        parameters = document["paths"][path]["get"]["parameters"]
        return dict(next(p for p in parameters if p["name"] == name)["schema"])

    assert query("/admin/keys", "offset") == {"type": "integer", "minimum": 0, "maximum": 1_000_000_000, "default": 0}
    assert query("/admin/keys", "limit") == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    assert query("/admin/keys", "include_revoked") == {"type": "boolean", "default": True}
    assert query("/admin/keys", "name") == {"type": "string"}
    assert query("/admin/sessions", "limit") == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert query("/admin/usage", "days") == {"type": "integer", "minimum": 1, "maximum": 400, "default": 30}
    assert query("/admin/keys/{key_id}/usage", "days") == query("/admin/usage", "days")
    # PATCH refuses a null name, and the document does not offer one.
    name = document["components"]["schemas"]["KeyUpdate"]["properties"]["name"]
    assert name == {"type": "string", "minLength": 1, "maxLength": 200, "title": "Name"}
    key = (await roomy.post("/admin/keys", json={"name": "x"}, headers=ADMIN)).json()
    refused = await roomy.patch(f"/admin/keys/{key['id']}", json={"name": None}, headers=ADMIN)
    assert refused.status_code == 422
    assert error_of(refused)["param"] == "name"
    rpm = document["components"]["schemas"]["LimitsBody"]["properties"]["rpm"]["anyOf"][0]
    assert rpm == {"type": "integer", "exclusiveMinimum": 0, "maximum": 1_000_000_000}


@pytest.mark.anyio
async def test_unknown_model_is_404_model_not_found(http: httpx.AsyncClient) -> None:
    response = await http.post(CHAT, json={"model": "gpt-9", "messages": []})
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"


@pytest.mark.anyio
async def test_body_over_the_limit_is_413_by_declared_length(http: httpx.AsyncClient) -> None:
    response = await http.post(CHAT, content=b"{" + b" " * 4096 + b"}")
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


@pytest.mark.anyio
async def test_body_over_the_limit_is_413_when_streamed_without_length(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 512

    response = await http.post(CHAT, content=chunks())
    assert response.status_code == 413


@pytest.mark.anyio
async def test_unknown_path_and_wrong_method(http: httpx.AsyncClient) -> None:
    missing = await http.post("/v1/fine_tuning/jobs", json={})
    assert missing.status_code == 404
    assert error_of(missing)["message"] == "Invalid URL (POST /v1/fine_tuning/jobs)."
    wrong = await http.get(CHAT)
    assert wrong.status_code == 405
    assert error_of(wrong)["code"] == "method_not_allowed"


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), [("POST", CHAT + "/"), ("GET", "/healthz/"), ("GET", "/v1/sessions/")])
async def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_callers_host(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await http.request(method, path, json={}, headers={"host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert error_of(response)["message"] == f"Invalid URL ({method} {path})."


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", "/v1/sessions", "GET, HEAD, POST"),
        ("POST", "/v1/sessions/sess-1", "DELETE, GET, HEAD"),
        ("DELETE", "/v1/models", "GET, HEAD"),
    ],
)
async def test_a_wrong_method_is_a_405_that_says_which_methods_the_path_allows(
    http: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await http.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    error = error_of(response)
    assert error["code"] == "method_not_allowed"
    assert error["message"] == f"Method not allowed ({method} {path}); this path allows {allowed}."


@pytest.mark.anyio
async def test_request_id_is_kept_from_the_client_or_made(http: httpx.AsyncClient) -> None:
    kept = await http.get("/healthz", headers={"x-request-id": "client-id-1"})
    assert kept.headers["x-request-id"] == "client-id-1"
    made = await http.get("/healthz", headers={"x-request-id": "bad id with spaces\t"})
    assert len(made.headers["x-request-id"]) == 32
    other = await http.get("/healthz")
    assert other.headers["x-request-id"] not in (made.headers["x-request-id"], "client-id-1")


@pytest.mark.anyio
async def test_health_and_readiness_with_the_bundled_config(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "agents": 1, "problems": []}


@pytest.mark.anyio
async def test_bundled_demo_agent_answers_with_the_system_prompt_first(http: httpx.AsyncClient) -> None:
    response = await http.post(CHAT, json={"model": "demo", "messages": [{"role": "user", "content": "hello"}]})
    assert response.status_code == 200
    content = response.json()["choices"][0]["message"]["content"]
    assert content == 'You said: "hello". This is the mock provider: it received 2 messages, 1 of them system.'


@pytest.mark.anyio
async def test_a_bug_is_an_openai_shaped_500_naming_the_request_id(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    app = create_app(settings(tmp_path), environ={}, upstreams={"mock": BrokenUpstream()})
    async with running(app) as client:
        response = await client.post(CHAT, json={"model": "demo", "messages": []}, headers={"x-request-id": "r-42"})
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert "r-42" in str(error["message"])
    assert "Traceback" not in response.text
    assert "RuntimeError: a bug" in caplog.text


@pytest.mark.anyio
async def test_client_leaving_mid_body_gets_no_answer_and_no_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    app = create_app(settings(tmp_path), environ={})
    incoming = [
        {"type": "http.request", "body": b'{"model": "demo", ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return incoming.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "", "headers": [],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080),
    }  # fmt: skip
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent == []
    logged = capsys.readouterr().err
    assert f"POST {CHAT} 499" in logged
    assert "Traceback" not in logged


@pytest.mark.anyio
@pytest.mark.parametrize(("level", "logged"), [("info", True), ("warning", False)])
async def test_access_log_follows_the_log_level(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, level: str, logged: bool
) -> None:
    async with running(create_app(settings(tmp_path, log_level=level), environ={})) as client:
        await client.get("/healthz")
    assert ("GET /healthz 200" in capsys.readouterr().err) is logged


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_admin_key_means_the_admin_api_is_off(value: str) -> None:
    assert Settings(admin_key=value).admin_key is None


def test_a_short_admin_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 12 characters"):
        Settings(admin_key="short")


@pytest.mark.anyio
async def test_admin_api_with_an_empty_key_setting_is_not_served(tmp_path: Path) -> None:
    async with running(create_app(settings(tmp_path, admin_key=""), environ={})) as client:
        response = await client.post("/admin/keys", json={"name": "sneaky"})
    assert response.status_code == 404


@pytest.mark.anyio
async def test_a_broken_completion_hook_keeps_the_others_running_and_the_answer_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[int] = []

    def broken(exchange: Exchange) -> None:
        raise RuntimeError("a bug in a hook")

    async def fine(request: Request) -> Response:
        return Response(b"fine")

    inner = Starlette(routes=[Route("/fine", fine)])
    app = RequestContextMiddleware(inner, on_complete=[broken, lambda exchange: counted.append(exchange.status)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        response = await http.get("/fine")
    assert response.status_code == 200
    assert response.text == "fine"
    assert counted == [200]  # the hook after the broken one (the slots' release, the metrics) still ran
    assert "RuntimeError: a bug in a hook" in caplog.text
