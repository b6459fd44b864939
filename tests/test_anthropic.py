"""The Messages front door end to end: the official `anthropic` SDK against a real gateway whose agents sit on the
real OpenAI-shaped test upstream (and the built-in mock), translated both ways."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY
from tests.support.processes import Process
from tests.test_keys import ADMIN_KEY, Admin, keyed_gateway
from tests.test_proxy import behave, seen_upstream

USER = [{"role": "user", "content": "hello"}]
TOOLS: list[Any] = [
    {"name": "lookup", "description": "Look a city up.",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
]  # fmt: skip


@pytest.fixture(scope="module")
def gateway(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = keyed_gateway(upstream, tmp_path_factory.mktemp("anthropic"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def secret(gateway: Process) -> str:
    admin = Admin(gateway)
    key = admin.create(name="anthropic", models=["test-chat", "demo", "test-dead"])
    admin.http.close()
    return str(key["secret"])


@pytest.fixture
def client(gateway: Process, secret: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0, timeout=20) as sdk:
        yield sdk


def test_a_message_on_an_openai_upstream(client: anthropic.Anthropic, upstream: Process) -> None:
    headers = behave()
    message = client.messages.create(
        model="test-chat", max_tokens=64, system="Be brief.", messages=USER, extra_headers=headers
    )
    assert message.model == "test-chat"
    assert message.id.startswith("msg_")
    assert message._request_id == headers["x-request-id"]  # the gateway's request id, as the SDK reads it
    assert message.content[0].type == "text"
    assert message.content[0].text == "upstream heard 3 messages; last: hello"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 7)
    sent = seen_upstream(upstream, headers["x-request-id"])
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "You are a test agent."},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert sent["body"]["max_tokens"] == 64
    assert "x-api-key" not in sent["headers"]  # the client's credential never goes upstream
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_a_stream_on_an_openai_upstream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="test-chat", max_tokens=64, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "part0 part1 part2 "
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 13  # the upstream's own count, from its usage chunk


def test_the_mock_answers_anthropic_clients_offline(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="demo", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text.startswith('You said: "hi".')
    assert message.usage.input_tokens > 0


def test_a_tool_call_both_ways_whole_and_streamed(client: anthropic.Anthropic, upstream: Process) -> None:
    whole = client.messages.create(
        model="test-chat", max_tokens=64, messages=USER, tools=TOOLS, extra_headers=behave(tool_call=True)
    )
    assert whole.stop_reason == "tool_use"
    call = whole.content[-1]
    assert (call.type, call.name, call.input, call.id) == ("tool_use", "lookup", {"city": "Paris"}, "call_1")

    with client.messages.stream(
        model="test-chat", max_tokens=64, messages=USER, tools=TOOLS, extra_headers=behave(tool_call=True)
    ) as stream:
        deltas = [e.delta.partial_json for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas == ['{"city":', ' "Paris"}']  # the arguments as they arrived, in two pieces
    assert final.content[-1].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"

    headers = behave()
    client.messages.create(
        model="test-chat",
        max_tokens=64,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "lookup"},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"city": "Paris"}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        extra_headers=headers,
    )
    sent = seen_upstream(upstream, headers["x-request-id"])["body"]
    assert sent["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"city":"Paris"}'}}
        ],
    }
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}
    assert sent["messages"][4] == {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]}
    assert sent["tools"][0]["function"]["name"] == "lookup"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}


def test_count_tokens_is_the_gateways_estimate(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model="test-chat", messages=[{"role": "user", "content": "x" * 400}])
    assert counted.input_tokens == 100


@pytest.mark.parametrize(
    ("call", "error", "kind"),
    [
        ({"model": "nope"}, anthropic.NotFoundError, "not_found_error"),
        ({"model": "test-bounded"}, anthropic.PermissionDeniedError, "permission_error"),  # not on the key's list
        ({"max_tokens": 0}, anthropic.BadRequestError, "invalid_request_error"),
        ({"headers": behave(status=429, headers={"retry-after": "0"})}, anthropic.RateLimitError, "rate_limit_error"),
        ({"headers": behave(status=500)}, anthropic.InternalServerError, "api_error"),
        ({"model": "test-dead"}, anthropic.InternalServerError, "api_error"),  # 502: nothing listens upstream
    ],
)
def test_every_error_in_anthropics_shape(
    client: anthropic.Anthropic, call: dict[str, Any], error: type[anthropic.APIStatusError], kind: str
) -> None:
    arguments = {"model": "test-chat", "max_tokens": 64, "messages": USER}
    headers = call.pop("headers", None)
    with pytest.raises(error) as caught:
        client.messages.create(**{**arguments, **call}, extra_headers=headers)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == kind
    assert caught.value.request_id  # the `request-id` header, for support tickets


def test_a_missing_or_wrong_key_is_an_authentication_error(gateway: Process) -> None:
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="sk-gw-made-up", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        wrong.messages.create(model="test-chat", max_tokens=8, messages=USER)
    assert caught.value.body["error"]["type"] == "authentication_error"
    answer = httpx.post(gateway.url + "/v1/messages", json={"model": "test-chat", "max_tokens": 8, "messages": USER})
    assert answer.status_code == 401
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "authentication_error"


def test_a_stream_the_upstream_drops_makes_the_sdk_raise(client: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError, match=r"broke off|closed the connection"),
        client.messages.stream(
            model="test-chat", max_tokens=64, messages=USER, extra_headers=behave(chunks=5, drop_after=2)
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass


def test_a_stream_ending_without_done_ends_with_an_error_event(gateway: Process, secret: str) -> None:
    body = {"model": "test-chat", "max_tokens": 64, "messages": USER, "stream": True}
    headers = {"x-api-key": secret, **behave(no_done=True)}
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, headers=headers) as response:
        lines = list(response.iter_lines())
    events = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
    assert events[0] == "message_start"
    assert events[-1] == "error"
    assert "message_stop" not in events


def test_a_session_goes_on_from_either_sdk(gateway: Process, secret: str, upstream: Process) -> None:
    created = httpx.post(
        gateway.url + "/v1/sessions", json={"model": "test-chat"}, headers={"authorization": f"Bearer {secret}"}
    )
    session = {"x-session-id": created.json()["session_id"]}
    with anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0, default_headers=session) as client:
        client.messages.create(model="test-chat", max_tokens=8, system="Be brief.",
                               messages=[{"role": "user", "content": "first"}])  # fmt: skip
        with client.messages.stream(model="test-chat", max_tokens=8, system="Be brief.",
                                    messages=[{"role": "user", "content": "second"}]) as stream:  # fmt: skip
            assert "".join(stream.text_stream) == "part0 part1 part2 "
    headers = {**session, **behave()}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0) as sdk:
        sdk.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "third"}],
                                    extra_headers=headers)  # fmt: skip
    sent = seen_upstream(upstream, headers["x-request-id"])["body"]["messages"]
    # The agent's prompt, then every earlier turn of either SDK (the Messages system text is not kept: it comes
    # with each Messages request), then this one.
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "You are a test agent."),
        ("user", "first"),
        ("assistant", "upstream heard 3 messages; last: first"),
        ("user", "second"),
        ("assistant", "part0 part1 part2 "),
        ("user", "third"),
    ]


def test_admin_key_is_not_a_messages_key(gateway: Process) -> None:
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=ADMIN_KEY, max_retries=0) as admin,
        pytest.raises(anthropic.AuthenticationError),
    ):
        admin.messages.create(model="test-chat", max_tokens=8, messages=USER)
