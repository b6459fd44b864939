"""A real redis-server per test session on a free port, which a test may kill and start again to stage an outage."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.processes import Process, free_port


class RedisServer:
    """`redis-server` on 127.0.0.1:`port`, its working files and log in `directory`. No persistence, unless
    `durable`: then every write is in the append-only file before Redis answers, so a killed and restarted server
    still holds everything it acknowledged (how a production Redis with AOF comes back)."""

    def __init__(self, directory: Path, port: int | None = None, *, durable: bool = False) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.durable = durable
        self._process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start on the same port as before, so clients holding the URL reconnect to it."""
        if self.running:
            return
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
                "--dir", str(self.directory), "--daemonize", "no"]  # fmt: skip
        self._process = Process("redis", argv, self.port, self.directory)
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if not self.running:
                raise RuntimeError(f"redis-server exited:\n{self._process.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {timeout}s:\n{self._process.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server outright: an outage, not a clean shutdown."""
        if self._process is not None:
            self._process.stop(signal.SIGKILL)
            self._process = None

    def freeze(self) -> None:
        """Stop the server without closing anything: connections open, nothing answered (a stalled host)."""
        assert self._process is not None
        self._process.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.proc.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()

    def _answers_ping(self) -> bool:
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except RedisConnectionError:
            return False


def start_redis(directory: Path, *, durable: bool = False, port: int | None = None) -> RedisServer:
    """A started server; fails the test in CI (CI=true) when redis-server is missing, skips it elsewhere."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI must run the Redis tests")
        pytest.skip(message)
    server = RedisServer(directory, port, durable=durable)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    # A test that killed the shared server and failed before restarting it must not fail every test after it.
    redis_server.start()
    redis_server.flush()
    return redis_server.url
