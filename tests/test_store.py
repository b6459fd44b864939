"""The store contract, run against the embedded store and Redis alike, plus what only one of them promises."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.keys import KeyRecord, Limits, Quotas, display_prefix, hash_secret, new_key_id, new_secret, utcnow
from gateway.store.base import HOURS_KEPT, KeyConflict, Store, UsageEvent, UsageRow, hour_period, periods
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore, StateDirInUse
from tests.support.redis import start_redis

pytestmark = pytest.mark.anyio

DAY = date(2025, 3, 14)
DAY_PERIOD, MONTH_PERIOD = periods(DAY)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes unopened stores that share one state: the same directory, or the same Redis and prefix."""
    if request.param == "memory":
        return lambda: SQLiteStore(tmp_path / "state")
    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    return lambda: RedisStore(url, prefix=prefix)


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    opened = new_store()
    await opened.open()
    yield opened
    await opened.close()


def make_key(name: str = "test", created_at: datetime | None = None) -> tuple[str, KeyRecord]:
    secret = new_secret()
    record = KeyRecord(
        id=new_key_id(),
        name=name,
        prefix=display_prefix(secret),
        secret_hash=hash_secret(secret),
        created_at=created_at or utcnow(),
        expires_at=utcnow() + timedelta(days=30),
        models=("gpt-*", "support-bot"),
        limits=Limits(rpm=60, tpm=10_000),
        quotas=Quotas(tokens_per_day=1_000),
        metadata={"team": "search", "tags": ["a", "b"]},
    )
    return secret, record


def rotate(record: KeyRecord) -> tuple[str, KeyRecord]:
    secret = new_secret()
    now = utcnow()
    rotated = record.replace(
        secret_hash=hash_secret(secret),
        prefix=display_prefix(secret),
        grace_hash=record.secret_hash,
        grace_until=now + timedelta(hours=1),
        rotated_at=now,
    )
    return secret, rotated


def event(key_id: str, agent: str = "chat", day: date = DAY, **counts: int) -> UsageEvent:
    return UsageEvent(key_id=key_id, agent=agent, day=day, **counts)


def by_key(rows: list[UsageRow]) -> dict[tuple[str, str, str], UsageRow]:
    return {(row.key_id, row.period, row.agent): row for row in rows}


async def test_created_key_is_found_by_id_and_by_hash(store: Store) -> None:
    secret, record = make_key()
    await store.create_key(record)

    assert await store.get_key(record.id) == record
    assert await store.find_key(hash_secret(secret)) == record
    assert await store.get_key("key_missing") is None
    assert await store.find_key(hash_secret(new_secret())) is None


async def test_duplicate_id_or_hash_is_a_conflict_and_writes_nothing(store: Store) -> None:
    secret, record = make_key("first")
    await store.create_key(record)
    _, other = make_key("second")

    with pytest.raises(KeyConflict):
        await store.create_key(other.replace(id=record.id))
    with pytest.raises(KeyConflict):
        await store.create_key(other.replace(secret_hash=record.secret_hash))

    assert await store.get_key(record.id) == record
    assert await store.find_key(hash_secret(secret)) == record
    assert await store.get_key(other.id) is None
    assert await store.count_keys() == 1


async def test_rotation_keeps_both_secrets_until_the_next_rotation(store: Store) -> None:
    first_secret, original = make_key()
    await store.create_key(original)

    second_secret, rotated = rotate(original)
    await store.save_key(rotated, previous=original)
    assert await store.find_key(hash_secret(first_secret)) == rotated
    assert await store.find_key(hash_secret(second_secret)) == rotated
    assert await store.get_key(original.id) == rotated

    third_secret, rotated_again = rotate(rotated)
    await store.save_key(rotated_again, previous=rotated)
    assert await store.find_key(hash_secret(first_secret)) is None
    assert await store.find_key(hash_secret(second_secret)) == rotated_again
    assert await store.find_key(hash_secret(third_secret)) == rotated_again

    ended = rotated_again.replace(grace_hash=None, grace_until=None)
    await store.save_key(ended, previous=rotated_again)
    assert await store.find_key(hash_secret(second_secret)) is None
    assert await store.find_key(hash_secret(third_secret)) == ended


async def test_revoked_key_round_trips(store: Store) -> None:
    secret, record = make_key()
    await store.create_key(record)
    revoked = record.replace(revoked=True, revoked_at=utcnow())

    await store.save_key(revoked, previous=record)

    found = await store.find_key(hash_secret(secret))
    assert found == revoked
    assert found is not None
    assert not found.usable(hash_secret(secret), utcnow())
    assert await store.list_keys() == [revoked]


