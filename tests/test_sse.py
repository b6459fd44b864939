"""Server-sent events as bytes: whole events only, how a stream ended, and the error event."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import UpstreamBadResponse
from gateway.protocols.sse import ends_with_done, error_event, split_events, without_last


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r"], ids=["lf", "crlf", "cr"])
def test_split_events_keeps_whole_events_and_returns_the_partial_rest(end: bytes) -> None:
    buffer = b"data: 1" + end + b"data: 2" + end + b"data: 3"

    events, rest = split_events(buffer)

    assert events == b"data: 1" + end + b"data: 2" + end
    assert rest == b"data: 3"


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r"], ids=["lf", "crlf", "cr"])
def test_split_events_with_no_partial_event_leaves_nothing(end: bytes) -> None:
    buffer = b"event: x" + end[: len(end) // 2] + b"data: 1" + end

    assert split_events(buffer) == (buffer, b"")


@pytest.mark.parametrize("buffer", [b"", b"data: 1", b"data: 1\n", b"data: 1\r\n", b"data: 1\r\n\r", b'data: {"a"'])
def test_split_events_without_a_terminator_holds_everything_back(buffer: bytes) -> None:
    assert split_events(buffer) == (b"", buffer)


def test_split_events_joined_back_gives_the_buffer() -> None:
    buffer = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: {"c"'

    events, rest = split_events(buffer)

    assert events + rest == buffer


def test_split_events_handles_a_crlf_stream_fed_in_pieces() -> None:
    stream = b"data: 1\r\n\r\ndata: 2\r\n\r\ndata: [DONE]\r\n\r\n"
    relayed = []
    pending = b""
    for index in range(0, len(stream), 3):
        events, pending = split_events(pending + stream[index : index + 3])
        relayed.append(events)

    assert b"".join(relayed) == stream
    assert pending == b""


@pytest.mark.parametrize(
    "events",
    [
        b"data: [DONE]\n\n",
        b"data:[DONE]\n\n",
        b'data: {"choices": []}\n\ndata: [DONE]\n\n',
        b"data: [DONE]\r\n\r\n",
        b"data: [DONE]\r\r",
        b"data: [DONE]\n\n\n\n",
    ],
)
def test_ends_with_done_sees_the_done_sentinel(events: bytes) -> None:
    assert ends_with_done(events)


@pytest.mark.parametrize(
    "events",
    [
        b"",
        b'data: {"choices": []}\n\n',
        b'data: [DONE]\n\ndata: {"choices": []}\n\n',
        b"data: [DON",
        b'data: {"text": "data: [DONE]"}\n\n',
        b"event: response.completed\ndata: {}\n\n",
    ],
)
def test_ends_with_done_is_false_when_the_last_event_is_not_the_sentinel(events: bytes) -> None:
    assert not ends_with_done(events)


def test_error_event_is_one_parseable_data_event_holding_the_payload() -> None:
    payload = UpstreamBadResponse("The upstream ended the stream before `data: [DONE]`.").payload()

    event = error_event(payload)

    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert split_events(event) == (event, b"")
    assert event.count(b"\n") == 2
    assert orjson.loads(event.removeprefix(b"data: ")) == payload


def test_error_event_keeps_newlines_in_messages_inside_one_line() -> None:
    payload = {"error": {"message": "line one\nline two\r\n", "type": "upstream_error", "param": None, "code": "x"}}

    event = error_event(payload)

    assert event.count(b"\n") == 2
    assert orjson.loads(event.removeprefix(b"data: ")) == payload


def test_done_with_trailing_space_counts_as_done_as_the_sdk_reads_it() -> None:
    assert ends_with_done(b"data: [DONE] \n\n")


def test_mixed_line_endings_end_an_event() -> None:
    assert split_events(b"data: a\n\r\ndata: b") == (b"data: a\n\r\n", b"data: b")
    assert split_events(b"data: a\r\n\ndata: b") == (b"data: a\r\n\n", b"data: b")


def test_without_last_drops_only_the_final_event() -> None:
    events = b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\ndata: [DONE]\n\n'
    assert without_last(events) == b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\n'
    assert without_last(b"data: [DONE]\n\n") == b""
    assert without_last(b"event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n") == (
        b"event: message_delta\ndata: {}\n\n"
    )


def test_last_event_type_names_the_type_of_the_last_event_only() -> None:
    from gateway.protocols.sse import last_event_type

    stream = b'event: a\ndata: {"type":"message_delta"}\n\nevent: b\ndata: {"type":"message_stop"}\n\n'
    assert last_event_type(stream) == "message_stop"
    assert last_event_type(b"data: [DONE]\n\n") is None
    assert last_event_type(b'data: {"type": 5}\n\n') is None
    assert last_event_type(b"") is None
