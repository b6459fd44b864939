"""Upstreams that fail in each way, end to end: retries, targets, circuit breakers, fallbacks, timeouts and
cancellation, seen through the OpenAI SDK, the upstream processes' own records and the gateway's metrics."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Process, free_port, start_gateway, start_upstream
from tests.test_proxy import behave, seen_upstream

CONFIG = """\
agents:
  - name: retrying
    llm: {{provider: openai-compatible, model: up, base_url: "{good}/v1"}}
    retries: 2
    retry_backoff: 0.05
    circuit_breaker: {{enabled: false}}
  - name: spread
    llm:
      provider: openai-compatible
      model: up
      targets:
        - {{name: dead, base_url: "http://127.0.0.1:{dead_port}/v1", weight: 1000000}}
        - {{name: good, base_url: "{good}/v1", model: up-good}}
    retries: 2
    retry_backoff: 0.01
    circuit_breaker: {{enabled: false}}
  - name: breaking
    llm:
      provider: openai-compatible
      model: up
      targets:
        - {{name: bad, base_url: "{bad}/v1", weight: 1000000}}
        - {{name: good, base_url: "{good}/v1"}}
    retries: 1
    retry_backoff: 0.01
    circuit_breaker: {{failures: 2, window: 30, cooldown: 1}}
  - name: primary
    llm: {{provider: openai-compatible, model: primary-model, base_url: "{bad}/v1"}}
    system_prompt: "You are the primary."
    retries: 1
    retry_backoff: 0.01
    circuit_breaker: {{enabled: false}}
    fallbacks: [backup]
  - name: backup
    llm: {{provider: openai-compatible, model: backup-model, base_url: "{good}/v1"}}
    system_prompt: "You are the backup."
  - name: capped
    llm: {{provider: openai-compatible, model: primary-model, base_url: "{bad}/v1"}}
    retries: 0
    circuit_breaker: {{enabled: false}}
    fallbacks: [capped-backup]
  - name: capped-backup
    llm: {{provider: openai-compatible, model: backup-model, base_url: "{good}/v1"}}
    limits: {{max_tokens_per_request: 5, over_max_tokens: clamp}}
    rate_limit: {{enabled: true, requests_per_minute: 1}}
  - name: impatient
    llm:
      provider: openai-compatible
      model: up
      base_url: "{good}/v1"
      timeouts: {{first_byte: 0.5, idle: 0.5}}
    retries: 1
    retry_backoff: 0.01
    circuit_breaker: {{enabled: false}}
