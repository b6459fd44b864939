"""Sessions in Redis, shared by every replica and worker and kept across gateway restarts.

Key layout (prefix `gw:sess:` by default):

- `s:<id>`: hash, the record. `data` the session's JSON, `owner` its key id (`-` when anonymous), `ttl_ms`,
  `expires` (microseconds since the epoch, moved on every use) and `trims` (a counter of history rewrites).
- `m:<id>`: list, the messages as JSON strings, oldest first. Same TTL as the record, refreshed together.
- `owner:<key id>`: sorted set of one key's session ids, scored by creation time (microseconds); `all`: every
  session, for the admin API. Index entries are not expired by Redis: listing skips and removes those whose record
  is gone, and each create drops the dead ones among a few random members, so an index nobody lists stays bounded.

- `t:<turn id>`: a string that lives a minute, marking an append as done, so that one retried after its reply was
  lost (Redis restarted under it) pushes nothing twice.

Every call that fails on its connection is tried once more on fresh connections (`RedisConnection.call`), so each
operation here is safe to repeat: reads, a create that recognises its own record, appends by their turn marker, a
delete, and a rewrite guarded by `trims`.

Appending is one Lua script: the record must exist, the messages are pushed as one block, both TTLs are refreshed.
Nothing can interleave inside a script, so concurrent appends never lose messages and never split each other's.

Bounding the history (`history.bound`: whole turns, pinned system messages, tool calls with their results) is Python
and stays there rather than being rewritten in Lua. When bounds are set, the append script also returns the whole
history and the `trims` counter, read in the same atomic step; the gateway bounds that snapshot and a second script
replaces the snapshot's part of the list with the bounded messages, keeping whatever was appended since behind it,
but only if `trims` has not moved (no other rewrite happened since the snapshot); otherwise it returns a fresh
snapshot and the gateway tries again. Appends never move `trims`, so they never make a rewrite fail, and a rewrite
never drops anything it did not see. The limits: between the two scripts a reader can see more history than the
bounds allow (the appends whose rewrite has not landed yet), so a reader that must stay within them bounds again;
when every attempt of one append loses, the list stays longer only until a later append bounds it (once any rewrite
after the last append wins, the history is bounded whole); and the result equals bounding everything at once only
because `bound` keeps the newest whole turns, so bounding a bounded prefix again loses nothing it would have kept.
"""

from __future__ import annotations

import builtins
import dataclasses
import secrets
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from gateway.keys import utcnow
from gateway.sessions.base import AnyOwner, Owner, Session
from gateway.sessions.history import bound
from gateway.store.base import ANONYMOUS
from gateway.store.redis_connection import RedisBacked

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Rewrites that lose to another rewrite retry with a fresh snapshot. After a win, everyone else's next snapshot holds
# the whole history, so two attempts already converge; the rest is headroom for many appends landing at once.
_TRIM_ATTEMPTS = 5
# Random index members checked (and removed when dead) per create.
_PRUNE_SAMPLE = 8

# Shared by the scripts below. KEYS[1]: the record, KEYS[2]: the messages. ARGV[1]: now, microseconds.
# Returns the TTL in milliseconds, or false when the session is gone (expired or deleted).
_TOUCH = """
local function touch()
    local ttl = redis.call('HGET', KEYS[1], 'ttl_ms')
    if not ttl then return false end
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
    -- %.0f: Redis would print a Lua number this large in exponent notation and lose digits.
    redis.call('HSET', KEYS[1], 'expires', string.format('%.0f', tonumber(ARGV[1]) + tonumber(ttl) * 1000))
    return ttl
end
"""
# KEYS: the record, the owner's index, the global index, the messages. ARGV: the fields (data, owner, ttl_ms,
# expires), the id, the score, the record key without the id (to check sampled index members), the sample size.
# Returns 0 (and changes nothing) when the id is taken. `trims` only grows: a rewrite planned on an earlier session
# under the same id never applies to this one.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    -- The same record again is this create retried after its reply was lost: it did create the session.
    if redis.call('HGET', KEYS[1], 'data') == ARGV[1] then return 1 end
    return 0
