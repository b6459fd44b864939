"""The embedded store: keys and usage in this process, persisted to SQLite under GATEWAY_STATE_DIR.

Reads never touch the disk: everything is loaded at start and kept in dicts. Writes go to SQLite on one
dedicated thread, so the event loop never waits on the disk. It serves exactly one process: a lock file in the
state directory refuses a second one instead of letting two processes overwrite each other's counters.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TypeVar

from gateway.keys import KeyRecord
from gateway.store.base import (
    COUNTERS,
    HOURS_KEPT,
    KeyConflict,
    UsageEvent,
    UsageRow,
    event_periods,
    hour_period,
    is_hour,
)

T = TypeVar("T")

# Column names come from the COUNTERS constant, never from input.
_COLUMNS = ", ".join(COUNTERS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL, period TEXT NOT NULL, agent TEXT NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTERS)},
    PRIMARY KEY (key_id, period, agent)
);
"""
_UPSERT_USAGE = f"""
INSERT INTO usage (key_id, period, agent, {_COLUMNS}) VALUES (?, ?, ?, {", ".join("?" * len(COUNTERS))})
ON CONFLICT (key_id, period, agent) DO UPDATE SET {", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTERS)}
"""  # noqa: S608
_SELECT_USAGE = f"SELECT key_id, period, agent, {_COLUMNS} FROM usage"  # noqa: S608


class StateDirInUse(Exception):
    """Another process holds the state directory."""


class SQLiteStore:
    name = "memory"
    cache_ttl = 0.0
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        self._keys: dict[str, KeyRecord] = {}
        self._by_hash: dict[str, str] = {}
        self._usage: dict[tuple[str, str, str], list[int]] = {}
        self._pruned: tuple[date, int] | None = None  # the hour old hourly rows were last pruned in
        self._db: sqlite3.Connection | None = None
        self._lock_file: IO[str] | None = None
        self._disk: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        # SQLite connections belong to one thread: all disk work runs on this one.
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-state")
        await self._on_disk(self._open_disk)

    def _open_disk(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = (self._dir / "gateway.lock").open("w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StateDirInUse(
                f"the state directory {self._dir} is used by another gateway process; the embedded store serves "
                "one process (use GATEWAY_STORE=redis to share state)"
            ) from None
        self._db = sqlite3.connect(self._dir / "gateway.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        # A state directory from an older release: add the counters it does not have yet.
        have = {row[1] for row in self._db.execute("PRAGMA table_info(usage)")}
        for column in COUNTERS:
            if column not in have:
                self._db.execute(f"ALTER TABLE usage ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        for (data,) in self._db.execute("SELECT data FROM keys"):
            record = KeyRecord.from_json(json.loads(data))
            self._index(record)
        for key_id, period, agent, *counts in self._db.execute(_SELECT_USAGE):
            self._usage[(key_id, period, agent)] = list(counts)

    async def close(self) -> None:
        if self._db is not None:
            await self._on_disk(self._close_disk)
        if self._disk is not None:
            self._disk.shutdown(wait=True)
            self._disk = None

    def _close_disk(self) -> None:
        assert self._db is not None
        self._db.close()
        self._db = None
        if self._lock_file is not None:
            self._lock_file.close()

    async def ping(self) -> bool:
        return self._db is not None

    async def _on_disk(self, work: Callable[[], T]) -> T:
        assert self._disk is not None, "the store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._disk, work)

    def _index(self, record: KeyRecord) -> None:
        self._keys[record.id] = record
        self._by_hash[record.secret_hash] = record.id
        if record.grace_hash:
            self._by_hash[record.grace_hash] = record.id

    async def create_key(self, record: KeyRecord) -> None:
        if record.id in self._keys or record.secret_hash in self._by_hash:
            raise KeyConflict(record.id)
        self._index(record)
        await self._write_key(record)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    async def find_key(self, secret_hash: str) -> KeyRecord | None:
        key_id = self._by_hash.get(secret_hash)
        return self._keys.get(key_id) if key_id is not None else None

    async def save_key(self, record: KeyRecord, *, previous: KeyRecord) -> None:
        for old in (previous.secret_hash, previous.grace_hash):
            if old and old not in (record.secret_hash, record.grace_hash):
                self._by_hash.pop(old, None)
        self._index(record)
        await self._write_key(record)

    async def _write_key(self, record: KeyRecord) -> None:
        data = json.dumps(record.to_json())
        await self._on_disk(
            lambda: self._execute("INSERT OR REPLACE INTO keys (id, data) VALUES (?, ?)", record.id, data)
        )

    def _execute(self, sql: str, *args: object) -> None:
        assert self._db is not None, "the store is not open"
        self._db.execute(sql, args)

    async def list_keys(self) -> list[KeyRecord]:
        return sorted(self._keys.values(), key=lambda r: (r.created_at, r.id))

    async def count_keys(self) -> int:
        return len(self._keys)

    async def record_usage(self, events: Sequence[UsageEvent], *, batch_id: str | None = None) -> None:
        # batch_id is not needed here: a failed SQLite transaction was not applied, so repeating it is safe.
        counted = [
            ((event.key_id, period, event.agent), [getattr(event, name) for name in COUNTERS])
            for event in events
            for period in event_periods(event)
        ]
        await self._on_disk(lambda: self._upsert([(*where, *counts) for where, counts in counted]))
        # Counted here only once the disk has it: a batch that failed is sent again and must not count twice.
        for where, counts in counted:
            totals = self._usage.setdefault(where, [0] * len(COUNTERS))
            for index, value in enumerate(counts):
                totals[index] += value
        await self._prune_hours()

    async def _prune_hours(self) -> None:
        """Hourly rows older than HOURS_KEPT go, once an hour: only the console's last day reads them."""
        now = datetime.now(UTC)
        if self._pruned == (now.date(), now.hour):
            return
        self._pruned = (now.date(), now.hour)
        oldest = now - timedelta(hours=HOURS_KEPT)
        cutoff = hour_period(oldest.date(), oldest.hour)
        stale = [where for where in self._usage if is_hour(where[1]) and where[1] < cutoff]
        for where in stale:
            del self._usage[where]
        # Hour periods sort as text (`YYYY-MM-DDTHH`); days (10 characters) and months (7) are never touched.
        sql = "DELETE FROM usage WHERE length(period) = 13 AND substr(period, 11, 1) = 'T' AND period < ?"
        await self._on_disk(lambda: self._execute(sql, cutoff))

    def _upsert(self, rows: list[tuple[object, ...]]) -> None:
        assert self._db is not None, "the store is not open"
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(_UPSERT_USAGE, rows)

    async def usage(self, key_id: str | None, periods: Sequence[str]) -> list[UsageRow]:
        wanted = set(periods)
        return [
            UsageRow(k, period, agent, *counts)
            for (k, period, agent), counts in self._usage.items()
            if period in wanted and (key_id is None or k == key_id) and any(counts)
        ]

    async def reset_usage(self, key_id: str) -> None:
        for entry in [e for e in self._usage if e[0] == key_id]:
            del self._usage[entry]
        await self._on_disk(lambda: self._execute("DELETE FROM usage WHERE key_id = ?", key_id))
