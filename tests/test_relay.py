"""Streaming end to end: a real gateway relaying a real upstream's SSE to the OpenAI SDK and to raw HTTP."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.protocols.mock import MockUpstream
from gateway.settings import Settings
from gateway.upstream.base import UpstreamRequest, UpstreamResponse
from tests.support.processes import ROOT, Process
from tests.support.serve import served
from tests.test_proxy import behave, seen_upstream

MESSAGES: Any = [{"role": "user", "content": "stream please"}]
CHAT = "/v1/chat/completions"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


def test_a_responses_stream_is_relayed_to_its_terminal_event(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="test-chat", input="hi", stream=True))
    assert [e.type for e in events][-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "part0 part1 part2 "


def test_a_responses_stream_that_stops_short_of_its_terminal_event_ends_with_the_error(gateway: Process) -> None:
    body = {"model": "test-chat", "input": "hi", "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, headers=behave(no_done=True)) as response:
        data = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert json.loads(data[-2])["type"] == "response.output_text.delta"  # everything the upstream sent, then
    error = json.loads(data[-1])["error"]
    assert error["code"] == "upstream_bad_response"
    assert "response.completed" in error["message"]


def test_upstream_silent_after_its_headers_is_a_504_not_a_stream(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave(chunks=2, hold_after=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-slow", messages=MESSAGES, stream=True, extra_headers=headers)
    httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}")
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_stream_asked_of_embeddings_gets_the_upstreams_json(client: openai.OpenAI) -> None:
    # Embeddings do not stream: the upstream ignores `stream` and answers JSON, which the client gets whole.
    embedding = client.embeddings.create(
        model="test-chat", input="hi", encoding_format="float", extra_body={"stream": True}
    )
    assert embedding.data[0].embedding == [0.5, -0.5]


def test_a_whole_json_answer_to_a_stream_request_reaches_the_client_whole(gateway: Process) -> None:
    instructions = "long " * 100_000  # an answer of half a megabyte: more than the upstream's first read
    body = {"model": "test-chat", "input": "hi", "instructions": instructions, "stream": True}
    response = httpx.post(gateway.url + "/v1/responses", json=body, headers=behave(ignore_stream=True), timeout=20)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    text = response.json()["output"][0]["content"][0]["text"]
    sent = "You are a test agent.\n\n" + instructions
    assert text == f"upstream heard instructions={sent!r}"


def test_a_chat_stream_answered_whole_is_replayed_as_a_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True,
                                            extra_headers=behave(ignore_stream=True))  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "upstream heard 2 messages; last: stream please"


class BreaksMidStream:
    """The mock provider with a bug that shows after `after` events of a stream: a failure that is not an
    upstream's (those are `UpstreamError`s), as a bug anywhere on the relay's path would be."""

    def __init__(self, after: int) -> None:
        self.after = after

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        return _Breaking(await MockUpstream().send(request), self.after)


class _Breaking:
    def __init__(self, response: UpstreamResponse, after: int) -> None:
        self._response = response
        self._after = after
        self.status = response.status

    @property
    def content_type(self) -> str:
        return self._response.content_type

    def relay_headers(self) -> list[tuple[bytes, bytes]]:
        return self._response.relay_headers()

    async def start(self) -> None:
        await self._response.start()

    async def read(self) -> bytes:
        return await self._response.read()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in self._response.iter_chunks():
            if sent == self._after:
                raise RuntimeError("a bug mid-stream")
            sent += 1
            yield chunk

    def close(self) -> None:
        self._response.close()


def metric(text: str, name: str, **labels: str) -> float:
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


async def metrics_once_counted(http: httpx.AsyncClient, requests: int) -> str:
    """/metrics once it counts `requests` chat requests: they are counted after their last byte, which the
    client may have read first."""
    deadline = time.monotonic() + 5
    while True:
        text = (await http.get("/metrics")).text
        if metric(text, "gateway_requests_total", route=CHAT) >= requests or time.monotonic() > deadline:
            return text


async def read_stream(sdk: openai.AsyncOpenAI, into: list[Any]) -> None:
    async for chunk in await sdk.chat.completions.create(model="demo", messages=MESSAGES, stream=True):
        into.append(chunk)


@pytest.mark.anyio
@pytest.mark.parametrize("after", [3, 0])
async def test_a_bug_in_a_stream_ends_it_with_an_error_and_closes_its_accounting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, after: int
) -> None:
    settings = Settings(config=ROOT / "config", state_dir=tmp_path / "state")
    app = create_app(settings, environ={}, upstreams={"mock": BreaksMidStream(after)})
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-any", max_retries=0, http_client=http)
        received: list[Any] = []
        with pytest.raises(openai.APIError) as caught:
            await read_stream(sdk, received)
        # Told, not cut off: an error the SDK read from the gateway, not a dropped connection.
        assert not isinstance(caught.value, openai.APIConnectionError)
        assert caught.value.code == "internal_error"
        assert len(received) == after
        if after:
            async with http.stream("POST", CHAT, json={"model": "demo", "messages": MESSAGES, "stream": True}) as raw:
                body = await raw.aread()  # the body ends: a dropped connection would raise here
            last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
            assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "internal_error"
            assert b"[DONE]" not in body
        text = await metrics_once_counted(http, 2 if after else 1)

    assert metric(text, "gateway_active_streams") == 0
    assert metric(text, "gateway_requests_total", route=CHAT) == (2 if after else 1)
    assert metric(text, "gateway_requests_total", route=CHAT, error_class="gateway_internal") == (2 if after else 1)
    assert metric(text, "gateway_streams_total", outcome="gateway_error") == (2 if after else 1)
    bugs = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all("a bug mid-stream" in str(r.exc_info) for r in bugs)  # logged by the gateway, with its traceback
    assert len(bugs) == (2 if after else 1)
