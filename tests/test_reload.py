"""Hot reload end to end: SIGHUP, POST /admin/reload and file watching on a real gateway, a stream in flight
finishing on the config it started with, broken configs refused, and replicas on one Redis reloading together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from gateway.config.reload import ReloadChannel, Reloader
from gateway.config.routing import RoutingTable, load_routes
from tests.support.processes import Process, start_gateway
from tests.support.redis import RedisServer, start_redis
from tests.test_keys import ADMIN_KEY
from tests.test_proxy import behave, seen_upstream

AGENT = """\
version: "1.0"
agent:
  name: writer
  aliases: [writer-{version}]
  llm: {{provider: openai-compatible, model: model-{version}, base_url: "{upstream}/v1"{extra}}}
  system_prompt: "You are {version}."
"""
MESSAGES = [{"role": "user", "content": "hi"}]
# Each trigger, and how the log names it.
TRIGGERS = {"sighup": "SIGHUP", "admin": "POST /admin/reload", "watch": "file change"}


def agent_config(upstream: Process, version: str, extra: str = "") -> str:
    return AGENT.format(upstream=upstream.url, version=version, extra=extra)


def serve(config: Path, logs: Path, **env: str) -> Process:
    """A gateway with the admin API on and clients let in without keys."""
    return start_gateway(config, logs, {"GATEWAY_ADMIN_KEY": ADMIN_KEY, "GATEWAY_AUTH": "none", **env})


def knows(gateway: Process, model: str) -> bool:
    return httpx.get(f"{gateway.url}/v1/models/{model}").status_code == 200


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `condition` held; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


def admin_reload(gateway: Process) -> httpx.Response:
    return httpx.post(gateway.url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"})


class Reloading:
    """A gateway and its config file, reloaded by one trigger."""

    def __init__(self, trigger: str, upstream: Process, directory: Path) -> None:
        self.trigger = trigger
        self.upstream = upstream
        self.config = directory / "agents.yaml"
        self.config.write_text(agent_config(upstream, "v1"))
        watching = {"GATEWAY_WATCH_CONFIG": "true"} if trigger == "watch" else {}
        self.gateway = serve(self.config, directory, **watching)
        self.sdk = openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="anything", max_retries=0, timeout=20)
        if trigger == "watch":
            wait_for(lambda: "watching" in self.gateway.log())

    def change(self, text: str) -> httpx.Response | None:
        """Write the config and pull the trigger; the admin API's answer when that is the trigger."""
        self.config.write_text(text)
        if self.trigger == "sighup":
            self.gateway.proc.send_signal(signal.SIGHUP)
        elif self.trigger == "admin":
            return admin_reload(self.gateway)
        return None  # the watcher sees the write

    def upstream_model(self) -> str:
        headers = behave()
        self.sdk.chat.completions.create(model="writer", messages=MESSAGES, extra_headers=headers)
        return str(seen_upstream(self.upstream, headers["x-request-id"])["body"]["model"])

    def close(self) -> None:
        self.sdk.close()
        self.gateway.stop()


@pytest.fixture(params=list(TRIGGERS))
def reloading(request: pytest.FixtureRequest, upstream: Process, tmp_path: Path) -> Iterator[Reloading]:
    subject = Reloading(request.param, upstream, tmp_path)
    yield subject
    subject.close()


