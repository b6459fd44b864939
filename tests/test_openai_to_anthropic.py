"""Chat completions ↔ Messages for OpenAI clients of agents on Anthropic's API, pure: request, whole answer and
stream, from bodies in tests/fixtures/translation/ written to the two APIs' documented shapes (system and developer
messages, images and a PDF, several tool calls and their results, thinking, cached tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config.agents import Agent, AgentSpec, compile_agent
from gateway.errors import BadRequest
from gateway.protocols import sse
from gateway.protocols.anthropic.messages import Endpoint
from gateway.protocols.anthropic.wire import ANTHROPIC
from gateway.protocols.openai_to_anthropic import StreamTranslator, completion, messages_of, messages_request

FIXTURES = Path(__file__).parent / "fixtures" / "translation"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def chunks_of(stream: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The chat chunks of a translated stream, and whether it ended with `data: [DONE]`."""
    datas = [sse.event_data(event) for event in sse.iter_events(stream)]
    done = bool(datas) and datas[-1] == b"[DONE]"
    return [json.loads(data) for data in datas if data != b"[DONE]"], done


def test_a_chat_request_with_images_a_file_tools_and_results_becomes_a_messages_request() -> None:
    assert messages_request(fixture("openai_request.json")) == fixture("anthropic_request.json")


def test_a_message_with_thinking_and_two_tool_calls_becomes_a_chat_completion() -> None:
    answer = completion(fixture("anthropic_message_two_tools.json"), model="claude")
    assert isinstance(answer.pop("created"), int)
    assert answer == fixture("completion_from_message.json")


def test_a_stream_with_thinking_text_and_two_tool_calls_becomes_chat_chunks() -> None:
    translator = StreamTranslator(model="claude", include_usage=True)
    recorded = (FIXTURES / "anthropic_stream_two_tools.sse").read_bytes()
    # Fed as a relay reads them: in two uneven blocks of whole events.
    blocks, rest = sse.split_events(recorded[: len(recorded) // 3])
    chunks, done = chunks_of(translator.feed(blocks) + translator.feed(rest + recorded[len(recorded) // 3 :]))

    assert done
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL"}
    assert {c["model"] for c in chunks} == {"claude"}  # the name the client asked for, not the upstream's
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Weather first, then time."
    assert "".join(d.get("content", "") for d in deltas) == "Checking both."
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0, 0, 0, 1]  # one chunk opening each call, one per argument piece
    assert [(c["id"], c["function"]["name"]) for c in calls if "id" in c] == [
        ("toolu_01A09q90qw90lq917835lq9", "get_weather"),
        ("toolu_01B19q90qw90lq917835lq8", "get_time"),
    ]
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 0) == '{"city": "Paris"}'
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 125, "completion_tokens": 30, "total_tokens": 155,
                                   "prompt_tokens_details": {"cached_tokens": 100}}  # fmt: skip


def test_a_stream_ends_only_at_message_stop_and_an_error_event_is_openais() -> None:
    translator = StreamTranslator(model="claude", include_usage=False)
    recorded = (FIXTURES / "anthropic_stream_two_tools.sse").read_bytes()
    events = sse.iter_events(recorded)
    chunks, done = chunks_of(translator.feed(b"".join(events[:-1])))
    assert not done  # without message_stop the relay ends the stream with an error event
    assert all("usage" not in c for c in chunks)  # the client did not ask for it
    failed = StreamTranslator(model="claude", include_usage=False)
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    out = failed.feed(events[0] + error)
    last = json.loads(sse.event_data(sse.iter_events(out)[-1]))
    assert last == {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("refusal", "content_filter"), ("model_context_window_exceeded", "length"), (None, "stop")],
)  # fmt: skip
def test_stop_reasons_map_to_finish_reasons(stop_reason: str | None, finish: str) -> None:
    message = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason, "usage": {}}
    assert completion(message, model="m")["choices"][0]["finish_reason"] == finish


def test_what_a_chat_request_does_not_say_the_messages_api_is_not_told() -> None:
    plain = messages_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert plain == {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    # No tools offered: a tool choice alone has nothing to choose from.
    assert "tool_choice" not in messages_request({"model": "m", "messages": [], "tool_choice": "auto"})
    named = messages_request({"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "f"}}})  # fmt: skip
    assert named["tool_choice"] == {"type": "tool", "name": "f"}
    assert messages_request({"model": "m", "messages": [], "stop": "END"})["stop_sequences"] == ["END"]


def test_turns_of_one_role_join_and_empty_text_is_left_out() -> None:
    system, messages = messages_of([
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "not json"}}]},
    ])  # fmt: skip
    assert system == ""
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
         "messages.0.content"),
    ],
)  # fmt: skip
def test_what_would_change_the_answer_if_dropped_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        messages_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})
    assert caught.value.param == param


def test_events_fed_one_by_one_translate_as_one_block_does() -> None:
    """The relay's common read, one event as Anthropic writes it, takes a shorter path: it must say the same."""
    recorded = (FIXTURES / "anthropic_stream_two_tools.sse").read_bytes()
    tricky = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,' + (
        b'"delta":{"type":"text_delta","text":"a \\"quote\\"}} and \\u00e9"}}\n\n'
    )
    events = sse.iter_events(recorded)
    events.insert(9, tricky)  # inside the text block
    one_by_one = StreamTranslator(model="claude", include_usage=True)
    whole = StreamTranslator(model="claude", include_usage=True)
    split = b"".join(one_by_one.feed(event) for event in events)
    assert chunks_of(split) == chunks_of(whole.feed(b"".join(events)))
    texts = [c["choices"][0]["delta"].get("content") for c in chunks_of(split)[0] if c["choices"]]
    assert 'a "quote"}} and é' in texts


def test_an_anthropic_agent_holds_the_output_to_its_ceiling_and_refuses_only_a_stated_limit_over_it() -> None:
    def agent(over: str) -> Agent:
        spec = {"name": "c", "llm": {"provider": "anthropic", "model": "m"},
                "limits": {"max_tokens_per_request": 100, "over_max_tokens": over}}  # fmt: skip
        return compile_agent(AgentSpec.model_validate(spec), {})

    unstated = messages_request({"model": "c", "messages": [{"role": "user", "content": "hi"}]})
    for over in ("reject", "clamp"):  # the gateway's default (1,024) is the agent's to lower, not the client's fault
        sent = ANTHROPIC.outbound(Endpoint.MESSAGES, unstated, agent(over), stream=False, default_max_tokens=1024)
        assert (sent.body["max_tokens"], sent.output_tokens) == (100, 100)
    stated = {**unstated, "max_tokens": 500}
    clamped = ANTHROPIC.outbound(Endpoint.MESSAGES, stated, agent("clamp"), stream=False, default_max_tokens=1024)
    assert (clamped.body["max_tokens"], clamped.output_tokens) == (100, 100)
    with pytest.raises(BadRequest) as caught:
        ANTHROPIC.outbound(Endpoint.MESSAGES, stated, agent("reject"), stream=False, default_max_tokens=1024)
    assert caught.value.param == "max_tokens"