async def test_keys_are_listed_oldest_first_and_counted(store: Store) -> None:
    base = utcnow()
    # A microsecond apart: the order must survive however the store keeps timestamps.
    records = [make_key(f"k{i}", base + timedelta(microseconds=i))[1] for i in range(4)]
    for record in (records[2], records[0], records[3], records[1]):
        await store.create_key(record)

    assert await store.list_keys() == records
    assert await store.count_keys() == 4


async def test_empty_store_lists_nothing(store: Store) -> None:
    assert await store.list_keys() == []
    assert await store.count_keys() == 0
    assert await store.usage(None, [DAY_PERIOD, MONTH_PERIOD]) == []


async def test_usage_counts_each_event_towards_its_day_and_month_per_agent(store: Store) -> None:
    later = DAY + timedelta(days=3)
    await store.record_usage(
        [
            event("key_a", prompt_tokens=10, completion_tokens=5),
            event("key_a", prompt_tokens=7, completion_tokens=1, errors=1),
            event("key_a", agent="embed", prompt_tokens=100),
            event("key_a", day=later, prompt_tokens=1, cancelled=1),
        ]
    )

    rows = by_key(await store.usage("key_a", [DAY_PERIOD, MONTH_PERIOD, later.isoformat()]))

    assert rows == {
        ("key_a", DAY_PERIOD, "chat"): UsageRow("key_a", DAY_PERIOD, "chat", 2, 17, 6, 1, 0),
        ("key_a", DAY_PERIOD, "embed"): UsageRow("key_a", DAY_PERIOD, "embed", 1, 100, 0, 0, 0),
        ("key_a", later.isoformat(), "chat"): UsageRow("key_a", later.isoformat(), "chat", 1, 1, 0, 0, 1),
        ("key_a", MONTH_PERIOD, "chat"): UsageRow("key_a", MONTH_PERIOD, "chat", 3, 18, 6, 1, 1),
        ("key_a", MONTH_PERIOD, "embed"): UsageRow("key_a", MONTH_PERIOD, "embed", 1, 100, 0, 0, 0),
    }
    assert await store.usage("key_a", ["2025-02"]) == []


async def test_usage_of_every_key_spans_keys(store: Store) -> None:
    await store.record_usage([event("key_a", prompt_tokens=1)])
    await store.record_usage([event("key_b", prompt_tokens=2), event("-", agent="demo")])

    rows = by_key(await store.usage(None, [MONTH_PERIOD]))

    assert set(rows) == {("key_a", MONTH_PERIOD, "chat"), ("key_b", MONTH_PERIOD, "chat"), ("-", MONTH_PERIOD, "demo")}
    assert rows["key_b", MONTH_PERIOD, "chat"].prompt_tokens == 2
    assert [row.key_id for row in await store.usage("key_a", [MONTH_PERIOD])] == ["key_a"]


async def test_reset_usage_clears_one_key_only(store: Store) -> None:
    await store.record_usage([event("key_a", prompt_tokens=5), event("key_b", prompt_tokens=6)])

    await store.reset_usage("key_a")

    assert await store.usage("key_a", [DAY_PERIOD, MONTH_PERIOD]) == []
    assert len(await store.usage("key_b", [DAY_PERIOD, MONTH_PERIOD])) == 2
    assert {row.key_id for row in await store.usage(None, [DAY_PERIOD, MONTH_PERIOD])} == {"key_b"}

    await store.record_usage([event("key_a", prompt_tokens=1)])
    assert [row.prompt_tokens for row in await store.usage("key_a", [MONTH_PERIOD])] == [1]


async def test_concurrent_usage_loses_no_increments(store: Store) -> None:
    await asyncio.gather(
        *(store.record_usage([event("key_a", prompt_tokens=3, completion_tokens=2)]) for _ in range(50))
    )

    rows = by_key(await store.usage("key_a", [DAY_PERIOD, MONTH_PERIOD]))

    for period in (DAY_PERIOD, MONTH_PERIOD):
        assert rows["key_a", period, "chat"] == UsageRow("key_a", period, "chat", 50, 150, 100, 0, 0)


async def test_memory_state_survives_a_restart(tmp_path: Path) -> None:
    secret, record = make_key()
    first = SQLiteStore(tmp_path)
    await first.open()
    await first.create_key(record)
    _, rotated = rotate(record)
    await first.save_key(rotated, previous=record)
    await first.record_usage([event(record.id, prompt_tokens=4), event(record.id, prompt_tokens=6)])
    await first.close()

    second = SQLiteStore(tmp_path)
    await second.open()
    try:
        assert await second.list_keys() == [rotated]
        assert await second.find_key(hash_secret(secret)) == rotated
        usage = by_key(await second.usage(record.id, [MONTH_PERIOD]))
        assert usage[record.id, MONTH_PERIOD, "chat"].prompt_tokens == 10
    finally:
        await second.close()


