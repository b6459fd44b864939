"""The shared store: keys and usage in Redis, for every replica and worker at once."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from gateway.keys import KeyRecord
from gateway.store.base import COUNTERS, HOURS_KEPT, KeyConflict, UsageEvent, UsageRow, event_periods, is_hour
from gateway.store.redis_connection import RedisBacked, RedisConnection

# Usage hashes outlive the windows anyone reports on (a year of days, two years of months), then clean themselves up.
_DAY_TTL = int(timedelta(days=400).total_seconds())
_MONTH_TTL = int(timedelta(days=800).total_seconds())
_HOUR_TTL = int(timedelta(hours=HOURS_KEPT).total_seconds())
# Separates agent and counter in a usage hash field; agent names never contain it, and rpartition would cope anyway.
_FIELD_SEPARATOR = "\x1f"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# KEYS: the record, the id index, then the hash index entries. ARGV: the JSON, the id, the score.
# Checking and writing in one script is what makes two racing creates end in exactly one KeyConflict.
_CREATE_KEY = """
for i, key in ipairs(KEYS) do
    if i ~= 2 and redis.call('EXISTS', key) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[2]) end
return 1
"""
# KEYS[1]: the hash index entry. ARGV[1]: the record key without the id. One round trip on every request's auth.
# The record key is built inside the script, which a single Redis or Sentinel allows (Cluster would not).
_FIND_KEY = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('GET', ARGV[1] .. id)
"""
# KEYS[1]: the batch's marker. ARGV[1]: the marker's lifetime (s), then operations: `h <hash> <ttl> <n> <field>
# <value>...` adds n counters to a hash and sets its TTL; `s <set> <member> <ttl>` adds a member (TTL 0: none).
# Returns 0, changing nothing, when the marker is there: the batch was applied, its reply lost, and this is it sent
# again. The keys are named in ARGV, which a single Redis or Sentinel allows (Cluster would not).
_RECORD_USAGE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local i = 2
while i <= #ARGV do
    if ARGV[i] == 'h' then
        local n = tonumber(ARGV[i + 3])
        for j = 0, n - 1 do redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 4 + 2 * j], ARGV[i + 5 + 2 * j]) end
        redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 2])
        i = i + 4 + 2 * n
    else
        redis.call('SADD', ARGV[i + 1], ARGV[i + 2])
        if ARGV[i + 3] ~= '0' then redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 3]) end
        i = i + 4
    end
end
return 1
"""
# A batch's marker outlives any resend of it: the accountant sends a failed batch again within seconds of Redis
# answering.
_BATCH_MARKER_TTL = int(timedelta(days=1).total_seconds())
# KEYS: the key's period set, the set of keys with usage. ARGV: the usage hash key without the period, the id.
# A script, so a record_usage landing between reading the periods and deleting them cannot leave an orphan hash.
_RESET_USAGE = """
for _, period in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    redis.call('DEL', ARGV[1] .. period)
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""


