"""Messages ↔ chat completions, pure: request, whole answer and stream, from bodies in tests/fixtures/translation/
written to the two APIs' documented shapes (thinking, images, several tool calls, tool results, cached tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import BadRequest
from gateway.protocols import sse
from gateway.protocols.anthropic import messages
from gateway.protocols.anthropic_to_openai import StreamTranslator, chat_request, message_answer

FIXTURES = Path(__file__).parent / "fixtures" / "translation"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def events_of(stream: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for event in sse.iter_events(stream):
        name = next(line[len(b"event: ") :] for line in event.splitlines() if line.startswith(b"event: "))
        data = json.loads(sse.event_data(event))
        assert data["type"] == name.decode()  # the event's name and its type agree, as Anthropic sends them
        out.append((name.decode(), data))
    return out


def test_a_request_with_images_tools_results_and_thinking_becomes_a_chat_completion() -> None:
    assert chat_request(fixture("messages_request.json")) == fixture("chat_request.json")


def test_a_completion_with_reasoning_and_two_tool_calls_becomes_a_message() -> None:
    answer = message_answer(fixture("completion_two_tools.json"), model="claude-sonnet-4-5")
    assert answer == fixture("message_two_tools.json")


def test_a_stream_with_thinking_text_and_two_tool_calls_becomes_messages_events() -> None:
    translator = StreamTranslator(model="claude-sonnet-4-5", input_estimate=118)
    recorded = (FIXTURES / "chat_stream_two_tools.sse").read_bytes()
    # Fed as a relay reads them: in two uneven blocks of whole events.
    blocks, rest = sse.split_events(recorded[: len(recorded) // 3])
    out = translator.feed(blocks) + translator.feed(rest + recorded[len(recorded) // 3 :])
    events = events_of(out)

    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  # thinking
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  # text
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",  # get_weather
        "content_block_start", "content_block_stop",  # get_time, no arguments
        "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0][1]["message"]
    assert (start["model"], start["usage"]["input_tokens"]) == ("claude-sonnet-4-5", 118)  # the estimate, not 0
    assert events[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Plan: "}
    assert events[6][1]["delta"] == {"type": "text_delta", "text": "On it"}
    weather = events[9][1]["content_block"]
    assert (weather["type"], weather["id"], weather["name"], events[9][1]["index"]) == (
        "tool_use", "call_w", "get_weather", 2)  # fmt: skip
    arguments = "".join(e["delta"]["partial_json"] for n, e in events if e.get("delta", {}).get("type") ==
                        "input_json_delta")  # fmt: skip
    assert json.loads(arguments) == {"city": "Paris"}
    assert events[13][1]["content_block"]["name"] == "get_time"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 20, "output_tokens": 30, "cache_read_input_tokens": 100,
                              "cache_creation_input_tokens": 0}  # fmt: skip


def test_events_fed_one_by_one_translate_as_one_block_does() -> None:
    """The relay's common read, one text chunk as OpenAI writes it, takes a shorter path: it must say the same, for
    every text a JSON string can hold and for chunks that only look like text."""
    recorded = sse.iter_events((FIXTURES / "chat_stream_two_tools.sse").read_bytes())
    head = b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    odd = [
        b'"choices":[{"index":0,"delta":{"content":"say \\"hi\\" \\\\ \\u00e9 \xc3\xa9"},"logprobs":null,'
        b'"finish_reason":null}],"usage":null}',
        b'"choices":[{"index":0,"delta":{"content":"ends in a backslash \\\\"},"finish_reason":null}]}',
        b'"choices":[{"index":0,"delta":{"content":"and","role":"assistant"},"finish_reason":null}],"usage":null}',
        b'"choices":[{"index":0,"delta":{"content":"last"},"finish_reason":null}],"usage":{"prompt_tokens":3}}',
    ]
    text_at = next(i for i, e in enumerate(recorded) if b'"content":"On it"' in e) + 1
    events = [*recorded[:text_at], *(head + chunk + b"\n\n" for chunk in odd), *recorded[text_at:]]
    one_by_one = StreamTranslator(model="m", input_estimate=1)
    split = b"".join(one_by_one.feed(event) for event in events)
    assert events_of(split) == events_of(StreamTranslator(model="m", input_estimate=1).feed(b"".join(events)))
    texts = [e["delta"]["text"] for _, e in events_of(split) if e.get("delta", {}).get("type") == "text_delta"]
    assert texts[1:5] == ['say "hi" \\ é é', "ends in a backslash \\", "and", "last"]


def test_a_stream_without_done_is_never_closed_by_the_translator() -> None:
    translator = StreamTranslator(model="m", input_estimate=1)
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    events = events_of(translator.feed(b"data: " + json.dumps(chunk).encode() + b"\n\n"))
    assert "message_stop" not in [name for name, _ in events]  # the relay ends it with `event: error`


def test_stop_reasons_map_and_empty_arguments_are_an_empty_object() -> None:
    def finished(reason: str, **message: Any) -> dict[str, Any]:
        completion = {"choices": [{"message": {"content": "x", **message}, "finish_reason": reason}]}
        return message_answer(completion, model="m")

    assert finished("length")["stop_reason"] == "max_tokens"
    assert finished("content_filter")["stop_reason"] == "refusal"
    assert finished("stop", refusal="I can't.")["stop_reason"] == "refusal"
    call = {"id": "c", "function": {"name": "f", "arguments": "  "}}
    assert finished("tool_calls", tool_calls=[call])["content"][-1]["input"] == {}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "model"),
        ({"model": "m", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 1.5, "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 8, "messages": "hi"}, "messages"),
        ({"model": "m", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"model": "m", "max_tokens": 8, "messages": [], "stream": "yes"}, "stream"),
    ],
)
def test_the_door_checks_what_the_gateway_reads(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        messages.read(messages.Endpoint.MESSAGES, body)
    assert caught.value.param == param


def test_error_types_follow_the_status_as_the_sdk_maps_them() -> None:
    kinds = {status: messages.error_type(status) for status in (400, 401, 403, 404, 413, 429, 500, 502, 503, 529)}
    assert kinds == {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                     502: "api_error", 503: "api_error", 529: "overloaded_error"}  # fmt: skip
