"""Redis sessions answered from Redis or not at all: a refusal with Retry-After while Redis is away."""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.errors import StoreUnavailable
from gateway.sessions.base import AnyOwner, Owner, Session, SessionStore

logger = logging.getLogger("gateway.sessions")

T = TypeVar("T")

# While Redis is away, one request per this many seconds tries it again; the others are refused at once instead
# of each waiting out a timeout (a frozen Redis accepts connections and never answers).
RETRY_EVERY = 1.0


class GuardedSessionStore:
    """A `SessionStore` over Redis that answers from Redis or refuses with `StoreUnavailable` (503, Retry-After).

    Sessions in Redis are shared by every worker and replica, so no process holds all of a conversation: a copy in
    one process's memory misses the turns the others took. Answering from such a copy during an outage would send
    the upstream a history without acknowledged turns, and writing it back afterwards would overwrite the turns
    the others stored. So this store never keeps a copy. The failure modes it handles:

    - a connection that Redis dropped (it restarted): the call is tried again on fresh connections by the Redis
      store itself, so recovery is seen at the first call after it, not after every stale pooled connection failed;
    - Redis down or frozen: the call fails (within the store's short timeouts), Redis counts as down, and the
      request is refused with 503 and `Retry-After`, which the SDKs honour by retrying;
    - while it is down, one call per `RETRY_EVERY` seconds tries Redis again and the others are refused without
      trying, so a frozen Redis costs one timeout a second, not one per request.

    The SDKs retry a 503 twice by default, so a Redis restart of a second or two is not even seen by their users.
    """

    def __init__(
        self,
        primary: SessionStore,
        *,
        label: str,
        retry_every: float = RETRY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.name = primary.name
        self.errors: tuple[type[Exception], ...] = ()  # it raises StoreUnavailable instead: a refusal, rendered
        self._label = label  # where Redis is, for the log (never with a password)
        self._retry_every = retry_every
        self._clock = clock
        self._down_since: float | None = None
        self._tried_at = 0.0
        # Called on each failed call to Redis (the metrics).
        self.on_error: Callable[[], None] = _nothing

    @property
    def serving(self) -> str:
        """`redis`, or `unavailable` while Redis is away (what /readyz shows)."""
        return "unavailable" if self._down_since is not None else self.primary.name

    async def open(self) -> None:
        await self.primary.open()

    async def close(self) -> None:
        await self.primary.close()

    async def ping(self) -> bool:
        return await self.primary.ping()

    async def create(self, session: Session) -> bool:
        return await self._call(lambda: self.primary.create(session))

    async def get(
        self, session_id: str, *, owner: Owner = AnyOwner.ANY
    ) -> tuple[Session, builtins.list[dict[str, Any]]] | None:
        return await self._call(lambda: self.primary.get(session_id, owner=owner))

    async def append(
        self,
        session_id: str,
        messages: builtins.list[dict[str, Any]],
        *,
        max_messages: int | None,
        max_tokens: int | None,
    ) -> bool:
        return await self._call(
            lambda: self.primary.append(session_id, messages, max_messages=max_messages, max_tokens=max_tokens)
        )

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
        return await self._call(
            lambda: self.primary.list(
                key_id=key_id, user_id=user_id, model=model, offset=offset, limit=limit, all_keys=all_keys
            )
        )

    async def delete(self, session_id: str) -> bool:
        return await self._call(lambda: self.primary.delete(session_id))

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        now = self._clock()
        if self._down_since is not None:
            wait = self._retry_every - (now - self._tried_at)
            if wait > 0:
                raise self._refusal(wait)
        # Claimed before the call: requests arriving while this one waits on a frozen Redis are refused at once.
        self._tried_at = now
        try:
            result = await operation()
        except self.primary.errors as exc:
            self.on_error()
            if self._down_since is None:
                self._down_since = now
                # Once per outage: every request would otherwise log it.
                logger.warning(
                    "session store %s is unreachable (%s); session requests are refused with 503 until it is back",
                    self._label,
                    type(exc).__name__,
                )
            raise self._refusal(self._retry_every) from None
        if self._down_since is not None:
            logger.warning("session store %s is back after %.1fs", self._label, self._clock() - self._down_since)
            self._down_since = None
        return result

    def _refusal(self, wait: float) -> StoreUnavailable:
        return StoreUnavailable(
            "The session store is unavailable, so this conversation cannot be continued without losing turns; "
            "retry shortly.",
            retry_after=wait,
        )


def _nothing() -> None:
    pass