class RedisStore(RedisBacked):
    name = "redis"
    # Every replica writes here, so a per-process key cache may trust a lookup only briefly (revocation latency).
    cache_ttl: float = 0.5
    errors: tuple[type[Exception], ...] = (RedisError,)

    def __init__(self, url: str, prefix: str = "gw:") -> None:
        # Admin calls and the batched usage writes (off the request path) wait patiently.
        super().__init__(url, (_CREATE_KEY, _RECORD_USAGE, _RESET_USAGE), connect_timeout=2.0, timeout=5.0)
        # The key lookup is on every request's path, so it gets the short timeouts of the limiter and sessions:
        # a frozen Redis must cost a request half a second at most, not five.
        self._lookups = RedisConnection(url, (_FIND_KEY,), connect_timeout=0.25, timeout=0.5)
        self._prefix = prefix

    async def open(self) -> None:
        await super().open()
        self._lookups.open()

    async def close(self) -> None:
        await self._lookups.close()
        await super().close()

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}key:{key_id}"

    def _hash_index(self, secret_hash: str) -> str:
        return f"{self._prefix}keyhash:{secret_hash}"

    def _usage(self, key_id: str, period: str) -> str:
        return f"{self._prefix}usage:{key_id}:{period}"

    async def create_key(self, record: KeyRecord) -> None:
        hashes = [h for h in (record.secret_hash, record.grace_hash) if h]
        keys = [self._key(record.id), f"{self._prefix}keys", *(self._hash_index(h) for h in hashes)]
        args: list[bytes | str | int] = [orjson.dumps(record.to_json()), record.id, _score(record.created_at)]
        created = await self._script(_CREATE_KEY)(keys=keys, args=args)
        if not created:
            raise KeyConflict(record.id)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return _record(await self._redis().get(self._key(key_id)))

    async def find_key(self, secret_hash: str) -> KeyRecord | None:
        find = partial(self._lookups.script(_FIND_KEY), keys=[self._hash_index(secret_hash)], args=[self._key("")])
        return _record(await self._lookups.call(find))

    async def save_key(self, record: KeyRecord, *, previous: KeyRecord) -> None:
        current = {h for h in (record.secret_hash, record.grace_hash) if h}
        stale = {h for h in (previous.secret_hash, previous.grace_hash) if h} - current
        # One transaction: no replica ever sees the new record with the old index, or a rotated-out hash still valid.
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.set(self._key(record.id), orjson.dumps(record.to_json()))
            pipe.zadd(f"{self._prefix}keys", {record.id: _score(record.created_at)})
            for secret_hash in stale:
                pipe.delete(self._hash_index(secret_hash))
            for secret_hash in current:
                pipe.set(self._hash_index(secret_hash), record.id)
            await pipe.execute()

    async def list_keys(self) -> list[KeyRecord]:
        client = self._redis()
        # Equal scores sort by member, so ties come out by id, as in the embedded store.
        # decode_responses=False, so members come back as bytes (the stubs allow str too).
        ids = cast("list[bytes]", await client.zrange(f"{self._prefix}keys", 0, -1))
        if not ids:
            return []
        values = await client.mget([self._key(key_id.decode()) for key_id in ids])
        return [record for value in values if (record := _record(value)) is not None]

    async def count_keys(self) -> int:
        return int(await self._redis().zcard(f"{self._prefix}keys"))

    async def record_usage(self, events: Sequence[UsageEvent], *, batch_id: str | None = None) -> None:
        if not events:
            return
        # One script: all or nothing, one round trip, and HINCRBY in Redis, never read-modify-write here, since
        # replicas add to the same counters concurrently. Its marker makes a batch sent again count once.
        args: list[str | int] = [_BATCH_MARKER_TTL]
        for event in events:
            fields = [
                item
                for counter, value in event.counts().items()
                if value
                for item in (f"{event.agent}{_FIELD_SEPARATOR}{counter}", value)
            ]
            for period in event_periods(event):
                ttl = _HOUR_TTL if is_hour(period) else _MONTH_TTL if len(period) == 7 else _DAY_TTL
                args += ["h", self._usage(event.key_id, period), ttl, len(fields) // 2, *fields]
                # The period set must outlive the hashes it lists, or reset_usage would miss some.
                args += ["s", f"{self._prefix}usage-periods:{event.key_id}", period, _MONTH_TTL]
            args += ["s", f"{self._prefix}usage-keys", event.key_id, 0]
        marker = f"{self._prefix}usage-batch:{batch_id or secrets.token_hex(12)}"
        await self._script(_RECORD_USAGE)(keys=[marker], args=args)

    async def usage(self, key_id: str | None, periods: Sequence[str]) -> list[UsageRow]:
        client = self._redis()
        if key_id is None:
            members = cast("set[bytes]", await client.smembers(f"{self._prefix}usage-keys"))
            key_ids = sorted(member.decode() for member in members)
        else:
            key_ids = [key_id]
        wanted = [(k, period) for k in key_ids for period in dict.fromkeys(periods)]
        if not wanted:
            return []
        # A transaction, so day and month rows come from the same instant.
        async with client.pipeline(transaction=True) as pipe:
            for k, period in wanted:
                pipe.hgetall(self._usage(k, period))
            hashes: list[dict[bytes, bytes]] = await pipe.execute()
        return [row for (k, period), fields in zip(wanted, hashes, strict=True) for row in _rows(k, period, fields)]

    async def reset_usage(self, key_id: str) -> None:
        script = self._script(_RESET_USAGE)
        keys = [f"{self._prefix}usage-periods:{key_id}", f"{self._prefix}usage-keys"]
        await script(keys=keys, args=[self._usage(key_id, ""), key_id])


def _score(moment: datetime) -> int:
    # Whole microseconds since the epoch stay exact in a sorted set's double (below 2**53 until the year 2255).
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _record(value: Any) -> KeyRecord | None:
    return KeyRecord.from_json(orjson.loads(value)) if value is not None else None


def _rows(key_id: str, period: str, fields: dict[bytes, bytes]) -> list[UsageRow]:
    by_agent: dict[str, dict[str, int]] = {}
    for field, value in fields.items():
        agent, _, counter = field.decode().rpartition(_FIELD_SEPARATOR)
        if counter in COUNTERS:
            by_agent.setdefault(agent, dict.fromkeys(COUNTERS, 0))[counter] = int(value)
    return [
        UsageRow(key_id, period, agent, **counts) for agent, counts in sorted(by_agent.items()) if any(counts.values())
    ]
