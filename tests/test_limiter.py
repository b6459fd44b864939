"""The limiters: in process with a fake clock, and the Lua script against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

import pytest
import redis

from gateway.errors import StoreUnavailable
from gateway.limits.base import Limiter
from gateway.limits.buckets import Bucket, Charge, Quota
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter
from tests.support.redis import RedisServer, start_redis

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bucket(kind: str = "requests", per_minute: float = 60, capacity: float = 5) -> Bucket:
    return Bucket(f"t:{uuid.uuid4().hex}:{kind}", kind, per_minute, capacity, f"{kind} bucket")  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_limiter_refills_with_its_clock() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    requests = bucket(capacity=2)
    one = Charge((requests,), (), 1, 0)
    assert [(await limiter.take(one)).allowed for _ in range(3)] == [True, True, False]
    clock.now += 1.0
    assert (await limiter.take(one)).allowed


async def test_memory_settlement_moves_the_token_bucket_and_the_quota() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    tokens = bucket("tokens", per_minute=60, capacity=100)
    quota = Quota(f"q:{uuid.uuid4().hex}", 1000, resets_at=clock.now + 3600, label="tokens per day")
    charge = Charge((tokens,), (quota,), 1, 80, 10)
    assert (await limiter.take(charge)).allowed
    await limiter.settle(charge, -70)  # real usage 10
    decision = await limiter.take(Charge((tokens,), (quota,), 1, 90, 10))
    assert decision.allowed
    assert decision.states[0].remaining == pytest.approx(0)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    """Each limiter in turn, the Redis one against a real redis-server."""
    if request.param == "memory":
        yield MemoryLimiter()
        return
    shared = RedisLimiter(request.getfixturevalue("redis_url"), "closed")
    yield shared
    await shared.close()


def day_quota(limit: int = 1000) -> Quota:
    return Quota(f"q:{uuid.uuid4().hex}", limit, resets_at=4_000_000_000, label="tokens per day")


async def test_a_negative_reservation_cannot_lock_a_key_out_through_a_concurrent_settlement(limiter: Limiter) -> None:
    quota = day_quota()
    other = Charge((), (quota,), 1, 100, 10)
    negative = Charge((), (quota,), 1, -(10**8), 0)  # what `max_tokens: -100000000` used to reserve
    assert (await limiter.take(other)).allowed
    assert (await limiter.take(negative)).allowed
    # The other request ends while the negative one is in flight, and gets a refund (it used 10)...
    await limiter.settle(other, 10 - other.tokens)
    # ...then the negative one ends and settles as the guard does: real usage (20) minus what it reserved.
    await limiter.settle(negative, 20 - negative.tokens)
    # 30 tokens used in all: a request with a 900-token prompt still fits the 1,000 of the day.
    assert (await limiter.take(Charge((), (quota,), 1, 900, 900))).allowed


async def test_a_negative_reservation_frees_no_room_in_a_quota_or_a_bucket(limiter: Limiter) -> None:
    quota = day_quota()
    tokens = bucket("tokens", per_minute=0.001, capacity=1000)  # no refill to speak of during the test
    assert (await limiter.take(Charge((tokens,), (quota,), 1, 600, 10))).allowed
    taken = await limiter.take(Charge((tokens,), (quota,), 1, -(10**8), 0))
    assert taken.allowed
    assert taken.states[0].remaining == pytest.approx(400, abs=1)  # nothing given back
    refused = await limiter.take(Charge((tokens,), (quota,), 1, 900, 900))
    assert not refused.allowed
    assert refused.quota == quota


async def test_settlements_beyond_any_limit_are_bounded(limiter: Limiter) -> None:
    quota = day_quota(limit=10**12)
    charge = Charge((), (quota,), 1, 100, 10)
    assert (await limiter.take(charge)).allowed
    await limiter.settle(charge, 2**80)  # a usage count no counter can hold: charged as the most a quota holds
    assert not (await limiter.take(Charge((), (quota,), 1, 1, 1))).allowed
    await limiter.settle(charge, -(2**80))  # refunded as much again: the counter is back at the bottom
    assert (await limiter.take(Charge((), (quota,), 1, 1, 1))).allowed


def test_the_take_script_never_charges_a_negative_amount(redis_url: str) -> None:
    script = files("gateway.limits").joinpath("take.lua").read_text(encoding="utf-8")
    with redis.Redis.from_url(redis_url) as client:
        take = client.register_script(script)
        # One token bucket and one quota; -1000 tokens and a -1000-token prompt.
        reply = take(keys=["b", "q"], args=[1000, 1, 1, 1, -1000, -1000, 1.0, 50, "t", 1000, 60])
        assert int(reply[0]) == 1
        assert float(reply[5]) == 50  # the bucket was not filled past its capacity
        assert client.get("q") == b"0"


async def test_redis_takes_are_exact_under_concurrent_callers(redis_url: str) -> None:
    # Exactness is the point here, not timeouts: 100 callers opening connections at once on a loaded machine can
    # take longer than the production quarter second, which fail-closed would turn into errors.
    limiters = [RedisLimiter(redis_url, "closed", timeout=5.0) for _ in range(4)]
    requests = bucket(per_minute=0.001, capacity=20)  # no refill to speak of during the test
    charge = Charge((requests,), (), 1, 0)
    try:
        decisions = await asyncio.gather(*(limiters[i % 4].take(charge) for i in range(100)))
    finally:
        for limiter in limiters:
            await limiter.close()
    assert sum(d.allowed for d in decisions) == 20
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after > 0 for d in refused)


async def test_redis_takes_all_buckets_or_none_and_settles(redis_url: str) -> None:
    limiter = RedisLimiter(redis_url, "closed")
    requests, tokens = bucket(capacity=10), bucket("tokens", per_minute=6, capacity=100)
    try:
        assert (await limiter.take(Charge((requests, tokens), (), 1, 90))).allowed
        refused = await limiter.take(Charge((requests, tokens), (), 1, 90))
        assert not refused.allowed
        assert refused.refused_by == "tokens bucket"
        assert refused.states[0].remaining == pytest.approx(9, abs=0.1)  # requests untouched by the refusal
        await limiter.settle(Charge((requests, tokens), (), 1, 90), -80)
        assert (await limiter.take(Charge((requests, tokens), (), 1, 90))).allowed
    finally:
        await limiter.close()


async def test_redis_quota_refuses_once_exhausted(redis_url: str) -> None:
    limiter = RedisLimiter(redis_url, "closed")
    quota = Quota(f"q:{uuid.uuid4().hex}", 100, resets_at=4_000_000_000, label="tokens per day")
    try:
        assert (await limiter.take(Charge((), (quota,), 1, 100, 5))).allowed
        refused = await limiter.take(Charge((), (quota,), 1, 1, 1))
        assert not refused.allowed
        assert refused.quota == quota
        await limiter.settle(Charge((), (quota,), 1, 100, 5), -60)  # it used 40
        assert (await limiter.take(Charge((), (quota,), 1, 50, 5))).allowed
    finally:
        await limiter.close()


async def test_redis_away_fails_open_to_local_buckets_and_comes_back(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    limiter = RedisLimiter(server.url, "open")
    requests = bucket(per_minute=0.001, capacity=3)
    charge = Charge((requests,), (), 1, 0)
    try:
        assert (await limiter.take(charge)).allowed  # in Redis: 2 left there
        server.stop()
        local = [(await limiter.take(charge)).allowed for _ in range(4)]
        assert local == [True, True, True, False]  # a full local bucket of 3 meanwhile
        assert limiter.degraded
        server.start()
        await asyncio.sleep(1.1)  # the limiter tries Redis again after a second
        assert (await limiter.take(charge)).allowed  # the fresh (empty) Redis: a full bucket
        assert not limiter.degraded
    finally:
        await limiter.close()
        server.stop()


async def test_redis_away_fails_closed_with_503(tmp_path: Path) -> None:
    server: RedisServer = start_redis(tmp_path)
    limiter = RedisLimiter(server.url, "closed")
    server.stop()
    try:
        with pytest.raises(StoreUnavailable):
            await limiter.take(Charge((bucket(),), (), 1, 0))
    finally:
        await limiter.close()


async def test_quotas_roll_over_with_the_calendar() -> None:
    from datetime import UTC, datetime

    from gateway.config.agents import AgentSpec, compile_agent
    from gateway.keys import KeyRecord, Quotas, utcnow
    from gateway.limits.policy import Defaults, charge_for

    agent = compile_agent(AgentSpec.model_validate({"name": "a", "llm": {"provider": "mock"}}), {})
    key = KeyRecord("key_q", "k", "p", "h", utcnow(), quotas=Quotas(tokens_per_day=100))
    limiter = MemoryLimiter(Clock())

    def charge(now: datetime) -> Charge:
        return charge_for(key, agent, client=None, tokens=100, prompt_tokens=5, now=now, defaults=Defaults())

    evening = datetime(2026, 11, 22, 23, 59, tzinfo=UTC)
    assert (await limiter.take(charge(evening))).allowed
    assert not (await limiter.take(charge(evening))).allowed
    assert (await limiter.take(charge(datetime(2026, 11, 23, 0, 1, tzinfo=UTC)))).allowed
