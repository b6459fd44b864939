"""Several workers under gunicorn, as `gateway serve --workers 2` runs them: connections spread over the workers,
and a SIGTERM sent to every process (as systemd sends it) still drains every worker and writes their usage."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Process, start_gateway
from tests.test_keys import Admin, keyed_gateway, sdk
from tests.test_metrics import WORKER_CONFIG, counted_by_each_worker
from tests.test_proxy import behave, seen_upstream
from tests.test_reload import wait_for
from tests.test_shutdown import held_stream, new_key

pytestmark = pytest.mark.redis

CHAT = "/v1/chat/completions"


def worker_pids(arbiter: Process) -> list[int]:
    """The arbiter's children, by the parent pid in each /proc/<pid>/stat (not every kernel has
    /proc/<pid>/task/<tid>/children)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == arbiter.proc.pid:
            children.append(int(stat.parent.name))
    return children


def wait_for_workers(arbiter: Process, count: int = 2) -> list[int]:
    """The workers' pids, once each has started its app (the first answers /healthz before the second is up)."""
    wait_for(lambda: arbiter.log().count("Application startup complete") == count, timeout=20)
    pids = worker_pids(arbiter)
    assert len(pids) == count
    return pids


def test_connections_opened_at_once_are_spread_over_the_workers(redis_url: str, tmp_path: Path) -> None:
    # A burst of keep-alive connections, as a load balancer's pool or a benchmark opens them. On one shared
    # listening socket the worker that wakes first can take them all, leaving the other core idle for as long
    # as the connections live.
    config = tmp_path / "agents.yaml"
    config.write_text(WORKER_CONFIG)
    metrics = tmp_path / "prometheus"
    env = {
        "GATEWAY_WORKERS": "2",
        "GATEWAY_STORE": "redis",
        "REDIS_URL": redis_url,
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "GATEWAY_MAX_HEADER_BYTES": "4096",
    }
    gateway = start_gateway(config, tmp_path, env)
    try:
        wait_for_workers(gateway)
        connections = [http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10) for _ in range(64)]
        for connection in connections:
            connection.connect()
        body = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'
        for connection in connections:
            connection.request("POST", CHAT, body, {"content-type": "application/json"})
        for connection in connections:
            response = connection.getresponse()
            assert response.status == 200
            response.read()
            connection.close()
        # Each worker caps request heads as the setting says.
        assert httpx.get(gateway.url + "/healthz", headers={"x-big": "a" * 5000}).status_code == 431
        # Each worker counts a request after its last byte is sent, so the client can be a moment ahead.
        wait_for(lambda: sum(counted_by_each_worker(metrics, CHAT).values()) == 64)
        counted = sorted(counted_by_each_worker(metrics, CHAT).values())
    finally:
        assert gateway.stop() == 0
    assert f"2 workers listening on http://127.0.0.1:{gateway.port}, a socket each" in gateway.log()
    # The kernel hashes each connection to one worker's socket: an even split, give or take. 16 or fewer of 64
    # for one worker happens by chance about once in 13,000 runs.
    assert len(counted) == 2, counted
    assert counted[0] > 16, counted


@pytest.mark.parametrize(
    ("taken_by", "error"),
    [
        ("a listening server", "is in use: something already accepts connections there"),
        ("a bound socket", "Address already in use"),
    ],
)
def test_a_port_in_use_stops_the_arbiter_with_a_message(
    redis_url: str, tmp_path: Path, taken_by: str, error: str
) -> None:
    # With a socket per worker the arbiter binds nothing itself: unchecked, each worker would fail to bind and
    # gunicorn would restart them forever (or, had the other process set SO_REUSEPORT, share its port).
    config = tmp_path / "agents.yaml"
    config.write_text(WORKER_CONFIG)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        if taken_by == "a listening server":
            taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "GATEWAY_WORKERS": "2", "GATEWAY_STORE": "redis", "REDIS_URL": redis_url,
               "GATEWAY_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert error in result.stderr


def test_sigterm_to_every_process_drains_every_worker_and_writes_the_usage(
    upstream: Process, redis_url: str, tmp_path: Path
) -> None:
    # systemd's default KillMode, `kill -TERM -<pgid>` and `timeout` signal every process of the service, and the
    # arbiter then signals its workers too: each worker sees SIGTERM twice.
    shared = {"GATEWAY_WORKERS": "2", "GATEWAY_STORE": "redis", "REDIS_URL": redis_url}
    gateway = keyed_gateway(upstream, tmp_path, **shared, GATEWAY_DRAIN_TIMEOUT="20")
    workers = wait_for_workers(gateway)
    key = new_key(gateway)
    try:
        headers = behave(hold_after=1)
        with sdk(gateway, key["secret"]) as client:
            chunks = held_stream(client, headers, stream_options={"include_usage": True})
            for pid in [gateway.proc.pid, *workers]:
                os.kill(pid, signal.SIGTERM)
            time.sleep(1)  # the arbiter's own SIGTERMs have reached the workers by now
            assert gateway.proc.poll() is None
            assert seen_upstream(upstream, headers["x-request-id"])["state"] == "holding"
            httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}").raise_for_status()
            rest = list(chunks)
        assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == "part1 part2 "
        assert gateway.proc.wait(timeout=15) == 0
    finally:
        gateway.stop()
    log = gateway.log()
    assert log.count("Application shutdown complete") == 2
    assert "Traceback" not in log
    # What the drained stream used, as another gateway on the same Redis reads it.
    (tmp_path / "reader").mkdir()
    reader = keyed_gateway(upstream, tmp_path / "reader", GATEWAY_STORE="redis", REDIS_URL=redis_url)
    try:
        admin = Admin(reader)
        totals = admin.usage(key["id"], requests=1)["totals"]
        admin.http.close()
    finally:
        reader.stop()
    assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]) == (1, 11, 13)
