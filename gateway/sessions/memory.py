"""Sessions in this process: dicts, one lock per session, expired sessions dropped as they are met.

Used when sessions are configured in memory. Nothing survives a restart, and only this process sees them.
Messages are copied through JSON on the way in and out, so a caller can neither change stored history by mutating
what it passed or got, nor store something Redis could not (both stores accept exactly the same messages).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from typing import Any

import orjson

from gateway.keys import utcnow
from gateway.sessions.base import AnyOwner, Owner, Session
from gateway.sessions.history import bound

# Expired sessions nobody asks for again are swept on `create` at most this often (seconds), so memory stays
# bounded without a background task and without scanning every session on every create.
_SWEEP_EVERY = 60.0


class MemorySessionStore:
    name = "memory"
    # Nothing here can be unavailable.
    errors: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._messages: dict[str, builtins.list[dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._swept_at = time.monotonic()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> bool:
        return True

    async def create(self, session: Session) -> bool:
        if time.monotonic() - self._swept_at >= _SWEEP_EVERY:
            self._sweep()
        if self._alive(session.id) is not None:
            return False
        self._sessions[session.id] = session
        self._messages[session.id] = []
        return True

    async def get(
        self, session_id: str, *, owner: Owner = AnyOwner.ANY
    ) -> tuple[Session, builtins.list[dict[str, Any]]] | None:
        session = self._alive(session_id)
        if session is None or (owner is not AnyOwner.ANY and session.key_id != owner):
            return None
        session = self._sessions[session_id] = session.touched(utcnow())
        return session, _copy(self._messages[session_id])

    async def append(
        self,
        session_id: str,
        messages: builtins.list[dict[str, Any]],
        *,
        max_messages: int | None,
        max_tokens: int | None,
    ) -> bool:
        added = _copy(messages)
        if self._alive(session_id) is None:
            return False
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        # Read, bound and write back as one step. Nothing in between awaits today, so the event loop alone would
        # keep appends apart; the lock keeps that true if bounding ever grows an await (token counting off-loop).
        async with lock:
            session = self._alive(session_id)
            if session is None:
                return False
            history = self._messages[session_id] + added
            if max_messages is not None or max_tokens is not None:
                history = bound(history, max_messages=max_messages, max_tokens=max_tokens)
            self._messages[session_id] = history
            self._sessions[session_id] = session.touched(utcnow())
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
        self._sweep()
        found = [
            session
            for session in self._sessions.values()
            if (all_keys or session.key_id == key_id)
            and (user_id is None or session.user_id == user_id)
            and (model is None or session.model == model)
        ]
        # Newest first; ties by id, descending, as Redis orders equal scores in ZREVRANGE.
        found.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return found[offset : offset + limit], len(found)

    async def delete(self, session_id: str) -> bool:
        alive = self._alive(session_id) is not None
        self._drop(session_id)
        return alive

    def _alive(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at <= utcnow():
            self._drop(session_id)
            return None
        return session

    def _drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._messages.pop(session_id, None)
        # Ids are never reused, and an append waiting on this lock finds the session gone once it has it.
        self._locks.pop(session_id, None)

    def _sweep(self) -> None:
        now = utcnow()
        for session_id in [s.id for s in self._sessions.values() if s.expires_at <= now]:
            self._drop(session_id)
        self._swept_at = time.monotonic()


def _copy(messages: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
    copied: builtins.list[dict[str, Any]] = orjson.loads(orjson.dumps(messages))
    return copied
