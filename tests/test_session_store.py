"""The session store contract, run against memory and Redis alike, plus what only Redis promises."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.keys import utcnow
from gateway.sessions.base import Session, SessionStore
from gateway.sessions.history import bound
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis import RedisSessionStore
from tests.support.redis import start_redis

pytestmark = pytest.mark.anyio

SYSTEM: dict[str, Any] = {"role": "system", "content": "You are terse."}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def new_store(request: pytest.FixtureRequest) -> Callable[[], SessionStore]:
    """Makes unopened stores; Redis ones share a prefix of their own, so tests never see each other's sessions."""
    if request.param == "memory":
        return MemorySessionStore
    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    return lambda: RedisSessionStore(url, prefix=prefix)


@pytest.fixture
async def store(new_store: Callable[[], SessionStore]) -> AsyncIterator[SessionStore]:
    opened = new_store()
    await opened.open()
    yield opened
    await opened.close()


def turn(n: int, *, words: int = 1) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": " ".join([f"question-{n}"] * words)},
        {"role": "assistant", "content": " ".join([f"answer-{n}"] * words)},
    ]


def new_session(key_id: str | None = "key_a", ttl_seconds: int = 60, **fields: Any) -> Session:
    return Session.new(model=fields.pop("model", "support-bot"), key_id=key_id, ttl_seconds=ttl_seconds, **fields)


async def open_connections(store: SessionStore, session_id: str) -> None:
    """Let a Redis store open its connections beforehand, so that concurrent appends race from their first step
    (opening connections one by one would let the first caller run ahead alone)."""
    await asyncio.gather(*(store.get(session_id) for _ in range(20)))


async def test_created_session_is_read_back_with_no_messages(store: SessionStore) -> None:
    session = new_session(user_id="u-1", metadata={"team": "search", "tags": ["a"]})
    await store.create(session)

    found = await store.get(session.id)

    assert found is not None
    got, messages = found
    assert messages == []
    assert got.public() == session.public() | {"expires_at": got.public()["expires_at"]}
    assert got.key_id == "key_a"
    assert got.ttl_seconds == 60
    assert got.expires_at >= session.expires_at


async def test_an_id_is_created_once_and_a_second_create_changes_nothing(store: SessionStore) -> None:
    first = new_session()
    assert await store.create(first)
    await store.append(first.id, turn(1), max_messages=None, max_tokens=None)
    taken = dataclasses.replace(new_session(key_id="key_b"), id=first.id)

    assert not await store.create(taken)

    found = await store.get(first.id)
    assert found is not None
    assert found[0].key_id == "key_a"
    assert found[1] == turn(1)


async def test_a_read_for_another_owner_finds_nothing_and_does_not_refresh_the_ttl(store: SessionStore) -> None:
    session = new_session(ttl_seconds=2)
    await store.create(session)
    anonymous = new_session(key_id=None)
    await store.create(anonymous)
    before = (await store.list(key_id="key_a"))[0][0].expires_at
    await asyncio.sleep(0.05)

    assert await store.get(session.id, owner="key_b") is None
    assert await store.get(session.id, owner=None) is None
    assert await store.get(anonymous.id, owner="key_a") is None

    assert (await store.list(key_id="key_a"))[0][0].expires_at == before
    assert await store.get(session.id, owner="key_a") is not None
    assert await store.get(anonymous.id, owner=None) is not None


async def test_unknown_session_is_gone_for_every_method(store: SessionStore) -> None:
    assert await store.get("sess_000000000000000000000000") is None
    assert not await store.append("sess_000000000000000000000000", turn(1), max_messages=None, max_tokens=None)
    assert not await store.delete("sess_000000000000000000000000")
    assert await store.list(key_id="key_a") == ([], 0)


async def test_appended_messages_come_back_in_order_as_sent(store: SessionStore) -> None:
    session = new_session()
    await store.create(session)
    tool_turn: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny. ☀"},
    ]  # fmt: skip

    assert await store.append(session.id, [SYSTEM, *turn(1)], max_messages=None, max_tokens=None)
    assert await store.append(session.id, tool_turn, max_messages=None, max_tokens=None)
    assert await store.append(session.id, [], max_messages=None, max_tokens=None)

    found = await store.get(session.id)
    assert found is not None
    assert found[1] == [SYSTEM, *turn(1), *tool_turn]


