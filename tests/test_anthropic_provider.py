"""The `anthropic` provider end to end: the official `anthropic` SDK through a real gateway to a real
Anthropic-shaped upstream process, the request rewritten for the agent and the stream relayed event for event."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.processes import ROOT, Process, free_port, start_gateway
from tests.test_keys import ADMIN_KEY, Admin
from tests.test_proxy import behave

UPSTREAM_KEY = "sk-ant-upstream-secret-for-tests"
USER = [{"role": "user", "content": "hello"}]
CONFIG = """\
agents:
  - name: claude
    llm:
      provider: anthropic
      model: claude-upstream
      base_url: "{upstream}"
      api_key_env: TEST_ANTHROPIC_KEY
      temperature: 0.5
    system_prompt: "You are Claude, via the gateway."
    limits: {{max_tokens_per_request: 100, over_max_tokens: clamp}}
    retries: 1
    retry_backoff: 0.01
    circuit_breaker: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    port = free_port()
    argv = [sys.executable, str(ROOT / "tests/support/anthropic_upstream.py"), "--port", str(port)]
    process = Process("anthropic-upstream", argv, port, tmp_path_factory.mktemp("anthropic-upstream"))
    process.wait_ready("/_health")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    directory: Path = tmp_path_factory.mktemp("anthropic-provider")
    config = directory / "agents.yaml"
    config.write_text(CONFIG.format(upstream=upstream.url))
    env = {"GATEWAY_ADMIN_KEY": ADMIN_KEY, "TEST_ANTHROPIC_KEY": UPSTREAM_KEY, "GATEWAY_STATE_DIR": str(directory)}
    process = start_gateway(config, directory, env)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def admin(gateway: Process) -> Iterator[Admin]:
    operator = Admin(gateway)
    yield operator
    operator.http.close()


@pytest.fixture
def key(admin: Admin) -> dict[str, object]:
    return admin.create(name="claude-user")


@pytest.fixture
def client(gateway: Process, key: dict[str, object]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=str(key["secret"]), max_retries=0, timeout=20) as sdk:
        yield sdk


def seen(upstream: Process, request_id: str) -> dict[str, object]:
    return dict(httpx.get(f"{upstream.url}/_requests/{request_id}").json())


def test_a_message_is_rewritten_for_the_agent_and_answered_as_it_came(
    client: anthropic.Anthropic, upstream: Process
) -> None:
    headers = behave()
    message = client.messages.create(
        model="claude", max_tokens=500, system="Be brief.", messages=USER, extra_headers=headers
    )
    assert message.content[0].text == "anthropic heard 1 messages; last: hello"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (9, 3)
    sent = seen(upstream, headers["x-request-id"])
    body, sent_headers = sent["body"], sent["headers"]
    assert isinstance(body, dict)
    assert isinstance(sent_headers, dict)
    assert sent["path"] == "/v1/messages"  # the base URL as ANTHROPIC_BASE_URL spells it, /v1 added
    assert body["model"] == "claude-upstream"
    assert body["system"] == "You are Claude, via the gateway.\n\nBe brief."
    assert body["max_tokens"] == 100  # the agent's clamp
    assert body["temperature"] == 0.5
    assert sent_headers["x-api-key"] == UPSTREAM_KEY  # the agent's key, never the client's
    assert "authorization" not in sent_headers
    assert sent_headers["anthropic-version"]  # the SDK's own, passed on


def test_the_clients_anthropic_version_and_beta_go_upstream(gateway: Process, key: dict[str, object],
                                                             upstream: Process) -> None:  # fmt: skip
    headers = {**behave(), "x-api-key": str(key["secret"]), "anthropic-version": "2099-01-01",
               "anthropic-beta": "tools-2099"}  # fmt: skip
    body = {"model": "claude", "max_tokens": 8, "messages": USER}
    assert httpx.post(gateway.url + "/v1/messages", json=body, headers=headers).status_code == 200
    sent = seen(upstream, headers["x-request-id"])["headers"]
    assert isinstance(sent, dict)
    assert (sent["anthropic-version"], sent["anthropic-beta"]) == ("2099-01-01", "tools-2099")
    bare = {**behave(), "x-api-key": str(key["secret"])}  # a client that names no version gets the default
    assert httpx.post(gateway.url + "/v1/messages", json=body, headers=bare).status_code == 200
    sent = seen(upstream, bare["x-request-id"])["headers"]
    assert isinstance(sent, dict)
    assert sent["anthropic-version"] == "2023-06-01"


def test_a_stream_is_relayed_event_for_event_and_metered(
    client: anthropic.Anthropic, admin: Admin, key: dict[str, object]
) -> None:
    with client.messages.stream(model="claude", max_tokens=50, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "part0 part1 part2 "
    assert final.usage.output_tokens == 11
    usage = admin.usage(str(key["id"]), requests=1)
    assert (usage["totals"]["prompt_tokens"], usage["totals"]["completion_tokens"]) == (12, 11)  # 9 + 3 cached


def test_a_dropped_stream_makes_the_sdk_raise(client: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError, match=r"broke off|closed the connection"),
        client.messages.stream(
            model="claude", max_tokens=50, messages=USER, extra_headers=behave(drop_after=1)
        ) as stream,  # fmt: skip
    ):
        for _ in stream.text_stream:
            pass


def test_an_overloaded_upstream_is_retried_then_told_as_overloaded(client: anthropic.Anthropic) -> None:
    began = time.monotonic()
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="claude", max_tokens=8, messages=USER, extra_headers=behave(status=529))
    assert caught.value.status_code == 529
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "upstream says no"}}
    assert time.monotonic() - began < 5


def test_an_openai_client_is_told_where_to_call_an_anthropic_agent(gateway: Process, key: dict[str, object]) -> None:
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=str(key["secret"]), max_retries=0) as sdk,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        sdk.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert "/v1/messages" in json.dumps(caught.value.body)
