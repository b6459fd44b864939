"""Simulated streaming: a whole answer replayed as stream chunks that rebuild exactly what the upstream answered."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import httpx
import openai
import orjson
import pytest

from gateway.config.agents import StreamingSpec
from gateway.errors import UpstreamBadResponse
from gateway.protocols.openai import simulate
from gateway.protocols.openai.payload import Endpoint
from gateway.protocols.openai.simulate import chat_events, completion_events, replay, split_words
from gateway.sessions.assembly import ReplyAssembler, reply_from_completion
from gateway.upstream.base import UpstreamResponse

pytestmark = pytest.mark.anyio

USAGE: dict[str, Any] = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
WEATHER_CALL: dict[str, Any] = {
    "id": "call_weather",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Zürich", "unit": "celsius"}'},
}
TIME_CALL: dict[str, Any] = {
    "id": "call_time",
    "type": "function",
    "function": {"name": "get_time", "arguments": '{"tz": "Europe/Zurich"}'},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeUpstream:
    """A whole (non-streamed) upstream answer, as `UpstreamResponse`; remembers whether its body was read."""

    def __init__(self, body: bytes, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.content_type = "application/json"
        self.body = body
        self.headers = headers if headers is not None else [(b"content-type", b"application/json")]
        self.reads = 0

    def relay_headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.headers)

    async def read(self) -> bytes:
        self.reads += 1
        return self.body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    def close(self) -> None:
        pass


def chat_completion(*choices: dict[str, Any], usage: dict[str, Any] | None = USAGE) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0123",
        "choices": list(choices),
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chat_choice(message: dict[str, Any], finish_reason: str | None = "stop", index: int = 0) -> dict[str, Any]:
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def text_completion(*texts: str, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "cmpl-xyz789",
        "object": "text_completion",
        "created": 1_700_000_001,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish_reason} for i, text in enumerate(texts)
        ],
        "usage": USAGE,
    }


def parse_events(stream: bytes) -> list[bytes]:
    """The data of every event in `stream`, checked to be whole `data: ` events ended by a blank line."""
    assert stream.endswith(b"\n\n"), stream[-80:]
    events = stream[: -len(b"\n\n")].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: "), event
        assert b"\n" not in event, event
    return [event[len(b"data: ") :] for event in events]


def chunks_of(events: list[bytes]) -> list[dict[str, Any]]:
    """Each event (as `chat_events` and `completion_events` make them: one event each) parsed as a JSON chunk."""
    parsed = []
    for event in events:
        (data,) = parse_events(event)
        parsed.append(orjson.loads(data))
    return parsed


def deltas(chunks: list[dict[str, Any]], index: int = 0) -> list[dict[str, Any]]:
    return [choice["delta"] for chunk in chunks for choice in chunk["choices"] if choice["index"] == index]


async def simulated_stream(
    body: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT, chunk_size: int = 2
) -> tuple[UpstreamResponse, list[bytes]]:
    response = await replay(FakeUpstream(orjson.dumps(body)), endpoint, StreamingSpec(chunk_size=chunk_size, delay=0))
    return response, [chunk async for chunk in response.iter_chunks()]


@asynccontextmanager
async def sdk_reading(response: UpstreamResponse) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client, every request of which is answered by `response`, streamed as the relay streams it."""

    async def serve(request: httpx.Request) -> httpx.Response:
        headers = [(name.decode(), value.decode()) for name, value in response.relay_headers()]
        return httpx.Response(200, headers=headers, content=response.iter_chunks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as http:
        # Newer SDKs annotate `http_client` with their own httpx fork and still accept an httpx client.
        yield openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key="sk-test", http_client=cast(Any, http))


