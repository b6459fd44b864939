"""An OpenAI chat client in front of an agent on Anthropic's Messages API: the chat completion request into a
Messages request, the message and its stream back into a chat completion and its chunks. Pure.

Sessions use the same pieces (proxy/pipeline.py): their history is kept as chat messages, so an Anthropic
upstream is sent it through `messages_of`, and its answers are read back as a chat completion to be stored.

What does not cross is refused when dropping it would change the answer (`n` above 1, a JSON `response_format`,
audio), and dropped otherwise (`logprobs`, `seed`, penalties, `logit_bias`, `reasoning_effort`); docs/anthropic.md
lists both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.errors import BadRequest
from gateway.protocols import sse
from gateway.protocols.anthropic.messages import Endpoint as MessagesEndpoint
from gateway.protocols.openai.payload import Endpoint as OpenAIEndpoint

_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                   "refusal": "content_filter", "pause_turn": "stop",
                   "model_context_window_exceeded": "length"}  # fmt: skip
_SYSTEM_ROLES = ("system", "developer")
_TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}
_DONE = b"data: [DONE]\n\n"
_TEXT_EVENT = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_FIELD = b',"delta":{"type":"text_delta","text":'
# An upstream's error status as the error type OpenAI gives it.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


def messages_request(body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion request as the Messages request an Anthropic upstream takes (`max_tokens` is left to the
    agent's rewrite when the client named none: it knows the agent's default)."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise BadRequest("n: an agent on the Messages API answers one choice only", param="n")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise BadRequest("response_format: JSON output is not translated to the Messages API", param="response_format")
    system, messages = messages_of(body.get("messages") or [])
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    if system:
        out["system"] = system
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        out["max_tokens"] = limit
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(temperature, 1.0)  # OpenAI's range is 0-2, Anthropic's 0-1
    elif temperature is not None:
        out["temperature"] = temperature  # the upstream names what is wrong with it
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif stop is not None:
        out["stop_sequences"] = stop
    if body.get("stream") is not None:
        out["stream"] = body["stream"]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out["tools"] = [_tool(tool) for tool in tools if isinstance(tool, dict)]
    choice = _tool_choice(body.get("tool_choice"), parallel=body.get("parallel_tool_calls"))
    if choice is not None and out.get("tools"):
        out["tool_choice"] = choice
    return out


def messages_of(chat: Iterable[Any]) -> tuple[str, list[dict[str, Any]]]:
    """Chat messages as the Messages API has them: the system and developer messages' text apart, tool results
    as `tool_result` blocks of a user turn, tool calls as `tool_use` blocks, and turns of one role in a row joined
    (a tool result must open the user turn that follows the calls)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for index, message in enumerate(chat):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            text = _text(message.get("content"))
            if text:
                system.append(text)
            continue
        if role in ("tool", "function"):
            call_id = message.get("tool_call_id") if role == "tool" else message.get("name")
            blocks = [{"type": "tool_result", "tool_use_id": call_id, "content": _text(message.get("content"))}]
            role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message)
        else:
            blocks = _user_blocks(message.get("content"), index)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _user_blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = _dict(part.get("image_url")).get("url")
            if isinstance(url, str):
                blocks.append({"type": "image", "source": _source(url)})
        elif kind == "file":
            data = _dict(part.get("file")).get("file_data")
            if isinstance(data, str) and data.startswith("data:"):
                blocks.append({"type": "document", "source": _source(data)})
        else:
            where = f"messages.{index}.content"
            raise BadRequest(f"{where}: `{kind}` parts are not translated to the Messages API", param=where)
    return blocks


