"""How the gateway talks to Redis: no client-side retries, short timeouts, scripts loaded once and called by SHA."""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError


class RedisConnection:
    """One pool to one Redis, for a store or the limiter.

    No retries: a retried MULTI or script whose reply was lost would apply twice (usage counted twice, a created
    key turned into a conflict, a message stored twice), and retrying with backoff would stall every request
    while Redis is down (redis-py retries by default). Errors surface at once and the caller decides; the
    timeouts keep a vanished host from hanging requests (a `?socket_timeout=` in the URL overrides them).
    """

    def __init__(self, url: str, scripts: Iterable[str], *, connect_timeout: float, timeout: float) -> None:
        self._url = url
        self._sources = tuple(scripts)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._client: redis.asyncio.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def open(self) -> None:
        """Make the pool (connections are opened on first use) and register the scripts."""
        self._client = redis.asyncio.from_url(
            self._url,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            socket_connect_timeout=self._connect_timeout,
            socket_timeout=self._timeout,
        )
        # Registered once: calls go by SHA (EVALSHA) and load the script only when the server lacks it.
        self._scripts = {source: self._client.register_script(source) for source in self._sources}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> bool:
        """Whether Redis answers; never raises."""
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    @property
    def client(self) -> redis.asyncio.Redis:
        assert self._client is not None, "the Redis connection is not open"
        return self._client

    def script(self, source: str) -> AsyncScript:
        assert self._client is not None, "the Redis connection is not open"
        return self._scripts[source]
