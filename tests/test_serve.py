"""`gateway serve` as users run it: the bundled config, and SIGTERM letting a stream in flight finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.processes import ROOT, Process, start_gateway

SLOW_MOCK = """\
agent:
  name: slow-demo
  llm: {provider: mock}
  streaming: {chunk_size: 1, delay: 0.05}
"""


def test_bundled_config_serves_the_demo_agent(tmp_path: Path) -> None:
    gateway = start_gateway(ROOT / "config", tmp_path)
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="anything", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == ["demo"]
            reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content is not None
        assert httpx.get(gateway.url + "/readyz").status_code == 200
    finally:
        gateway.stop()
    assert "ready with 1 agent(s): demo" in gateway.log()


def test_sigterm_lets_the_stream_in_flight_finish(tmp_path: Path) -> None:
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW_MOCK)
    gateway = start_gateway(config, tmp_path)
    body = {"model": "slow-demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=20) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            gateway.proc.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert "data: [DONE]" in rest
        assert gateway.proc.wait(timeout=15) == 0
    finally:
        gateway.stop()
    assert "Finished server process" in gateway.log()


def test_serving_without_keys_off_loopback_is_refused_with_the_way_out(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_STATE_DIR": str(tmp_path / "state")}
    env.pop("GATEWAY_ADMIN_KEY", None)
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config"), "--host", "0.0.0.0"]
    result = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr
    assert "GATEWAY_AUTH=none" in result.stderr


def test_a_second_process_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    first = start_gateway(ROOT / "config", tmp_path, {"GATEWAY_STATE_DIR": str(tmp_path / "state")})
    try:
        env = {**os.environ, "GATEWAY_STATE_DIR": str(tmp_path / "state"), "GATEWAY_ADMIN_KEY": "a" * 32}
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config"), "--port", "1"]
        second = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
    finally:
        first.stop()
    assert second.returncode == 2
    assert "is used by another gateway process" in second.stderr
    assert "Traceback" not in second.stderr


HI = [{"role": "user", "content": "hi"}]


def test_request_headers_over_the_default_limit_are_a_431_in_openai_shape(gateway: Process) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-any", max_retries=0, timeout=20) as sdk:
        # 32 KiB by default: a head of 24 KiB is served, one of 40 KiB is refused.
        sdk.chat.completions.create(model="demo", messages=HI, extra_headers={"x-big": "a" * 24 * 1024})
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="demo", messages=HI, extra_headers={"x-big": "a" * 40 * 1024})
    assert caught.value.status_code == 431
    assert caught.value.code == "request_headers_too_large"
    assert caught.value.type == "invalid_request_error"
    assert "32768 bytes" in caught.value.message
    assert len(caught.value.response.headers["x-request-id"]) == 32
    assert httpx.get(gateway.url + "/healthz").status_code == 200


def test_the_header_limit_is_a_setting_and_refuses_a_head_before_it_ends(tmp_path: Path) -> None:
    gateway = start_gateway(ROOT / "config", tmp_path, {"GATEWAY_MAX_HEADER_BYTES": "4096",
                                                        "GATEWAY_STATE_DIR": str(tmp_path / "state")})  # fmt: skip
    try:
        assert httpx.get(gateway.url + "/healthz", headers={"x-big": "a" * 3000}).status_code == 200
        assert httpx.get(gateway.url + "/healthz", headers={"x-big": "a" * 5000}).status_code == 431
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            # A header that never ends: a server that buffers until the head is complete would never answer.
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-endless: " + b"a" * 16 * 1024)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            # Many small requests in one write, more bytes than the cap together: each head is within it.
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n" * 120)
            pipelined = b""
            while pipelined.count(b"HTTP/1.1 ") < 120 and (chunk := sock.recv(65536)):
                pipelined += chunk
    finally:
        gateway.stop()
    assert pipelined.count(b"HTTP/1.1 200 OK") == 120
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"content-type: application/json" in head
    assert json.loads(body)["error"]["code"] == "request_headers_too_large"
    assert "request headers over 4096 bytes" in gateway.log()


def test_malformed_http_gets_uvicorns_plain_400_and_the_gateway_carries_on(gateway: Process) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nbad header line\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")  # as documented in docs/operations.md
    assert b"content-type: text/plain; charset=utf-8" in head
    assert body == b"Invalid HTTP request received."
    assert httpx.get(gateway.url + "/healthz").status_code == 200
