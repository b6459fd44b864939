"""The built-in mock provider: deterministic OpenAI-shaped answers, streamed in `streaming.chunk_size`-word pieces."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import anyio
import orjson
import pytest

from gateway.config.agents import Agent, AgentSpec, compile_agent
from gateway.errors import BadRequest
from gateway.protocols.mock import MockResponse, MockUpstream
from gateway.upstream.base import UpstreamRequest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def mock_agent(chunk_size: int = 3, delay: float = 0.0) -> Agent:
    spec = AgentSpec.model_validate(
        {"name": "demo", "llm": {"provider": "mock"}, "streaming": {"chunk_size": chunk_size, "delay": delay}}
    )
    return compile_agent(spec, {})


async def send(path: str, payload: dict[str, Any], *, stream: bool = False, agent: Agent | None = None) -> MockResponse:
    agent = agent or mock_agent()
    request = UpstreamRequest(agent=agent, target=agent.primary, path=path, payload=payload, stream=stream, headers={})
    response = await MockUpstream().send(request)
    assert isinstance(response, MockResponse)
    return response


async def whole(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = await send(path, payload)
    assert response.status == 200
    assert response.content_type == "application/json"
    body: dict[str, Any] = orjson.loads(await response.read())
    return body


async def stream_events(path: str, payload: dict[str, Any], agent: Agent | None = None) -> list[Any]:
    """The `data:` payloads of a streamed answer, parsed; `[DONE]` stays a string."""
    response = await send(path, payload, stream=True, agent=agent)
    assert response.content_type == "text/event-stream"
    raw = b"".join([chunk async for chunk in response.iter_chunks()])
    assert raw.endswith(b"\n\n")
    out: list[Any] = []
    for event in raw.split(b"\n\n")[:-1]:
        data = next(line for line in event.split(b"\n") if line.startswith(b"data: ")).removeprefix(b"data: ")
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def chat_deltas(events: list[Any]) -> list[str]:
    return [e["choices"][0]["delta"].get("content", "") for e in events if e != "[DONE]" and e["choices"]]


CHAT = "/chat/completions"
MESSAGES = [
    {"role": "system", "content": "You are the demo."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "what is the capital of France?"},
]


@pytest.mark.anyio
async def test_chat_echoes_the_last_user_message_and_the_message_count() -> None:
    body = await whole(CHAT, {"model": "demo", "messages": MESSAGES})

    text = body["choices"][0]["message"]["content"]
    assert body["object"] == "chat.completion"
    assert 'You said: "what is the capital of France?"' in text
    assert "received 4 messages, 1 of them system" in text
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.anyio
async def test_chat_reports_the_model_it_was_sent() -> None:
    body = await whole(CHAT, {"model": "upstream-name", "messages": MESSAGES})

    assert body["model"] == "upstream-name"


@pytest.mark.anyio
async def test_chat_usage_adds_up() -> None:
    usage = (await whole(CHAT, {"model": "demo", "messages": MESSAGES}))["usage"]

    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.anyio
async def test_chat_usage_counts_the_words_of_the_reply() -> None:
    body = await whole(CHAT, {"model": "demo", "messages": MESSAGES})

    assert body["usage"]["completion_tokens"] == len(body["choices"][0]["message"]["content"].split())


@pytest.mark.anyio
async def test_a_chat_stream_spells_out_exactly_the_whole_reply() -> None:
    payload = {"model": "demo", "messages": MESSAGES}
    text = (await whole(CHAT, payload))["choices"][0]["message"]["content"]

    events = await stream_events(CHAT, payload)

    assert "".join(chat_deltas(events)) == text
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == "[DONE]"


@pytest.mark.anyio
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
async def test_the_number_of_content_chunks_follows_the_chunk_size(chunk_size: int) -> None:
    payload = {"model": "demo", "messages": MESSAGES}
    words = len((await whole(CHAT, payload))["choices"][0]["message"]["content"].split())

    events = await stream_events(CHAT, payload, agent=mock_agent(chunk_size=chunk_size))

    pieces = [d for d in chat_deltas(events) if d]
    assert len(pieces) == math.ceil(words / chunk_size)
    assert all(len(piece.split()) <= chunk_size for piece in pieces)


@pytest.mark.anyio
async def test_include_usage_adds_a_final_usage_chunk_without_choices() -> None:
    payload = {"model": "demo", "messages": MESSAGES, "stream_options": {"include_usage": True}}

    events = await stream_events(CHAT, payload)

    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] == (
        usage_chunk["usage"]["prompt_tokens"] + usage_chunk["usage"]["completion_tokens"]
    )
    assert all(e["usage"] is None for e in events[:-2])
    assert events[-1] == "[DONE]"


@pytest.mark.anyio
async def test_without_include_usage_no_chunk_carries_usage() -> None:
    events = await stream_events(CHAT, {"model": "demo", "messages": MESSAGES})

    assert all(e["choices"] and "usage" not in e for e in events[:-1])


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_the_reply_with_finish_reason_length(field: str) -> None:
    body = await whole(CHAT, {"model": "demo", "messages": MESSAGES, field: 3})

    assert body["choices"][0]["message"]["content"] == 'You said: "what'
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


@pytest.mark.anyio
async def test_a_cut_stream_ends_with_finish_reason_length() -> None:
    events = await stream_events(CHAT, {"model": "demo", "messages": MESSAGES, "max_tokens": 4})

    assert "".join(chat_deltas(events)) == 'You said: "what is'
    assert events[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.anyio
async def test_completions_complete_the_last_prompt() -> None:
    body = await whole("/completions", {"model": "demo", "prompt": "Once upon a time"})

    assert body["object"] == "text_completion"
    assert 'completing "Once upon a time"' in body["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


@pytest.mark.anyio
async def test_a_completions_stream_spells_out_exactly_the_whole_text() -> None:
    payload = {"model": "demo", "prompt": ["first", "Once upon a time"]}
    whole_body = await whole("/completions", payload)

    events = await stream_events("/completions", payload)

    texts = [e["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == whole_body["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == "[DONE]"


@pytest.mark.anyio
async def test_responses_answer_with_output_text() -> None:
    body = await whole("/responses", {"model": "demo", "input": "hello there", "instructions": "Be brief."})

    assert body["object"] == "response"
    assert body["status"] == "completed"
    text = body["output"][0]["content"][0]["text"]
    assert 'You said: "hello there"' in text
    assert "some instructions" in text
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]


@pytest.mark.anyio
async def test_a_responses_stream_ends_with_response_completed() -> None:
    payload = {"model": "demo", "input": [{"role": "user", "content": "hello there"}]}
    text = (await whole("/responses", payload))["output"][0]["content"][0]["text"]

    events = await stream_events("/responses", payload)

    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    assert "[DONE]" not in events
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == text
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == text
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


@pytest.mark.anyio
async def test_responses_with_max_output_tokens_are_incomplete() -> None:
    body = await whole("/responses", {"model": "demo", "input": "hello there", "max_output_tokens": 2})

    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == "You said:"


def vectors(body: dict[str, Any]) -> list[Any]:
    return [item["embedding"] for item in body["data"]]


@pytest.mark.anyio
async def test_embeddings_are_deterministic() -> None:
    first = await whole("/embeddings", {"model": "demo", "input": ["cat", "dog"]})
    second = await whole("/embeddings", {"model": "demo", "input": ["dog", "cat"]})

    assert vectors(first) == vectors(second)[::-1]
    assert vectors(first)[0] != vectors(first)[1]


@pytest.mark.anyio
async def test_embeddings_of_one_string_and_of_a_token_array() -> None:
    text = await whole("/embeddings", {"model": "demo", "input": "cat"})
    tokens = await whole("/embeddings", {"model": "demo", "input": [101, 102, 103]})

    assert len(text["data"]) == 1
    assert len(tokens["data"]) == 1
    assert tokens["usage"]["prompt_tokens"] == 3


@pytest.mark.anyio
async def test_embeddings_of_several_token_arrays() -> None:
    body = await whole("/embeddings", {"model": "demo", "input": [[101, 102], [103]]})

    assert [item["index"] for item in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 3


@pytest.mark.anyio
async def test_embeddings_are_unit_length_with_sixteen_dimensions_by_default() -> None:
    body = await whole("/embeddings", {"model": "demo", "input": ["cat", "a longer sentence"]})

    for vector in vectors(body):
        assert len(vector) == 16
        assert math.fsum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.anyio
@pytest.mark.parametrize("dimensions", [1, 3, 256, 1536])
async def test_embeddings_honour_dimensions(dimensions: int) -> None:
    body = await whole("/embeddings", {"model": "demo", "input": "cat", "dimensions": dimensions})

    vector = vectors(body)[0]
    assert len(vector) == dimensions
    assert math.fsum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.anyio
async def test_base64_embeddings_decode_to_the_same_floats() -> None:
    payload = {"model": "demo", "input": ["cat", "dog"], "dimensions": 32}
    floats = vectors(await whole("/embeddings", payload))

    encoded = vectors(await whole("/embeddings", {**payload, "encoding_format": "base64"}))

    for text, expected in zip(encoded, floats, strict=True):
        raw = base64.b64decode(text)
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(expected, abs=1e-6)


@pytest.mark.anyio
async def test_embeddings_are_never_streamed() -> None:
    response = await send("/embeddings", {"model": "demo", "input": "cat"}, stream=True)

    assert response.content_type == "application/json"
    assert orjson.loads(await response.read())["object"] == "list"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"input": None},
        {"input": []},
        {"input": 42},
        {"input": {"text": "cat"}},
        {"input": ""},
        {"input": ["cat", 5]},
        {"input": ["cat", None]},
        {"input": [""]},
        {"input": [1, "cat"]},
        {"input": [[]]},
    ],
    ids=[
        "missing",
        "null",
        "empty-list",
        "number",
        "object",
        "empty-string",
        "string-and-number",
        "string-and-null",
        "list-of-empty-string",
        "tokens-and-string",
        "empty-token-array",
    ],
)
async def test_invalid_embeddings_input_is_a_bad_request(payload: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        await send("/embeddings", {"model": "demo", **payload})

    assert info.value.param == "input"


@pytest.mark.anyio
@pytest.mark.parametrize("dimensions", [0, -1, 4097, "16", True, 1.5])
async def test_invalid_dimensions_are_a_bad_request(dimensions: Any) -> None:
    with pytest.raises(BadRequest) as info:
        await send("/embeddings", {"model": "demo", "input": "cat", "dimensions": dimensions})

    assert info.value.param == "dimensions"


@pytest.mark.anyio
async def test_close_stops_a_stream_early_without_waiting_out_the_delay() -> None:
    response = await send(CHAT, {"model": "demo", "messages": MESSAGES}, stream=True, agent=mock_agent(1, delay=60))
    chunks = response.iter_chunks()

    first = await anext(chunks)
    response.close()
    with anyio.fail_after(5):
        rest = [chunk async for chunk in chunks]

    assert first.startswith(b"data: ")
    assert rest == []


@pytest.mark.anyio
@pytest.mark.parametrize("prompt", [1.5, None, True, {"text": "hi"}])
async def test_a_completions_prompt_that_is_neither_text_nor_a_list_is_a_bad_request(prompt: Any) -> None:
    with pytest.raises(BadRequest) as info:
        await send("/completions", {"model": "demo", "prompt": prompt})

    assert info.value.param == "prompt"
