"""Virtual keys end to end: a real gateway process with an admin key, the admin API over HTTP, the OpenAI SDK."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.admin.schema import KeyList, KeyOut, KeyUsage, KeyWithSecret, RouteList
from tests.conftest import E2E_CONFIG, UPSTREAM_KEY
from tests.support.processes import Process, free_port, start_gateway
from tests.support.redis import RedisServer
from tests.test_proxy import behave

ADMIN_KEY = "admin-secret-for-tests-0123456789"
MESSAGES = [{"role": "user", "content": "hello"}]


class Admin:
    """The admin API, as an operator's script would call it."""

    def __init__(self, gateway: Process, key: str = ADMIN_KEY) -> None:
        self.http = httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=10)

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/admin/keys", json={"name": "test", **body})
        assert response.status_code == 201, response.text
        return dict(KeyWithSecret.model_validate(response.json()).model_dump(mode="json"))

    def usage(self, key_id: str, *, requests: int, timeout: float = 5.0) -> dict[str, Any]:
        """The key's usage once it shows `requests` requests (accounting is written in the background)."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.http.get(f"/admin/keys/{key_id}/usage").json()
            if body["totals"]["requests"] >= requests or time.monotonic() > deadline:
                KeyUsage.model_validate(body)
                return dict(body)
            time.sleep(0.1)


def sdk(keyed: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0, timeout=20)


def keyed_gateway(upstream: Process, directory: Path, **env: str) -> Process:
    config = directory / "agents.yaml"
    config.write_text(E2E_CONFIG.format(upstream=upstream.url, dead_port=free_port()))
    environment = {"GATEWAY_ADMIN_KEY": ADMIN_KEY, "TEST_UPSTREAM_KEY": UPSTREAM_KEY, "GATEWAY_LOG_FORMAT": "json"}
    return start_gateway(config, directory, {**environment, "GATEWAY_STATE_DIR": str(directory / "state"), **env})


@pytest.fixture(scope="module")
def keyed(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = keyed_gateway(upstream, tmp_path_factory.mktemp("keyed"))
    yield process
    process.stop()


@pytest.fixture
def plain_gateway(gateway: Process) -> Process:
    """The session's gateway without an admin key (auth none on loopback)."""
    return gateway


@pytest.fixture
def admin(keyed: Process) -> Iterator[Admin]:
    operator = Admin(keyed)
    yield operator
    operator.http.close()


def test_create_use_and_see_usage(keyed: Process, admin: Admin) -> None:
    key = admin.create(name="team-a", metadata={"team": "a"})
    assert key["secret"].startswith("sk-gw-")
    assert len(key["secret"]) >= len("sk-gw-") + 43
    with sdk(keyed, key["secret"]) as client:
        reply = client.chat.completions.create(model="test-chat", messages=MESSAGES)
    assert reply.choices[0].message.content
    usage = admin.usage(key["id"], requests=1)
    assert usage["totals"]["requests"] == 1
    assert usage["by_agent"]["test-chat"]["prompt_tokens"] == 5  # what the test upstream reports
    assert usage["by_agent"]["test-chat"]["completion_tokens"] == 7
    assert usage["by_day"][-1]["total_tokens"] == 12
    # Priced as the agent says (USD per million tokens): 5 input at 0.15, 7 output at 0.60.
    assert usage["totals"]["cost_usd"] == pytest.approx((5 * 0.15 + 7 * 0.60) / 1e6)
    access = [json.loads(line) for line in keyed.log().splitlines() if f'"key_id":"{key["id"]}"' in line]
    assert [line["cost_usd"] for line in access] == [pytest.approx(4.95e-6)]
    metrics = httpx.get(keyed.url + "/metrics").text
    assert re.search(r'^gateway_cost_usd_total\{agent="test-chat"\} [0-9.e-]+$', metrics, re.MULTILINE)
    shown = admin.http.get(f"/admin/keys/{key['id']}").json()
    assert "secret" not in shown
    assert KeyOut.model_validate(shown).prefix == key["secret"][:12]