end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'owner', ARGV[2], 'ttl_ms', ARGV[3], 'expires', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'trims', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[4])
for i = 2, 3 do
    for _, member in ipairs(redis.call('ZRANDMEMBER', KEYS[i], ARGV[8])) do
        if redis.call('EXISTS', ARGV[7] .. member) == 0 then redis.call('ZREM', KEYS[i], member) end
    end
    redis.call('ZADD', KEYS[i], ARGV[6], ARGV[5])
end
return 1
"""
# ARGV[2]: the owner the session must have, or '' for any. Returns {data, messages}, or false when the session is
# gone or someone else's (then it is not touched).
_GET = (
    _TOUCH
    + """
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return false end
if not touch() then return false end
return {redis.call('HGET', KEYS[1], 'data'), redis.call('LRANGE', KEYS[2], 0, -1)}
"""
)
# KEYS[3]: the turn's marker. ARGV[2]: '1' to return the history for bounding; ARGV[3..]: the messages. Returns
# {trims} or {trims, messages}, or false when the session is gone (then nothing is written). The marker makes a
# retried append (its first reply lost with its connection) push nothing twice; it outlives any retry.
_APPEND = (
    _TOUCH
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', 60000) then
    for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
end
touch()
local trims = redis.call('HGET', KEYS[1], 'trims')
if ARGV[2] == '1' then return {trims, redis.call('LRANGE', KEYS[2], 0, -1)} end
return {trims}
"""
)
# KEYS: the record, the messages. ARGV: the snapshot's trims, its length, then the bounded messages.
# Returns {} when done (or false when the session is gone), {trims, messages} when another rewrite came first.
_TRIM = """
local trims = redis.call('HGET', KEYS[1], 'trims')
if not trims then return false end
if trims ~= ARGV[1] then return {trims, redis.call('LRANGE', KEYS[2], 0, -1)} end
local since = redis.call('LRANGE', KEYS[2], tonumber(ARGV[2]), -1)
redis.call('DEL', KEYS[2])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
for _, message in ipairs(since) do redis.call('RPUSH', KEYS[2], message) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('HINCRBY', KEYS[1], 'trims', 1)
return {}
"""
# KEYS: the record, the messages, the global index. ARGV: the owner index key without the owner, the id.
# The owner's index key is built here from the record, which a single Redis or Sentinel allows (Cluster would not).
_DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', ARGV[1] .. owner, ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""


