"""The assistant message a session stores, rebuilt from relayed stream events or read from a completion body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.sessions.assembly import ReplyAssembler, reply_from_completion

DONE = b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, index: int = 0) -> bytes:
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


def usage_chunk() -> bytes:
    data = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def call_delta(
    index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = ""
) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    call: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        call |= {"id": call_id, "type": "function"}
    return {"tool_calls": [call]}


ROLE = chunk({"role": "assistant", "content": "", "refusal": None})


def assemble(*blocks: bytes) -> ReplyAssembler:
    assembler = ReplyAssembler()
    for block in blocks:
        assembler.feed(block)
    return assembler


def test_content_split_across_events_and_blocks_is_joined() -> None:
    words = ["The", " weather", " in", " Paris", " is", " 21", "°C", "."]
    events = [ROLE, *(chunk({"content": w}) for w in words), chunk(finish="stop"), usage_chunk(), DONE]

    whole = assemble(b"".join(events))
    one_by_one = assemble(*events)
    uneven = assemble(b"".join(events[:3]), events[3], b"".join(events[4:9]), b"".join(events[9:]))

    expected = {"role": "assistant", "content": "The weather in Paris is 21°C."}
    assert whole.message() == one_by_one.message() == uneven.message() == expected
    assert whole.finish_reason == "stop"


def test_two_parallel_tool_calls_interleaved_by_index_are_rebuilt_in_index_order() -> None:
    events = [
        chunk({"role": "assistant", "content": None}),
        chunk(call_delta(0, call_id="call_paris", name="get_weather")),
        chunk(call_delta(0, arguments='{"ci')),
        chunk(call_delta(1, call_id="call_rome", name="get_weather")),
        chunk(call_delta(1, arguments='{"city":')),
        chunk(call_delta(0, arguments='ty":"Paris"}')),
        chunk(call_delta(1, arguments='"Rome"}')),
        chunk(finish="tool_calls"),
        DONE,
    ]

    assembler = assemble(b"".join(events[:4]), b"".join(events[4:]))

    assert assembler.message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_rome",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    }
    assert assembler.finish_reason == "tool_calls"


def test_tool_calls_are_ordered_by_index_not_by_arrival() -> None:
    assembler = assemble(
        chunk(call_delta(1, call_id="b", name="second")), chunk(call_delta(0, call_id="a", name="first"))
    )
    message = assembler.message()
    assert message is not None
    assert [call["id"] for call in message["tool_calls"]] == ["a", "b"]


def test_text_before_a_tool_call_is_kept_with_it() -> None:
    assembler = assemble(
        ROLE, chunk({"content": "Let me check."}), chunk(call_delta(0, call_id="c1", name="f", arguments="{}"))
    )
    assert assembler.message() == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }


def test_tool_call_deltas_without_index_still_assemble() -> None:
    # Some OpenAI-compatible upstreams leave `index` out: a new id opens a call, the rest continue it.
    def unindexed(**call: Any) -> bytes:
        return chunk({"tool_calls": [call]})

    assembler = assemble(
        unindexed(id="a", type="function", function={"name": "f", "arguments": '{"x"'}),
        unindexed(function={"arguments": ":1}"}),
        unindexed(id="b", type="function", function={"name": "g", "arguments": "{}"}),
    )
    message = assembler.message()
    assert message is not None
    assert [(c["id"], c["function"]["arguments"]) for c in message["tool_calls"]] == [("a", '{"x":1}'), ("b", "{}")]


def test_a_name_repeated_in_later_deltas_is_not_doubled() -> None:
    assembler = assemble(
        chunk(call_delta(0, call_id="a", name="lookup", arguments='{"q":')),
        chunk(call_delta(0, name="lookup", arguments='"x"}')),
    )
    message = assembler.message()
    assert message is not None
    assert message["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"q":"x"}'}


def test_a_refusal_is_kept_and_absent_when_there_was_none() -> None:
    refused = assemble(
        chunk({"role": "assistant", "refusal": ""}), chunk({"refusal": "I can't"}), chunk({"refusal": " help."})
    )
    assert refused.message() == {"role": "assistant", "content": None, "refusal": "I can't help."}
    assert "refusal" not in (assemble(ROLE, chunk({"content": "ok"})).message() or {})


def test_crlf_line_endings_are_read_like_lf() -> None:
    events = [ROLE, chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk(finish="stop"), DONE]
    crlf = b"".join(events).replace(b"\n", b"\r\n")

    assembler = assemble(crlf)

    assert assembler.message() == {"role": "assistant", "content": "Hello"}
    assert assembler.finish_reason == "stop"


def test_events_that_are_not_chat_chunks_are_ignored() -> None:
    error = b'data: {"error": {"message": "upstream went away", "type": "server_error", "code": null}}\n\n'
    noise = [b": keep-alive\n\n", b"data: not json\n\n", b"data: [1, 2]\n\n", b"event: ping\n\n", b'data: {"x": 1}\n\n']
    assembler = assemble(ROLE, chunk({"content": "Hi"}), *noise, error, usage_chunk(), DONE)
    assert assembler.message() == {"role": "assistant", "content": "Hi"}
    assert assembler.finish_reason is None


def test_only_choice_zero_is_assembled() -> None:
    assembler = assemble(
        chunk({"content": "zero"}), chunk({"content": "one"}, index=1), chunk(finish="length", index=1)
    )
    assert assembler.message() == {"role": "assistant", "content": "zero"}
    assert assembler.finish_reason is None


def test_a_stream_with_no_content_gives_an_empty_message() -> None:
    assembler = assemble(ROLE, chunk(finish="stop"), usage_chunk(), DONE)
    assert assembler.message() == {"role": "assistant", "content": ""}
    assert assembler.finish_reason == "stop"


@pytest.mark.parametrize(
    "blocks",
    [[], [b""], [DONE], [usage_chunk(), DONE], [b'data: {"error": {"message": "boom"}}\n\n']],
    ids=["nothing", "empty", "done", "usage", "error"],
)
def test_nothing_arrived_means_no_message(blocks: list[bytes]) -> None:
    assembler = assemble(*blocks)
    assert assembler.message() is None
    assert assembler.finish_reason is None


def test_a_stream_cut_short_gives_what_arrived() -> None:
    assembler = assemble(
        ROLE, chunk({"content": "Half an ans"}), chunk(call_delta(0, call_id="c", name="f", arguments='{"a'))
    )
    assert assembler.message() == {
        "role": "assistant",
        "content": "Half an ans",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a'}}],
    }
    assert assembler.finish_reason is None


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }


def test_the_reply_of_a_completion_keeps_only_what_a_message_needs() -> None:
    body = completion({"role": "assistant", "content": "Hello", "refusal": None, "annotations": [], "audio": None})
    assert reply_from_completion(body) == {"role": "assistant", "content": "Hello"}


def test_the_reply_of_a_tool_calling_completion_keeps_its_calls() -> None:
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    body = completion({"role": "assistant", "content": None, "tool_calls": tool_calls, "refusal": None})
    assert reply_from_completion(body) == {"role": "assistant", "content": None, "tool_calls": tool_calls}


def test_the_reply_of_a_refused_completion_keeps_the_refusal() -> None:
    body = completion({"role": "assistant", "content": None, "refusal": "I can't help with that."})
    assert reply_from_completion(body) == {"role": "assistant", "content": None, "refusal": "I can't help with that."}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": []},
        {"choices": None},
        {"choices": ["x"]},
        {"choices": [{"index": 0}]},
        {"error": {"message": "x"}},
    ],
)
def test_a_body_without_a_message_gives_no_reply(body: dict[str, Any]) -> None:
    assert reply_from_completion(body) is None


def test_a_streamed_and_a_whole_completion_store_the_same_message() -> None:
    tool_calls = [
        {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q":"gateway"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": '{"q":"sse"}'}},
    ]
    whole = reply_from_completion(completion({"role": "assistant", "content": "Searching.", "tool_calls": tool_calls}))
    streamed = assemble(
        ROLE,
        chunk({"content": "Search"}),
        chunk({"content": "ing."}),
        chunk(call_delta(0, call_id="call_1", name="search", arguments='{"q":"gate')),
        chunk(call_delta(1, call_id="call_2", name="search", arguments='{"q":"sse"}')),
        chunk(call_delta(0, arguments='way"}')),
        chunk(finish="tool_calls"),
        DONE,
    )
    assert streamed.message() == whole
