"""Redis sessions through an outage: served from the memory mirror meanwhile, written back once Redis answers."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.sessions.fallback import FallbackSessionStore
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis import RedisSessionStore
from gateway.sessions.service import _describe
from gateway.sessions.store import Session, SessionStore
from tests.support.redis import RedisServer, start_redis

pytestmark = pytest.mark.anyio

SYSTEM: dict[str, Any] = {"role": "system", "content": "You are terse."}
UNBOUNDED: dict[str, Any] = {"max_messages": None, "max_tokens": None}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and start again on the same port."""
    started = start_redis(tmp_path)
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
        for name in ("create", "restore", "get", "append", "list", "delete"):
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


def persist(server: RedisServer) -> None:
    """Snapshot Redis to disk, so that it comes back from a kill with this data (as a Redis with persistence does)."""
    with redis.Redis(host="127.0.0.1", port=server.port) as client:
        client.save()


async def history(store: SessionStore, session_id: str) -> list[dict[str, Any]] | None:
    found = await store.get(session_id)
    return None if found is None else found[1]


@pytest.mark.redis
async def test_sessions_are_served_from_redis_and_shared_with_another_replica(server: RedisServer) -> None:
    store = FallbackSessionStore(RedisSessionStore(server.url), label="test", clock=FakeClock())
    replica = RedisSessionStore(server.url)
    async with opened(store, replica):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, turn(1), **UNBOUNDED)

        assert await history(replica, session.id) == turn(1)
        assert await replica.append(session.id, turn(2), **UNBOUNDED)
        # The next turn on this process continues from what the other replica stored.
        assert await history(store, session.id) == [*turn(1), *turn(2)]
        assert [s.id for s in (await replica.list(key_id="key_a"))[0]] == [session.id]

        assert await store.delete(session.id)
        assert await replica.get(session.id) is None
        assert store.serving == "redis"
        assert store.fallbacks == 0


@pytest.mark.redis
async def test_a_conversation_goes_on_from_memory_while_redis_is_down(server: RedisServer) -> None:
    # retry_every=0: every operation tries Redis first, and each failure is served by the mirror.
    store = FallbackSessionStore(RedisSessionStore(server.url), label="test", retry_every=0.0, clock=FakeClock())
    async with opened(store):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, turn(1), **UNBOUNDED)
        assert store.serving == "redis"

        server.stop()

        found = await store.get(session.id)
        assert found is not None
        assert found[0].id == session.id
        assert found[0].key_id == "key_a"
        assert found[1] == turn(1)
        assert store.serving == "memory"
        assert await store.append(session.id, turn(2), **UNBOUNDED)
        assert await history(store, session.id) == [*turn(1), *turn(2)]

        during = new_session()
        await store.create(during)
        assert await store.append(during.id, turn(1), max_messages=2, max_tokens=None)
        assert await store.append(during.id, turn(2), max_messages=2, max_tokens=None)
        assert await history(store, during.id) == turn(2)

        listed, total = await store.list(key_id="key_a")
        assert ({s.id for s in listed}, total) == ({session.id, during.id}, 2)
        assert await store.get("sess_000000000000000000000000") is None
        assert store.serving == "memory"
        assert store.fallbacks == 9  # one per operation since the kill


@pytest.mark.redis
async def test_while_redis_is_down_it_is_tried_once_per_retry_interval(server: RedisServer) -> None:
    clock = FakeClock()
    primary = CountingRedisSessionStore(server.url)
    store = FallbackSessionStore(primary, label="test", retry_every=5.0, clock=clock)
    async with opened(store):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, turn(1), **UNBOUNDED)
        server.stop()
        primary.calls = 0

        assert await history(store, session.id) == turn(1)  # tries Redis, finds it down
        assert (primary.calls, store.fallbacks) == (1, 1)

        clock.advance(4.9)
        assert await store.append(session.id, turn(2), **UNBOUNDED)
        during = new_session()
        await store.create(during)
        assert await history(store, session.id) == [*turn(1), *turn(2)]
        assert (await store.list(key_id="key_a"))[1] == 2
        assert (primary.calls, store.fallbacks) == (1, 5)

        clock.advance(0.1)  # due again: one operation tries, and Redis is still down
        assert await history(store, during.id) == []
        assert (primary.calls, store.fallbacks) == (2, 6)

        server.start()
        clock.advance(4.9)  # Redis is back, but not due yet: not asked, so still served from memory
        assert await history(store, session.id) == [*turn(1), *turn(2)]
        assert (primary.calls, store.fallbacks, store.serving) == (2, 7, "memory")

        clock.advance(0.1)
        assert await history(store, session.id) == [*turn(1), *turn(2)]
        assert primary.calls > 2
        assert (store.fallbacks, store.serving) == (7, "redis")