TEXTS = [
    "Hello world",
    "  leading and trailing  ",
    "multiple   spaces\tand\t\ttabs",
    "lines\nand\r\nmore lines\n\n\nend\n",
    "unicode: héllo wörld 日本語のテキスト 🙂 emoji\u00a0nbsp\u3000ideographic",
    "one",
    "   ",
    "\n",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_split_words_pieces_join_back_to_the_exact_text(text: str, size: int) -> None:
    pieces = split_words(text, size)

    assert "".join(pieces) == text
    words = len(text.split())
    if words == 0:
        assert pieces == ([text] if text else [])
        return
    assert len(pieces) == math.ceil(words / size)
    assert [len(piece.split()) for piece in pieces[:-1]] == [size] * (len(pieces) - 1)
    assert 1 <= len(pieces[-1].split()) <= size


def test_split_words_keeps_whitespace_with_the_word_before_it() -> None:
    assert split_words("  Hi  there\n\nfriend. ", 1) == ["  Hi  ", "there\n\n", "friend. "]
    assert split_words("  Hi  there\n\nfriend. ", 2) == ["  Hi  there\n\n", "friend. "]


def test_split_words_with_more_room_than_words_gives_the_text_whole() -> None:
    assert split_words(" a b c ", 4) == [" a b c "]
    assert split_words(" a b c ", 3) == [" a b c "]


def test_chat_events_stream_role_then_content_words_then_the_upstream_finish_reason() -> None:
    body = chat_completion(chat_choice({"role": "assistant", "content": "The quick brown fox jumps."}, "length"))

    chunks = chunks_of(chat_events(body, chunk_size=2))

    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "The quick "},
        {"content": "brown fox "},
        {"content": "jumps."},
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, None, None, "length"]
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-abc123"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == 1_700_000_000
        assert chunk["model"] == "gpt-4o-mini-2024-07-18"
        assert chunk["system_fingerprint"] == "fp_0123"
        assert chunk["usage"] is None
        assert len(chunk["choices"]) == 1


def test_chat_events_finish_as_stop_when_the_upstream_gave_no_reason() -> None:
    body = chat_completion(chat_choice({"role": "assistant", "content": "Hi"}, None))

    chunks = chunks_of(chat_events(body, chunk_size=5))

    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_chat_events_carry_each_tool_call_whole_with_its_index() -> None:
    message = {"role": "assistant", "content": "Checking both.", "tool_calls": [WEATHER_CALL, TIME_CALL]}
    body = chat_completion(chat_choice(message, "tool_calls"))

    chunks = chunks_of(chat_events(body, chunk_size=10))

    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Checking both."},
        {"tool_calls": [{"index": 0, **WEATHER_CALL}]},
        {"tool_calls": [{"index": 1, **TIME_CALL}]},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_chat_events_carry_a_refusal() -> None:
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    body = chat_completion(chat_choice(message))

    chunks = chunks_of(chat_events(body, chunk_size=1))

    assert {"refusal": "I can't help with that."} in deltas(chunks)
    assert "".join(delta.get("content") or "" for delta in deltas(chunks)) == ""


def test_chat_events_stream_every_choice_with_its_own_index_and_finish_reason() -> None:
    body = chat_completion(
        chat_choice({"role": "assistant", "content": "First answer here"}, "stop", index=0),
        chat_choice({"role": "assistant", "content": "Second, longer answer here"}, "length", index=1),
    )

    chunks = chunks_of(chat_events(body, chunk_size=1))

    indexes = [chunk["choices"][0]["index"] for chunk in chunks]
    assert indexes == sorted(indexes)  # one choice after the other
    for index, content, finish in [(0, "First answer here", "stop"), (1, "Second, longer answer here", "length")]:
        choice_deltas = deltas(chunks, index)
        assert choice_deltas[0] == {"role": "assistant", "content": ""}
        assert "".join(delta.get("content", "") for delta in choice_deltas) == content
        assert choice_deltas[-1] == {}
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["index"] == index]
        assert finishes == [None] * (len(finishes) - 1) + [finish]


def test_completion_events_stream_text_words_then_the_finish_reason() -> None:
    body = text_completion("Once upon a time", finish_reason="length")

    chunks = chunks_of(completion_events(body, chunk_size=3))

    assert [chunk["choices"][0]["text"] for chunk in chunks] == ["Once upon a ", "time", ""]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, "length"]
    for chunk in chunks:
        assert chunk["object"] == "text_completion"
        assert chunk["id"] == "cmpl-xyz789"
        assert chunk["model"] == "gpt-3.5-turbo-instruct"
        assert chunk["usage"] is None
        assert "system_fingerprint" not in chunk


def test_completion_events_stream_every_choice() -> None:
    body = text_completion("alpha beta", " gamma ")

    chunks = chunks_of(completion_events(body, chunk_size=1))

    texts: dict[int, str] = {0: "", 1: ""}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == {0: "alpha beta", 1: " gamma "}


