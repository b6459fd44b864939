"""Accounting: finished requests become usage events, written to the store in batches off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from datetime import UTC, date, datetime

from gateway.exchange import CLIENT_CLOSED_REQUEST, Exchange
from gateway.store.base import ANONYMOUS, COUNTERS, Store, UsageEvent

logger = logging.getLogger("gateway.accounting")

# Events kept while the store is unreachable; past this the oldest are dropped (and the loss is logged).
MAX_PENDING = 100_000


def usage_event(exchange: Exchange) -> UsageEvent | None:
    """The usage event for a finished request, or None when there is nobody to charge (no key, no agent)."""
    if exchange.key_id is None and exchange.agent is None:
        return None
    cancelled = exchange.stream == "client_disconnected" or exchange.status == CLIENT_CLOSED_REQUEST
    failed = not cancelled and (exchange.status >= 400 or exchange.stream == "upstream_error")
    limited = exchange.limited
    now = datetime.now(UTC)
    return UsageEvent(
        key_id=exchange.key_id or ANONYMOUS,
        agent=exchange.agent or ANONYMOUS,
        day=now.date(),
        hour=now.hour,
        prompt_tokens=exchange.prompt_tokens or 0,
        completion_tokens=exchange.completion_tokens or 0,
        errors=int(failed),
        cancelled=int(cancelled),
        limited_rate=int(limited == "rate"),
        limited_quota=int(limited == "quota"),
        limited_concurrency=int(limited == "concurrency"),
        limited_cooldown=int(limited == "cooldown"),
        queued=int(exchange.queued),
        upstream_limited=int(exchange.upstream_status == 429),
        cached_tokens=exchange.cached_tokens if exchange.prompt_tokens is not None else 0,
        cost_nanos=exchange.cost_nanos or 0,
    )


def combine(events: list[UsageEvent]) -> list[UsageEvent]:
    """Events summed per key, agent and hour: thousands of requests a second become a handful of store writes."""
    totals: dict[tuple[str, str, date, int], list[int]] = {}
    for event in events:
        counts = totals.setdefault((event.key_id, event.agent, event.day, event.hour), [0] * len(COUNTERS))
        for index, name in enumerate(COUNTERS):
            counts[index] += getattr(event, name)
    return [
        UsageEvent(key, agent, day, hour=hour, **dict(zip(COUNTERS, counts, strict=True)))
        for (key, agent, day, hour), counts in totals.items()
    ]


class Accountant:
    """Collects usage events as requests finish and writes them every `interval` seconds in one batch.

    Recording is a list append: the response never waits for the store. A batch that fails (Redis away) is sent
    again, as it was and under the same id, before anything newer: a failed write may have been applied all the
    same (a timeout on a Redis that then went on), and the id lets the store apply it once. Stopping writes
    whatever is left, so a graceful shutdown loses nothing.
    """

    def __init__(self, store: Store, interval: float = 0.5) -> None:
        self._store = store
        self._interval = interval
        self._pending: list[UsageEvent] = []
        self._unsent: tuple[str, list[UsageEvent]] | None = None  # a batch that failed: its id and events
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def record(self, exchange: Exchange) -> None:
        event = usage_event(exchange)
        if event is not None:
            self._pending.append(event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-accounting")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Write the batch that failed last time, if any, then what was recorded since."""
        if self._unsent is not None and not await self._send():
            return
        if self._pending:
            self._unsent = (secrets.token_hex(12), combine(self._pending))
            self._pending = []
            await self._send()

    async def _send(self) -> bool:
        """Send the unsent batch; whether it was written."""
        assert self._unsent is not None
        batch_id, batch = self._unsent
        try:
            await self._store.record_usage(batch, batch_id=batch_id)
        except self._store.errors as exc:
            # Kept compact while the store is away: one event per key, agent and day.
            self._pending = combine(self._pending)
            dropped = min(len(self._pending), len(self._pending) + len(batch) - MAX_PENDING)
            if dropped > 0:
                del self._pending[:dropped]
                logger.error("usage store unreachable: dropped the %d oldest usage events", dropped)
            if not self._failing:
                logger.warning("usage store unreachable, keeping %d events to retry: %s", len(batch), exc)
            self._failing = True
            return False
        self._unsent = None
        if self._failing:
            logger.info("usage store reachable again")
        self._failing = False
        return True
