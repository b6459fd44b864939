"""Redis sessions that survive Redis going away: served from a memory mirror meanwhile, written back after."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.store import AnyOwner, Owner, Session, SessionStore

logger = logging.getLogger("gateway.sessions")

T = TypeVar("T")

# While Redis is away, one request per this many seconds tries it again; the others go straight to memory
# instead of each waiting for a connect timeout.
RETRY_EVERY = 1.0
# Sessions this process keeps a copy of, most recently used first: what it can continue while Redis is away.
MIRROR_SESSIONS = 2000


class FallbackSessionStore:
    """A `SessionStore` over a primary (Redis) that never fails for the primary's sake.

    Every session this process reads or writes is mirrored in memory (the most recent `MIRROR_SESSIONS`). When the
    primary fails, the operation is served by the mirror, so a conversation in progress goes on with the history
    this process last saw; sessions created or changed meanwhile are remembered and written back to the primary
    once it answers again, before anything else is done there. `serving` says which store answered last, for the
    `x-session-storage` header. Replicas do not see each other's fallback sessions until Redis is back.
    """

    errors: tuple[type[Exception], ...] = ()

    def __init__(
        self,
        primary: SessionStore,
        *,
        label: str,
        mirror: MemorySessionStore | None = None,
        retry_every: float = RETRY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.mirror = mirror or MemorySessionStore(max_sessions=MIRROR_SESSIONS)
        self.name = primary.name
        self._label = label  # where the primary is, for the log (never with a password)
        self._retry_every = retry_every
        self._clock = clock
        self._down_since: float | None = None
        self._tried_at = 0.0
        self._dirty: set[str] = set()  # ids changed in the mirror only: to write back
        self._deleted: set[str] = set()  # ids deleted while the primary was away: to delete there too
        self._recovering = asyncio.Lock()
        self.fallbacks = 0  # operations served by the mirror because the primary failed
        # Called on each such operation, and on each failed call to the primary (the metrics).
        self.on_fallback: Callable[[], None] = _nothing
        self.on_error: Callable[[], None] = _nothing

    @property
    def serving(self) -> str:
        return self.mirror.name if self._down_since is not None else self.primary.name

    async def open(self) -> None:
        await self.primary.open()

    async def close(self) -> None:
        await self.primary.close()

    async def ping(self) -> bool:
        return await self.primary.ping()

    async def create(self, session: Session) -> bool:
        created = await self._try(lambda: self.primary.create(session))
        if isinstance(created, _Failed):
            if not await self.mirror.create(session):
                return False
            self._dirty.add(session.id)
            self._deleted.discard(session.id)
            return True
        if created:
            await self.mirror.restore(session, [])
        return created

    async def restore(self, session: Session, messages: builtins.list[dict[str, Any]]) -> None:
        if isinstance(await self._try(lambda: self.primary.restore(session, messages)), _Failed):
            self._dirty.add(session.id)
            self._deleted.discard(session.id)
        await self.mirror.restore(session, messages)

    async def get(
        self, session_id: str, *, owner: Owner = AnyOwner.ANY
    ) -> tuple[Session, builtins.list[dict[str, Any]]] | None:
        found = await self._try(lambda: self.primary.get(session_id, owner=owner))
        if isinstance(found, _Failed):
            return await self.mirror.get(session_id, owner=owner)
        if found is None:
            # Gone where it lives, or someone else's: either way the mirror must not answer for it later.
            await self.mirror.delete(session_id)
            return None
        session, messages = found
        await self.mirror.restore(session, messages)
        return found

    async def append(
        self,
        session_id: str,
        messages: builtins.list[dict[str, Any]],
        *,
        max_messages: int | None,
        max_tokens: int | None,
    ) -> bool:
        appended = await self._try(
            lambda: self.primary.append(session_id, messages, max_messages=max_messages, max_tokens=max_tokens)
        )
        in_mirror = await self.mirror.append(session_id, messages, max_messages=max_messages, max_tokens=max_tokens)
        if isinstance(appended, _Failed):
            if in_mirror:
                self._dirty.add(session_id)
            return in_mirror
        return appended

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
        kwargs: dict[str, Any] = {"key_id": key_id, "user_id": user_id, "model": model, "offset": offset,
                                  "limit": limit, "all_keys": all_keys}  # fmt: skip
        found = await self._try(lambda: self.primary.list(**kwargs))
        return await self.mirror.list(**kwargs) if isinstance(found, _Failed) else found

    async def delete(self, session_id: str) -> bool:
        deleted = await self._try(lambda: self.primary.delete(session_id))
        in_mirror = await self.mirror.delete(session_id)
        if isinstance(deleted, _Failed):
            self._dirty.add(session_id)
            self._deleted.add(session_id)
            return in_mirror
        return deleted

    async def _try(self, operation: Callable[[], Awaitable[T]]) -> T | _Failed:
        """Run `operation` on the primary, or return `_FAILED` (without trying, while it is down and not due)."""
        if self._down_since is not None and self._clock() - self._tried_at < self._retry_every:
            self.fallbacks += 1
            self.on_fallback()
            return _FAILED
        try:
            if self._dirty:
                await self._write_back()
            result = await operation()
        except self.primary.errors as exc:
            self._fail(exc)
            return _FAILED
        if self._down_since is not None:
            logger.warning(
                "session store %s is back after %.1fs; sessions are served from it again",
                self._label,
                self._clock() - self._down_since,
            )
            self._down_since = None
        return result

    def _fail(self, exc: Exception) -> None:
        self.fallbacks += 1
        self.on_error()
        self.on_fallback()
        self._tried_at = self._clock()
        if self._down_since is None:
            self._down_since = self._tried_at
            # Once per outage: every request would otherwise log it.
            logger.warning(
                "session store %s is unreachable (%s); serving sessions from this process's memory until it is back",
                self._label,
                type(exc).__name__,
            )

    async def _write_back(self) -> None:
        """Put what changed while the primary was away back into it, before it serves anything else."""
        async with self._recovering:
            while self._dirty:
                session_id = next(iter(self._dirty))
                found = await self.mirror.get(session_id)
                if session_id in self._deleted:
                    await self.primary.delete(session_id)
                elif found is not None:
                    await self.primary.restore(*found)
                else:
                    # Expired, or pushed out of the mirror by newer sessions: what the primary holds stays.
                    logger.info("session %s changed while %s was away but is no longer mirrored", session_id,
                                self._label)  # fmt: skip
                self._dirty.discard(session_id)
                self._deleted.discard(session_id)
            # Nothing to say when the set was empty: another request wrote everything back while we waited.


class _Failed:
    pass


_FAILED = _Failed()


def _nothing() -> None:
    pass