@pytest.mark.redis
async def test_redis_coming_back_gets_what_changed_during_the_outage(server: RedisServer) -> None:
    clock = FakeClock()
    store = FallbackSessionStore(RedisSessionStore(server.url), label="test", retry_every=1.0, clock=clock)
    async with opened(store):
        continued, deleted, untouched = new_session(), new_session(), new_session()
        for session in (continued, deleted, untouched):
            await store.create(session)
            assert await store.append(session.id, turn(1), **UNBOUNDED)
        persist(server)
        server.stop()

        assert await store.append(continued.id, turn(2), **UNBOUNDED)
        assert await store.delete(deleted.id)
        created = new_session(key_id="key_b")
        await store.create(created)
        assert await store.append(created.id, turn(7), **UNBOUNDED)
        assert store.serving == "memory"

        server.start()
        replica = RedisSessionStore(server.url)
        async with opened(replica):
            # What Redis kept from before the outage; nothing of the outage yet.
            assert await history(replica, continued.id) == turn(1)
            assert await history(replica, deleted.id) == turn(1)
            assert await replica.get(created.id) is None

            clock.advance(1.0)
            assert await history(store, untouched.id) == turn(1)  # the first operation writes everything back
            assert store.serving == "redis"

            assert await history(replica, continued.id) == [*turn(1), *turn(2)]
            assert await replica.get(deleted.id) is None
            found = await replica.get(created.id)
            assert found is not None
            assert (found[0].key_id, found[0].model, found[1]) == ("key_b", "support-bot", turn(7))
            assert [s.id for s in (await replica.list(key_id="key_b"))[0]] == [created.id]
            assert {s.id for s in (await replica.list(key_id="key_a"))[0]} == {continued.id, untouched.id}
            # From here on both processes share one conversation again.
            assert await replica.append(continued.id, turn(3), **UNBOUNDED)
            assert await history(store, continued.id) == [*turn(1), *turn(2), *turn(3)]


@pytest.mark.redis
async def test_a_conversation_continued_during_the_outage_survives_redis_losing_its_data(server: RedisServer) -> None:
    clock = FakeClock()
    store = FallbackSessionStore(RedisSessionStore(server.url), label="test", retry_every=1.0, clock=clock)
    async with opened(store):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, [SYSTEM, *turn(1)], **UNBOUNDED)
        server.stop()
        assert await store.append(session.id, turn(2), **UNBOUNDED)

        server.start()  # without persistence: an empty Redis
        clock.advance(1.0)
        assert await history(store, session.id) == [SYSTEM, *turn(1), *turn(2)]

        replica = RedisSessionStore(server.url)
        async with opened(replica):
            assert await history(replica, session.id) == [SYSTEM, *turn(1), *turn(2)]