"""
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """An upstream that answers every request with a 500."""
    process = start_upstream(tmp_path_factory.mktemp("bad"), behaviour={"status": 500})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def resilient(upstream: Process, bad: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    directory = tmp_path_factory.mktemp("resilient")
    config = directory / "agents.yaml"
    config.write_text(CONFIG.format(good=upstream.url, bad=bad.url, dead_port=free_port()))
    process = start_gateway(config, directory, {"GATEWAY_STATE_DIR": str(directory / "state")})
    yield process
    process.stop()


@pytest.fixture
def client(resilient: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=resilient.url + "/v1", api_key="unused", max_retries=0, timeout=20) as sdk:
        yield sdk


def drain(stream: Any, into: list[str | None] | None = None) -> None:
    for chunk in stream:
        if into is not None:
            into.append(chunk.choices[0].delta.content)


def requests_seen(upstream: Process) -> int:
    return int(httpx.get(f"{upstream.url}/_stats").json()["requests"])


def metric(gateway: Process, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_a_5xx_is_retried_until_the_upstream_answers(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(fail_first=2, status=503)
    raw = client.chat.completions.with_raw_response.create(model="retrying", messages=USER, extra_headers=headers)
    assert raw.parse().choices[0].message.content == "upstream heard 1 messages; last: hi"
    assert seen_upstream(upstream, headers["x-request-id"])["attempts"] == 3
    assert raw.headers["x-gateway-agent"] == "retrying"


def test_retries_stop_at_the_agents_limit_and_the_last_answer_is_relayed(
    client: openai.OpenAI, upstream: Process, resilient: Process
) -> None:
    before = metric(resilient, "gateway_retries_total", agent="retrying", reason="upstream_server_error")
    headers = behave(fail_first=10, status=500, body=json.dumps({"error": {"message": "still broken"}}))
    with pytest.raises(openai.InternalServerError, match="still broken"):
        client.chat.completions.create(model="retrying", messages=USER, extra_headers=headers)
    assert seen_upstream(upstream, headers["x-request-id"])["attempts"] == 3  # the first and 2 retries
    after = metric(resilient, "gateway_retries_total", agent="retrying", reason="upstream_server_error")
    assert after - before == 2


def test_a_client_error_is_not_retried(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(status=400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="retrying", messages=USER, extra_headers=headers)
    assert seen_upstream(upstream, headers["x-request-id"])["attempts"] == 1


def test_a_429_is_retried_after_the_upstreams_retry_after(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(fail_first=1, status=429, headers={"retry-after-ms": "600"})
    began = time.monotonic()
    completion = client.chat.completions.create(model="retrying", messages=USER, extra_headers=headers)
    waited = time.monotonic() - began
    assert completion.choices[0].message.content is not None
    assert seen_upstream(upstream, headers["x-request-id"])["attempts"] == 2
    assert waited >= 0.6  # honoured, not just backed off (backoff here is 0.05 s)


def test_a_429_asking_for_a_long_pause_goes_back_to_the_client(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(status=429, headers={"retry-after": "30"})
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="retrying", messages=USER, extra_headers=headers)
    assert refused.value.response.headers["retry-after"] == "30"
    assert seen_upstream(upstream, headers["x-request-id"])["attempts"] == 1


def test_a_refused_connection_moves_on_to_the_next_target(
    client: openai.OpenAI, upstream: Process, resilient: Process
) -> None:
    headers = behave()
    raw = client.chat.completions.with_raw_response.create(model="spread", messages=USER, extra_headers=headers)
    assert raw.parse().choices[0].message.content == "upstream heard 1 messages; last: hi"
    sent = seen_upstream(upstream, headers["x-request-id"])
    assert sent["attempts"] == 1
    assert sent["body"]["model"] == "up-good"  # the target's own model
    assert metric(resilient, "gateway_retries_total", agent="spread", target="dead", reason="upstream_unreachable") >= 1


def test_a_failing_target_is_skipped_once_its_circuit_opens_then_probed_after_the_cooldown(
    client: openai.OpenAI, bad: Process, resilient: Process
) -> None:
    before = requests_seen(bad)
    for _ in range(2):  # each tries `bad` first (by weight), fails, and is answered by `good`
        client.chat.completions.create(model="breaking", messages=USER)
    assert requests_seen(bad) - before == 2
    assert metric(resilient, "gateway_circuit_state", agent="breaking", target="bad") == 2  # open
    for _ in range(3):
        client.chat.completions.create(model="breaking", messages=USER)
    assert requests_seen(bad) - before == 2  # skipped while open
    time.sleep(1.2)
    client.chat.completions.create(model="breaking", messages=USER)
    assert requests_seen(bad) - before == 3  # one probe after the cooldown; it failed, so the circuit is open again
    client.chat.completions.create(model="breaking", messages=USER)
    assert requests_seen(bad) - before == 3


def test_a_fallback_agent_answers_when_every_target_fails(
    client: openai.OpenAI, upstream: Process, bad: Process, resilient: Process
) -> None:
    headers = behave()
    before = requests_seen(bad)
    raw = client.chat.completions.with_raw_response.create(model="primary", messages=USER, extra_headers=headers)
    assert raw.headers["x-gateway-agent"] == "backup"
    assert requests_seen(bad) - before == 2  # the primary's first attempt and its one retry
    body = seen_upstream(upstream, headers["x-request-id"])["body"]
    assert body["model"] == "backup-model"
    assert body["messages"][0] == {"role": "system", "content": "You are the backup."}
    assert metric(resilient, "gateway_fallbacks_total", from_agent="primary", to_agent="backup") >= 1


def test_a_fallback_agent_is_admitted_by_its_own_limits(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave()
    raw = client.chat.completions.with_raw_response.create(
        model="capped", messages=USER, max_tokens=500, extra_headers=headers
    )
    assert raw.headers["x-gateway-agent"] == "capped-backup"
    assert seen_upstream(upstream, headers["x-request-id"])["body"]["max_tokens"] == 5  # the backup's own clamp
    # Charged to its own bucket (one request a minute): the next fallback is refused by it and skipped, and the
    # client hears the primary's failure.
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.with_raw_response.create(model="capped", messages=USER)
    assert failed.value.response.headers["x-gateway-agent"] == "capped"


def test_no_first_byte_in_time_is_retried_then_a_504(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(hang=2)
    with pytest.raises(openai.APIStatusError) as timed_out:
        client.chat.completions.create(model="impatient", messages=USER, extra_headers=headers)
    assert timed_out.value.status_code == 504
    assert "sent no first byte within 0.5s" in str(timed_out.value)
    assert seen_upstream(upstream, headers["x-request-id"])["attempts"] == 2


def test_a_stream_is_retried_before_its_first_byte_and_never_after(client: openai.OpenAI, upstream: Process) -> None:
    early = behave(fail_first=1, status=502)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model="retrying", messages=USER, stream=True, extra_headers=early)
        if chunk.choices
    )
    assert text == "part0 part1 part2 "
    assert seen_upstream(upstream, early["x-request-id"])["attempts"] == 2
    late = behave(chunks=4, drop_after=2)
    stream = client.chat.completions.create(model="retrying", messages=USER, stream=True, extra_headers=late)
    with pytest.raises(openai.APIError, match=r"broke off|closed the connection"):
        drain(stream)
    assert seen_upstream(upstream, late["x-request-id"])["attempts"] == 1


def test_a_stream_silent_between_chunks_ends_with_an_error_event(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="impatient", messages=USER, stream=True, extra_headers=behave(chunks=3, stall_after=1, stall=3)
    )
    received: list[str | None] = []
    with pytest.raises(openai.APIError, match=r"sent nothing for 0\.5s"):
        drain(stream, received)
    assert received == ["part0 "]


def raw_request(gateway: Process, body: dict[str, Any], request_id: str) -> socket.socket:
    """A request sent over a socket of our own, so the test decides the moment the client goes away."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + f"x-request-id: {request_id}\r\nx-test-behaviour: {json.dumps({'hang': 5, 'hold_after': 1})}\r\n".encode()
        + f"content-length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def disconnected_at(upstream: Process, request_id: str) -> float:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        record = seen_upstream(upstream, request_id)
        if record["state"] == "disconnected":
            return float(record["disconnected_at"])
        time.sleep(0.01)
    raise AssertionError(f"the upstream never saw request {request_id} go away: {record}")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_client_that_leaves_closes_the_upstream_call_within_100_ms(
    resilient: Process, upstream: Process, tmp_path: Path, stream: bool
) -> None:
    request_id = f"leave-{time.monotonic_ns()}"
    sock = raw_request(resilient, {"model": "retrying", "messages": USER, "stream": stream}, request_id)
    try:
        deadline = time.monotonic() + 5
        while seen_upstream_state(upstream, request_id) not in ("answering", "holding"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the upstream is working on it (a whole answer hangs; a stream holds after one chunk)
    finally:
        left = time.monotonic()
        sock.close()
    assert disconnected_at(upstream, request_id) - left < 0.1


def seen_upstream_state(upstream: Process, request_id: str) -> str | None:
    response = httpx.get(f"{upstream.url}/_requests/{request_id}")
    return None if response.status_code == 404 else str(response.json()["state"])