def test_a_stream_in_flight_finishes_on_its_config_and_the_next_request_uses_the_new(
    reloading: Reloading, upstream: Process
) -> None:
    headers = behave(hold_after=1)
    stream = reloading.sdk.chat.completions.create(model="writer", messages=MESSAGES, stream=True,
                                                   extra_headers=headers)  # fmt: skip
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.content == "part0 "

    answer = reloading.change(agent_config(upstream, "v2"))
    if answer is not None:
        assert answer.status_code == 200
        assert answer.json()["agents"] == ["writer"]
    wait_for(lambda: knows(reloading.gateway, "writer-v2"))
    assert not knows(reloading.gateway, "writer-v1")
    after = behave()
    reply = reloading.sdk.chat.completions.create(model="writer", messages=MESSAGES, extra_headers=after)
    assert reply.choices[0].message.content == "upstream heard 2 messages; last: hi"
    new = seen_upstream(upstream, after["x-request-id"])["body"]
    assert (new["model"], new["messages"][0]["content"]) == ("model-v2", "You are v2.")

    assert seen_upstream(upstream, headers["x-request-id"])["state"] == "holding"
    httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}").raise_for_status()
    rest = list(chunks)
    stream.close()
    assert "".join(chunk.choices[0].delta.content or "" for chunk in rest if chunk.choices) == "part1 part2 "
    assert rest[-1].choices[0].finish_reason == "stop"
    held = seen_upstream(upstream, headers["x-request-id"])
    assert held["state"] == "finished"
    assert (held["body"]["model"], held["body"]["messages"][0]["content"]) == ("model-v1", "You are v1.")
    assert f"route config reloaded ({TRIGGERS[reloading.trigger]}): 1 agent(s)" in reloading.gateway.log()


BROKEN_PROBLEM = "agents.yaml: agent.llm.temprature: Extra inputs are not permitted"


def test_a_broken_config_is_refused_with_its_problems_and_the_old_keeps_serving(
    reloading: Reloading, upstream: Process
) -> None:
    answer = reloading.change(agent_config(upstream, "v2", extra=", temprature: 0.2"))
    if answer is not None:
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_config"
        assert BROKEN_PROBLEM in answer.json()["error"]["message"]
    wait_for(lambda: "route config not reloaded" in reloading.gateway.log())
    refusal = next(line for line in reloading.gateway.log().splitlines() if "not reloaded" in line)
    assert "the old one keeps serving" in refusal
    assert BROKEN_PROBLEM in refusal

    assert knows(reloading.gateway, "writer-v1")
    assert reloading.upstream_model() == "model-v1"
    assert httpx.get(reloading.gateway.url + "/readyz").status_code == 200

    # Fixed, the same trigger takes it.
    reloading.change(agent_config(upstream, "v2"))
    wait_for(lambda: knows(reloading.gateway, "writer-v2"))
    assert reloading.upstream_model() == "model-v2"


def test_watching_reloads_a_config_directory_and_ignores_other_files(upstream: Process, tmp_path: Path) -> None:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "writer.yaml").write_text(agent_config(upstream, "v1"))
    gateway = serve(directory, tmp_path, GATEWAY_WATCH_CONFIG="true")
    try:
        wait_for(lambda: "watching" in gateway.log())
        (directory / "notes.txt").write_text("not an agent file")
        (directory / "mock.yaml").write_text("agent:\n  name: added\n  llm: {provider: mock}\n")
        wait_for(lambda: knows(gateway, "added"))
        time.sleep(0.5)
        assert gateway.log().count("route config reloaded (file change)") == 1
    finally:
        gateway.stop()


def test_watching_is_off_by_default(upstream: Process, tmp_path: Path) -> None:
    config = tmp_path / "agents.yaml"
    config.write_text(agent_config(upstream, "v1"))
    gateway = serve(config, tmp_path)
    try:
        config.write_text(agent_config(upstream, "v2"))
        time.sleep(1.0)
        assert knows(gateway, "writer-v1")
        assert "watching" not in gateway.log()
    finally:
        gateway.stop()


def replica(upstream: Process, directory: Path, redis_url: str) -> tuple[Process, Path]:
    directory.mkdir()
    config = directory / "agents.yaml"
    config.write_text(agent_config(upstream, "v1"))
    gateway = serve(config, directory, GATEWAY_STORE="redis", REDIS_URL=redis_url)
    wait_for(lambda: "hearing reloads of other replicas" in gateway.log())
    return gateway, config


