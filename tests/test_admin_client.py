"""The admin API client: what each method sends, what it returns, and the errors it raises."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx

from gateway.cli.admin_client import AdminClient, AdminError, GatewayUnreachable

BASE = "http://gateway.test:8080"
ADMIN_KEY = "admin-secret-for-tests"

RECORD = {
    "id": "key_0123456789abcdef",
    "name": "search-team",
    "prefix": "sk-gw-AbCdEf",
    "created_at": "2030-01-01T00:00:00Z",
    "expires_at": None,
    "revoked": False,
    "revoked_at": None,
    "models": [],
    "limits": {"rpm": 60, "rpm_burst": None, "tpm": None, "tpm_burst": None, "max_concurrent": None},
    "quotas": {"tokens_per_day": None, "tokens_per_month": None},
    "metadata": {},
    "rotated_at": None,
    "grace_until": None,
}
SECRET = "sk-gw-AbCdEf" + "x" * 37


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.MockRouter(base_url=BASE, assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def client(router: respx.MockRouter) -> Iterator[AdminClient]:
    with AdminClient(BASE, ADMIN_KEY, transport=httpx.MockTransport(router.handler)) as admin:
        yield admin


def sent_json(route: respx.Route) -> object:
    return json.loads(route.calls.last.request.content)


def test_create_posts_the_fields_with_the_admin_key(router: respx.MockRouter, client: AdminClient) -> None:
    route = router.post("/admin/keys").respond(201, json={**RECORD, "secret": SECRET})

    answer = client.create_key("search-team", models=["gpt-*"], limits={"rpm": 60})

    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {ADMIN_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert sent_json(route) == {"name": "search-team", "models": ["gpt-*"], "limits": {"rpm": 60}}
    assert answer["secret"] == SECRET
    assert answer["id"] == RECORD["id"]


def test_list_sends_filters_as_query_parameters(router: respx.MockRouter, client: AdminClient) -> None:
    page = {"object": "list", "data": [RECORD], "total": 1, "offset": 10, "limit": 5}
    route = router.get("/admin/keys").respond(json=page)

    answer = client.list_keys(name="search", metadata={"team": "search", "env": "prod"}, offset=10, limit=5)

    assert dict(route.calls.last.request.url.params) == {
        "name": "search",
        "metadata.team": "search",
        "metadata.env": "prod",
        "offset": "10",
        "limit": "5",
    }
    assert answer == page


def test_list_without_filters_sends_no_query(router: respx.MockRouter, client: AdminClient) -> None:
    route = router.get("/admin/keys").respond(json={"object": "list", "data": [], "total": 0, "offset": 0, "limit": 20})

    client.list_keys()

    assert route.calls.last.request.url.query == b""


def test_get_update_and_revoke_address_the_key(router: respx.MockRouter, client: AdminClient) -> None:
    get = router.get("/admin/keys/key_0123456789abcdef").respond(json=RECORD)
    patch = router.patch("/admin/keys/key_0123456789abcdef").respond(json={**RECORD, "name": "renamed"})
    delete = router.delete("/admin/keys/key_0123456789abcdef").respond(json={**RECORD, "revoked": True})

    assert client.get_key("key_0123456789abcdef") == RECORD
    assert client.update_key("key_0123456789abcdef", name="renamed", expires_at=None)["name"] == "renamed"
    assert client.revoke_key("key_0123456789abcdef")["revoked"] is True

    assert sent_json(patch) == {"name": "renamed", "expires_at": None}
    assert get.calls.last.request.content == b""
    assert delete.calls.last.request.headers["authorization"] == f"Bearer {ADMIN_KEY}"


def test_a_key_id_cannot_reach_another_endpoint(router: respx.MockRouter, client: AdminClient) -> None:
    route = router.get(path__startswith="/admin/keys/").respond(json=RECORD)

    client.get_key("../keys?x")

    assert route.calls.last.request.url.raw_path == b"/admin/keys/..%2Fkeys%3Fx"


def test_rotate_sends_the_grace_period(router: respx.MockRouter, client: AdminClient) -> None:
    route = router.post("/admin/keys/key_0123456789abcdef/rotate").respond(json={**RECORD, "secret": SECRET})

    answer = client.rotate_key("key_0123456789abcdef", grace_seconds=300)

    assert sent_json(route) == {"grace_seconds": 300}
    assert answer["secret"] == SECRET


def test_rotate_without_grace_leaves_the_default_to_the_gateway(router: respx.MockRouter, client: AdminClient) -> None:
    route = router.post("/admin/keys/key_0123456789abcdef/rotate").respond(json={**RECORD, "secret": SECRET})

    client.rotate_key("key_0123456789abcdef")

    assert sent_json(route) == {}


def test_usage_sends_the_number_of_days(router: respx.MockRouter, client: AdminClient) -> None:
    usage = {"key_id": RECORD["id"], "from": "2030-01-01", "to": "2030-01-07", "totals": {"requests": 3}}
    route = router.get("/admin/keys/key_0123456789abcdef/usage").respond(json=usage)

    assert client.key_usage("key_0123456789abcdef", days=7) == usage
    assert route.calls.last.request.url.params["days"] == "7"


def test_an_openai_shaped_error_becomes_an_admin_error(router: respx.MockRouter, client: AdminClient) -> None:
    error = {"message": "no key with id 'key_nope'", "type": "invalid_request_error", "param": None}
    router.get("/admin/keys/key_nope").respond(404, json={"error": {**error, "code": "key_not_found"}})

    with pytest.raises(AdminError) as raised:
        client.get_key("key_nope")

    assert raised.value.status == 404
    assert raised.value.message == "no key with id 'key_nope'"
    assert raised.value.code == "key_not_found"
    assert str(raised.value) == "no key with id 'key_nope' (HTTP 404, key_not_found)"


def test_a_validation_error_names_the_field(router: respx.MockRouter, client: AdminClient) -> None:
    error = {"message": "must be at least 1", "type": "invalid_request_error", "param": "limits.rpm"}
    router.post("/admin/keys").respond(422, json={"error": {**error, "code": "validation_error"}})

    with pytest.raises(AdminError) as raised:
        client.create_key("x", limits={"rpm": 0})

    assert raised.value.status == 422
    assert raised.value.param == "limits.rpm"
    assert str(raised.value) == "must be at least 1 (HTTP 422, validation_error, param: limits.rpm)"


def test_an_error_that_is_not_openai_shaped_keeps_its_text(router: respx.MockRouter, client: AdminClient) -> None:
    router.get("/admin/keys").respond(502, text="Bad Gateway from the load balancer\n")

    with pytest.raises(AdminError) as raised:
        client.list_keys()

    assert raised.value.status == 502
    assert raised.value.message == "Bad Gateway from the load balancer"
    assert raised.value.code is None


def test_an_error_never_shows_the_admin_key(router: respx.MockRouter, client: AdminClient) -> None:
    router.get("/admin/keys").respond(401, json={"error": {"message": f"wrong admin key {ADMIN_KEY}"}})

    with pytest.raises(AdminError) as raised:
        client.list_keys()

    assert raised.value.status == 401
    assert ADMIN_KEY not in str(raised.value)


def test_a_success_that_is_not_a_json_object_is_an_error(router: respx.MockRouter, client: AdminClient) -> None:
    router.get("/admin/keys").respond(200, html="<html>a web server, not the gateway</html>")

    with pytest.raises(AdminError, match="not a JSON object"):
        client.list_keys()


def test_a_refused_connection_says_the_gateway_cannot_be_reached(router: respx.MockRouter, client: AdminClient) -> None:
    router.get("/admin/keys").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))

    with pytest.raises(GatewayUnreachable) as raised:
        client.list_keys()

    assert str(raised.value) == f"cannot reach the gateway at {BASE}: [Errno 111] Connection refused"


def test_a_timeout_says_how_long_it_waited(router: respx.MockRouter, client: AdminClient) -> None:
    router.get("/admin/keys").mock(side_effect=httpx.ReadTimeout("timed out"))

    with pytest.raises(GatewayUnreachable, match="no answer within 10 s"):
        client.list_keys()


def test_a_base_url_with_a_path_prefix_is_kept(router: respx.MockRouter) -> None:
    route = router.get(url="http://gateway.test:8080/gw/admin/keys").respond(json={"data": []})

    with AdminClient(BASE + "/gw", ADMIN_KEY, transport=httpx.MockTransport(router.handler)) as admin:
        admin.list_keys()

    assert route.called