async def test_memory_refuses_a_second_process_on_the_same_directory(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path)
    await first.open()
    second = SQLiteStore(tmp_path)
    try:
        with pytest.raises(StateDirInUse):
            await second.open()
    finally:
        await second.close()
        await first.close()


@pytest.mark.redis
async def test_redis_state_is_shared_between_instances(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    one, two = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    await one.open()
    await two.open()
    try:
        secret, record = make_key()
        await one.create_key(record)
        assert await two.find_key(hash_secret(secret)) == record
        with pytest.raises(KeyConflict):
            await two.create_key(record)

        # Two replicas adding to the same counters at once.
        await asyncio.gather(*(s.record_usage([event(record.id, prompt_tokens=1)]) for s in [one, two] * 25))
        usage = by_key(await one.usage(record.id, [MONTH_PERIOD]))
        assert usage[record.id, MONTH_PERIOD, "chat"].prompt_tokens == 50

        other = RedisStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
        await other.open()
        try:
            assert await other.count_keys() == 0
            assert await other.usage(None, [MONTH_PERIOD]) == []
        finally:
            await other.close()
    finally:
        await one.close()
        await two.close()


@pytest.mark.redis
async def test_redis_ping_follows_an_outage(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    store = RedisStore(server.url)
    await store.open()
    try:
        assert await store.ping()
        secret, record = make_key()
        await store.create_key(record)

        server.stop()
        assert not await store.ping()
        # Data methods raise, so the caller can answer 503 instead of treating the key as unknown.
        with pytest.raises(RedisConnectionError):
            await store.get_key(record.id)

        server.start()
        assert await store.ping()
        # The server kept nothing (no persistence), and the store works again without being reopened.
        assert await store.find_key(hash_secret(secret)) is None
        await store.create_key(record)
        assert await store.get_key(record.id) == record
    finally:
        await store.close()
        server.stop()


@pytest.mark.redis
async def test_a_usage_batch_that_timed_out_on_a_frozen_redis_and_was_applied_after_counts_once(
    tmp_path: Path,
) -> None:
    # A frozen Redis reads the batch from its socket when it resumes and applies it, although the gateway has
    # given up on the reply by then; the accountant sends the batch again.
    server = start_redis(tmp_path)
    store = RedisStore(f"{server.url}?socket_timeout=0.2", prefix="frozen:")
    await store.open()
    try:
        batch = [event("key_a", prompt_tokens=3, completion_tokens=2)]
        await store.record_usage([event("key_b", prompt_tokens=1)])  # the script is loaded, as in a running gateway
        server.freeze()
        try:
            with pytest.raises(store.errors):
                await store.record_usage(batch, batch_id="batch-1")
        finally:
            server.thaw()
        for _ in range(250):  # until Redis has worked through what it read on waking up
            if await store.usage("key_a", [DAY_PERIOD]):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the frozen Redis did not apply the batch when it resumed: this test shows nothing")
        await store.record_usage(batch, batch_id="batch-1")

        rows = by_key(await store.usage("key_a", [DAY_PERIOD, MONTH_PERIOD]))
        assert rows["key_a", DAY_PERIOD, "chat"].prompt_tokens == 3
        assert rows["key_a", MONTH_PERIOD, "chat"].requests == 1
    finally:
        await store.close()
        server.stop()


async def test_the_last_hours_are_counted_by_the_hour_and_old_hours_let_go(
    store: Store, new_store: Callable[[], Store]
) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(hours=HOURS_KEPT + 3)
    this_hour, old_hour = hour_period(now.date(), now.hour), hour_period(old.date(), old.hour)
    await store.record_usage([event("k1", day=old.date(), hour=old.hour, requests=2)])
    await store.record_usage([event("k1", day=now.date(), hour=now.hour, requests=1, prompt_tokens=5)])
    await store.record_usage([event("k1", day=now.date(), requests=1)])  # an event without an hour: days only
    rows = by_key(await store.usage(None, [this_hour, old_hour, now.date().isoformat()]))
    assert (rows["k1", this_hour, "chat"].requests, rows["k1", this_hour, "chat"].prompt_tokens) == (1, 5)
    assert rows["k1", now.date().isoformat(), "chat"].requests == 2  # the hour's request counts to its day too
    if store.name == "memory":  # the embedded store (SQLite on disk)
        assert ("k1", old_hour, "chat") not in rows  # pruned once an hour, in memory and on disk
        await store.close()
        reopened = new_store()
        await reopened.open()
        try:
            again = by_key(await reopened.usage(None, [this_hour, old_hour]))
            assert set(again) == {("k1", this_hour, "chat")}
        finally:
            await reopened.close()
