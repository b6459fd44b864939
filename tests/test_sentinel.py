"""Redis behind Sentinel: the settings that name it, the URL they make, and a gateway that finds its master through
a real redis-sentinel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.settings import Settings
from gateway.store.redis_connection import RedisConnection, parse_sentinel_url
from tests.support.processes import Process, free_port, start_gateway
from tests.support.redis import RedisServer, start_redis

pytestmark = pytest.mark.anyio

MASTER = "gwmaster"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_sentinel_settings_make_a_sentinel_url_keeping_password_and_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@ignored:6379/2")
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379, s2:26380")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url == "redis+sentinel://:s3cret@s1:26379,s2:26380/mymaster/2"
    assert parse_sentinel_url(settings.redis_url) == ([("s1", 26379), ("s2", 26380)], "mymaster", 2, "s3cret")


def test_sentinels_without_a_master_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379")
    with pytest.raises(ValueError, match="go together"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_plain_redis_url_is_not_a_sentinel_url() -> None:
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    assert parse_sentinel_url("redis+sentinel://h/m") == ([("h", 26379)], "m", 0, None)
    with pytest.raises(ValueError, match="names its sentinels and its master"):
        parse_sentinel_url("redis+sentinel://h1:26379")


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, Process]]:
    """A master and one sentinel watching it."""
    (tmp_path / "master").mkdir()
    master = start_redis(tmp_path / "master")
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
    )
    process = Process("sentinel", ["redis-server", str(config), "--sentinel"], port, tmp_path)
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
                if client.sentinel_get_master_addr_by_name(MASTER):
                    break
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"the sentinel did not come up:\n{process.log()}"
        time.sleep(0.05)
    yield master, process
    process.stop()
    master.stop()


@pytest.mark.redis
async def test_a_connection_finds_the_master_through_the_sentinel(sentinel: tuple[RedisServer, Process]) -> None:
    master, watcher = sentinel
    connection = RedisConnection(f"redis+sentinel://127.0.0.1:{watcher.port}/{MASTER}/0", (), connect_timeout=1,
                                 timeout=1)  # fmt: skip
    connection.open()
    try:
        assert await connection.ping()
        await connection.client.set("gw:test", b"through the sentinel")
    finally:
        await connection.close()
    with redis.Redis(port=master.port) as direct:
        assert direct.get("gw:test") == b"through the sentinel"


@pytest.mark.redis
def test_a_gateway_keeps_its_sessions_in_the_master_the_sentinel_names(
    sentinel: tuple[RedisServer, Process], tmp_path: Path
) -> None:
    master, watcher = sentinel
    config = tmp_path / "agents.yaml"
    config.write_text("agent:\n  name: demo\n  llm: {provider: mock}\n  session: {enabled: true}\n")
    env = {
        "GATEWAY_STORE": "redis",
        "REDIS_SENTINELS": f"127.0.0.1:{watcher.port}",
        "REDIS_SENTINEL_MASTER": MASTER,
        "GATEWAY_AUTH": "none",
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
    }
    gateway = start_gateway(config, tmp_path, env)
    try:
        assert httpx.get(f"{gateway.url}/readyz").status_code == 200
        session = httpx.post(f"{gateway.url}/v1/sessions", json={"model": "demo"}).json()["session_id"]
        turn = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"x-session-id": session},
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert turn.headers["x-session-storage"] == "redis"
        with redis.Redis(port=master.port) as direct:
            assert direct.llen(f"gw:sess:m:{session}") == 2
    finally:
        gateway.stop()
