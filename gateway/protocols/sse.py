"""Server-sent events as bytes: where events end, how a stream ended, the error event. Pure functions."""

from __future__ import annotations

import re
from typing import Any

import orjson

# A blank line ends an event; the spec allows \r\n, \n and \r line ends, mixed.
_TERMINATORS = (b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r\n", b"\r\n\n")
_DONE_LINES = (b"data: [DONE]", b"data:[DONE]")
_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\r\n|\r\n\n|\n\n|\r\r)", re.DOTALL)
_LINE_END = re.compile(rb"\r\n|\r|\n")


def split_events(buffer: bytes) -> tuple[bytes, bytes]:
    """Split `buffer` after its last complete event: (whole events, the incomplete rest).

    The relay forwards only whole events so that an error event after an upstream drop always parses.
    """
    end = -1
    for terminator in _TERMINATORS:
        index = buffer.rfind(terminator)
        if index >= 0:
            end = max(end, index + len(terminator))
    if end < 0:
        return b"", buffer
    return buffer[:end], buffer[end:]


def ends_with_done(events: bytes) -> bool:
    """Whether the last event in `events` is the `data: [DONE]` sentinel."""
    last_line = events[-64:].rstrip(b"\r\n").rsplit(b"\n", 1)[-1].rsplit(b"\r", 1)[-1]
    # As the OpenAI SDK reads it: a data line that starts with [DONE].
    return last_line.startswith(_DONE_LINES)


def without_last(events: bytes) -> bytes:
    """`events` without its last event (a stream's end): what may still go out when the stream must fail."""
    return b"".join(iter_events(events)[:-1])


def last_event_type(events: bytes) -> str | None:
    """The `type` field of the last event in `events`, for APIs whose streams end with a named event (the Responses
    and Messages APIs); None when that event is not a JSON object with a string type."""
    found = iter_events(events)
    try:
        event = orjson.loads(event_data(found[-1])) if found else None
    except orjson.JSONDecodeError:
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None


def error_event(payload: dict[str, Any]) -> bytes:
    """An OpenAI-shaped error as one SSE event; the OpenAI SDK raises `APIError` when it reads it."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def iter_events(events: bytes) -> list[bytes]:
    """Whole events, each with its terminator, so that joining them gives `events` back."""
    found = _EVENT.findall(events)
    rest = events[sum(len(e) for e in found) :]
    return [*found, rest] if rest else found


def event_data(event: bytes) -> bytes:
    """The data of one event: its `data:` lines' values joined by newlines, as the SSE spec assembles them."""
    values = []
    for line in _LINE_END.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            values.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(values)
