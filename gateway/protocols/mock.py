"""The built-in `mock` provider: deterministic OpenAI-shaped answers with no network and no key.

It echoes what it received (how many messages, the last user message) so a demo or a test can see what the gateway
sent, streams in `streaming.chunk_size`-word chunks every `streaming.delay` seconds, and reports usage.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import BadRequest
from gateway.protocols.openai.payload import Endpoint
from gateway.upstream.base import UpstreamRequest, UpstreamResponse

_WORD = re.compile(r"\S+\s*")
_EMBEDDING_DIMENSIONS = 16


def count_tokens(text: str) -> int:
    """The mock's tokenizer: one token per word. Deterministic, which is all a mock needs."""
    return len(_WORD.findall(text))


def text_of(content: Any) -> str:
    """The text of a message's `content`: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part)
    return ""


def split_words(text: str, per_chunk: int) -> list[str]:
    """`text` in pieces of `per_chunk` words, whitespace kept, so joining the pieces gives `text` back."""
    words = _WORD.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    pieces = ["".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)] or [""]
    pieces[0] = lead + pieces[0]
    return pieces


class MockResponse:
    """A finished answer, served whole or as SSE events with a pause between them."""

    __slots__ = ("_body", "_closed", "_delay", "_events", "status")

    def __init__(self, body: bytes = b"", events: list[bytes] | None = None, delay: float = 0.0) -> None:
        self.status = 200
        self._body = body
        self._events = events
        self._delay = delay
        self._closed = False

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self._events is not None else "application/json"

    def relay_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", self.content_type.encode())]

    async def start(self) -> None:
        pass

    async def read(self) -> bytes:
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for index, event in enumerate(self._events or ()):
            if self._closed:
                return
            if index and self._delay:
                await asyncio.sleep(self._delay)
            yield event

    def close(self) -> None:
        self._closed = True


class MockUpstream:
    """Answers every endpoint the gateway forwards, in process."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        endpoint = Endpoint(request.path)
        payload = request.payload
        streaming = request.agent.streaming
        answer = _ANSWERS[endpoint](payload)
        if not request.stream or endpoint is Endpoint.EMBEDDINGS:
            return MockResponse(body=orjson.dumps(answer.whole()))
        events = answer.events(streaming.chunk_size, _include_usage(payload))
        return MockResponse(events=events, delay=streaming.delay)


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _limit(text: str, max_tokens: Any) -> tuple[str, str]:
    """Cut `text` to `max_tokens` words like a model that hits its limit: (text, finish_reason)."""
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < count_tokens(text):
        return "".join(_WORD.findall(text)[:max_tokens]).rstrip(), "length"
    return text, "stop"


class _Answer:
    kind: str

    def __init__(self, payload: dict[str, Any], text: str, prompt_tokens: int, limit: Any) -> None:
        self.model = str(payload.get("model", "mock"))
        self.text, self.finish_reason = _limit(text, limit)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = count_tokens(self.text)
        self.id = f"{self.kind}-mock-{secrets.token_hex(12)}"
        self.created = int(time.time())

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def whole(self) -> dict[str, Any]:
        raise NotImplementedError

    def events(self, per_chunk: int, include_usage: bool) -> list[bytes]:
        raise NotImplementedError


class _ChatAnswer(_Answer):
    kind = "chatcmpl"

    def __init__(self, payload: dict[str, Any]) -> None:
        messages = [m for m in payload.get("messages") or [] if isinstance(m, dict)]
        users = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        systems = sum(1 for m in messages if m.get("role") in ("system", "developer"))
        text = (
            f'You said: "{users[-1] if users else ""}". This is the mock provider: it received {len(messages)} '
            f"message{'s' if len(messages) != 1 else ''}, {systems} of them system."
        )
        prompt = sum(count_tokens(text_of(m.get("content"))) + 3 for m in messages)
        limit = payload.get("max_completion_tokens", payload.get("max_tokens"))
        super().__init__(payload, text, prompt, limit)

    def _chunk(self, delta: dict[str, Any], finish: str | None, usage: bool) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage:
            chunk["usage"] = None
        return chunk

    def whole(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.text, "refusal": None}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage(),
        }

    def events(self, per_chunk: int, include_usage: bool) -> list[bytes]:
        events = [_data(self._chunk({"role": "assistant", "content": ""}, None, include_usage))]
        events += [
            _data(self._chunk({"content": piece}, None, include_usage)) for piece in split_words(self.text, per_chunk)
        ]
        events.append(_data(self._chunk({}, self.finish_reason, include_usage)))
        if include_usage:
            last = self._chunk({}, None, False)
            last["choices"] = []
            last["usage"] = self.usage()
            events.append(_data(last))
        events.append(b"data: [DONE]\n\n")
        return events


