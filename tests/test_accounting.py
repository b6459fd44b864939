"""Accounting: finished requests become usage events, summed before they reach the store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gateway.accounting import Accountant, combine, usage_event
from gateway.exchange import Exchange
from gateway.store.base import ANONYMOUS, UsageEvent, UsageRow
from gateway.store.sqlite import SQLiteStore

DAY = date(2026, 11, 22)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def finished(**fields: object) -> Exchange:
    exchange = Exchange("r", "POST", "/v1/chat/completions", status=200, key_id="key_a", agent="demo")
    for name, value in fields.items():
        setattr(exchange, name, value)
    return exchange


def test_events_say_what_happened() -> None:
    ok = usage_event(finished(prompt_tokens=3, completion_tokens=4))
    assert ok is not None
    assert (ok.requests, ok.prompt_tokens, ok.completion_tokens, ok.errors, ok.cancelled) == (1, 3, 4, 0, 0)
    failed = usage_event(finished(status=502))
    assert failed is not None
    assert failed.errors == 1
    broken_stream = usage_event(finished(stream="upstream_error"))
    assert broken_stream is not None
    assert broken_stream.errors == 1
    left = usage_event(finished(stream="client_disconnected", completion_tokens=9))
    assert left is not None
    assert (left.cancelled, left.errors, left.completion_tokens) == (1, 0, 9)
    anonymous = usage_event(finished(key_id=None))
    assert anonymous is not None
    assert anonymous.key_id == ANONYMOUS
    assert usage_event(finished(key_id=None, agent=None, status=401)) is None


def test_combine_sums_per_key_agent_and_day() -> None:
    events = [
        UsageEvent("k", "a", DAY, prompt_tokens=1, completion_tokens=2),
        UsageEvent("k", "a", DAY, prompt_tokens=10, completion_tokens=20, errors=1),
        UsageEvent("k", "b", DAY, prompt_tokens=5),
        UsageEvent("k", "a", date(2026, 11, 23), cancelled=1),
    ]
    assert combine(events) == [
        UsageEvent("k", "a", DAY, requests=2, prompt_tokens=11, completion_tokens=22, errors=1),
        UsageEvent("k", "b", DAY, prompt_tokens=5),
        UsageEvent("k", "a", date(2026, 11, 23), cancelled=1),
    ]


@pytest.mark.anyio
async def test_stop_writes_what_is_pending(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state")
    await store.open()
    accountant = Accountant(store, interval=3600)
    await accountant.start()
    for _ in range(3):
        accountant.record(finished(prompt_tokens=2, completion_tokens=1))
    await accountant.stop()
    rows = await store.usage("key_a", [datetime.now(UTC).date().isoformat()])
    await store.close()
    assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [(3, 6, 3)]
    assert all(isinstance(r, UsageRow) for r in rows)


class FlakyStore(SQLiteStore):
    """A store whose usage writes fail while `failing`, after being applied or not, as a Redis that timed out."""

    errors = (OSError,)

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.failing = False
        self.applied_anyway = False
        self.batches: list[str | None] = []
        self._applied: set[str | None] = set()

    async def record_usage(self, events: Sequence[UsageEvent], *, batch_id: str | None = None) -> None:
        self.batches.append(batch_id)
        if self.failing and not self.applied_anyway:
            raise OSError("store away")
        if batch_id not in self._applied:  # applied once, as the Redis store does by the batch's marker
            self._applied.add(batch_id)
            await super().record_usage(events, batch_id=batch_id)
        if self.failing:
            raise OSError("timed out after it was applied")


@pytest.mark.anyio
@pytest.mark.parametrize("applied_anyway", [False, True], ids=["not-applied", "applied-anyway"])
async def test_a_failed_batch_is_sent_again_under_its_id_before_anything_newer(
    tmp_path: Path, applied_anyway: bool
) -> None:
    store = FlakyStore(tmp_path / "state")
    store.applied_anyway = applied_anyway
    await store.open()
    accountant = Accountant(store, interval=3600)
    accountant.record(finished(prompt_tokens=2))
    store.failing = True
    await accountant.flush()
    await accountant.flush()
    accountant.record(finished(prompt_tokens=5))
    store.failing = False
    await accountant.flush()
    rows = await store.usage("key_a", [datetime.now(UTC).date().isoformat()])
    await store.close()
    # The first batch three times under one id, then the newer events in a batch of their own.
    assert store.batches[0] == store.batches[1] == store.batches[2] != store.batches[3]
    assert len(store.batches) == 4
    assert [(r.requests, r.prompt_tokens) for r in rows] == [(2, 7)]
