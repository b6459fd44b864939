"""Redis sessions through an outage: refused with 503 while Redis is away, never answered from a partial copy."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import StoreUnavailable
from gateway.sessions.base import Session, SessionStore
from gateway.sessions.guarded import GuardedSessionStore
from gateway.sessions.redis import _APPEND, RedisSessionStore
from gateway.sessions.service import _describe
from tests.support.redis import RedisServer, start_redis

pytestmark = pytest.mark.anyio

SYSTEM: dict[str, Any] = {"role": "system", "content": "You are terse."}
UNBOUNDED: dict[str, Any] = {"max_messages": None, "max_tokens": None}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and start again on the same port; it keeps what it
    acknowledged through a kill, as a Redis with an append-only file does."""
    started = start_redis(tmp_path, durable=True)
    yield started
    started.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingRedisSessionStore(RedisSessionStore):
    """A Redis store that counts the calls made to it: how a test sees that Redis was not even tried."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls = 0
        for name in ("create", "get", "append", "list", "delete"):
            setattr(self, name, self._counted(getattr(self, name)))

    def _counted(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await method(*args, **kwargs)

        return counted


@asynccontextmanager
async def opened(*stores: SessionStore) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for store in stores:
            await store.open()
            stack.push_async_callback(store.close)
        yield


def turn(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"question {n}"}, {"role": "assistant", "content": f"answer {n}"}]


def new_session(key_id: str | None = "key_a") -> Session:
    return Session.new(model="support-bot", key_id=key_id, ttl_seconds=300)


async def history(store: SessionStore, session_id: str) -> list[dict[str, Any]] | None:
    found = await store.get(session_id)
    return None if found is None else found[1]


def guarded(server: RedisServer, clock: FakeClock, *, primary: RedisSessionStore | None = None) -> GuardedSessionStore:
    return GuardedSessionStore(primary or RedisSessionStore(server.url), label="test", retry_every=1.0, clock=clock)


@pytest.mark.redis
async def test_sessions_are_served_from_redis_and_shared_with_another_replica(server: RedisServer) -> None:
    store = guarded(server, FakeClock())
    replica = RedisSessionStore(server.url)
    async with opened(store, replica):
        session = new_session()
        assert await store.create(session)
        assert await store.append(session.id, turn(1), **UNBOUNDED)

        assert await history(replica, session.id) == turn(1)
        assert await replica.append(session.id, turn(2), **UNBOUNDED)
        # The next turn on this process continues from what the other replica stored.
        assert await history(store, session.id) == [*turn(1), *turn(2)]
        assert [s.id for s in (await replica.list(key_id="key_a"))[0]] == [session.id]

        assert await store.delete(session.id)
        assert await replica.get(session.id) is None
        assert store.serving == "redis"


@pytest.mark.redis
async def test_while_redis_is_down_every_operation_is_refused_with_a_retry_after(server: RedisServer) -> None:
    clock = FakeClock()
    store = guarded(server, clock)
    async with opened(store):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, turn(1), **UNBOUNDED)
        server.stop()

        operations = [
            lambda: store.get(session.id),
            lambda: store.append(session.id, turn(2), **UNBOUNDED),
            lambda: store.create(new_session()),
            lambda: store.list(key_id="key_a"),
            lambda: store.delete(session.id),
        ]
        for operation in operations:
            clock.advance(1.0)  # each one due to try Redis, and finding it down
            with pytest.raises(StoreUnavailable) as refused:
                await operation()
            assert refused.value.status == 503
            assert refused.value.retry_after == 1.0
            assert store.serving == "unavailable"

        server.start()
        clock.advance(1.0)
        # Nothing was kept aside to be written back: Redis holds exactly what it acknowledged.
        assert await history(store, session.id) == turn(1)
        assert store.serving == "redis"


@pytest.mark.redis
async def test_while_redis_is_down_it_is_tried_once_per_retry_interval(server: RedisServer) -> None:
    clock = FakeClock()
    primary = CountingRedisSessionStore(server.url)
    store = guarded(server, clock, primary=primary)
    async with opened(store):
        session = new_session()
        await store.create(session)
        server.stop()
        primary.calls = 0

        with pytest.raises(StoreUnavailable):
            await store.get(session.id)  # tries Redis, finds it down
        assert primary.calls == 1

        clock.advance(0.4)
        for _ in range(3):
            with pytest.raises(StoreUnavailable) as refused:
                await store.append(session.id, turn(2), **UNBOUNDED)
            # The wait is what is left of the interval, so the client comes back when Redis is tried again.
            assert refused.value.retry_after == pytest.approx(0.6)
        assert primary.calls == 1

        server.start()
        clock.advance(0.6)  # due again: the next operation tries, and Redis is back
        assert await history(store, session.id) == []
        assert primary.calls == 2
        assert store.serving == "redis"


@pytest.mark.redis
async def test_a_frozen_redis_costs_one_timeout_then_refusals_without_waiting(server: RedisServer) -> None:
    clock = FakeClock()
    primary = CountingRedisSessionStore(server.url)
    store = guarded(server, clock, primary=primary)
    async with opened(store):
        session = new_session()
        await store.create(session)
        server.freeze()
        try:
            primary.calls = 0
            with pytest.raises(StoreUnavailable):
                await store.get(session.id)  # waits out the command timeout once
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await store.get(session.id)  # refused without asking Redis
            assert primary.calls == 1

            clock.advance(1.0)
            # Due again: one call tries Redis, and the calls arriving while it waits are refused at once.
            probe = asyncio.ensure_future(store.get(session.id))
            await asyncio.sleep(0.05)
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await store.get(session.id)
            with pytest.raises(StoreUnavailable):
                await probe
            assert primary.calls == 2
        finally:
            server.thaw()
        clock.advance(1.0)
        assert await history(store, session.id) == []


@pytest.mark.redis
async def test_after_a_restart_no_pooled_connection_fails_a_call(server: RedisServer) -> None:
    store = guarded(server, FakeClock())
    async with opened(store):
        session = new_session()
        await store.create(session)
        # Ten connections in the pool, each used once and kept.
        await asyncio.gather(*(store.get(session.id) for _ in range(10)))
        server.stop()
        server.start()

        # Each pooled connection is dead now; the first call that meets one tries again on a fresh connection.
        for n in range(10):
            assert await store.append(session.id, turn(n), **UNBOUNDED)
        assert store.serving == "redis"
        assert await history(store, session.id) == [message for n in range(10) for message in turn(n)]


@pytest.mark.redis
async def test_an_append_or_create_repeated_after_a_lost_reply_applies_once(server: RedisServer) -> None:
    store = RedisSessionStore(server.url)
    async with opened(store):
        session = new_session()
        assert await store.create(session)
        # A create sent again (its first reply lost with the connection) is recognised as the same create...
        assert await store.create(session)
        # ...but another session under the same id is refused.
        assert not await store.create(dataclasses.replace(new_session(key_id="key_b"), id=session.id))
        # The same append script call twice, as the retry sends it: one turn marker, one copy of the messages.
        keys = [f"gw:sess:s:{session.id}", f"gw:sess:m:{session.id}", "gw:sess:t:turn-1"]
        args = [0, 0, *(orjson.dumps(message) for message in turn(1))]
        for _ in range(2):
            await store._script(_APPEND)(keys=keys, args=args)
        assert await history(store, session.id) == turn(1)


@pytest.mark.redis
async def test_each_outage_is_logged_once_and_never_with_the_password(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    label = _describe(f"redis://:hunter2@127.0.0.1:{server.port}/0")
    assert "hunter2" not in label
    clock = FakeClock()
    store = GuardedSessionStore(RedisSessionStore(server.url), label=label, retry_every=1.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="gateway.sessions")
    async with opened(store):
        session = new_session()
        await store.create(session)
        for _ in range(2):
            server.stop()
            for n in range(5):
                clock.advance(1.0)
                with pytest.raises(StoreUnavailable):
                    await store.append(session.id, turn(n), **UNBOUNDED)
            server.start()
            clock.advance(1.0)
            assert await store.get(session.id) is not None

    records = [record for record in caplog.records if record.name == "gateway.sessions"]
    down = [record for record in records if "is unreachable" in record.getMessage()]
    back = [record for record in records if "is back after" in record.getMessage()]
    assert len(down) == 2
    assert len(back) == 2
    assert len(records) == 4
    for record in records:
        assert record.levelno == logging.WARNING
        assert f"redis://127.0.0.1:{server.port}/0" in record.getMessage()
        assert "hunter2" not in record.getMessage()
