"""The sessions service in-process: where an agent's sessions live, which TTL applies, who may continue one."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.agents import AgentSpec, compile_agent
from gateway.config.routing import RoutingTable
from gateway.errors import BadRequest, SessionNotFound
from gateway.sessions.guarded import GuardedSessionStore
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.service import Sessions, requested_id
from gateway.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def agent(name: str, **session: Any) -> Any:
    spec = AgentSpec.model_validate(
        {"name": name, "llm": {"provider": "mock"}, "session": {"enabled": True, **session}}
    )
    return compile_agent(spec, {})


def service(*agents: Any, storage: Any = "memory", ttl: int = 3600) -> Sessions:
    table = RoutingTable(tuple(agents))
    return Sessions(lambda: table, default_storage=storage, redis_url="redis://127.0.0.1:1/0", ttl_seconds=ttl)


def test_session_settings_come_from_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_STORAGE", "redis")
    monkeypatch.setenv("SESSION_TTL", "120")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.session_storage == "redis"
    assert settings.session_ttl == 120
    monkeypatch.setenv("SESSION_TTL", "0")
    with pytest.raises(ValueError, match="SESSION_TTL"):
        Settings(_env_file=None)  # type: ignore[call-arg]


async def test_the_agent_ttl_wins_over_the_default_and_a_create_may_ask_for_its_own() -> None:
    own, default = agent("own", ttl_seconds=60), agent("default")
    sessions = service(own, default, ttl=900)
    assert sessions.ttl_for(own) == 60
    assert sessions.ttl_for(default) == 900
    session, storage = await sessions.create(default, "key_a", ttl_seconds=5)
    assert session.ttl_seconds == 5
    assert storage == "memory"


async def test_storage_is_chosen_per_agent_and_stores_are_shared_by_place() -> None:
    in_memory, in_redis, other_redis = agent("m"), agent("r", storage="redis"), agent("o", redis_url="redis://h:1/2")
    sessions = service(in_memory, in_redis, other_redis, storage="memory")
    assert isinstance(await sessions.store_for(in_memory), MemorySessionStore)
    assert await sessions.store_for(in_memory) is await sessions.store_for(agent("m2"))
    redis_store = await sessions.store_for(in_redis)
    assert isinstance(redis_store, GuardedSessionStore)
    # A redis_url alone does not move an agent off the default storage (memory here).
    assert isinstance(await sessions.store_for(other_redis), MemorySessionStore)
    assert isinstance(await service(other_redis, storage="redis").store_for(other_redis), GuardedSessionStore)
    await sessions.close()


async def test_only_the_owner_continues_a_session_and_only_with_its_agent() -> None:
    chat, other = agent("chat"), agent("other")
    sessions = service(chat, other)
    session, _ = await sessions.create(chat, "key_a")
    turn = await sessions.open(chat, "key_a", session.id)
    assert turn.history == []
    for key in ("key_b", None):
        with pytest.raises(SessionNotFound):
            await sessions.open(chat, key, session.id)
        with pytest.raises(SessionNotFound):
            await sessions.find(session.id, key)
    with pytest.raises(BadRequest, match="conversation with model `chat`"):
        await sessions.open(other, "key_a", session.id)
    found, _, _ = await sessions.find(session.id, None, any_owner=True)
    assert found.id == session.id


async def test_a_stored_turn_is_the_client_messages_and_the_reply_together() -> None:
    chat = agent("chat", max_history=3)
    sessions = service(chat)
    session, _ = await sessions.create(chat, None)
    for text in ("one", "two"):
        turn = await sessions.open(chat, None, session.id)
        turn.new_messages = [{"role": "user", "content": text}]
        await turn.store_reply({"role": "assistant", "content": f"re {text}"})
        await turn.store_reply({"role": "assistant", "content": "a second call stores nothing"})
    _, messages, _ = await sessions.find(session.id, None)
    assert messages == [{"role": "user", "content": "two"}, {"role": "assistant", "content": "re two"}]
    turn = await sessions.open(chat, None, session.id)
    turn.new_messages = [{"role": "user", "content": "unanswered"}]
    await turn.store_reply(None)
    _, after, _ = await sessions.find(session.id, None)
    assert after == messages


async def test_unknown_ids_are_404_unless_the_agent_auto_creates() -> None:
    plain, auto = agent("plain"), agent("auto", auto_create=True)
    sessions = service(plain, auto)
    with pytest.raises(SessionNotFound):
        await sessions.open(plain, "key_a", "chosen-by-client")
    turn = await sessions.open(auto, "key_a", "chosen-by-client")
    assert turn.session.id == "chosen-by-client"
    assert turn.session.key_id == "key_a"
    with pytest.raises(SessionNotFound):  # now it exists, and it is key_a's
        await sessions.open(auto, "key_b", "chosen-by-client")


async def test_an_agent_without_sessions_refuses_them() -> None:
    spec = AgentSpec.model_validate({"name": "stateless", "llm": {"provider": "mock"}})
    stateless = compile_agent(spec, {})
    with pytest.raises(BadRequest, match="does not keep sessions"):
        await service(stateless).create(stateless, None)


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ([], {}, None),
        ([(b"x-session-id", b"sess_1")], {}, "sess_1"),
        ([], {"session_id": "sess_2"}, "sess_2"),
        ([(b"x-session-id", b"same")], {"session_id": "same"}, "same"),
    ],
)
def test_a_request_names_its_session_by_header_or_body(
    headers: list[tuple[bytes, bytes]], body: dict[str, Any], expected: str | None
) -> None:
    assert requested_id(headers, body) == expected


@pytest.mark.parametrize(
    ("headers", "body", "problem"),
    [
        ([(b"x-session-id", b"a")], {"session_id": "b"}, "different sessions"),
        ([], {"session_id": 7}, "must be a string"),
        ([], {"session_id": ""}, "1 to 128"),
        ([], {"session_id": "x" * 129}, "1 to 128"),
        ([(b"x-session-id", b"has space")], {}, "1 to 128"),
    ],
)
def test_a_bad_session_name_is_a_400(headers: list[tuple[bytes, bytes]], body: dict[str, Any], problem: str) -> None:
    with pytest.raises(BadRequest, match=problem) as refused:
        requested_id(headers, body)
    assert refused.value.param == "session_id"
