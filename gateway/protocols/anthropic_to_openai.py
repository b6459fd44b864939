"""A Messages API client in front of an OpenAI-compatible upstream: the request into a chat completion, the answer
and its stream back into Messages. Pure.

What does not cross (OpenAI's chat API has no place for it) is dropped and documented in docs/anthropic.md:
`top_k`, `cache_control` marks, thinking blocks sent back by the client, and which of the stop sequences matched.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from gateway.protocols import sse
from gateway.protocols.anthropic.messages import Endpoint as MessagesEndpoint
from gateway.protocols.anthropic.messages import error_payload, event_bytes
from gateway.protocols.openai.payload import Endpoint as OpenAIEndpoint

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                 "content_filter": "refusal"}  # fmt: skip


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as the chat completion an OpenAI-compatible upstream takes."""
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    messages += chat_messages(body)
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    for name, target in (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                         ("stop_sequences", "stop"), ("stream", "stream")):  # fmt: skip
        if body.get(name) is not None:
            out[target] = body[name]
    user = _dict(body.get("metadata")).get("user_id")
    if isinstance(user, str):
        out["user"] = user
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out["tools"] = [_tool(tool) for tool in tools if isinstance(tool, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "any", "none"):
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    if out.get("stream"):
        out["stream_options"] = {"include_usage": True}  # the usage goes into message_delta
    return out


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Messages request's messages as chat messages, its `system` apart (a client sends it with every turn)."""
    out: list[dict[str, Any]] = []
    for message in body.get("messages", []):
        out.extend(_messages(message))
    return out


def _text_of(value: Any) -> str:
    """The text of a `system` or `tool_result` content: a string, or its text blocks joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(b.get("text", "") for b in value if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _messages(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Messages message as chat messages: a user's tool results become `tool` messages (before the rest of
    what the user says, right after the assistant's calls as OpenAI requires); an assistant's `tool_use` blocks
    become `tool_calls`."""
    role, content = message.get("role"), message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [b for b in content or [] if isinstance(b, dict)]
    if role == "assistant":
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        calls = [
            {"id": b.get("id"), "type": "function",
             "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input") or {}).decode()}}
            for b in blocks if b.get("type") == "tool_use"
        ]  # fmt: skip
        out: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            out["tool_calls"] = calls
        return [out]
    results = [
        {"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _text_of(b.get("content"))}
        for b in blocks
        if b.get("type") == "tool_result"
    ]
    parts = [part for b in blocks if (part := _part(b)) is not None]
    return [*results, {"role": "user", "content": parts}] if parts else results


def _part(block: dict[str, Any]) -> dict[str, Any] | None:
    if block.get("type") == "text":
        return {"type": "text", "text": block.get("text", "")}
    if block.get("type") == "image":
        source = _dict(block.get("source"))
        url = (
            source.get("url")
            if source.get("type") == "url"
            else f"data:{source.get('media_type')};base64,{source.get('data')}"
        )
        return {"type": "image_url", "image_url": {"url": url}}
    return None  # tool results are messages of their own; thinking blocks have no place in a chat request


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def message_answer(completion: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A chat completion as the Messages answer the client expects (`model`: the name it asked for)."""
    choices = completion.get("choices")
    choice = _dict(choices[0]) if isinstance(choices, list) and choices else {}
    message = _dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    for key in ("content", "refusal"):
        if isinstance(message.get(key), str) and message[key]:
            content.append({"type": "text", "text": message[key]})
    for call in message.get("tool_calls") or []:
        function = _dict(_dict(call).get("function"))
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _arguments(function.get("arguments"))})  # fmt: skip
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), message),
        "stop_sequence": None,
        "usage": _usage(completion.get("usage")),
    }


def _arguments(arguments: Any) -> Any:
    """A call's arguments as the object Anthropic's `input` is; empty ones as `{}`."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}


def _stop_reason(finish: Any, message: dict[str, Any] | None = None) -> str:
    if message is not None and message.get("refusal"):
        return "refusal"
    return _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def _message_id(upstream: Any) -> str:
    return f"msg_{upstream}" if isinstance(upstream, str) and upstream else f"msg_{os.urandom(12).hex()}"


def _usage(usage: Any, estimate: int = 0) -> dict[str, int]:
    """OpenAI's usage in Anthropic's terms: OpenAI's `prompt_tokens` include the cached ones, Anthropic's
    `input_tokens` do not (those are `cache_read_input_tokens`)."""
    if not isinstance(usage, dict):
        return {"input_tokens": estimate, "output_tokens": 0, "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0}  # fmt: skip
    cached = _count(_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
    prompt, output = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    return {"input_tokens": max(0, prompt - cached), "output_tokens": output, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}  # fmt: skip


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


# A chat chunk holding a piece of text and nothing else, as OpenAI and vLLM write it (compact, in this order, with
# `usage` null when usage is asked for): how its choices open, and how it may end.
_TEXT_CHUNK_CHOICE = b'"choices":[{"index":0,"delta":{"content":"'
_TEXT_CHUNK_ENDS = tuple(
    b'"}' + logprobs + b',"finish_reason":null}]' + usage + b"}\n\n"
    for logprobs in (b',"logprobs":null', b"")
    for usage in (b',"usage":null', b"")
)
_TEXT_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA_MIDDLE = b',"delta":{"type":"text_delta","text":'


class StreamTranslator:
    """OpenAI chat chunks in, Messages events out, as they arrive: `message_start` with the first chunk (its
    input tokens the gateway's estimate: OpenAI tells them only at the end), a content block per text, thinking
    or tool call (`input_json_delta` carrying the arguments as they come), and at `data: [DONE]` the last block's
    stop, `message_delta` (stop reason, the real usage) and `message_stop`. Without `[DONE]` nothing closes the
    message: the relay ends it with `event: error`."""

    __slots__ = ("_block", "_index", "_input_estimate", "_model", "_started", "_stop", "_tools", "_usage")

    def __init__(self, *, model: str, input_estimate: int) -> None:
        self._model = model
        self._input_estimate = input_estimate
        self._started = False
        self._index = -1  # the open content block's index
        self._block: str | None = None  # its kind: text, thinking, or tool:<OpenAI tool call index>
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> content block index
        self._stop = "end_turn"
        self._usage: dict[str, int] | None = None

    def feed(self, events: bytes) -> bytes:
        # Most reads hold one one-line event (`data: {...}\n\n`): read it without the general parser.
        if events.startswith(b"data: ") and events.find(b"\n") == len(events) - 2 and events.endswith(b"\n\n"):
            if self._block == "text" and events.endswith(_TEXT_CHUNK_ENDS):
                text = self._text_of(events)
                if text is not None:
                    return b"%s%d%s%s}}\n\n" % (_TEXT_DELTA_HEAD, self._index, _TEXT_DELTA_MIDDLE, text)
            return self._data(events[6:-2].strip())
        return b"".join(self._data(sse.event_data(event).strip()) for event in sse.iter_events(events))

    @staticmethod
    def _text_of(event: bytes) -> bytes | None:
        """The text of a chunk that holds a piece of text and nothing else, as OpenAI and vLLM write it: the body
        of its JSON string, unparsed; None for any other chunk (which the parser reads)."""
        at = event.find(_TEXT_CHUNK_CHOICE)
        if at < 0 or b'"usage":{' in event:
            return None
        start = at + len(_TEXT_CHUNK_CHOICE)
        end = event.rfind(b'"}', start)
        # A quote between them, escaped or not, is left to the parser: it may end the string early.
        if end <= start or event.find(b'"', start, end) >= 0:
            return None
        return event[start - 1 : end + 1]

    def _data(self, data: bytes) -> bytes:
        if not data:
            return b""
        if data == b"[DONE]":
            return self._finish()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""  # not an event a Messages client could read; the end is checked on the upstream's
        return self._chunk(chunk) if isinstance(chunk, dict) else b""

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        head = b"" if self._started else self._start(chunk)
        usage = chunk.get("usage")
        if usage.__class__ is dict:
            self._usage = _usage(usage)
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or not isinstance(delta := choice.get("delta"), dict):
            return head  # a usage chunk, or one with nothing to say
        text = delta.get("content")
        # The common chunk, a piece of text and nothing else: one event from a template.
        if (
            text.__class__ is str
            and text
            and self._block == "text"
            and (len(delta) == 1 or (len(delta) == 2 and "role" in delta))
        ):
            if choice.get("finish_reason") is not None:
                self._stop = _stop_reason(choice["finish_reason"])
            return head + self._text(text)
        out = [head]
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            out.append(self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}))
            out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                out.append(self._open("text", {"type": "text", "text": ""}))
                out.append(self._text(text))
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out.append(self._tool(call))
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._stop = _stop_reason(finish)
        return b"".join(out)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": _message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(None, self._input_estimate),
        }
        return event_bytes({"type": "message_start", "message": message})

    def _tool(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = _dict(call.get("function"))
        out = []
        if index not in self._tools:
            name = function.get("name") or ""
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id") or f"toolu_{os.urandom(8).hex()}",
                                     "name": name, "input": {}}  # fmt: skip
            out.append(self._open(f"tool:{index}", block, force=True))
            self._tools[index] = self._index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments and self._tools[index] == self._index:
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return b"".join(out)

    def _open(self, kind: str, block: dict[str, Any], *, force: bool = False) -> bytes:
        """Start a content block of `kind`, closing the one open before it; nothing when it is already open."""
        if self._block == kind and not force:
            return b""
        out = self._close()
        self._index += 1
        self._block = kind
        return out + event_bytes({"type": "content_block_start", "index": self._index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event_bytes({"type": "content_block_delta", "index": self._index, "delta": delta})

    def _text(self, text: str) -> bytes:
        """A `text_delta`, the event most of a stream is: written from a template rather than a dict."""
        return b"%s%d%s%s}}\n\n" % (_TEXT_DELTA_HEAD, self._index, _TEXT_DELTA_MIDDLE, orjson.dumps(text))

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return event_bytes({"type": "content_block_stop", "index": self._index})

    def _finish(self) -> bytes:
        out = [] if self._started else [self._start({})]
        out.append(self._close())
        usage = self._usage or {"output_tokens": 0}
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop, "stop_sequence": None}, "usage": usage}
        out += [event_bytes(delta), event_bytes({"type": "message_stop"})]
        return b"".join(out)


class AnthropicToOpenAI:
    """The translator object the registry holds for (anthropic client, openai upstream)."""

    endpoints = frozenset({MessagesEndpoint.MESSAGES})

    @property
    def upstream_endpoint(self) -> OpenAIEndpoint:
        return OpenAIEndpoint.CHAT

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return chat_request(body)

    def answer(self, answer: dict[str, Any], *, model: str) -> dict[str, Any]:
        return message_answer(answer, model=model)

    def error(self, status: int, message: str) -> bytes:
        return orjson.dumps(error_payload(status, message))

    def stream(self, request: dict[str, Any], *, input_estimate: int) -> StreamTranslator:
        return StreamTranslator(model=str(request.get("model")), input_estimate=input_estimate)


TRANSLATOR = AnthropicToOpenAI()