MESSAGES = {
    "text": {"role": "assistant", "content": "  Sure!\n\nHere is   a list:\n- one\n- two 🙂\n", "refusal": None},
    "text and tool calls": {"role": "assistant", "content": "Let me check.", "tool_calls": [WEATHER_CALL, TIME_CALL]},
    "empty text": {"role": "assistant", "content": ""},
    "tool call only": {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
    "refusal": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(MESSAGES["text"], id="text"),
        pytest.param(MESSAGES["text and tool calls"], id="text-and-tool-calls"),
        pytest.param(MESSAGES["empty text"], id="empty-text"),
        pytest.param(MESSAGES["tool call only"], id="tool-call-only"),
        pytest.param(MESSAGES["refusal"], id="refusal"),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
async def test_replayed_stream_rebuilds_the_message_a_whole_answer_stores(
    message: dict[str, Any], chunk_size: int
) -> None:
    body = chat_completion(chat_choice(message, "tool_calls" if "tool_calls" in message else "stop"))

    _, chunks = await simulated_stream(body, chunk_size=chunk_size)

    assembler = ReplyAssembler()
    for chunk in chunks:
        parse_events(chunk)  # every chunk the relay forwards is whole events
        assembler.feed(chunk)
    rebuilt = assembler.message()
    assert rebuilt is not None
    assert rebuilt == reply_from_completion(body)
    assert rebuilt["content"] == message["content"]
    assert rebuilt.get("tool_calls") == message.get("tool_calls")
    assert assembler.finish_reason == body["choices"][0]["finish_reason"]


async def test_replayed_stream_content_concatenates_as_an_sdk_reads_it() -> None:
    content = "Paris is the capital of France.\nIt has   about 2.1 million inhabitants. 🇫🇷"
    body = chat_completion(chat_choice({"role": "assistant", "content": content}))

    _, chunks = await simulated_stream(body, chunk_size=2)

    rebuilt = ""
    for data in parse_events(b"".join(chunks)):
        if data == b"[DONE]":
            break
        chunk = orjson.loads(data)
        if chunk["choices"]:
            rebuilt += chunk["choices"][0]["delta"].get("content") or ""
    assert rebuilt == content


async def test_replayed_stream_ends_with_the_usage_chunk_then_done() -> None:
    body = chat_completion(chat_choice({"role": "assistant", "content": "one two three four five"}))

    response, chunks = await simulated_stream(body, chunk_size=2)

    events = parse_events(b"".join(chunks))
    assert events[-1] == b"[DONE]"
    usage_chunk = orjson.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == USAGE
    assert usage_chunk["object"] == "chat.completion.chunk"
    assert usage_chunk["id"] == "chatcmpl-abc123"
    assert all(orjson.loads(data)["usage"] is None for data in events[:-2])
    # The tail comes as one piece after the last content chunk.
    assert parse_events(chunks[-1]) == events[-2:]
    assert await response.read() == b"".join(chunks)


async def test_replayed_stream_without_upstream_usage_ends_with_done_alone() -> None:
    body = chat_completion(chat_choice({"role": "assistant", "content": "Hi"}), usage=None)

    _, chunks = await simulated_stream(body)

    assert chunks[-1] == b"data: [DONE]\n\n"
    assert all(orjson.loads(data)["choices"] for data in parse_events(b"".join(chunks[:-1])))


async def test_replayed_completion_rebuilds_the_text_and_ends_with_usage_then_done() -> None:
    body = text_completion("  The answer is\n42.  ")

    _, chunks = await simulated_stream(body, Endpoint.COMPLETIONS, chunk_size=1)

    events = parse_events(b"".join(chunks))
    assert events[-1] == b"[DONE]"
    usage_chunk = orjson.loads(events[-2])
    assert (usage_chunk["object"], usage_chunk["choices"], usage_chunk["usage"]) == ("text_completion", [], USAGE)
    text_chunks = [orjson.loads(data) for data in events[:-2]]
    assert "".join(chunk["choices"][0]["text"] for chunk in text_chunks) == "  The answer is\n42.  "
    assert text_chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_replayed_stream_is_an_event_stream_that_keeps_the_upstream_headers() -> None:
    upstream = FakeUpstream(
        orjson.dumps(chat_completion(chat_choice({"role": "assistant", "content": "Hi"}))),
        headers=[
            (b"content-type", b"application/json"),
            (b"x-ratelimit-remaining-requests", b"99"),
            (b"x-upstream-request-id", b"req_123"),
        ],
    )

    response = await replay(upstream, Endpoint.CHAT, StreamingSpec(chunk_size=2, delay=0))

    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert response.relay_headers() == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-ratelimit-remaining-requests", b"99"),
        (b"x-upstream-request-id", b"req_123"),
    ]


@pytest.mark.parametrize("body", [b"<html>Bad gateway</html>", b"", b"[1, 2, 3]", b'"text"', b"null"])
async def test_a_success_that_is_not_a_json_object_is_a_bad_upstream_response(body: bytes) -> None:
    with pytest.raises(UpstreamBadResponse) as raised:
        await replay(FakeUpstream(body), Endpoint.CHAT, StreamingSpec())

    assert raised.value.status == 502
    assert "not JSON" in str(raised.value)


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
async def test_an_error_answer_is_returned_as_it_is_unread(status: int) -> None:
    upstream = FakeUpstream(b'{"error": {"message": "boom", "type": "server_error"}}', status=status)

    response = await replay(upstream, Endpoint.CHAT, StreamingSpec())

    assert response is upstream
    assert upstream.reads == 0


@pytest.mark.parametrize("delay", [0.0, 0.25])
async def test_chunks_are_paced_by_the_delay_from_the_second_on_and_the_tail_is_not(
    delay: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeline: list[str] = []

    async def sleep(seconds: float) -> None:
        timeline.append(f"sleep {seconds}")

    # Only the module's own reference is replaced: nothing else in the process sees a fake sleep.
    monkeypatch.setattr(simulate, "asyncio", SimpleNamespace(sleep=sleep))
    body = chat_completion(chat_choice({"role": "assistant", "content": "a b c d e"}))
    response = await replay(FakeUpstream(orjson.dumps(body)), Endpoint.CHAT, StreamingSpec(chunk_size=2, delay=delay))

    async for chunk in response.iter_chunks():
        timeline.append("tail" if chunk.endswith(b"data: [DONE]\n\n") else "chunk")

    # role, "a b ", "c d ", "e", finish: five chunks, four pauses between them; the first goes out at once.
    expected = ["chunk", "sleep 0.25"] * 4 + ["chunk", "tail"] if delay else ["chunk"] * 5 + ["tail"]
    assert timeline == expected


async def test_the_openai_sdk_reads_the_replayed_stream_as_the_original_completion() -> None:
    message = {"role": "assistant", "content": "Looking it up: the weather\nin Zürich.", "tool_calls": [WEATHER_CALL]}
    body = chat_completion(chat_choice(message, "tool_calls"))
    response = await replay(FakeUpstream(orjson.dumps(body)), Endpoint.CHAT, StreamingSpec(chunk_size=3, delay=0))

    async with (
        sdk_reading(response) as client,
        client.chat.completions.stream(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Zürich?"}]
        ) as stream,
    ):
        final = await stream.get_final_completion()

    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == message["content"]
    assert choice.message.tool_calls is not None
    assert [call.model_dump(include={"id", "type", "function"}) for call in choice.message.tool_calls] == [
        {"id": "call_weather", "type": "function", "function": {**WEATHER_CALL["function"], "parsed_arguments": None}}
    ]
    assert final.id == "chatcmpl-abc123"
    assert final.usage is not None
    assert final.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == USAGE


async def test_the_openai_sdk_reads_a_replayed_text_completion() -> None:
    body = text_completion("Roses are red,\nviolets are blue.")
    response = await replay(
        FakeUpstream(orjson.dumps(body)), Endpoint.COMPLETIONS, StreamingSpec(chunk_size=2, delay=0)
    )

    async with sdk_reading(response) as client:
        stream = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="A poem", stream=True)
        pieces = [chunk async for chunk in stream]

    assert "".join(chunk.choices[0].text for chunk in pieces if chunk.choices) == "Roses are red,\nviolets are blue."
    assert pieces[-1].usage is not None
    assert pieces[-1].usage.total_tokens == 21
