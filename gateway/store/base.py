"""What every store offers, and the usage counters it keeps. No IO here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from gateway.keys import KeyRecord

# Counter names kept per key, period and agent. `limited_*` count the gateway's own refusals by the kind of
# limit; `upstream_limited` the provider's 429s, kept apart; `queued` requests that waited for a slot.
COUNTERS = (
    "requests", "prompt_tokens", "completion_tokens", "errors", "cancelled",
    "limited_rate", "limited_quota", "limited_concurrency", "limited_cooldown", "queued", "upstream_limited",
    "cached_tokens", "cost_nanos",
)  # fmt: skip
# Usage by a request with no key (auth mode `none`) is counted under this key id.
ANONYMOUS = "-"


class KeyConflict(Exception):
    """A key with that id or secret hash already exists."""


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One finished request as accounting records it, or several of the same key, agent and day summed."""

    key_id: str
    agent: str
    day: date
    requests: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cancelled: int = 0
    limited_rate: int = 0
    limited_quota: int = 0
    limited_concurrency: int = 0
    limited_cooldown: int = 0
    queued: int = 0
    upstream_limited: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's cache
    cost_nanos: int = 0  # what it cost in nano-dollars (gateway/pricing.py), where the agent has prices
    hour: int = -1  # the UTC hour of `day` it fell in (0-23), for the last day's hourly rows; -1: none

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Counters of one key for one agent over one period (`period` is `YYYY-MM-DD` or `YYYY-MM`)."""

    key_id: str
    period: str
    agent: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cancelled: int = 0
    limited_rate: int = 0
    limited_quota: int = 0
    limited_concurrency: int = 0
    limited_cooldown: int = 0
    queued: int = 0
    upstream_limited: int = 0
    cached_tokens: int = 0
    cost_nanos: int = 0


def periods(day: date) -> tuple[str, str]:
    """The two periods a day counts towards: the day itself and its month (UTC calendar)."""
    return day.isoformat(), day.isoformat()[:7]


def hour_period(day: date, hour: int) -> str:
    """An hour's period, `YYYY-MM-DDTHH` (UTC): kept for HOURS_KEPT hours, for the console's last day."""
    return f"{day.isoformat()}T{hour:02d}"


def is_hour(period: str) -> bool:
    return len(period) == 13 and period[10] == "T"


def event_periods(event: UsageEvent) -> list[str]:
    """Every period an event counts towards: its day, its month, and its hour when it has one."""
    day, month = periods(event.day)
    return [day, month, hour_period(event.day, event.hour)] if event.hour >= 0 else [day, month]


# How long hourly rows are kept: the console shows the last 24 hours; a second day covers the time zones.
HOURS_KEPT = 48


class Store(Protocol):
    """Keys and usage. Implementations: `SQLiteStore` (one process, persisted to disk) and `RedisStore`."""

    name: str
    # How long a per-process cache may trust a key lookup: 0 for the embedded store (its lookups are dict reads),
    # a fraction of a second for a shared one, so that an admin change reaches every replica within a second.
    cache_ttl: float
    # The exceptions that mean "the store is unavailable right now" (worth retrying), as opposed to a bug.
    errors: tuple[type[Exception], ...]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def create_key(self, record: KeyRecord) -> None:
        """Add a new key; `KeyConflict` if its id or hash exists."""

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def find_key(self, secret_hash: str) -> KeyRecord | None:
        """The key whose current or grace hash is `secret_hash` (the caller checks `usable`)."""

    async def save_key(self, record: KeyRecord, *, previous: KeyRecord) -> None:
        """Replace a key's record; the hash index follows the change from `previous` (rotation)."""

    async def list_keys(self) -> list[KeyRecord]:
        """Every key, oldest first."""

    async def count_keys(self) -> int: ...

    async def record_usage(self, events: Sequence[UsageEvent], *, batch_id: str | None = None) -> None:
        """Add the events to the day and month counters; each call is applied whole or not at all. A call that
        failed may be repeated with the same `batch_id`: a batch is applied once, even if the failed call was
        applied after all (a reply lost, a store that timed out and then went on)."""

    async def usage(self, key_id: str | None, periods: Sequence[str]) -> list[UsageRow]:
        """Counter rows for one key (or every key, `None`) over the given periods; all-zero rows left out."""

    async def reset_usage(self, key_id: str) -> None: ...
