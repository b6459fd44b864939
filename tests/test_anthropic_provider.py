"""The `anthropic` provider end to end: the official `anthropic` SDK through a real gateway to a real
Anthropic-shaped upstream process, the request rewritten for the agent and the stream relayed event for event."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.processes import Process, free_port, start_anthropic_upstream, start_gateway
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
    session: {{enabled: true}}
    pricing: {{input_per_million: 3.0, output_per_million: 15.0, cached_input_per_million: 0.30}}
    retries: 1
    retry_backoff: 0.01
    circuit_breaker: {{enabled: false}}
  # An OpenAI-compatible agent whose upstream is down, falling back to the Anthropic one; and the other way round.
  - name: gpt-then-claude
    llm: {{provider: openai-compatible, model: gpt-up, base_url: "http://127.0.0.1:{dead_port}/v1", timeout: 2}}
    retries: 0
    circuit_breaker: {{enabled: false}}
    fallbacks: [claude]
  - name: claude-then-demo
    llm: {{provider: anthropic, model: claude-up, base_url: "http://127.0.0.1:{dead_port}", timeout: 2}}
    retries: 0
    circuit_breaker: {{enabled: false}}
    fallbacks: [demo]
  - name: demo
    llm: {{provider: mock}}
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_anthropic_upstream(tmp_path_factory.mktemp("anthropic-upstream"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    directory: Path = tmp_path_factory.mktemp("anthropic-provider")
    config = directory / "agents.yaml"
    config.write_text(CONFIG.format(upstream=upstream.url, dead_port=free_port()))
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
    # Priced as the agent says: 9 fresh input tokens at $3/M, 3 cached at $0.30/M, 11 output at $15/M.
    assert usage["totals"]["cached_tokens"] == 3
    assert usage["totals"]["cost_usd"] == pytest.approx((9 * 3.0 + 3 * 0.30 + 11 * 15.0) / 1e6)
    assert usage["by_agent"]["claude"]["cost_usd"] == usage["totals"]["cost_usd"]


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


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The forecast",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip


@pytest.fixture
def chat(gateway: Process, key: dict[str, object]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=str(key["secret"]), max_retries=0, timeout=20) as sdk:
        yield sdk


def test_an_openai_client_gets_a_chat_completion_from_an_anthropic_agent(
    chat: openai.OpenAI, upstream: Process
) -> None:
    headers = behave()
    completion = chat.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        temperature=1.6,
        stop="END",
        extra_headers=headers,
    )
    assert completion.model == "claude"
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.content is not None
    assert choice.message.content.startswith("anthropic heard 1 messages")
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    # Anthropic counts cached input apart; OpenAI's prompt tokens include it.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (12, 11, 3)
    sent = seen(upstream, headers["x-request-id"])
    body, sent_headers = sent["body"], sent["headers"]
    assert isinstance(body, dict)
    assert isinstance(sent_headers, dict)
    assert sent["path"] == "/v1/messages"
    assert body["model"] == "claude-upstream"
    assert body["system"] == "You are Claude, via the gateway.\n\nBe brief."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert body["max_tokens"] == 100  # required by the Messages API: the gateway's default, held to the agent's clamp
    assert body["temperature"] == 1.0  # OpenAI's 0-2 held to Anthropic's 0-1
    assert body["stop_sequences"] == ["END"]
    assert sent_headers["x-api-key"] == UPSTREAM_KEY
    assert sent_headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent_headers


def test_an_openai_stream_from_an_anthropic_agent_with_its_usage(
    chat: openai.OpenAI, admin: Admin, key: dict[str, object]
) -> None:
    stream = chat.chat.completions.create(
        model="claude", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "part0 part1 part2 "
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert {c.model for c in chunks} == {"claude"}
    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (12, 11)
    usage = admin.usage(str(key["id"]), requests=1)
    assert (usage["totals"]["prompt_tokens"], usage["totals"]["completion_tokens"]) == (12, 11)
    plain = list(chat.chat.completions.create(model="claude", messages=USER, stream=True))
    assert all(c.usage is None for c in plain)  # no usage chunk the client did not ask for


def test_tool_calls_cross_to_an_openai_client_and_their_results_go_back(chat: openai.OpenAI, upstream: Process) -> None:
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    completion = chat.chat.completions.create(model="claude", messages=asked, tools=[WEATHER], tool_choice="required")
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert (call.id, call.function.name) == ("toolu_up1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}

    # Streamed: the arguments arrive in pieces, as the upstream's input_json_delta brought them.
    pieces: dict[int, list[str]] = {}
    names = {}
    finish = None
    for chunk in chat.chat.completions.create(model="claude", messages=asked, tools=[WEATHER], stream=True):
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.function and delta.function.name:
                names[delta.index] = delta.function.name
            pieces.setdefault(delta.index, []).append(delta.function.arguments or "" if delta.function else "")
        finish = chunk.choices[0].finish_reason or finish
    assert names == {0: "get_weather"}
    assert finish == "tool_calls"
    assert "".join(pieces[0]) == '{"city": "Paris", "days": 2}'
    assert len([p for p in pieces[0] if p]) == 2

    # The result goes back as Anthropic's tool_result, after the assistant's tool_use.
    headers = behave()
    history = [*asked, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]  # fmt: skip
    answer = chat.chat.completions.create(model="claude", messages=history, tools=[WEATHER], extra_headers=headers)
    assert answer.choices[0].finish_reason == "stop"
    sent = seen(upstream, headers["x-request-id"])["body"]
    assert isinstance(sent, dict)
    assert sent["tools"] == [{"name": "get_weather", "description": "The forecast",
                              "input_schema": WEATHER["function"]["parameters"]}]  # type: ignore[index]  # fmt: skip
    tool_use = {"type": "tool_use", "id": "toolu_up1", "name": "get_weather", "input": {"city": "Paris", "days": 2}}
    assert sent["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": message.content},
                                                                    tool_use]}  # fmt: skip
    assert sent["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_up1", "content": "Sunny, 21 C"}]}  # fmt: skip


def test_an_anthropic_agents_failures_reach_an_openai_client_as_its_sdk_expects(chat: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        chat.chat.completions.create(model="claude", messages=USER, extra_headers=behave(status=429))
    assert limited.value.body == {"message": "upstream says no", "type": "rate_limit_error", "param": None,
                                  "code": None}  # fmt: skip
    with pytest.raises(openai.BadRequestError):
        chat.chat.completions.create(model="claude", messages=USER, extra_headers=behave(status=400))
    with pytest.raises(openai.APIError, match="Overloaded mid-stream"):
        for _ in chat.chat.completions.create(
            model="claude", messages=USER, stream=True, extra_headers=behave(error_after=1)
        ):
            pass
    with pytest.raises(openai.APIError, match=r"broke off|closed the connection"):
        for _ in chat.chat.completions.create(
            model="claude", messages=USER, stream=True, extra_headers=behave(drop_after=1)
        ):
            pass


def test_what_cannot_cross_to_an_anthropic_agent_is_refused_by_name(chat: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="/v1/messages") as caught:
        chat.embeddings.create(model="claude", input="hi")
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="one choice") as caught:
        chat.chat.completions.create(model="claude", messages=USER, n=2)
    assert caught.value.body["param"] == "n"  # type: ignore[index]


def test_a_session_on_an_anthropic_agent_goes_on_from_either_sdk(
    gateway: Process, key: dict[str, object], chat: openai.OpenAI, client: anthropic.Anthropic, upstream: Process
) -> None:
    secret = str(key["secret"])
    created = httpx.post(gateway.url + "/v1/sessions", json={"model": "claude"},
                         headers={"authorization": f"Bearer {secret}"})  # fmt: skip
    session = {"x-session-id": created.json()["session_id"]}
    chat.chat.completions.create(model="claude", messages=[{"role": "user", "content": "first"}],
                                 extra_headers=session)  # fmt: skip
    with client.messages.stream(model="claude", max_tokens=20, messages=[{"role": "user", "content": "second"}],
                                extra_headers=session) as stream:  # fmt: skip
        assert "".join(stream.text_stream) == "part0 part1 part2 "
    streamed = chat.chat.completions.create(model="claude", messages=[{"role": "user", "content": "third"}],
                                            stream=True, extra_headers=session)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "part0 part1 part2 "
    headers = {**session, **behave()}
    client.messages.create(model="claude", max_tokens=20, messages=[{"role": "user", "content": "fourth"}],
                           extra_headers=headers)  # fmt: skip
    sent = seen(upstream, headers["x-request-id"])["body"]
    assert isinstance(sent, dict)
    turns = [(m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
             for m in sent["messages"]]  # fmt: skip
    assert turns == [
        ("user", "first"),
        ("assistant", "anthropic heard 1 messages; last: [{'type': 'text', 'text': 'first'}]"),
        ("user", "second"),
        ("assistant", "part0 part1 part2 "),
        ("user", "third"),
        ("assistant", "part0 part1 part2 "),
        ("user", "fourth"),
    ]
    assert sent["system"] == "You are Claude, via the gateway."


def test_count_tokens_on_an_anthropic_agent_is_the_upstreams_count(
    client: anthropic.Anthropic, upstream: Process, admin: Admin
) -> None:
    # Counting spends no tokens: a key of 10 tokens a minute may count a 60-token request again and again.
    limited = admin.create(name="counted", limits={"tpm": 10})
    long = [{"role": "user", "content": "hello " * 40}]
    headers = behave()
    with anthropic.Anthropic(base_url=client.base_url, api_key=str(limited["secret"]), max_retries=0) as sdk:
        for _ in range(3):
            counted = sdk.messages.count_tokens(model="claude", messages=long, extra_headers=headers)
            assert counted.input_tokens == 1001
        sdk.messages.create(model="claude", max_tokens=5, messages=long)  # a full bucket lets one through
        with pytest.raises(anthropic.RateLimitError):  # and it is in debt now: the limit is real
            sdk.messages.create(model="claude", max_tokens=5, messages=long)
    sent = seen(upstream, headers["x-request-id"])
    assert sent["path"] == "/v1/messages/count_tokens"
    body = sent["body"]
    assert isinstance(body, dict)
    assert body == {"model": "claude-upstream", "messages": long, "system": "You are Claude, via the gateway."}


def test_a_fallback_may_speak_another_format_than_the_agent_it_stands_in_for(
    chat: openai.OpenAI, client: anthropic.Anthropic
) -> None:
    # An OpenAI client: the first agent (OpenAI's format) is down, the Anthropic fallback answers, translated back.
    completion = chat.chat.completions.create(model="gpt-then-claude", messages=USER)
    assert completion.model == "gpt-then-claude"
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith("anthropic heard 1 messages")
    stream = chat.chat.completions.create(model="gpt-then-claude", messages=USER, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "part0 part1 part2 "
    # An Anthropic client of the same agent: its request went out translated for the first agent and as it is
    # to the fallback, whose answer comes back as it came.
    message = client.messages.create(model="gpt-then-claude", max_tokens=20, messages=USER)
    assert message.content[0].type == "text"
    assert message.content[0].text == "anthropic heard 1 messages; last: hello"
    # The other way round: an Anthropic agent down, a fallback on the mock (OpenAI's format), for both SDKs.
    message = client.messages.create(model="claude-then-demo", max_tokens=20, messages=USER)
    assert message.content[0].type == "text"
    assert "mock provider" in message.content[0].text
    assert message.model == "claude-then-demo"
    completion = chat.chat.completions.create(model="claude-then-demo", messages=USER)
    assert completion.choices[0].message.content is not None
    assert "mock provider" in completion.choices[0].message.content