def _source(url: str) -> dict[str, Any]:
    """An image or file URL as Anthropic's source: a data URL's base64 inline, anything else by URL."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    # `reasoning_content` is not sent back: Anthropic takes a thinking block only with its signature, which a chat
    # message has no place for.
    blocks: list[dict[str, Any]] = []
    text = _text(message.get("content")) or (message.get("refusal") or "")
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = _dict(call.get("function"))
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                       "input": _input(function.get("arguments"))})  # fmt: skip
    return blocks


def _input(arguments: Any) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` must be; empty or unreadable ones as `{}`."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = _dict(tool.get("function"))
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": function.get("name"), "input_schema": schema}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, *, parallel: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        out: dict[str, Any] = dict(_TOOL_CHOICES.get(choice, {"type": "auto"}))
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    elif parallel is False:
        out = {"type": "auto"}
    else:
        return None
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def completion(message: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A Messages answer as the chat completion the client expects (`model`: the name it asked for)."""
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            arguments = orjson.dumps(_dict(block.get("input"))).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": arguments}})  # fmt: skip
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        reply["tool_calls"] = calls
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    if message.get("stop_reason") == "refusal":
        reply["refusal"] = reply["content"] or "The model declined to answer."
    choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": _finish(message.get("stop_reason"))}
    return {
        "id": _completion_id(message.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(message.get("usage")),
    }


def usage(counts: Any) -> dict[str, Any]:
    """Anthropic's usage in OpenAI's terms: OpenAI's `prompt_tokens` hold the cached input too, as `cached_tokens`."""
    counts = _dict(counts)
    fresh, read, written, output = (_count(counts.get(name)) for name in ("input_tokens", "cache_read_input_tokens",
                                    "cache_creation_input_tokens", "output_tokens"))  # fmt: skip
    prompt = fresh + read + written
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": read}}  # fmt: skip


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _finish(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _completion_id(message_id: Any) -> str:
    return f"chatcmpl-{message_id}" if isinstance(message_id, str) and message_id else "chatcmpl-gateway"


class StreamTranslator:
    """Messages events in, chat chunks out, as they arrive: the role with `message_start`, text, thinking
    (`reasoning_content`) and tool calls (their arguments as `input_json_delta` brings them) as deltas, the finish
    reason with `message_delta`, and at `message_stop` the usage chunk (when the client asked for it) and
    `data: [DONE]`. An `event: error` from the upstream becomes OpenAI's error event, and nothing closes the
    stream: the SDK raises."""

    __slots__ = ("_created", "_head", "_id", "_include_usage", "_model", "_tools", "_usage")

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = int(time.time())
        self._id = "chatcmpl-gateway"
        self._head = b""  # every chunk's opening, fixed once the message's id is known
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, Any] = {}

    def feed(self, events: bytes) -> bytes:
        # Most reads hold one event as Anthropic writes it, `event: <type>\ndata: {...}\n\n`, and most of those are
        # a text delta: its text, a JSON string, goes into the chunk as it is.
        if events.startswith(_TEXT_EVENT) and events.endswith(b'"}}\n\n') and self._head:
            field = events.find(_TEXT_FIELD, len(_TEXT_EVENT))
            if field > 0 and events[field + len(_TEXT_FIELD)] == 34 and events.count(b"\n") == 3:  # 34: `"`
                return b'%s{"content":%s},"logprobs":null,"finish_reason":null}]}\n\n' % (
                    self._head,
                    events[field + len(_TEXT_FIELD) : -4],
                )
        # Any other one-event read, without the general parser.
        if events.startswith(b"event: ") and events.count(b"\n") == 3 and events.endswith(b"\n\n"):
            at = events.find(b"\ndata: ")
            if at > 0:
                return self._event(events[at + 7 : -2])
        return b"".join(self._event(sse.event_data(event)) for event in sse.iter_events(events))

    def _event(self, data: bytes) -> bytes:
        if not data:
            return b""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(event, dict):
            return b""
        kind = event.get("type")
        if kind == "message_start":
            return self._start(event.get("message"))
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_delta":
            self._usage.update(_dict(event.get("usage")))
            stop = _dict(event.get("delta")).get("stop_reason")
            return self._chunk({}, finish=_finish(stop))
        if kind == "message_stop":
            if not self._include_usage:
                return _DONE
            final = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                     "model": self._model, "choices": [], "usage": usage(self._usage)}  # fmt: skip
            return b"data: " + orjson.dumps(final) + b"\n\n" + _DONE
        if kind == "error":
            error = _dict(event.get("error"))
            message = error.get("message") or "The upstream failed mid-stream."
            payload = {"error": {"message": message, "type": error.get("type") or "upstream_error", "param": None,
                                 "code": None}}  # fmt: skip
            return sse.error_event(payload)
        return b""  # ping, content_block_stop, and events yet unknown: nothing a chat client reads

    def _start(self, message: Any) -> bytes:
        message = _dict(message)
        self._id = _completion_id(message.get("id"))
        self._head = (
            b'data: {"id":' + orjson.dumps(self._id) + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode() + b',"model":' + orjson.dumps(self._model)
            + b',"choices":[{"index":0,"delta":'
        )  # fmt: skip
        if isinstance(message.get("usage"), dict):
            self._usage.update(message["usage"])
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, event: dict[str, Any]) -> bytes:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return b""
        if block.get("type") == "tool_use":
            index = self._tools[event.get("index", -1)] = len(self._tools)
            call = {"index": index, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}  # fmt: skip
            return self._chunk({"tool_calls": [call]})
        if block.get("type") == "text" and block.get("text"):
            return self._chunk({"content": block["text"]})
        return b""

    def _delta(self, event: dict[str, Any]) -> bytes:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return b""
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            # Most of a stream is these: the chunk written from a template rather than built.
            return self._chunk_raw(b'{"content":' + orjson.dumps(delta["text"]) + b"}")
        if kind == "input_json_delta" and event.get("index") in self._tools:
            piece = delta.get("partial_json")
            if isinstance(piece, str) and piece:
                call = {"index": self._tools[event["index"]], "function": {"arguments": piece}}
                return self._chunk({"tool_calls": [call]})
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            return self._chunk({"reasoning_content": delta["thinking"]})
        return b""

    def _chunk(self, delta: dict[str, Any], *, finish: str | None = None) -> bytes:
        return self._chunk_raw(orjson.dumps(delta), finish)

    def _chunk_raw(self, delta: bytes, finish: str | None = None) -> bytes:
        if not self._head:
            self._start(None)
        reason = b"null" if finish is None else b'"' + finish.encode() + b'"'
        return self._head + delta + b',"logprobs":null,"finish_reason":' + reason + b"}]}\n\n"


class OpenAIToAnthropic:
    """The translator object the registry holds for (openai client, anthropic upstream): chat completions only."""

    endpoints = frozenset({OpenAIEndpoint.CHAT})

    @property
    def upstream_endpoint(self) -> MessagesEndpoint:
        return MessagesEndpoint.MESSAGES

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return messages_request(body)

    def answer(self, answer: dict[str, Any], *, model: str) -> dict[str, Any]:
        return completion(answer, model=model)

    def error(self, status: int, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "upstream_error")
        code = "overloaded" if status == 529 else None
        return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})

    def stream(self, request: dict[str, Any], *, input_estimate: int) -> StreamTranslator:
        options = request.get("stream_options")
        include = isinstance(options, dict) and options.get("include_usage") is True
        return StreamTranslator(model=str(request.get("model")), include_usage=include)


TRANSLATOR = OpenAIToAnthropic()