async def test_stored_history_cannot_be_changed_through_what_was_passed_or_returned(store: SessionStore) -> None:
    session = new_session()
    await store.create(session)
    sent = turn(1)
    await store.append(session.id, sent, max_messages=None, max_tokens=None)

    sent[0]["content"] = "changed after the call"
    found = await store.get(session.id)
    assert found is not None
    found[1][1]["content"] = "changed by a reader"
    found[1].append({"role": "user", "content": "added by a reader"})

    again = await store.get(session.id)
    assert again is not None
    assert again[1] == turn(1)


async def test_deleted_session_and_its_messages_are_gone(store: SessionStore) -> None:
    kept, deleted = new_session(), new_session()
    for session in (kept, deleted):
        await store.create(session)
        await store.append(session.id, turn(1), max_messages=None, max_tokens=None)

    assert await store.delete(deleted.id)

    assert await store.get(deleted.id) is None
    assert not await store.append(deleted.id, turn(2), max_messages=None, max_tokens=None)
    assert not await store.delete(deleted.id)
    sessions, total = await store.list(key_id="key_a")
    assert [s.id for s in sessions] == [kept.id]
    assert total == 1
    found = await store.get(kept.id)
    assert found is not None
    assert found[1] == turn(1)


async def test_every_use_refreshes_the_ttl_and_an_expired_session_is_gone(store: SessionStore) -> None:
    used, idle = new_session(ttl_seconds=1), new_session(ttl_seconds=1)
    await store.create(used)
    await store.create(idle)
    # Each step comes 0.6 s after the previous one: past the 1 s TTL counted from creation, within it counted from
    # the last use. Listing is not a use.
    await asyncio.sleep(0.6)
    found = await store.get(used.id)
    assert found is not None
    assert found[0].expires_at >= used.expires_at + timedelta(seconds=0.5)
    assert (await store.list(key_id="key_a"))[1] == 2

    await asyncio.sleep(0.6)
    assert not await store.append(idle.id, turn(1), max_messages=None, max_tokens=None)
    assert await store.get(idle.id) is None
    assert not await store.delete(idle.id)
    assert await store.append(used.id, turn(1), max_messages=None, max_tokens=None)

    await asyncio.sleep(0.6)
    found = await store.get(used.id)
    assert found is not None
    assert found[1] == turn(1)
    listed, total = await store.list(key_id="key_a")
    assert [s.id for s in listed] == [used.id]
    assert total == 1
    assert listed[0].expires_at >= found[0].expires_at - timedelta(milliseconds=1)


async def test_listing_shows_one_owner_newest_first_filtered_and_paged(store: SessionStore) -> None:
    base = utcnow()
    specs = [
        ("key_a", "u-1", "support-bot"),
        ("key_b", "u-1", "support-bot"),
        ("key_a", "u-2", "support-bot"),
        (None, "u-1", "support-bot"),
        ("key_a", "u-1", "coder"),
        ("key_a", None, "support-bot"),
    ]
    sessions = []
    # A microsecond apart: the order must survive however the store keeps timestamps.
    for i, (key_id, user_id, model) in enumerate(specs):
        session = new_session(key_id, user_id=user_id, model=model, now=base + timedelta(microseconds=i))
        sessions.append(session)
    for session in reversed(sessions):
        await store.create(session)

    async def ids(**query: Any) -> tuple[list[int], int]:
        listed, total = await store.list(**query)
        return [sessions.index(next(s for s in sessions if s.id == found.id)) for found in listed], total

    assert await ids(key_id="key_a") == ([5, 4, 2, 0], 4)
    assert await ids(key_id="key_a", user_id="u-1") == ([4, 0], 2)
    assert await ids(key_id="key_a", model="support-bot") == ([5, 2, 0], 3)
    assert await ids(key_id="key_a", user_id="u-1", model="coder") == ([4], 1)
    assert await ids(key_id="key_a", offset=1, limit=2) == ([4, 2], 4)
    assert await ids(key_id="key_a", offset=4, limit=2) == ([], 4)
    assert await ids(key_id="key_b") == ([1], 1)
    assert await ids(key_id="key_c") == ([], 0)
    # Auth mode none: the anonymous sessions only, never a key's.
    assert await ids(key_id=None) == ([3], 1)
    # The admin API: everyone's.
    assert await ids(key_id=None, all_keys=True) == ([5, 4, 3, 2, 1, 0], 6)
    assert await ids(key_id=None, all_keys=True, user_id="u-1", limit=2) == ([4, 3], 4)

    listed, _ = await store.list(key_id="key_b")
    assert listed[0].public() == sessions[1].public()
    assert listed[0].key_id == "key_b"