class RedisSessionStore(RedisBacked):
    name = "redis"
    # OSError too: a socket can fail below redis-py's own exception mapping.
    errors: tuple[type[Exception], ...] = (RedisError, OSError)

    def __init__(self, url: str, prefix: str = "gw:sess:") -> None:
        super().__init__(url, (_CREATE, _GET, _APPEND, _TRIM, _DELETE), connect_timeout=0.25, timeout=0.5)
        self._prefix = prefix

    def _record(self, session_id: str) -> str:
        return f"{self._prefix}s:{session_id}"

    def _history(self, session_id: str) -> str:
        return f"{self._prefix}m:{session_id}"

    def _turn(self, turn_id: str) -> str:
        return f"{self._prefix}t:{turn_id}"

    def _owner(self, key_id: str | None) -> str:
        return f"{self._owners()}{key_id or ANONYMOUS}"

    def _owners(self) -> str:
        return f"{self._prefix}owner:"

    def _all(self) -> str:
        return f"{self._prefix}all"

    async def create(self, session: Session) -> bool:
        keys = [self._record(session.id), self._owner(session.key_id), self._all(), self._history(session.id)]
        args: builtins.list[bytes | str | int] = [
            orjson.dumps(session.to_json()),
            session.key_id or ANONYMOUS,
            session.ttl_seconds * 1000,
            _micros(session.expires_at),
            session.id,
            _micros(session.created_at),
            self._record(""),
            _PRUNE_SAMPLE,
        ]
        return bool(await self._call(partial(self._script(_CREATE), keys=keys, args=args)))

    async def get(
        self, session_id: str, *, owner: Owner = AnyOwner.ANY
    ) -> tuple[Session, builtins.list[dict[str, Any]]] | None:
        now = utcnow()
        keys = [self._record(session_id), self._history(session_id)]
        wanted = "" if owner is AnyOwner.ANY else owner or ANONYMOUS
        reply = await self._call(partial(self._script(_GET), keys=keys, args=[_micros(now), wanted]))
        if reply is None:
            return None
        data, messages = reply
        session = Session.from_json(orjson.loads(data)).touched(now)
        return session, [orjson.loads(message) for message in messages]

    async def append(
        self,
        session_id: str,
        messages: builtins.list[dict[str, Any]],
        *,
        max_messages: int | None,
        max_tokens: int | None,
    ) -> bool:
        bounded = max_messages is not None or max_tokens is not None
        keys = [self._record(session_id), self._history(session_id), self._turn(secrets.token_hex(12))]
        args = [_micros(utcnow()), 1 if bounded else 0, *(orjson.dumps(message) for message in messages)]
        reply = await self._call(partial(self._script(_APPEND), keys=keys, args=args))
        if reply is None:
            return False
        for _ in range(_TRIM_ATTEMPTS if bounded else 0):
            trims, snapshot = reply
            history = [orjson.loads(message) for message in snapshot]
            kept = bound(history, max_messages=max_messages, max_tokens=max_tokens)
            if len(kept) == len(history):
                break
            trim = [trims, len(snapshot), *(orjson.dumps(message) for message in kept)]
            # Safe to repeat: a rewrite that landed moved `trims`, so its repeat only returns a fresh snapshot.
            reply = await self._call(partial(self._script(_TRIM), keys=keys[:2], args=trim))
            if not reply:
                break
        return True

    async def list(
        self,
        *,
        key_id: str | None,
        user_id: str | None = None,
        model: str | None = None,
        offset: int = 0,
        limit: int = 20,
        all_keys: bool = False,
    ) -> tuple[builtins.list[Session], int]:
        return await self._call(lambda: self._list(key_id, user_id, model, offset, limit, all_keys=all_keys))

    async def _list(
        self, key_id: str | None, user_id: str | None, model: str | None, offset: int, limit: int, *, all_keys: bool
    ) -> tuple[builtins.list[Session], int]:
        client = self._redis()
        index = self._all() if all_keys else self._owner(key_id)
        # Newest first; equal scores come out by id, descending. Members are bytes (decode_responses=False).
        ids = [member.decode() for member in cast("list[bytes]", await client.zrevrange(index, 0, -1))]
        if not ids:
            return [], 0
        async with client.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hmget(self._record(session_id), ["data", "expires"])
            rows: builtins.list[builtins.list[bytes | None]] = await pipe.execute()
        found: builtins.list[Session] = []
        dead: builtins.list[str] = []
        for session_id, (data, expires) in zip(ids, rows, strict=True):
            if data is None or expires is None:
                dead.append(session_id)
                continue
            session = Session.from_json(orjson.loads(data))
            if (user_id is None or session.user_id == user_id) and (model is None or session.model == model):
                found.append(dataclasses.replace(session, expires_at=_from_micros(int(expires))))
        if dead:
            async with client.pipeline(transaction=False) as pipe:
                pipe.zrem(index, *dead)
                pipe.zrem(self._all(), *dead)
                await pipe.execute()
        return found[offset : offset + limit], len(found)

    async def delete(self, session_id: str) -> bool:
        keys = [self._record(session_id), self._history(session_id), self._all()]
        deleted = await self._call(partial(self._script(_DELETE), keys=keys, args=[self._owners(), session_id]))
        return bool(deleted)


def _micros(moment: datetime) -> int:
    # Whole microseconds since the epoch stay exact in a double (sorted set scores, Lua numbers) until the year 2255.
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