@pytest.mark.redis
async def test_each_outage_is_logged_once_and_never_with_the_password(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    label = _describe(f"redis://:hunter2@127.0.0.1:{server.port}/0")
    assert "hunter2" not in label
    store = FallbackSessionStore(RedisSessionStore(server.url), label=label, retry_every=0.0, clock=FakeClock())
    caplog.set_level(logging.WARNING, logger="gateway.sessions")
    async with opened(store):
        session = new_session()
        await store.create(session)
        for _ in range(2):
            server.stop()
            for n in range(5):
                assert await store.append(session.id, turn(n), **UNBOUNDED)
            server.start()
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


@pytest.mark.redis
async def test_a_session_the_full_mirror_dropped_during_the_outage_is_not_deleted_from_redis(
    server: RedisServer,
) -> None:
    clock = FakeClock()
    mirror = MemorySessionStore(max_sessions=2)
    store = FallbackSessionStore(
        RedisSessionStore(server.url), label="test", mirror=mirror, retry_every=1.0, clock=clock
    )
    async with opened(store):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, turn(1), **UNBOUNDED)
        persist(server)
        server.stop()

        assert await store.append(session.id, turn(2), **UNBOUNDED)
        for _ in range(2):  # new conversations fill the mirror, which lets the oldest one go
            await store.create(new_session())

        server.start()
        replica = RedisSessionStore(server.url)
        async with opened(replica):
            assert await history(replica, session.id) == turn(1)  # Redis kept it through the kill

            clock.advance(1.0)
            await store.list(key_id="key_a")  # the write-back

            # Its outage turn is gone with the mirror's copy; the history Redis held from before must not be.
            assert await history(replica, session.id) == turn(1)


async def test_a_capped_memory_store_forgets_the_least_recently_used_session() -> None:
    store = MemorySessionStore(max_sessions=3)
    oldest, read, restored = new_session(), new_session(), new_session()
    for session in (oldest, read, restored):
        await store.create(session)
    assert await store.append(read.id, turn(1), **UNBOUNDED)
    assert await store.get(read.id) is not None
    await store.restore(restored, turn(2))

    newest = new_session()
    await store.create(newest)

    assert await store.get(oldest.id) is None
    assert await history(store, read.id) == turn(1)
    assert await history(store, restored.id) == turn(2)
    assert await history(store, newest.id) == []
    assert (await store.list(key_id="key_a"))[1] == 3


async def test_a_capped_memory_store_forgets_nothing_below_its_cap() -> None:
    store = MemorySessionStore(max_sessions=3)
    sessions = [new_session() for _ in range(3)]
    for session in sessions:
        await store.create(session)

    assert all([await store.get(session.id) is not None for session in sessions])


async def test_a_capped_memory_store_counts_an_append_as_a_use() -> None:
    store = MemorySessionStore(max_sessions=2)
    written, idle = new_session(), new_session()
    await store.create(written)
    await store.create(idle)
    assert await store.append(written.id, turn(1), **UNBOUNDED)

    await store.create(new_session())

    assert await store.get(idle.id) is None
    assert await history(store, written.id) == turn(1)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest) -> Callable[[], SessionStore]:
    if request.param == "memory":
        return MemorySessionStore
    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    return lambda: RedisSessionStore(url, prefix=prefix)


async def test_restore_puts_exactly_the_given_history_in_place_of_the_stored_one(
    make_store: Callable[[], SessionStore],
) -> None:
    store = make_store()
    async with opened(store):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, [SYSTEM, *turn(1), *turn(2)], **UNBOUNDED)

        await store.restore(session, turn(9))
        assert await history(store, session.id) == turn(9)

        await store.restore(session, [])
        assert await history(store, session.id) == []

        unknown = new_session(key_id="key_b")
        await store.restore(unknown, [SYSTEM, *turn(1)])
        found = await store.get(unknown.id)
        assert found is not None
        assert (found[0].id, found[0].key_id, found[1]) == (unknown.id, "key_b", [SYSTEM, *turn(1)])
        assert [s.id for s in (await store.list(key_id="key_b"))[0]] == [unknown.id]


async def test_a_bounded_append_after_restore_bounds_the_restored_history(
    make_store: Callable[[], SessionStore],
) -> None:
    store = make_store()
    async with opened(store):
        session = new_session()
        await store.create(session)
        assert await store.append(session.id, [*turn(1), *turn(2)], max_messages=4, max_tokens=None)

        await store.restore(session, [SYSTEM, *turn(3), *turn(4), *turn(5)])
        assert await store.append(session.id, turn(6), max_messages=5, max_tokens=None)

        assert await history(store, session.id) == [SYSTEM, *turn(5), *turn(6)]
        assert await store.append(session.id, turn(7), max_messages=5, max_tokens=None)
        assert await history(store, session.id) == [SYSTEM, *turn(6), *turn(7)]