async def test_append_bounds_the_history_by_messages(store: SessionStore) -> None:
    session = new_session()
    await store.create(session)
    everything: list[dict[str, Any]] = [SYSTEM]
    await store.append(session.id, [SYSTEM], max_messages=5, max_tokens=None)
    for n in range(4):
        await store.append(session.id, turn(n), max_messages=5, max_tokens=None)
        everything += turn(n)

    found = await store.get(session.id)

    assert found is not None
    assert found[1] == [SYSTEM, *turn(2), *turn(3)]
    assert found[1] == bound(everything, max_messages=5, max_tokens=None)


async def test_append_bounds_the_history_by_estimated_tokens(store: SessionStore) -> None:
    session = new_session()
    await store.create(session)
    everything: list[dict[str, Any]] = []
    # A short turn is estimated at 13 tokens, the long turn 4 at 108.
    for n in range(6):
        messages = turn(n, words=20 if n == 4 else 1)
        await store.append(session.id, messages, max_messages=None, max_tokens=130)
        everything += messages
        if n == 3:
            under_budget = await store.get(session.id)
            assert under_budget is not None
            assert under_budget[1] == everything

    found = await store.get(session.id)

    assert found is not None
    assert found[1] == bound(everything, max_messages=None, max_tokens=130)
    # The long turn 4 fills the budget: beside it only the newest short turn fits.
    assert found[1] == turn(4, words=20) + turn(5)


async def test_concurrent_appends_lose_nothing(store: SessionStore) -> None:
    session = new_session()
    await store.create(session)

    results = await asyncio.gather(
        *(store.append(session.id, turn(n), max_messages=None, max_tokens=None) for n in range(20))
    )

    assert all(results)
    found = await store.get(session.id)
    assert found is not None
    stored = found[1]
    assert len(stored) == 40
    pairs = [stored[i : i + 2] for i in range(0, 40, 2)]
    # Each append's messages stay together; every append is there once.
    assert sorted(pairs, key=lambda pair: pair[0]["content"]) == sorted(
        (turn(n) for n in range(20)), key=lambda pair: pair[0]["content"]
    )


async def test_concurrent_bounded_appends_end_as_bounding_them_all_in_order(store: SessionStore) -> None:
    session = new_session()
    await store.create(session)
    await store.append(session.id, [SYSTEM], max_messages=None, max_tokens=None)
    await open_connections(store, session.id)

    await asyncio.gather(*(store.append(session.id, turn(n), max_messages=11, max_tokens=None) for n in range(20)))

    found = await store.get(session.id)
    assert found is not None
    stored = found[1]
    assert stored[0] == SYSTEM
    kept = [stored[i : i + 2] for i in range(1, len(stored), 2)]
    assert len(kept) == 5
    assert all(pair in [turn(n) for n in range(20)] for pair in kept)
    # Whatever order the appends were applied in, the kept turns are its newest five: bounding every message in
    # that order (the dropped turns before the kept ones) gives exactly what is stored.
    dropped = [message for n in range(20) if turn(n) not in kept for message in turn(n)]
    assert bound([SYSTEM, *dropped, *stored[1:]], max_messages=11, max_tokens=None) == stored


async def test_appends_racing_a_history_rewrite_lose_nothing(store: SessionStore) -> None:
    session = new_session()
    await store.create(session)
    # Over the token bound on its own: the first bounded appends rewrite the history to drop it, while appends
    # without bounds go on landing between their snapshots and their rewrites. The 40 short turns (14 tokens each)
    # fit the bound together, so no rewrite may drop one of them.
    huge = turn(0, words=150)
    await store.append(session.id, huge, max_messages=None, max_tokens=None)
    await open_connections(store, session.id)

    async def converse(task: int) -> None:
        max_tokens = 600 if task % 2 else None
        for step in range(4):
            assert await store.append(session.id, turn(100 * task + step), max_messages=None, max_tokens=max_tokens)

    await asyncio.gather(*(converse(task) for task in range(1, 11)))

    found = await store.get(session.id)
    assert found is not None
    stored = found[1]
    pairs = [stored[i : i + 2] for i in range(0, len(stored), 2)]
    assert huge not in pairs
    assert len(stored) == 80
    for task in range(1, 11):
        # Every turn of every task, each task's in the order it sent them.
        assert [pair for pair in pairs if pair in [turn(100 * task + step) for step in range(4)]] == [
            turn(100 * task + step) for step in range(4)
        ]


