"""Simulated streaming: a whole completion replayed as OpenAI stream chunks, for upstreams that cannot stream."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from gateway.config.agents import StreamingSpec
from gateway.errors import UpstreamBadResponse
from gateway.protocols.openai.payload import Endpoint
from gateway.upstream.base import UpstreamResponse

# A word with the whitespace around it: joining the pieces gives the text back exactly.
_WORD = re.compile(r"\s*\S+\s*")


def split_words(text: str, size: int) -> list[str]:
    """`text` in pieces of `size` words each (the last may be shorter); `"".join` of them is `text`."""
    words = _WORD.findall(text)
    if not words:
        return [text] if text else []
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def chat_events(completion: dict[str, Any], chunk_size: int) -> list[bytes]:
    """A `chat.completion` as the chunks OpenAI would have streamed for it with `include_usage`, as SSE events:
    per choice a role chunk, content in pieces of `chunk_size` words, tool calls whole, a finish chunk."""
    base = _base(completion, "chat.completion.chunk")
    events = []
    for position, choice in enumerate(_choices(completion)):
        index = choice.get("index", position)
        message = choice["message"] if isinstance(choice.get("message"), dict) else {}
        role = message.get("role") if isinstance(message.get("role"), str) else "assistant"
        content = message.get("content")
        # As OpenAI streams it: an empty string to start a text, null for a reply that is only tool calls.
        events.append(_chunk(base, index, {"role": role, "content": "" if isinstance(content, str) else None}))
        for piece in split_words(content, chunk_size) if isinstance(content, str) else []:
            events.append(_chunk(base, index, {"content": piece}))
        if isinstance(message.get("refusal"), str):
            events.append(_chunk(base, index, {"refusal": message["refusal"]}))
        calls = message.get("tool_calls")
        for number, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                events.append(_chunk(base, index, {"tool_calls": [{"index": number, **call}]}))
        events.append(_chunk(base, index, {}, choice.get("finish_reason") or "stop"))
    return events


def completion_events(completion: dict[str, Any], chunk_size: int) -> list[bytes]:
    """A `text_completion` as the chunks OpenAI would have streamed for it, like `chat_events`."""
    base = _base(completion, "text_completion")
    events = []
    for position, choice in enumerate(_choices(completion)):
        index = choice.get("index", position)
        text = choice.get("text")
        for piece in split_words(text, chunk_size) if isinstance(text, str) else []:
            events.append(_event({**base, "choices": [_text_choice(index, piece, None)], "usage": None}))
        finish = choice.get("finish_reason") or "stop"
        events.append(_event({**base, "choices": [_text_choice(index, "", finish)], "usage": None}))
    return events


class SimulatedResponse:
    """An `UpstreamResponse` that streams prepared events, one every `delay` seconds; the relay treats it as it
    treats a real stream (first-event start, disconnects, usage, the session's reply)."""

    content_type = "text/event-stream"

    def __init__(
        self, chunks: list[bytes], tail: list[bytes], delay: float, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.status = 200
        self._chunks = chunks
        self._tail = tail  # the usage chunk and `[DONE]`: bookkeeping, sent at once after the last chunk
        self._delay = delay
        self._headers = [(name, value) for name, value in headers if name != b"content-type"]

    def relay_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"text/event-stream; charset=utf-8"), *self._headers]

    async def start(self) -> None:
        pass

    async def read(self) -> bytes:
        return b"".join([*self._chunks, *self._tail])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for number, chunk in enumerate(self._chunks):
            if number and self._delay:
                await asyncio.sleep(self._delay)
            yield chunk
        yield b"".join(self._tail)

    def close(self) -> None:
        pass


async def replay(upstream: UpstreamResponse, endpoint: Endpoint, streaming: StreamingSpec) -> UpstreamResponse:
    """A successful whole answer from `upstream` turned into a simulated stream; an error answer as it is."""
    if upstream.status >= 300:
        return upstream
    try:
        completion = orjson.loads(await upstream.read())
    except orjson.JSONDecodeError:
        completion = None
    if not isinstance(completion, dict):
        raise UpstreamBadResponse(f"The upstream answered HTTP {upstream.status} with a body that is not JSON.")
    chat = endpoint is Endpoint.CHAT
    chunks = (chat_events if chat else completion_events)(completion, streaming.chunk_size)
    tail = _tail(_base(completion, "chat.completion.chunk" if chat else "text_completion"), completion)
    return SimulatedResponse(chunks, tail, streaming.delay, upstream.relay_headers())


def _base(completion: dict[str, Any], kind: str) -> dict[str, Any]:
    base = {"id": completion.get("id", ""), "object": kind, "created": completion.get("created", 0),
            "model": completion.get("model", "")}  # fmt: skip
    if "system_fingerprint" in completion:
        base["system_fingerprint"] = completion["system_fingerprint"]
    return base


def _choices(completion: dict[str, Any]) -> Iterator[dict[str, Any]]:
    choices = completion.get("choices")
    return (choice for choice in (choices if isinstance(choices, list) else []) if isinstance(choice, dict))


def _chunk(base: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _event({**base, "choices": [choice], "usage": None})


def _text_choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _tail(base: dict[str, Any], completion: dict[str, Any]) -> list[bytes]:
    usage = completion.get("usage")
    tail = [_event({**base, "choices": [], "usage": usage})] if isinstance(usage, dict) else []
    return [*tail, b"data: [DONE]\n\n"]


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"
