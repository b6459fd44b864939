"""`gateway serve` as users run it: the bundled config, and SIGTERM letting a stream in flight finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from tests.support.processes import ROOT, start_gateway

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
