"""Hot reload of the route config: on SIGHUP, on a change to its files, and when another replica announces one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config.routing import ConfigError, RoutingTable, config_files
from gateway.errors import InvalidConfig

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub
    from watchfiles import Change

    from gateway.store.redis_connection import RedisConnection

logger = logging.getLogger("gateway.reload")

# Pub/sub channels are server-wide (not per database): a gateway that hears another deployment's announcement
# finds its own files unchanged and does nothing.
CHANNEL = "gw:reload"
# watchfiles hands over a batch of changes once the files have been quiet this long, so that an editor's
# truncate-then-write or a ConfigMap's symlink swap is read once, whole.
QUIET_MS = 200
# While Redis is away the channel is subscribed again this often.
RESUBSCRIBE_EVERY = 1.0
# A channel quiet this long is PINGed: a vanished Redis host sends no reset, and a dead subscription hears nothing.
PING_WHEN_QUIET = 10.0
REDIS_TIMEOUT = 2.0

Load = Callable[[str], RoutingTable]


def fingerprint(config: Path) -> str | None:
    """A digest of the config files' names and bytes; None when they cannot be read (a reload says why)."""
    digest = hashlib.sha256()
    try:
        for file in config_files(config):
            digest.update(str(file).encode() + b"\0" + file.read_bytes() + b"\0")
    except (ConfigError, OSError):
        return None
    return digest.hexdigest()


def is_config_change(config: Path) -> Callable[[Change, str], bool]:
    """A watchfiles filter for the config: the file itself (or, for a directory, its `*.yaml`/`*.yml` files), and
    the `..data` entries through which Kubernetes swaps the files of a mounted ConfigMap at once."""
    is_dir = config.is_dir()
    names = {config.name, config.resolve().name}

    def relevant(change: Change, path: str) -> bool:
        name = Path(path).name
        if name.startswith(".."):
            return True
        return name.endswith((".yaml", ".yml")) if is_dir else name in names

    return relevant


def watched_directories(config: Path) -> list[Path]:
    """Where the config's changes show: its directory (a file may be replaced, not written in place), and also
    where a symlinked config really lives."""
    found: list[Path] = []
    for path in (config.absolute(), config.resolve()):
        directory = path if path.is_dir() else path.parent
        if directory not in found:
            found.append(directory)
    return found


class Reloader:
    """Reloads the route config on every trigger, here and, with Redis, on every replica.

    `reload(trigger)` re-reads the files through `load`, which swaps the routing table whole or raises
    `InvalidConfig` (logged with its problems) and keeps the old one; requests in flight hold the table they
    started with. A successful reload is announced on the Redis channel, and every other replica that hears it
    re-reads its own files (each has its own copy mounted) unless they are unchanged since its last load: an
    announcement that comes back, or arrives twice, does nothing. SIGHUP is a trigger too, and so is a change to
    the files when `watch` is on; the tasks behind them belong to `start()` and `stop()`.
    """

    def __init__(self, load: Load, config: Path, *, watch: bool, redis_url: str | None) -> None:
        self._load = load
        self._config = config
        self._watch = watch
        self._channel = ReloadChannel(redis_url, self._heard) if redis_url is not None else None
        self._loaded: str | None = None  # the fingerprint of the files behind the table in use
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_watching = asyncio.Event()
        self._sighup_loop: asyncio.AbstractEventLoop | None = None
        self._previous_sighup: Any = None

    def reload(self, trigger: str) -> RoutingTable:
        """Re-read the config here and announce it to the other replicas; raise `InvalidConfig` if it is refused."""
        table = self._reload_here(trigger)
        if self._channel is not None:
            self._spawn(self._channel.announce(trigger), "announce")
        return table

    def _reload_here(self, trigger: str) -> RoutingTable:
        read = fingerprint(self._config)
        table = self._load(trigger)
        self._loaded = read
        return table

    def reload_if_changed(self, trigger: str, *, announce: bool) -> None:
        """Reload unless the files are byte for byte those of the table in use; a refusal is logged, not raised."""
        current = fingerprint(self._config)
        if current is not None and current == self._loaded:
            logger.debug("route config unchanged (%s): nothing to reload", trigger)
            return
        with contextlib.suppress(InvalidConfig):  # logged with its problems by `load`
            if announce:
                self.reload(trigger)
            else:
                self._reload_here(trigger)

    def _heard(self, trigger: str) -> None:
        self.reload_if_changed(trigger, announce=False)

    async def start(self) -> None:
        self._loaded = fingerprint(self._config)
        self._stop_watching = asyncio.Event()
        self._listen_for_sighup()
        if self._watch:
            self._spawn(self._watch_files(), "watch")
        if self._channel is not None:
            self._channel.open()
            self._spawn(self._channel.listen(), "listen")

    async def stop(self) -> None:
        self._restore_sighup()
        # awatch waits for changes in a thread that only this event stops promptly (cancelling alone waits for
        # the thread's own timeout).
        self._stop_watching.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=f"gateway-reload-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("%s failed", task.get_name(), exc_info=error)

    def _listen_for_sighup(self) -> None:
        # Signal handlers belong to the main thread; an app served from another one (as in tests) goes without.
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGHUP)
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError) as exc:  # a loop without signal support
            logger.warning("no reload on SIGHUP here (%s): use POST /admin/reload", exc)
            return
        self._previous_sighup = previous
        self._sighup_loop = loop

    def _restore_sighup(self) -> None:
        if self._sighup_loop is None:
            return
        self._sighup_loop.remove_signal_handler(signal.SIGHUP)
        self._sighup_loop = None
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)

    def _on_sighup(self) -> None:
        with contextlib.suppress(InvalidConfig):  # logged with its problems by `load`
            self.reload("SIGHUP")

    async def _watch_files(self) -> None:
        # Imported only when watching: most processes never do, and it costs ~5 MB of memory.
        from watchfiles import awatch  # noqa: PLC0415

        directories = watched_directories(self._config)
        logger.info("watching %s for changes to the route config", ", ".join(map(str, directories)))
        try:
            async for _ in awatch(
                *directories,
                watch_filter=is_config_change(self._config),
                step=QUIET_MS,
                stop_event=self._stop_watching,
                recursive=False,
            ):
                self.reload_if_changed("file change", announce=True)
        except OSError as exc:
            logger.error("cannot watch the route config (%s): reload it with SIGHUP or POST /admin/reload", exc)


