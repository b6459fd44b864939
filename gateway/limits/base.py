"""Where rate-limit state lives: the `Limiter` protocol, in the process (memory.py) or in Redis (redis.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from gateway.limits.buckets import Charge, Decision, Quota

FailureMode = Literal["open", "closed"]


class Limiter(Protocol):
    name: str
    # Called on every failed call to a shared store (the Redis-errors metric); set by whoever counts.
    on_error: Callable[[], None]

    async def take(self, charge: Charge) -> Decision: ...

    async def settle(self, charge: Charge, delta: int) -> None: ...

    async def seed(self, quota: Quota, used: int) -> None:
        """Start a quota's counter at `used` unless it already has one (usage recorded before this process)."""

    async def reset(self, quota_ids: list[str]) -> None: ...

    async def close(self) -> None: ...