def test_missing_unknown_and_malformed_keys_are_401(keyed: Process) -> None:
    for key in ("sk-gw-not-a-real-key", "x"):
        with sdk(keyed, key) as client, pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="test-chat", messages=MESSAGES)
        assert caught.value.code == "invalid_api_key"
    response = httpx.post(keyed.url + "/v1/chat/completions", json={"model": "test-chat", "messages": MESSAGES})
    assert response.status_code == 401
    assert "didn't provide an API key" in response.json()["error"]["message"]


def test_azure_style_api_key_header_is_accepted(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    response = httpx.get(keyed.url + "/v1/models", headers={"api-key": key["secret"]})
    assert response.status_code == 200


def test_model_allow_list_is_enforced_and_models_are_filtered(keyed: Process, admin: Admin) -> None:
    key = admin.create(models=["test-c*"])
    with sdk(keyed, key["secret"]) as client:
        assert [m.id for m in client.models.list()] == ["test-chat"]
        client.chat.completions.create(model="test-chat", messages=MESSAGES)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="demo", messages=MESSAGES)
        assert "demo" in caught.value.message
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("demo")


def test_revoked_key_is_refused(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    with sdk(keyed, key["secret"]) as client:
        client.models.list()
        revoked = admin.http.delete(f"/admin/keys/{key['id']}").json()
        assert revoked["revoked"] is True
        with pytest.raises(openai.AuthenticationError, match="revoked"):
            client.models.list()


def test_expired_key_is_refused(keyed: Process, admin: Admin) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    key = admin.create(expires_at=soon)
    with sdk(keyed, key["secret"]) as client:
        client.models.list()
        time.sleep(1.2)
        with pytest.raises(openai.AuthenticationError, match="expired"):
            client.models.list()


def test_rotation_keeps_the_old_secret_for_the_grace_period(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    rotated = admin.http.post(f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 1}).json()
    assert rotated["secret"] != key["secret"]
    with sdk(keyed, key["secret"]) as old, sdk(keyed, rotated["secret"]) as new:
        old.models.list()
        new.models.list()
        time.sleep(1.2)
        new.models.list()
        with pytest.raises(openai.AuthenticationError):
            old.models.list()
    again = admin.http.post(f"/admin/keys/{key['id']}/rotate").json()  # no body: no grace
    with sdk(keyed, rotated["secret"]) as previous, pytest.raises(openai.AuthenticationError):
        previous.models.list()
    with sdk(keyed, again["secret"]) as current:
        current.models.list()


def test_stream_usage_is_exact_and_the_client_sees_no_usage_it_did_not_ask_for(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    with sdk(keyed, key["secret"]) as client:
        chunks = list(client.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True))
        assert all(chunk.usage is None and chunk.choices for chunk in chunks)
        raw = [c.model_dump() for c in chunks]
        assert all("usage" not in c or c["usage"] is None for c in raw)
        asked = list(
            client.chat.completions.create(
                model="test-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
    assert asked[-1].choices == []
    assert asked[-1].usage is not None
    assert asked[-1].usage.total_tokens == 24
    usage = admin.usage(key["id"], requests=2)
    assert usage["totals"]["prompt_tokens"] == 22  # exactly the upstream's 11 + 11
    assert usage["totals"]["completion_tokens"] == 26


def test_stream_bytes_carry_no_usage_fields_when_not_asked(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    body = {"model": "test-chat", "stream": True, "messages": MESSAGES}
    headers = {"authorization": f"Bearer {key['secret']}"}
    with httpx.stream("POST", keyed.url + "/v1/chat/completions", json=body, headers=headers) as response:
        text = response.read().decode()
    assert "usage" not in text
    assert text.endswith("data: [DONE]\n\n")


def test_disconnected_stream_is_counted_as_cancelled_with_estimated_tokens(
    keyed: Process, upstream: Process, admin: Admin
) -> None:
    key = admin.create()
    headers = {**behave(chunks=3, hold_after=2), "authorization": f"Bearer {key['secret']}"}
    body = {"model": "test-chat", "stream": True, "messages": MESSAGES}
    with httpx.stream("POST", keyed.url + "/v1/chat/completions", json=body, headers=headers) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}")
    usage = admin.usage(key["id"], requests=1)
    assert usage["totals"]["cancelled"] == 1
    assert usage["totals"]["errors"] == 0
    assert usage["totals"]["completion_tokens"] >= 1  # "part0 part1 " relayed: estimated from the text
    assert usage["totals"]["prompt_tokens"] >= 1


def test_errors_are_counted(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    with sdk(keyed, key["secret"]) as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="test-chat", messages=MESSAGES, extra_headers=behave(status=500))
    assert admin.usage(key["id"], requests=1)["totals"]["errors"] == 1


def test_usage_reset_and_all_usage(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    with sdk(keyed, key["secret"]) as client:
        client.embeddings.create(model="test-chat", input="hi", encoding_format="float")
    admin.usage(key["id"], requests=1)
    everyone = admin.http.get("/admin/usage").json()
    assert everyone["by_key"][key["id"]]["requests"] == 1
    assert admin.http.post(f"/admin/keys/{key['id']}/usage/reset").json() == {"key_id": key["id"], "reset": True}
    assert admin.http.get(f"/admin/keys/{key['id']}/usage").json()["totals"]["requests"] == 0


def test_quotas_show_what_remains(keyed: Process, admin: Admin) -> None:
    key = admin.create(quotas={"tokens_per_day": 100})
    with sdk(keyed, key["secret"]) as client:
        client.chat.completions.create(model="test-chat", messages=MESSAGES)
    quota = admin.usage(key["id"], requests=1)["quotas"]["tokens_per_day"]
    assert quota["used"] == 12
    assert quota["remaining"] == 88
    assert quota["resets_at"].endswith("T00:00:00Z")


def test_admin_api_refuses_a_wrong_or_missing_admin_key(keyed: Process) -> None:
    for headers in ({"authorization": "Bearer wrong"}, {}, {"authorization": f"Bearer {ADMIN_KEY}x"}):
        response = httpx.get(keyed.url + "/admin/keys", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_admin_key"


def test_admin_bodies_are_validated_naming_the_field(admin: Admin) -> None:
    response = admin.http.post("/admin/keys", json={"name": "x", "limits": {"rpm": -1}})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "limits.rpm"
    response = admin.http.post("/admin/keys", json={"nam": "x"})
    assert response.status_code == 422
    assert "name" in response.json()["error"]["message"]
    response = admin.http.post("/admin/keys", content=b"{oops")
    assert response.status_code == 422
    past = admin.http.post("/admin/keys", json={"name": "x", "expires_at": "2020-01-01T00:00:00Z"})
    assert past.json()["error"]["param"] == "expires_at"
    missing = admin.http.get("/admin/keys/key_nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "key_not_found"


def test_update_merges_limits_and_list_filters(admin: Admin) -> None:
    key = admin.create(name="filter-me", limits={"rpm": 10, "tpm": 1000}, metadata={"team": "blue"})
    updated = admin.http.patch(f"/admin/keys/{key['id']}", json={"limits": {"rpm": 20}, "models": ["demo"]}).json()
    assert updated["limits"]["rpm"] == 20
    assert updated["limits"]["tpm"] == 1000
    assert updated["models"] == ["demo"]
    listed = KeyList.model_validate(admin.http.get("/admin/keys", params={"metadata.team": "blue"}).json())
    assert [k.id for k in listed.data] == [key["id"]]
    page = admin.http.get("/admin/keys", params={"limit": 1, "offset": 0}).json()
    assert len(page["data"]) == 1
    assert page["total"] >= 2


def test_routes_mask_keys_and_openapi_describes_every_route(keyed: Process, admin: Admin) -> None:
    routes = RouteList.model_validate(admin.http.get("/admin/routes").json())
    chat = next(r for r in routes.data if r.name == "test-chat")
    assert chat.api_key == "set"
    assert UPSTREAM_KEY not in admin.http.get("/admin/routes").text
    document = admin.http.get("/admin/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/admin/keys", "/admin/keys/{key_id}", "/admin/keys/{key_id}/rotate", "/admin/keys/{key_id}/usage",
        "/admin/keys/{key_id}/usage/reset", "/admin/usage", "/admin/routes", "/admin/reload", "/admin/sessions",
        "/admin/sessions/{session_id}",
    }  # fmt: skip


def test_reload_refuses_a_bad_config_and_keeps_serving(keyed: Process, admin: Admin, tmp_path: Path) -> None:
    config = Path(keyed.proc.args[keyed.proc.args.index("--config") + 1])  # type: ignore[union-attr]
    good = config.read_text()
    try:
        config.write_text(good + "  - name: broken\n    llm: {provider: nope}\n")
        refused = admin.http.post("/admin/reload")
        assert refused.status_code == 400
        assert "llm.provider" in refused.json()["error"]["message"]
        config.write_text(good + "  - name: added-later\n    llm: {provider: mock}\n")
        reloaded = admin.http.post("/admin/reload").json()
        assert "added-later" in reloaded["agents"]
    finally:
        config.write_text(good)
        admin.http.post("/admin/reload")


def test_secrets_never_reach_the_log(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    with sdk(keyed, key["secret"]) as client:
        client.chat.completions.create(model="test-chat", messages=MESSAGES)
    rotated = admin.http.post(f"/admin/keys/{key['id']}/rotate").json()
    admin.usage(key["id"], requests=1)
    log = keyed.log()
    assert key["id"] in log  # the access log names the key by id
    for secret in (key["secret"], rotated["secret"], ADMIN_KEY, UPSTREAM_KEY):
        assert secret not in log


def test_wrong_key_flood_does_not_lock_out_valid_keys(keyed: Process, admin: Admin) -> None:
    key = admin.create()
    url = keyed.url + "/v1/models"
    with httpx.Client(timeout=10) as http:
        for attempt in range(300):
            wrong = http.get(url, headers={"authorization": f"Bearer sk-gw-guess-{attempt}"})
            assert wrong.status_code == 401
            if attempt % 30 == 0:
                assert http.get(url, headers={"authorization": f"Bearer {key['secret']}"}).status_code == 200


def test_embedded_store_keeps_keys_and_usage_across_a_restart(upstream: Process, tmp_path: Path) -> None:
    first = keyed_gateway(upstream, tmp_path)
    operator = Admin(first)
    key = operator.create(name="survivor")
    with sdk(first, key["secret"]) as client:
        client.chat.completions.create(model="test-chat", messages=MESSAGES)
    operator.http.close()
    first.proc.send_signal(signal.SIGTERM)  # graceful: accounting is flushed before exit
    first.proc.wait(15)
    first.stop()
    second = keyed_gateway(upstream, tmp_path)
    try:
        operator = Admin(second)
        with sdk(second, key["secret"]) as client:
            client.models.list()
        usage = operator.http.get(f"/admin/keys/{key['id']}/usage").json()
        assert usage["totals"]["requests"] == 1
        assert usage["totals"]["total_tokens"] == 12
        operator.http.close()
    finally:
        second.stop()


def test_revoke_on_one_replica_is_refused_by_another_within_a_second(
    upstream: Process, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.start()
    redis_server.flush()
    env = {"GATEWAY_STORE": "redis", "REDIS_URL": redis_server.url}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = keyed_gateway(upstream, tmp_path / "one", **env)
    two = keyed_gateway(upstream, tmp_path / "two", **env)
    try:
        operator = Admin(one)
        key = operator.create()
        with sdk(two, key["secret"]) as client:
            client.models.list()  # cached as valid on replica two
            operator.http.delete(f"/admin/keys/{key['id']}")
            revoked_at = time.monotonic()
            refused_after = None
            while time.monotonic() - revoked_at < 3:
                try:
                    client.models.list()
                except openai.AuthenticationError:
                    refused_after = time.monotonic() - revoked_at
                    break
                time.sleep(0.05)
        assert refused_after is not None
        assert refused_after <= 1.0
        operator.http.close()
    finally:
        one.stop()
        two.stop()


def test_admin_api_is_off_without_an_admin_key(plain_gateway: Process) -> None:
    response = httpx.get(plain_gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"


def test_a_revoked_key_cannot_be_rotated(admin: Admin) -> None:
    key = admin.create()
    admin.http.delete(f"/admin/keys/{key['id']}")
    refused = admin.http.post(f"/admin/keys/{key['id']}/rotate")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "key_revoked"
    assert "sk-gw-" not in refused.text


def test_list_filters_are_exact(admin: Admin) -> None:
    tagged = admin.create(name="exact-filter", metadata={"owner": "ana", "paid": True})
    admin.create(name="exact-filter-untagged")
    ids = [k["id"] for k in admin.http.get("/admin/keys", params={"metadata.owner": "None"}).json()["data"]]
    assert ids == []
    ids = [k["id"] for k in admin.http.get("/admin/keys", params={"metadata.paid": "true"}).json()["data"]]
    assert ids == [tagged["id"]]
    assert admin.http.get("/admin/keys", params={"include_revoked": "maybe"}).status_code == 400


def test_a_frozen_redis_holds_a_request_for_one_short_timeout_not_five_seconds_each(
    upstream: Process, redis_server: RedisServer, tmp_path: Path
) -> None:
    # A frozen Redis (a stalled host, a full disk) accepts connections and never answers: only timeouts notice.
    redis_server.start()
    redis_server.flush()
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_STORE="redis", REDIS_URL=redis_server.url)
    operator = Admin(gateway)
    try:
        key = operator.create()
        # A client that gives up long before the five seconds a patient Redis client would wait.
        with sdk(gateway, key["secret"]) as patient:
            client = patient.with_options(timeout=2.5, max_retries=0)
            client.chat.completions.create(model="test-chat", messages=MESSAGES)
            redis_server.freeze()
            try:
                time.sleep(0.6)  # past the key cache's trust period: every lookup has to ask Redis
                for _ in range(4):
                    reply = client.chat.completions.create(model="test-chat", messages=MESSAGES)
                    assert reply.choices[0].message.content
                stranger = client.with_options(api_key="sk-gw-never-seen-before")
                with pytest.raises(openai.InternalServerError) as caught:
                    stranger.models.list()
                assert caught.value.code == "store_unavailable"
                assert 0 < float(caught.value.response.headers["retry-after-ms"]) <= 1000
            finally:
                redis_server.thaw()
    finally:
        operator.http.close()
        gateway.stop()
    assert "Traceback" not in gateway.log()


def test_redis_outage_keeps_known_keys_working_and_answers_503_not_500(
    upstream: Process, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.start()
    redis_server.flush()
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_STORE="redis", REDIS_URL=redis_server.url)
    operator = Admin(gateway)
    try:
        key = operator.create()
        with sdk(gateway, key["secret"]) as client:
            client.chat.completions.create(model="test-chat", messages=MESSAGES)
            operator.usage(key["id"], requests=1)  # written before the outage
            redis_server.stop()
            time.sleep(0.6)  # past the key cache's trust period: the gateway has to ask Redis and cannot
            reply = client.chat.completions.create(model="test-chat", messages=MESSAGES)
            assert reply.choices[0].message.content
        with sdk(gateway, "sk-gw-never-seen-before") as stranger, pytest.raises(openai.InternalServerError) as caught:
            stranger.models.list()
        assert caught.value.status_code == 503
        assert caught.value.code == "store_unavailable"
        listing = operator.http.get("/admin/keys")
        assert listing.status_code == 503
        assert httpx.get(gateway.url + "/readyz").status_code == 503
        redis_server.start()  # an empty Redis (the test server keeps nothing), so only what was pending lands
        deadline = time.monotonic() + 10
        written = {}
        while not written and time.monotonic() < deadline:
            written = operator.http.get("/admin/usage").json()["by_key"]
            time.sleep(0.1)
        # The request served during the outage was kept and written once Redis was back.
        assert written[key["id"]]["requests"] == 1
        assert "Traceback" not in gateway.log()
    finally:
        operator.http.close()
        gateway.stop()
        redis_server.start()


def test_a_gateway_started_while_redis_is_down_serves_unready_until_it_is_back(
    upstream: Process, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_STORE="redis", REDIS_URL=redis.url)
    try:
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 503
        assert any("redis" in problem for problem in ready.json()["problems"])
        refused = httpx.get(gateway.url + "/v1/models", headers={"authorization": "Bearer sk-gw-anything"})
        assert refused.status_code == 503
        redis.start()
        # (the test config has an agent without its key, so readiness lists that one problem either way)
        assert not any("redis" in p for p in httpx.get(gateway.url + "/readyz").json()["problems"])
        with Admin(gateway).http as http:
            assert http.post("/admin/keys", json={"name": "after"}).status_code == 201
    finally:
        gateway.stop()
        redis.stop()