class ReloadChannel:
    """The Redis pub/sub channel on which replicas tell each other that they reloaded.

    A message is `{"origin", "trigger"}`; a replica ignores its own. The subscription lives on its own connection
    and is made again whenever Redis comes back, after which the replica checks its files once, in case it missed
    an announcement meanwhile.
    """

    def __init__(
        self,
        url: str,
        heard: Callable[[str], None],
        *,
        timeout: float = REDIS_TIMEOUT,
        ping_when_quiet: float = PING_WHEN_QUIET,
    ) -> None:
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._url = url
        self._heard = heard
        self._timeout = timeout
        self._ping_when_quiet = ping_when_quiet
        self._connection: RedisConnection | None = None

    def open(self) -> None:
        # Imported only when used, as the stores do: the redis client is heavy for a process that does not need it.
        from gateway.store.redis_connection import RedisConnection  # noqa: PLC0415

        self._connection = RedisConnection(self._url, (), connect_timeout=self._timeout, timeout=self._timeout)
        self._connection.open()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def announce(self, trigger: str) -> None:
        from redis.exceptions import RedisError  # noqa: PLC0415 (see open)

        assert self._connection is not None, "the reload channel is not open"
        message = orjson.dumps({"origin": self.origin, "trigger": trigger})
        try:
            await self._connection.client.publish(CHANNEL, message)
        except (RedisError, OSError) as exc:
            logger.warning("reload not announced to the other replicas (Redis: %s): they keep their config", exc)

    async def listen(self) -> None:
        """Hear the other replicas' announcements until cancelled, subscribing again whenever Redis comes back."""
        from redis.exceptions import RedisError  # noqa: PLC0415 (see open)

        assert self._connection is not None, "the reload channel is not open"
        lost = False
        while True:
            pubsub = self._connection.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                if lost:
                    logger.info("reload channel %s subscribed again", CHANNEL)
                    lost = False
                    self._heard("reload channel back")
                else:
                    logger.info("hearing reloads of other replicas on Redis channel %s", CHANNEL)
                await self._hear(pubsub)
            except (RedisError, OSError) as exc:
                if not lost:
                    logger.warning(
                        "reload channel %s lost (Redis: %s): reloads of other replicas go unheard until it is back",
                        CHANNEL,
                        exc,
                    )
                lost = True
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RESUBSCRIBE_EVERY)

    async def _hear(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        pong_by: float | None = None  # when the PING sent on a quiet channel must have been answered
        while True:
            wait = self._ping_when_quiet if pong_by is None else max(0.0, pong_by - loop.time())
            message = await pubsub.get_message(timeout=wait)
            if message is None:
                if pong_by is not None:
                    raise TimeoutError("no answer to PING")
                await pubsub.ping()
                pong_by = loop.time() + self._timeout
            elif message["type"] == "pong":
                pong_by = None
            elif message["type"] == "message":
                self._take(message["data"])

    def _take(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            origin, trigger = str(message["origin"]), str(message["trigger"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("ignored a malformed message on %s: %r", CHANNEL, data[:200])
            return
        if origin != self.origin:
            self._heard(f"{trigger} on {origin}")