class _CompletionAnswer(_Answer):
    kind = "cmpl"

    def __init__(self, payload: dict[str, Any]) -> None:
        prompt = payload.get("prompt", "")
        if not isinstance(prompt, str | list):
            raise BadRequest("`prompt` must be a string or an array.", param="prompt")
        # Text prompts only; token-id prompts count as empty (the mock cannot read them).
        prompts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
        last = prompts[-1] if prompts else ""
        text = f' and this is the mock provider completing "{last}".'
        super().__init__(payload, text, sum(count_tokens(p) for p in prompts), payload.get("max_tokens"))

    def _body(self, text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    def whole(self) -> dict[str, Any]:
        return {**self._body(self.text, self.finish_reason), "usage": self.usage()}

    def events(self, per_chunk: int, include_usage: bool) -> list[bytes]:
        pieces = split_words(self.text, per_chunk)
        events = [_data(self._body(piece, None)) for piece in pieces[:-1]]
        events.append(_data(self._body(pieces[-1], self.finish_reason)))
        if include_usage:
            events.append(_data({**self._body("", None), "choices": [], "usage": self.usage()}))
        events.append(b"data: [DONE]\n\n")
        return events


class _ResponsesAnswer(_Answer):
    kind = "resp"

    def __init__(self, payload: dict[str, Any]) -> None:
        given = payload.get("input", "")
        items = [{"role": "user", "content": given}] if isinstance(given, str) else given
        items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        users = [text_of(i.get("content")) for i in items if i.get("role") == "user"]
        instructions = payload.get("instructions")
        text = (
            f'You said: "{users[-1] if users else ""}". This is the mock provider: it received {len(items)} '
            f"input item{'s' if len(items) != 1 else ''} and {'some' if instructions else 'no'} instructions."
        )
        prompt = sum(count_tokens(text_of(i.get("content"))) for i in items)
        prompt += count_tokens(instructions) if isinstance(instructions, str) else 0
        super().__init__(payload, text, prompt, payload.get("max_output_tokens"))

    def _response(self, status: str, text: str | None) -> dict[str, Any]:
        output = []
        if text is not None:
            content = [{"type": "output_text", "text": text, "annotations": []}]
            output.append(
                {"type": "message", "id": f"msg-{self.id}", "status": "completed", "role": "assistant",
                 "content": content}
            )  # fmt: skip
        usage = None
        if status != "in_progress":
            usage = {
                "input_tokens": self.prompt_tokens,
                "output_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            }
        incomplete = {"reason": "max_output_tokens"} if self.finish_reason == "length" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": "incomplete" if status == "completed" and incomplete else status,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "usage": usage,
        }

    def whole(self) -> dict[str, Any]:
        return self._response("completed", self.text)

    def events(self, per_chunk: int, include_usage: bool) -> list[bytes]:
        sequence = iter(range(1_000_000))

        def event(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            return f"event: {kind}\n".encode() + _data(data)

        item_id = f"msg-{self.id}"
        events = [event("response.created", response=self._response("in_progress", None))]
        events += [
            event("response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=piece)
            for piece in split_words(self.text, per_chunk)
        ]
        events.append(
            event("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=self.text)
        )
        events.append(event("response.completed", response=self.whole()))
        return events


class _EmbeddingAnswer:
    def __init__(self, payload: dict[str, Any]) -> None:
        inputs = _embedding_inputs(payload.get("input"))
        dimensions = payload.get("dimensions", _EMBEDDING_DIMENSIONS)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 0 < dimensions <= 4096:
            raise BadRequest("`dimensions` must be an integer from 1 to 4096.", param="dimensions")
        self.model = str(payload.get("model", "mock"))
        self.base64 = payload.get("encoding_format") == "base64"
        self.vectors = [_embed(orjson.dumps(item), dimensions) for item in inputs]
        self.tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in inputs)

    def whole(self) -> dict[str, Any]:
        data = [
            {"object": "embedding", "index": index, "embedding": self._encode(vector)}
            for index, vector in enumerate(self.vectors)
        ]
        usage = {"prompt_tokens": self.tokens, "total_tokens": self.tokens}
        return {"object": "list", "data": data, "model": self.model, "usage": usage}

    def _encode(self, vector: list[float]) -> list[float] | str:
        if self.base64:
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    def events(self, per_chunk: int, include_usage: bool) -> list[bytes]:  # embeddings never stream
        return [_data(self.whole())]


def _embedding_inputs(given: Any) -> list[Any]:
    """OpenAI's accepted shapes: a string, an array of strings, an array of token ids, or an array of those."""

    def is_tokens(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)

    if (isinstance(given, str) and given) or is_tokens(given):
        return [given]
    strings = isinstance(given, list) and all(isinstance(item, str) and item for item in given)
    if given and (strings or (isinstance(given, list) and all(is_tokens(item) for item in given))):
        return list(given)
    raise BadRequest(
        "`input` must be a non-empty string, an array of non-empty strings, or an array of token arrays.",
        param="input",
    )


def _embed(text: bytes, dimensions: int) -> list[float]:
    """A unit vector that depends only on the input: equal inputs, equal vectors."""
    raw = b"".join(
        hashlib.blake2b(text, digest_size=64, salt=block.to_bytes(8, "little")).digest()
        for block in range((dimensions * 2 + 63) // 64)
    )
    values = [int.from_bytes(raw[i * 2 : i * 2 + 2], "little") / 32767.5 - 1.0 for i in range(dimensions)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


_ANSWERS: dict[Endpoint, Any] = {
    Endpoint.CHAT: _ChatAnswer,
    Endpoint.COMPLETIONS: _CompletionAnswer,
    Endpoint.RESPONSES: _ResponsesAnswer,
    Endpoint.EMBEDDINGS: _EmbeddingAnswer,
}
