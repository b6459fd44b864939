"""Shared fixtures: one real upstream process and one real gateway (uvicorn) process per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.processes import Process, free_port, start_gateway, start_upstream

# The real redis-server fixtures (`redis_server`, `redis_url`), for every test module.
pytest_plugins = ["tests.support.redis"]

UPSTREAM_KEY = "sk-upstream-secret-for-tests"

E2E_CONFIG = """\
version: "1.0"
agents:
  - name: test-chat
    aliases: [test-alias]
    llm:
      provider: openai-compatible
      model: upstream-model
      base_url: "{upstream}/v1"
      api_key_env: TEST_UPSTREAM_KEY
      temperature: 0.3
      max_tokens: 50
      timeout: 5
    system_prompt: "You are a test agent."
    session: {{enabled: true, max_history: 50}}
    pricing: {{input_per_million: 0.15, output_per_million: 0.60, cached_input_per_million: 0.075}}
    # The tests of one answer per request: many make this upstream fail on purpose. Retries and circuit breakers
    # have agents of their own in test_resilience.py.
    retries: 0
    circuit_breaker: {{enabled: false}}
  - name: test-slow
    llm: {{provider: openai-compatible, model: slow, base_url: "{upstream}/v1", timeout: 0.5}}
    retries: 0
  - name: test-dead
    llm: {{provider: openai-compatible, model: dead, base_url: "http://127.0.0.1:{dead_port}/v1", timeout: 2}}
    retries: 0
  - name: test-nokey
    llm: {{provider: openai-compatible, model: x, base_url: "{upstream}/v1", api_key_env: TEST_KEY_NOT_SET}}
  - name: test-bounded
    llm: {{provider: openai-compatible, model: bounded, base_url: "{upstream}/v1"}}
    session: {{enabled: true, max_history: 4}}
  - name: test-token-bounded
    llm: {{provider: openai-compatible, model: bounded, base_url: "{upstream}/v1"}}
    session: {{enabled: true, max_history: 100, max_history_tokens: 60}}
  - name: test-auto
    llm: {{provider: openai-compatible, model: auto, base_url: "{upstream}/v1"}}
    session: {{enabled: true, auto_create: true, ttl_seconds: 1}}
  - name: test-partial
    llm: {{provider: openai-compatible, model: partial, base_url: "{upstream}/v1"}}
    session: {{enabled: true, store_partial: true}}
  - name: test-nostream
    llm: {{provider: openai-compatible, model: whole, base_url: "{upstream}/v1", supports_streaming: false}}
    streaming: {{chunk_size: 2, delay: 0}}
    session: {{enabled: true}}
  - name: demo
    llm: {{provider: mock}}
    streaming: {{chunk_size: 2, delay: 0}}
"""


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def upstream(logs: Path) -> Iterator[Process]:
    process = start_upstream(logs)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def gateway(upstream: Process, logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    config = tmp_path_factory.mktemp("config") / "agents.yaml"
    config.write_text(E2E_CONFIG.format(upstream=upstream.url, dead_port=free_port()))
    process = start_gateway(config, logs, {"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    yield process
    process.stop()


@pytest.fixture
def client(gateway: Process) -> Iterator[openai.OpenAI]:
    # No SDK retries: each test sees exactly the gateway's first answer.
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-key", max_retries=0, timeout=20) as sdk:
        yield sdk
