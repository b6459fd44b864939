"""How the gateway talks to Redis: no client-side retries, short timeouts, scripts loaded once and called by SHA."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.settings import SENTINEL_SCHEME

T = TypeVar("T")


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
        self._sentinel: Sentinel | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def open(self) -> None:
        """Make the pool (connections are opened on first use) and register the scripts."""
        options: dict[str, Any] = {
            "decode_responses": False,
            "retry": Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
            "socket_connect_timeout": self._connect_timeout,
            "socket_timeout": self._timeout,
        }
        sentinel = parse_sentinel_url(self._url)
        if sentinel is None:
            self._client = redis.asyncio.from_url(self._url, **options)
        else:
            # The master's address comes from the sentinels, asked again whenever a connection to it fails: after
            # a failover the next call goes to the new master.
            addresses, master, db, password = sentinel
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                addresses,
                sentinel_kwargs={"socket_connect_timeout": self._connect_timeout, "socket_timeout": self._timeout},
                **options,
            )
            self._client = self._sentinel.master_for(master, db=db, password=password)
        # Registered once: calls go by SHA (EVALSHA) and load the script only when the server lacks it.
        self._scripts = {source: self._client.register_script(source) for source in self._sources}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._sentinel is not None:
            for connection in self._sentinel.sentinels:
                await connection.aclose()
            self._sentinel = None

    async def ping(self) -> bool:
        """Whether Redis answers; never raises."""
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation`, and once more on fresh connections if its connection failed.

        After Redis restarts, every pooled connection is dead but looks alive until used: without this, each
        would fail one call, and each failure would count as Redis being down. Only for operations that are safe
        to repeat (reads, and writes made idempotent), since the first attempt may have been applied before its
        reply was lost. A timeout is not retried: a frozen Redis would cost the caller twice.
        """
        try:
            return await operation()
        except (RedisConnectionError, ConnectionError):
            if self._client is not None:
                await self._client.connection_pool.disconnect()
            return await operation()

    @property
    def client(self) -> redis.asyncio.Redis:
        assert self._client is not None, "the Redis connection is not open"
        return self._client

    def script(self, source: str) -> AsyncScript:
        assert self._client is not None, "the Redis connection is not open"
        return self._scripts[source]


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None] | None:
    """(sentinel addresses, master name, database, password) of a `redis+sentinel://` URL; None for another URL."""
    if not url.startswith(SENTINEL_SCHEME):
        return None
    rest = url[len(SENTINEL_SCHEME) :]
    password = None
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        password = credentials.split(":", 1)[1] if ":" in credentials else credentials
    hosts, _, path = rest.partition("/")
    master, _, db = path.partition("/")
    if not hosts or not master:
        raise ValueError("a Sentinel URL names its sentinels and its master: redis+sentinel://host:port,.../master/db")
    addresses = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        addresses.append((name or host, int(port) if name else 26379))
    return addresses, master, int(db or 0), password


class RedisBacked:
    """A store kept in Redis: its connection, opened and closed with the store, and the helpers its methods use."""

    def __init__(self, url: str, scripts: Iterable[str], *, connect_timeout: float, timeout: float) -> None:
        self._connection = RedisConnection(url, scripts, connect_timeout=connect_timeout, timeout=timeout)

    async def open(self) -> None:
        self._connection.open()

    async def close(self) -> None:
        await self._connection.close()

    async def ping(self) -> bool:
        return await self._connection.ping()

    def _redis(self) -> redis.asyncio.Redis:
        return self._connection.client

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await self._connection.call(operation)

    def _script(self, source: str) -> AsyncScript:
        return self._connection.script(source)
