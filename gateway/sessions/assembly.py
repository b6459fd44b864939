"""The assistant message to store from a chat completion: reassembled from stream deltas, or read from a body. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.protocols import sse


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        call: dict[str, Any] = {} if self.id is None else {"id": self.id}
        call["type"] = self.type
        call["function"] = {"name": self.name, "arguments": "".join(self.arguments)}
        return call


class ReplyAssembler:
    """Follows the events of a chat-completions stream as they are relayed and rebuilds choice 0's message.

    Only choice 0 is kept because a session continues one conversation; events that are not chat chunks (the
    `[DONE]` sentinel, comments, non-JSON data, error events, the usage chunk with no choices) are skipped.
    """

    __slots__ = ("_content", "_finish_reason", "_received", "_refusal", "_role", "_tool_calls")

    def __init__(self) -> None:
        self._received = False
        self._role: str | None = None
        self._content: list[str] | None = None
        self._refusal: list[str] = []
        self._tool_calls: dict[int, _ToolCall] = {}
        self._finish_reason: str | None = None

    def feed(self, events: bytes) -> None:
        """Take in a block of whole SSE events, exactly as relayed."""
        for event in sse.iter_events(events):
            choice = _first_choice(sse.event_data(event))
            if choice is None:
                continue
            self._received = True
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._add(delta)
            if isinstance(choice.get("finish_reason"), str):
                self._finish_reason = choice["finish_reason"]

    @property
    def finish_reason(self) -> str | None:
        """Why choice 0 ended (`stop`, `length`, `tool_calls`, ...), or None while it has not."""
        return self._finish_reason

    def message(self) -> dict[str, Any] | None:
        """The assistant message assembled so far, as OpenAI shapes it; None when no chunk of choice 0 arrived."""
        if not self._received:
            return None
        # As in a non-streamed completion: content stays None when the upstream never sent any (a pure tool call).
        content = None if self._content is None else "".join(self._content)
        message: dict[str, Any] = {"role": self._role or "assistant", "content": content}
        if self._tool_calls:
            message["tool_calls"] = [self._tool_calls[index].message() for index in sorted(self._tool_calls)]
        refusal = "".join(self._refusal)
        if refusal:
            message["refusal"] = refusal
        return message

    def _add(self, delta: dict[str, Any]) -> None:
        if isinstance(delta.get("role"), str):
            self._role = delta["role"]
        if isinstance(delta.get("content"), str):
            if self._content is None:
                self._content = []
            self._content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            self._refusal.append(delta["refusal"])
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._add_tool_call(call)

    def _add_tool_call(self, delta: dict[str, Any]) -> None:
        index = delta.get("index")
        if not isinstance(index, int):
            # Some OpenAI-compatible upstreams omit `index`: a new id opens a call, anything else continues the last.
            known = {call.id for call in self._tool_calls.values()}
            opens = not self._tool_calls or (delta.get("id") is not None and delta.get("id") not in known)
            index = len(self._tool_calls) if opens else max(self._tool_calls)
        call = self._tool_calls.setdefault(index, _ToolCall())
        if isinstance(delta.get("id"), str) and call.id is None:
            call.id = delta["id"]
        if isinstance(delta.get("type"), str):
            call.type = delta["type"]
        function = delta.get("function")
        if isinstance(function, dict):
            # The name comes whole in a call's first delta; an upstream that repeats it must not double it.
            if isinstance(function.get("name"), str) and not call.name:
                call.name = function["name"]
            if isinstance(function.get("arguments"), str):
                call.arguments.append(function["arguments"])


def _first_choice(data: bytes) -> dict[str, Any] | None:
    """Choice 0 of one chat chunk, or None when the event carries none."""
    if not data or data.startswith(b"[DONE]"):
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(chunk, dict) or "error" in chunk or not isinstance(chunk.get("choices"), list):
        return None
    for choice in chunk["choices"]:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def reply_from_completion(body: dict[str, Any]) -> dict[str, Any] | None:
    """The assistant message of a non-streamed chat completion: choice 0's role, content, tool calls and refusal."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    source = choices[0].get("message")
    if not isinstance(source, dict):
        return None
    role = source.get("role")
    message: dict[str, Any] = {"role": role if isinstance(role, str) else "assistant", "content": source.get("content")}
    if isinstance(source.get("tool_calls"), list) and source["tool_calls"]:
        message["tool_calls"] = source["tool_calls"]
    if isinstance(source.get("refusal"), str) and source["refusal"]:
        message["refusal"] = source["refusal"]
    return message
