"""Rate-limit state in this process: exact for one process (limits/base.py has the protocol)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.limits import buckets
from gateway.limits.buckets import Charge, Decision, Level, Quota

logger = logging.getLogger("gateway.limiter")

MAX_LEVELS = 50_000


class MemoryLimiter:
    """Buckets and quota counters in this process: exact for one process."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.on_error: Callable[[], None] = _nothing
        self._clock = clock
        self._levels: dict[str, Level] = {}
        self._used: dict[str, tuple[int, float]] = {}  # quota id -> (tokens used, when the period ends)

    async def take(self, charge: Charge) -> Decision:
        now = self._clock()
        levels = [self._levels.get(b.id) for b in charge.buckets]
        used = [self._quota(q.id, now) for q in charge.quotas]
        decision, new_levels, new_used = buckets.take(charge, levels, used, now)
        if decision.allowed:
            for bucket, level in zip(charge.buckets, new_levels, strict=True):
                self._levels[bucket.id] = level
            if len(self._levels) > MAX_LEVELS:
                # Per-address buckets come and go; one untouched for an hour has long been full again.
                self._levels = {k: v for k, v in self._levels.items() if now - v.at < 3600}
            for quota, count in zip(charge.quotas, new_used, strict=True):
                self._used[quota.id] = (count, quota.resets_at)
        return decision

    def _quota(self, quota_id: str, now: float) -> int:
        entry = self._used.get(quota_id)
        return entry[0] if entry is not None and entry[1] > now else 0

    async def settle(self, charge: Charge, delta: int) -> None:
        delta = buckets.bounded_delta(delta)
        now = self._clock()
        for bucket in charge.buckets:
            if bucket.kind == "tokens":
                self._levels[bucket.id] = buckets.settle(self._levels.get(bucket.id), bucket, delta, now)
        for quota in charge.quotas:
            self._used[quota.id] = (max(0, self._quota(quota.id, now) + delta), quota.resets_at)
        if len(self._used) > 10_000:  # periods that ended
            self._used = {k: v for k, v in self._used.items() if v[1] > now}

    async def seed(self, quota: Quota, used: int) -> None:
        if quota.id not in self._used:
            self._used[quota.id] = (used, quota.resets_at)

    async def reset(self, quota_ids: list[str]) -> None:
        for quota_id in quota_ids:
            self._used.pop(quota_id, None)

    async def close(self) -> None:
        return None


def _nothing() -> None:
    pass
