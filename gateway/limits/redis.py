"""Rate-limit state in Redis, shared by every worker and replica: one Lua call per request, Redis's clock for all."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.resources import files

from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.limits import buckets
from gateway.limits.base import FailureMode
from gateway.limits.buckets import Charge, Decision, Quota
from gateway.limits.memory import MemoryLimiter
from gateway.store.redis_connection import RedisConnection

logger = logging.getLogger("gateway.limiter")

# After Redis fails, the limiter stays on its in-process buckets this long before trying Redis again, so that
# a dead Redis costs one timeout per second, not one per request.
RETRY_REDIS_AFTER = 1.0


def _script(name: str) -> str:
    return files("gateway.limits").joinpath(name).read_text(encoding="utf-8")


class RedisLimiter:
    """Buckets and quotas in Redis, shared by every worker and replica: each request is one atomic Lua call.

    When Redis cannot be reached: `open` falls back to in-process buckets (logged once, retried every second),
    `closed` refuses with 503.
    """

    name = "redis"

    def __init__(self, url: str, failure: FailureMode, prefix: str = "gw:rl:", timeout: float = 0.25) -> None:
        # Short timeouts (and no retries, like every Redis client here): a dead Redis must cost a request a
        # quarter of a second at most.
        take, settle = _script("take.lua"), _script("settle.lua")
        self._connection = RedisConnection(url, (take, settle), connect_timeout=timeout, timeout=timeout)
        self._connection.open()
        self._redis = self._connection.client
        self._take = self._connection.script(take)
        self._settle = self._connection.script(settle)
        self._prefix = prefix
        self._failure = failure
        self._fallback = MemoryLimiter()
        self._down_since: float | None = None
        self.on_error: Callable[[], None] = self._fallback.on_error

    def _keys(self, charge: Charge, buckets: list[buckets.Bucket] | None = None) -> list[str]:
        chosen = charge.buckets if buckets is None else buckets
        return [self._prefix + b.id for b in chosen] + [self._prefix + q.id for q in charge.quotas]

    async def take(self, charge: Charge) -> Decision:
        if self._resting():
            if self._failure == "closed":
                raise StoreUnavailable("The rate limiter's store is unavailable; retry shortly.")
            return await self._fallback.take(charge)
        args: list[str | float | int] = [
            0, len(charge.buckets), len(charge.quotas), charge.requests, charge.tokens, charge.prompt_tokens
        ]  # fmt: skip
        for bucket in charge.buckets:
            args += [bucket.rate, bucket.capacity, "r" if bucket.kind == "requests" else "t"]
        now = time.time()
        for quota in charge.quotas:
            args += [quota.limit, max(60, int(quota.resets_at - now) + 3600)]
        try:
            reply = await self._take(keys=self._keys(charge), args=args)
        except (RedisError, OSError) as exc:
            return await self._failed(exc, charge)
        self._recovered()
        return _decision(charge, reply)

    async def settle(self, charge: Charge, delta: int) -> None:
        token_buckets = [b for b in charge.buckets if b.kind == "tokens"]
        if delta == 0 or (not token_buckets and not charge.quotas):
            return
        if self._resting():
            await self._fallback.settle(charge, delta)
            return
        args: list[str | float | int] = [0, len(token_buckets), len(charge.quotas), buckets.bounded_delta(delta)]
        for bucket in token_buckets:
            args += [bucket.rate, bucket.capacity]
        now = time.time()
        args += [max(60, int(q.resets_at - now) + 3600) for q in charge.quotas]
        try:
            await self._settle(keys=self._keys(charge, token_buckets), args=args)
        except (RedisError, OSError) as exc:
            self.on_error()
            logger.warning("rate-limit settlement lost, Redis unavailable: %s", exc)

    async def seed(self, quota: Quota, used: int) -> None:
        ttl = max(60, int(quota.resets_at - time.time()) + 3600)
        try:
            await self._redis.set(self._prefix + quota.id, used, nx=True, ex=ttl)
        except (RedisError, OSError) as exc:
            self.on_error()
            logger.warning("quota counter not seeded, Redis unavailable: %s", exc)

    async def reset(self, quota_ids: list[str]) -> None:
        if quota_ids:
            await self._redis.delete(*(self._prefix + quota_id for quota_id in quota_ids))

    async def close(self) -> None:
        await self._connection.close()

    def _resting(self) -> bool:
        return self._down_since is not None and time.monotonic() - self._down_since < RETRY_REDIS_AFTER

    async def _failed(self, exc: Exception, charge: Charge) -> Decision:
        self.on_error()
        if self._down_since is None:
            logger.warning(
                "rate limiter: Redis unavailable (%s); %s", exc,
                "using in-process buckets until it is back" if self._failure == "open" else "refusing requests",
            )  # fmt: skip
        self._down_since = time.monotonic()
        if self._failure == "closed":
            raise StoreUnavailable("The rate limiter's store is unavailable; retry shortly.")
        return await self._fallback.take(charge)

    def _recovered(self) -> None:
        if self._down_since is not None:
            logger.info("rate limiter: Redis is back")
            self._down_since = None

    @property
    def degraded(self) -> bool:
        return self._down_since is not None


def _decision(charge: Charge, reply: list[bytes | int]) -> Decision:
    allowed = int(reply[0]) == 1
    refused_bucket, refused_quota = int(reply[1]), int(reply[2])
    wait, now = float(reply[3]), float(reply[4])
    levels = [float(level) for level in reply[5:]]
    states = tuple(buckets.state(b, level) for b, level in zip(charge.buckets, levels, strict=True))
    if allowed:
        return Decision(True, states)
    if refused_quota:
        quota = charge.quotas[refused_quota - 1]
        return Decision(False, states, max(0.0, quota.resets_at - now), quota.label, quota)
    refusing = charge.buckets[refused_bucket - 1]
    return Decision(False, states, wait, refusing.label, None, refusing.kind)
