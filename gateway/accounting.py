"""Accounting: finished requests become usage events, written to the store in batches off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    return UsageEvent(
        key_id=exchange.key_id or ANONYMOUS,
        agent=exchange.agent or ANONYMOUS,
        day=datetime.now(UTC).date(),
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
    )


def combine(events: list[UsageEvent]) -> list[UsageEvent]:
    """Events summed per key, agent and day: thousands of requests a second become a handful of store writes."""
    totals: dict[tuple[str, str, date], list[int]] = {}
    for event in events:
        counts = totals.setdefault((event.key_id, event.agent, event.day), [0] * len(COUNTERS))
        for index, name in enumerate(COUNTERS):
            counts[index] += getattr(event, name)
    return [UsageEvent(key, agent, day, *counts) for (key, agent, day), counts in totals.items()]


class Accountant:
    """Collects usage events as requests finish and writes them every `interval` seconds in one batch.

    Recording is a list append: the response never waits for the store. A batch that fails (Redis away) is kept
    and retried; stopping writes whatever is left, so a graceful shutdown loses nothing.
    """

    def __init__(self, store: Store, interval: float = 0.5) -> None:
        self._store = store
        self._interval = interval
        self._pending: list[UsageEvent] = []
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
        if not self._pending:
            return
        batch, self._pending = combine(self._pending), []
        try:
            await self._store.record_usage(batch)
        except self._store.errors as exc:
            self._pending = batch + self._pending
            if len(self._pending) > MAX_PENDING:
                dropped = len(self._pending) - MAX_PENDING
                del self._pending[:dropped]
                logger.error("usage store unreachable: dropped the %d oldest usage events", dropped)
            if not self._failing:
                logger.warning("usage store unreachable, keeping %d events to retry: %s", len(self._pending), exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("usage store reachable again")
            self._failing = False
