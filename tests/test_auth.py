"""Auth modes, presented keys, and what a key record allows (pure)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.auth.authenticator import AuthRefused, presented_secret, resolve_mode
from gateway.auth.door import agent_for
from gateway.config.agents import AgentSpec, compile_agent
from gateway.config.routing import RoutingTable
from gateway.errors import ModelNotFound, PermissionDenied
from gateway.keys import KeyRecord, display_prefix, hash_secret, new_key_id, new_secret, utcnow


def record(secret: str, **changes: object) -> KeyRecord:
    base = KeyRecord(
        id=new_key_id(), name="k", prefix=display_prefix(secret), secret_hash=hash_secret(secret), created_at=utcnow()
    )
    return base.replace(**changes)


@pytest.mark.parametrize(
    ("setting", "admin", "keys", "host", "mode"),
    [
        ("auto", False, 0, "127.0.0.1", "none"),
        ("auto", False, 0, "::1", "none"),
        ("auto", False, 0, "localhost", "none"),
        ("auto", True, 0, "0.0.0.0", "keys"),
        ("auto", False, 3, "0.0.0.0", "keys"),
        ("none", False, 0, "0.0.0.0", "none"),
        ("keys", False, 0, "127.0.0.1", "keys"),
    ],
)
def test_auth_mode(setting: str, admin: bool, keys: int, host: str, mode: str) -> None:
    assert resolve_mode(setting, admin_key_set=admin, key_count=keys, host=host) == mode


def test_implicit_none_off_loopback_is_refused_with_the_way_out() -> None:
    with pytest.raises(AuthRefused, match="GATEWAY_AUTH=none"):
        resolve_mode("auto", admin_key_set=False, key_count=0, host="0.0.0.0")


def test_presented_secret_reads_bearer_x_api_key_or_api_key() -> None:
    assert presented_secret([(b"authorization", b"Bearer sk-gw-a")]) == "sk-gw-a"
    assert presented_secret([(b"authorization", b"bearer  sk-gw-b ")]) == "sk-gw-b"
    assert presented_secret([(b"api-key", b"sk-gw-c")]) == "sk-gw-c"
    assert presented_secret([(b"x-api-key", b"sk-gw-d")]) == "sk-gw-d"  # the Anthropic SDK's header
    assert presented_secret([(b"authorization", b"Basic abc")]) is None
    assert presented_secret([]) is None


def test_secrets_are_long_random_and_stored_only_as_a_hash() -> None:
    one, two = new_secret(), new_secret()
    assert one != two
    assert one.startswith("sk-gw-")
    assert len(one) - len("sk-gw-") >= 43  # 32 bytes, url-safe base64
    key = record(one)
    assert one not in repr(key)
    assert one not in str(key.to_json())
    assert "secret_hash" not in key.public()


def test_usable_follows_revocation_expiry_and_grace() -> None:
    secret, old = new_secret(), new_secret()
    now = utcnow()
    key = record(secret, grace_hash=hash_secret(old), grace_until=now + timedelta(seconds=5))
    assert key.usable(hash_secret(secret), now)
    assert key.usable(hash_secret(old), now)
    assert not key.usable(hash_secret(old), now + timedelta(seconds=6))
    assert not key.usable(hash_secret(new_secret()), now)
    assert not key.replace(revoked=True).usable(hash_secret(secret), now)
    assert not key.replace(expires_at=now).usable(hash_secret(secret), now)


def test_allow_list_takes_names_and_globs() -> None:
    key = record(new_secret(), models=("gpt-4o*", "support"))
    assert key.allows("gpt-4o-mini")
    assert key.allows("support")
    assert not key.allows("claude")
    assert record(new_secret()).allows("anything")
    support = compile_agent(AgentSpec.model_validate({"name": "support", "aliases": ["support-alias"],
                                                      "llm": {"provider": "mock"}}), {})  # fmt: skip
    claude = compile_agent(AgentSpec.model_validate({"name": "claude", "llm": {"provider": "mock"}}), {})
    routes = RoutingTable((support, claude))
    assert agent_for(routes, key, "support-alias") is support  # the agent's own name is allowed
    with pytest.raises(PermissionDenied, match="claude"):
        agent_for(routes, key, "claude")
    with pytest.raises(ModelNotFound, match="claude"):
        agent_for(routes, key, "claude", hide=True)  # where a model's existence is not to be told
    with pytest.raises(ModelNotFound, match="nope"):
        agent_for(routes, None, "nope")
    assert agent_for(routes, None, "claude") is claude  # auth none: nothing to check


def test_records_round_trip_through_json() -> None:
    key = record(new_secret(), models=("a",), metadata={"team": "x"}, expires_at=utcnow() + timedelta(days=1))
    assert KeyRecord.from_json(key.to_json()) == key
