"""Graceful shutdown of a real gateway: /readyz says draining during the shutdown delay while requests are still
served, streams in flight finish (or are cut at the drain timeout), usage is written, and the process exits."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.support.processes import Process
from tests.test_keys import Admin, keyed_gateway, sdk
from tests.test_proxy import behave, seen_upstream
from tests.test_reload import wait_for

MESSAGES = [{"role": "user", "content": "hi"}]


def accepts_connections(gateway: Process) -> bool:
    try:
        httpx.get(gateway.url + "/healthz", timeout=1.0)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        # A connection the closing listener had already taken in is dropped without an answer: not accepting.
        return False
    return True


def usage_after_restart(upstream: Process, directory: Path, key_id: str) -> dict[str, int]:
    """The key's usage totals as a new process on the same state directory reads them."""
    restarted = keyed_gateway(upstream, directory)
    try:
        admin = Admin(restarted)
        totals = dict(admin.http.get(f"/admin/keys/{key_id}/usage").json()["totals"])
        admin.http.close()
    finally:
        restarted.stop()
    return totals


def new_key(gateway: Process) -> dict[str, Any]:
    admin = Admin(gateway)
    key = admin.create()
    admin.http.close()
    return key


def held_stream(client: openai.OpenAI, headers: dict[str, str], **options: Any) -> Iterator[ChatCompletionChunk]:
    """A stream whose upstream holds it after the first chunk (until released), that chunk read."""
    chunks = iter(client.chat.completions.create(
        model="test-chat", messages=MESSAGES, stream=True, extra_headers=headers, **options
    ))  # fmt: skip
    assert next(chunks).choices[0].delta.content == "part0 "
    return chunks


def test_sigterm_drains_the_stream_in_flight_then_exits_0_with_usage_written(upstream: Process, tmp_path: Path) -> None:
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_SHUTDOWN_DELAY="1.5", GATEWAY_DRAIN_TIMEOUT="20")
    try:
        key = new_key(gateway)
        client = sdk(gateway, key["secret"])
        headers = behave(hold_after=1)
        chunks = held_stream(client, headers, stream_options={"include_usage": True})

        gateway.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "draining"
        assert httpx.get(gateway.url + "/healthz").status_code == 200  # alive, only not ready
        # Still accepting during the delay: a load balancer that has not caught up yet is served, not refused.
        with sdk(gateway, key["secret"]) as late:
            assert late.chat.completions.create(model="test-chat", messages=MESSAGES).choices[0].message.content
        assert time.monotonic() - signalled < 1.5

        wait_for(lambda: not accepts_connections(gateway))
        assert time.monotonic() - signalled >= 1.4
        assert gateway.proc.poll() is None  # the held stream keeps it alive
        assert seen_upstream(upstream, headers["x-request-id"])["state"] == "holding"

        httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}").raise_for_status()
        rest = list(chunks)
        client.close()
        assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == "part1 part2 "
        assert rest[-1].usage is not None
        assert rest[-1].usage.total_tokens == 24
        assert gateway.proc.wait(timeout=10) == 0
    finally:
        gateway.stop()
    log = gateway.log()
    assert "draining: /readyz answers 503, still accepting for 1.5s" in log
    assert "Finished server process" in log
    # The stream and the request served while draining, as the next process reads them from the state directory.
    totals = usage_after_restart(upstream, tmp_path, key["id"])
    assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]) == (2, 11 + 5, 13 + 7)


def test_a_stream_held_past_the_drain_timeout_is_cut_and_the_process_still_exits(
    upstream: Process, tmp_path: Path
) -> None:
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_DRAIN_TIMEOUT="1")
    try:
        key = new_key(gateway)
        headers = behave(hold_after=1)
        with sdk(gateway, key["secret"]) as client:
            chunks = held_stream(client, headers)
            gateway.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # Told so in an error event, not left to guess from a dropped connection.
            with pytest.raises(openai.APIError, match="The gateway is shutting down and cut this request short"):
                list(chunks)
        assert gateway.proc.wait(timeout=10) == 0
        assert 1.0 <= time.monotonic() - signalled < 5.0
    finally:
        gateway.stop()
    assert "drain timeout (1s) reached: cutting 1 request(s) in flight" in gateway.log()
    assert "Traceback" not in gateway.log()
    # The upstream request was closed, not left running for nobody.
    assert seen_upstream(upstream, headers["x-request-id"])["state"] == "disconnected"
    assert usage_after_restart(upstream, tmp_path, key["id"])["requests"] == 1


def test_a_whole_request_held_past_the_drain_timeout_gets_a_503_to_retry_elsewhere(
    upstream: Process, tmp_path: Path
) -> None:
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_DRAIN_TIMEOUT="1")
    try:
        key = new_key(gateway)
        headers = behave(hang=10)
        with sdk(gateway, key["secret"]) as client, ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                client.chat.completions.create, model="test-chat", messages=MESSAGES, extra_headers=headers
            )
            wait_for(lambda: httpx.get(f"{upstream.url}/_requests/{headers['x-request-id']}").status_code == 200)
            gateway.proc.send_signal(signal.SIGTERM)
            with pytest.raises(openai.InternalServerError) as refused:
                answer.result(timeout=10)
        assert gateway.proc.wait(timeout=10) == 0
    finally:
        gateway.stop()
    # A 503, which the SDK retries (here it was told not to): on another replica, behind a load balancer.
    assert refused.value.status_code == 503
    assert refused.value.code == "gateway_shutting_down"
    assert "Traceback" not in gateway.log()


def test_a_repeated_sigterm_does_not_cut_the_drain_short(upstream: Process, tmp_path: Path) -> None:
    # systemd and process-group kills send SIGTERM to every process, and a supervisor may send its own as well.
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_DRAIN_TIMEOUT="20")
    try:
        headers = behave(hold_after=1)
        with sdk(gateway, new_key(gateway)["secret"]) as client:
            chunks = held_stream(client, headers)
            gateway.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: not accepts_connections(gateway))
            gateway.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert gateway.proc.poll() is None
            httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}").raise_for_status()
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "part1 part2 "
        assert gateway.proc.wait(timeout=10) == 0
    finally:
        gateway.stop()


def test_a_second_sigint_stops_at_once_and_still_writes_the_usage(upstream: Process, tmp_path: Path) -> None:
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_SHUTDOWN_DELAY="30")
    try:
        key = new_key(gateway)
        headers = behave(hold_after=1)
        with sdk(gateway, key["secret"]) as client:
            chunks = held_stream(client, headers)
            gateway.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(gateway.url + "/readyz").status_code == 503)
            gateway.proc.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            assert gateway.proc.wait(timeout=5) == 128 + signal.SIGINT
            assert time.monotonic() - signalled < 3
            with pytest.raises(openai.APIError, match="shutting down"):
                list(chunks)
    finally:
        gateway.stop()
    assert "stopping at once: cutting 1 request(s) in flight" in gateway.log()
    assert "Traceback" not in gateway.log()
    # The cut stream was counted and written on the way out (uvicorn alone would skip that write).
    assert usage_after_restart(upstream, tmp_path, key["id"])["requests"] == 1


def test_sigint_skips_the_shutdown_delay(upstream: Process, tmp_path: Path) -> None:
    gateway = keyed_gateway(upstream, tmp_path, GATEWAY_SHUTDOWN_DELAY="30")
    try:
        gateway.proc.send_signal(signal.SIGINT)
        assert gateway.proc.wait(timeout=5) == 0
    finally:
        gateway.stop()
