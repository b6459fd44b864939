"""Streaming end to end: a real gateway relaying a real upstream's SSE to the OpenAI SDK and to raw HTTP."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.support.processes import Process
from tests.test_proxy import behave, seen_upstream

MESSAGES = [{"role": "user", "content": "stream please"}]


def wait_for_state(upstream: Process, request_id: str, state: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    current = ""
    while time.monotonic() < deadline:
        current = seen_upstream(upstream, request_id)["state"]
        if current == state:
            break
        time.sleep(0.02)
    return current


def test_stream_reassembles_in_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True,
                                            extra_headers=behave(chunks=4))  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "part0 part1 part2 part3 "


def test_chunks_arrive_while_the_upstream_is_still_generating(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(chunks=3, hold_after=1)
    request_id = headers["x-request-id"]
    with client.chat.completions.create(
        model="test-chat", messages=MESSAGES, stream=True, extra_headers=headers
    ) as stream:
        first = next(iter(stream))
        # The upstream has sent one chunk and is waiting for us: a buffering gateway could not have answered yet.
        assert seen_upstream(upstream, request_id)["state"] == "holding"
        assert first.choices[0].delta.content == "part0 "
        httpx.post(f"{upstream.url}/_release/{request_id}")
        rest = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert rest == "part1 part2 "


def test_stream_bytes_are_relayed_unchanged(gateway: Process) -> None:
    upstream_bytes = (
        ": a comment the SDK ignores\n\n"
        'event: custom\ndata:{"choices":[],"spacing":  "odd"}\n\n'
        'data: {"id":"x","choices":[{"index":0,"delta":{"content":"é ✓"}}]}\r\n\r\n'
        "data: [DONE]\n\n"
    )
    body = {"model": "test-chat", "stream": True, "messages": MESSAGES}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                      headers=behave(raw=upstream_bytes)) as response:  # fmt: skip
        received = response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
    assert received == upstream_bytes.encode()


def test_upstream_error_before_the_stream_is_a_normal_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True,
                                       extra_headers=behave(status=500))  # fmt: skip
    assert caught.value.status_code == 500
    assert caught.value.body == {"message": "upstream says no", "type": "x", "code": "y"}


def test_upstream_drop_mid_stream_raises_in_the_sdk(client: openai.OpenAI) -> None:
    received = []
    stream = client.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True,
                                            extra_headers=behave(chunks=5, drop_after=2))  # fmt: skip
    with pytest.raises(openai.APIError) as caught:
        received.extend(chunk.choices[0].delta.content for chunk in stream)
    assert received == ["part0 ", "part1 "]
    assert caught.value.code == "upstream_bad_response"


def test_stream_ending_without_done_raises_in_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True,
                                            extra_headers=behave(chunks=2, no_done=True))  # fmt: skip
    with pytest.raises(openai.APIError, match=r"before `data: \[DONE\]`"):
        list(stream)


def test_stalled_stream_ends_with_a_timeout_error_event(gateway: Process, upstream: Process) -> None:
    headers = behave(chunks=3, hold_after=1)
    body = {"model": "test-slow", "stream": True, "messages": MESSAGES}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}")
    assert json.loads(events[0][5:])["choices"][0]["delta"]["content"] == "part0 "
    assert json.loads(events[-1][5:])["error"]["code"] == "upstream_timeout"


def test_client_disconnect_closes_the_upstream_stream(gateway: Process, upstream: Process) -> None:
    headers = behave(chunks=3, hold_after=1)
    request_id = headers["x-request-id"]
    body = {"model": "test-chat", "stream": True, "messages": MESSAGES}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
        chunks = response.iter_raw()  # kept: a dropped iterator would close the response early
        assert next(chunks).startswith(b"data: ")
        assert seen_upstream(upstream, request_id)["state"] == "holding"
    # Leaving the block closed our connection; the gateway must hang up on the upstream, which sees it.
    assert wait_for_state(upstream, request_id, "disconnected") == "disconnected"


def test_mock_agent_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == 'You said: "hi". This is the mock provider: it received 1 message, 0 of them system.'
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16


def test_responses_stream_through_the_mock(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="demo", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas.startswith('You said: "hi".')


def test_upstream_silent_after_its_headers_is_a_504_not_a_stream(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(chunks=2, hold_after=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-slow", messages=MESSAGES, stream=True, extra_headers=headers)
    httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}")
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