@pytest.mark.redis
def test_a_reload_on_one_replica_reaches_the_others_through_redis(
    upstream: Process, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    first, first_config = replica(upstream, tmp_path / "a", redis_url)
    second, second_config = replica(upstream, tmp_path / "b", redis_url)
    try:
        # Each replica reads its own copy of the files: both were updated, one was told.
        for config in (first_config, second_config):
            config.write_text(agent_config(upstream, "v2"))
        assert admin_reload(first).status_code == 200
        assert wait_for(lambda: knows(second, "writer-v2"), timeout=1.0) < 1.0
        assert "route config reloaded (POST /admin/reload on " in second.log()
        time.sleep(0.2)
        assert first.log().count("route config reloaded") == 1  # its own announcement comes back, ignored

        # Redis goes away and comes back: the subscription is made again, without a crash or a flood of lines.
        redis_server.stop()
        wait_for(lambda: "reload channel gw:reload lost" in second.log())
        time.sleep(1.5)
        redis_server.start()
        wait_for(lambda: "subscribed again" in second.log() and "subscribed again" in first.log())
        assert second.log().count("reload channel gw:reload lost") == 1
        for config in (first_config, second_config):
            config.write_text(agent_config(upstream, "v3"))
        second.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: knows(first, "writer-v3"), timeout=1.0) < 1.0
        assert first.proc.poll() is None
        assert second.proc.poll() is None
    finally:
        first.stop()
        second.stop()


MOCK_AGENT = "agent:\n  name: {name}\n  llm: {{provider: mock}}\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail("not within 5s")


@pytest.mark.anyio
async def test_sighup_always_reloads_and_other_triggers_only_when_the_files_changed(tmp_path: Path) -> None:
    config = tmp_path / "agents.yaml"
    config.write_text(MOCK_AGENT.format(name="first"))
    loads: list[str] = []

    def load(trigger: str) -> RoutingTable:
        loads.append(trigger)
        return load_routes(config, {})

    before = signal.getsignal(signal.SIGHUP)
    reloader = Reloader(load, config, watch=False, redis_url=None)
    await reloader.start()
    try:
        reloader.reload_if_changed("an announcement", announce=False)
        config.write_text(MOCK_AGENT.format(name="first"))  # rewritten, same bytes
        reloader.reload_if_changed("file change", announce=True)
        assert loads == []
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: loads == ["SIGHUP"])
        config.write_text(MOCK_AGENT.format(name="second"))
        reloader.reload_if_changed("file change", announce=True)
        reloader.reload_if_changed("an announcement", announce=False)
        assert loads == ["SIGHUP", "file change"]
    finally:
        await reloader.stop()
    assert signal.getsignal(signal.SIGHUP) == before  # SIGHUP is the process's again


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may pause."""
    started = start_redis(tmp_path)
    yield started
    started.stop()


@pytest.mark.anyio
@pytest.mark.redis
async def test_the_reload_channel_notices_a_redis_that_stops_answering_and_subscribes_again(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.reload")
    heard: list[str] = []
    listener = ReloadChannel(own_redis.url, heard.append, timeout=0.5, ping_when_quiet=0.2)
    other = ReloadChannel(own_redis.url, lambda trigger: None)
    listener.open()
    other.open()
    listening = asyncio.create_task(listener.listen())
    with redis.Redis(host="127.0.0.1", port=own_redis.port) as admin:
        pid = int(admin.info("server")["process_id"])
    try:
        await until(lambda: "hearing reloads of other replicas" in caplog.text)
        await listener.announce("SIGHUP")  # its own: not heard
        await other.announce("SIGHUP")
        await until(lambda: heard == [f"SIGHUP on {other.origin}"])
        await asyncio.sleep(0.5)  # quiet: PINGed and answered, the subscription stays
        assert "lost" not in caplog.text

        # Stopped, Redis keeps the connection open and answers nothing: only the PING shows it is gone.
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: "reload channel gw:reload lost" in caplog.text)
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: "subscribed again" in caplog.text)
        assert heard[-1] == "reload channel back"  # it may have missed an announcement: its files are checked
        await other.announce("POST /admin/reload")
        await until(lambda: heard[-1] == f"POST /admin/reload on {other.origin}")
        assert caplog.text.count("lost") == 1
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await listener.close()
        await other.close()