@pytest.mark.redis
async def test_redis_sessions_are_shared_and_survive_a_gateway_restart(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    one, two = RedisSessionStore(redis_url, prefix=prefix), RedisSessionStore(redis_url, prefix=prefix)
    await one.open()
    await two.open()
    try:
        session = new_session()
        await one.create(session)
        await one.append(session.id, turn(1), max_messages=None, max_tokens=None)
        # Two replicas appending to one conversation at once.
        await asyncio.gather(
            *(s.append(session.id, turn(n), max_messages=None, max_tokens=None) for n, s in enumerate([one, two] * 5))
        )
        found = await two.get(session.id)
        assert found is not None
        assert len(found[1]) == 22
    finally:
        await one.close()
        await two.close()

    restarted = RedisSessionStore(redis_url, prefix=prefix)
    other = RedisSessionStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    await restarted.open()
    await other.open()
    try:
        again = await restarted.get(session.id)
        assert again is not None
        assert again[1] == found[1]
        assert again[0].public() | {"expires_at": None} == session.public() | {"expires_at": None}
        assert [s.id for s in (await restarted.list(key_id="key_a"))[0]] == [session.id]
        assert await other.get(session.id) is None
        assert await other.list(key_id=None, all_keys=True) == ([], 0)
    finally:
        await restarted.close()
        await other.close()


@pytest.mark.redis
async def test_redis_listing_drops_index_entries_of_expired_sessions(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisSessionStore(redis_url, prefix=prefix)
    await store.open()
    try:
        alive, expired = new_session(), new_session()
        await store.create(alive)
        await store.create(expired)
        # What Redis does when the TTL runs out: the record goes, the index entries stay.
        with redis.Redis.from_url(redis_url) as raw:
            raw.delete(f"{prefix}s:{expired.id}")

            listed, total = await store.list(key_id="key_a")
            everyone, everyone_total = await store.list(key_id=None, all_keys=True)

            assert ([s.id for s in listed], total) == ([alive.id], 1)
            assert ([s.id for s in everyone], everyone_total) == ([alive.id], 1)
            assert raw.zscore(f"{prefix}owner:key_a", expired.id) is None
            assert raw.zscore(f"{prefix}all", expired.id) is None
            assert raw.zscore(f"{prefix}owner:key_a", alive.id) is not None
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_outage_fails_fast_with_a_store_error(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    store = RedisSessionStore(server.url)
    await store.open()
    try:
        session = new_session()
        await store.create(session)
        assert await store.ping()

        server.stop()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.create(new_session()),
            lambda: store.get(session.id),
            lambda: store.append(session.id, turn(1), max_messages=None, max_tokens=None),
            lambda: store.append(session.id, turn(1), max_messages=4, max_tokens=None),
            lambda: store.list(key_id="key_a"),
            lambda: store.delete(session.id),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(store.errors):
                await call()
            assert time.monotonic() - started < 1.0
        started = time.monotonic()
        assert not await store.ping()
        assert time.monotonic() - started < 1.0

        server.start()
        # Back without reopening; the server kept nothing (no persistence).
        assert await store.ping()
        assert await store.get(session.id) is None
        await store.create(session)
        assert await store.append(session.id, turn(1), max_messages=None, max_tokens=None)
    finally:
        await store.close()
        server.stop()


def test_session_record_round_trips_and_shows_utc_times() -> None:
    session = new_session(None, ttl_seconds=90, user_id="u-1", metadata={"n": 1})

    assert re.fullmatch(r"sess_[0-9a-f]{24}", session.id)
    assert new_session().id != session.id
    assert Session.from_json(session.to_json()) == session
    public = session.public()
    assert set(public) == {"session_id", "model", "user_id", "metadata", "created_at", "expires_at"}
    assert public["created_at"].endswith("Z")
    assert session.expires_at - session.created_at == timedelta(seconds=90)
    later = session.created_at + timedelta(seconds=30)
    assert session.touched(later).expires_at == later + timedelta(seconds=90)
    with pytest.raises(ValueError, match="ttl_seconds"):
        new_session(ttl_seconds=0)
