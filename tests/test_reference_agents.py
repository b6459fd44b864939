"""The reference agent files, loaded unchanged, behave as their settings say: a real gateway in front of a real
upstream, driven with the OpenAI SDK as users drive it."""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionUserMessageParam
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from tests.support.processes import ROOT, Process, start_gateway
from tests.support.redis import start_redis

# The files users start from, copied into the fixtures; the path may be pointed at another copy.
REFERENCE_AGENTS = Path(os.environ.get("REFERENCE_AGENTS_DIR", ROOT / "tests" / "fixtures" / "reference-agents"))
UPSTREAM_KEY = "sk-test-upstream"
# Where 04-complete.yaml's `redis://localhost:6379` leads: not ours, so only read (never flushed), and the sessions
# the gateway puts there are deleted through the API.
LOCAL_REDIS_PORT = 6379


class Serve(Protocol):
    def __call__(self, agent_file: str, **env: str) -> Process: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """One chat turn: what the client got, and what the upstream received for it."""

    text: str
    headers: Mapping[str, str]  # case-insensitive, as the SDK gives them
    sent: dict[str, Any]  # the body that reached the upstream
    sent_headers: dict[str, str]
    pieces: list[str] = field(default_factory=list)  # the content deltas, when streamed


def user(content: str) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def seen_upstream(upstream: Process, request_id: str) -> dict[str, Any] | None:
    """The request as the upstream recorded it, or None when it never got there."""
    response = httpx.get(f"{upstream.url}/_requests/{request_id}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return dict(response.json())


def turn_headers(session_id: str | None) -> dict[str, str]:
    headers = {"x-request-id": f"ref-{uuid.uuid4().hex}"}
    if session_id is not None:
        headers["X-Session-Id"] = session_id
    return headers


def recorded(upstream: Process, request_id: str) -> dict[str, Any]:
    record = seen_upstream(upstream, request_id)
    assert record is not None, f"the upstream never saw request {request_id}"
    return record


def ask(
    client: openai.OpenAI, upstream: Process, model: str, content: str, *, session_id: str | None = None, **options: Any
) -> Reply:
    headers = turn_headers(session_id)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[user(content)], extra_headers=headers, **options
    )
    text = raw.parse().choices[0].message.content or ""
    record = recorded(upstream, headers["x-request-id"])
    return Reply(text, raw.headers, record["body"], record["headers"], [text])


def ask_streaming(
    client: openai.OpenAI, upstream: Process, model: str, content: str, *, session_id: str | None = None, **options: Any
) -> Reply:
    headers = turn_headers(session_id)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[user(content)], stream=True, extra_headers=headers, **options
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices]
    record = recorded(upstream, headers["x-request-id"])
    return Reply("".join(pieces), raw.headers, record["body"], record["headers"], [p for p in pieces if p])


def open_session(client: openai.OpenAI, model: str) -> dict[str, Any]:
    response = client.post("/sessions", body={"model": model}, cast_to=httpx.Response)
    assert response.status_code == 201, response.text
    return dict(response.json())


def show_session(client: openai.OpenAI, session_id: str) -> dict[str, Any]:
    return dict(client.get(f"/sessions/{session_id}", cast_to=dict))


def moment(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def lifetime(session: dict[str, Any]) -> timedelta:
    return moment(session["expires_at"]) - moment(session["created_at"])


def requests_until_refused(client: openai.OpenAI, model: str) -> tuple[int, float, openai.RateLimitError]:
    """Send requests back to back until one is refused: how many got through, in how many seconds, and the 429."""
    started = time.monotonic()
    for sent in range(200):
        try:
            client.chat.completions.create(model=model, messages=[user("again")])
        except openai.RateLimitError as refused:
            return sent, time.monotonic() - started, refused
    pytest.fail(f"200 requests to {model} in {time.monotonic() - started:.1f}s and none was refused")


def assert_sixty_a_minute(client: openai.OpenAI, model: str) -> None:
    """A full bucket of 60 requests, refilled at one a second: a burst gets 60 (plus one per second it took), and the
    next request is a 429 that says to come back in a second. The headers name the rate (60), not the capacity."""
    allowed, elapsed, refused = requests_until_refused(client, model)
    assert 60 <= allowed <= 60 + math.ceil(elapsed), (allowed, elapsed)
    headers = refused.response.headers
    assert refused.status_code == 429
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert model in refused.message


def local_redis() -> redis.Redis:
    # No retries (redis-py retries a refused connection for seconds by default), as the gateway does.
    return redis.Redis(
        host="127.0.0.1",
        port=LOCAL_REDIS_PORT,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def local_redis_answers() -> bool:
    try:
        with local_redis() as client:
            return bool(client.ping())
    except (RedisError, OSError):
        return False


def keys_naming(client: redis.Redis, session_id: str) -> list[bytes]:
    """The Redis keys that hold a session, found by its id alone (read only: SCAN)."""
    return list(client.scan_iter(match=f"*{session_id}*", count=1000))


def sdk(gateway: Process) -> openai.OpenAI:
    # No SDK retries: each assertion sees the gateway's first answer. Auth is off (loopback, no keys): any key works.
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-any-client-key", max_retries=0, timeout=20)


@pytest.fixture
def serve(upstream: Process, tmp_path: Path) -> Iterator[Serve]:
    """Start a gateway on a config directory holding one reference file, byte for byte; stopped after the test."""
    started: list[Process] = []

    def start(agent_file: str, **env: str) -> Process:
        source = REFERENCE_AGENTS / agent_file
        if not source.is_file():
            message = f"reference agent {source} is missing (set REFERENCE_AGENTS_DIR)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        config = tmp_path / "config"
        config.mkdir(exist_ok=True)
        shutil.copyfile(source, config / agent_file)
        environment = {
            "OPENAI_BASE_URL": f"{upstream.url}/v1",
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "GATEWAY_STATE_DIR": str(tmp_path / "state"),
            "GATEWAY_STORE": "memory",
            "GATEWAY_ADMIN_KEY": "",
            **env,
        }
        process = start_gateway(config, tmp_path, environment)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def test_01_sessions_carry_the_conversation_for_1800_seconds(serve: Serve, upstream: Process) -> None:
    gateway = serve("01-sessions.yaml")
    with sdk(gateway) as client:
        session = open_session(client, "chat_assistant")
        session_id = session["session_id"]
        first = ask(client, upstream, "chat_assistant", "I am Ada.", session_id=session_id)
        # The session may be named in the body instead of the header.
        second = ask(client, upstream, "chat_assistant", "I like tea.", extra_body={"session_id": session_id})
        third = ask(client, upstream, "chat_assistant", "Who am I?", session_id=session_id)
        shown = show_session(client, session_id)

    assert session["model"] == "chat_assistant"
    assert lifetime(session) == timedelta(seconds=1800)
    assert first.text == "upstream heard 1 messages; last: I am Ada."
    assert second.text == "upstream heard 3 messages; last: I like tea."
    assert third.text == "upstream heard 5 messages; last: Who am I?"
    # Each turn sent one message; the upstream got the whole conversation, with no system prompt (01 has none).
    assert third.sent["messages"] == [
        user("I am Ada."),
        assistant(first.text),
        user("I like tea."),
        assistant(second.text),
        user("Who am I?"),
    ]
    assert third.sent["model"] == "gpt-4"
    assert third.sent_headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "session_id" not in second.sent
    assert "x-session-id" not in third.sent_headers
    for reply in (first, second, third):
        assert reply.headers["x-session-id"] == session_id
        assert reply.headers["x-session-storage"] == "memory"
    assert shown["messages"] == [*third.sent["messages"], assistant(third.text)]
    # Every use gives the session another 1800 s.
    assert moment(shown["expires_at"]) > moment(session["expires_at"])
    assert shown["created_at"] == session["created_at"]
    left = moment(shown["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=1795) < left <= timedelta(seconds=1800)


def test_01_sessions_keep_the_newest_20_messages(serve: Serve, upstream: Process) -> None:
    gateway = serve("01-sessions.yaml")
    with sdk(gateway) as client:
        session_id = open_session(client, "chat_assistant")["session_id"]
        replies = [ask(client, upstream, "chat_assistant", f"turn {n}", session_id=session_id) for n in range(1, 13)]
        shown = show_session(client, session_id)

    # Turn 11 still found all 10 earlier turns (20 messages); turn 12 found turns 2 to 11, turn 1 dropped whole.
    assert replies[10].text == "upstream heard 21 messages; last: turn 11"
    assert replies[11].text == "upstream heard 21 messages; last: turn 12"
    assert replies[11].sent["messages"][:2] == [user("turn 2"), assistant(replies[1].text)]
    stored = shown["messages"]
    assert len(stored) == 20
    assert stored[:2] == [user("turn 3"), assistant(replies[2].text)]
    assert stored[-2:] == [user("turn 12"), assistant(replies[11].text)]


def test_02_streaming_relays_the_upstream_stream_as_it_comes(serve: Serve, upstream: Process) -> None:
    gateway = serve("02-streaming.yaml")
    headers = {**turn_headers(None), "x-test-behaviour": '{"chunks": 4, "hold_after": 1}'}
    request_id = headers["x-request-id"]
    with (
        sdk(gateway) as client,
        client.chat.completions.create(
            model="streaming_assistant", messages=[user("stream please")], stream=True, extra_headers=headers
        ) as stream,
    ):
        chunks = iter(stream)
        first = next(chunks)
        # The upstream has sent one chunk and waits: the client has it already, so nothing is buffered.
        assert recorded(upstream, request_id)["state"] == "holding"
        httpx.post(f"{upstream.url}/_release/{request_id}").raise_for_status()
        rest = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]

    assert first.choices[0].delta.content == "part0 "
    # The upstream's own chunks, not the whole answer re-cut into pieces of chunk_size 5 (a simulated stream).
    assert rest == ["part1 ", "part2 ", "part3 "]
    sent = recorded(upstream, request_id)["body"]
    assert sent["stream"] is True
    assert sent["model"] == "gpt-4"
    assert sent["messages"] == [user("stream please")]


@pytest.fixture
def redis_at_6379(tmp_path: Path) -> Iterator[None]:
    """A Redis where 04-complete.yaml says its sessions live: the one answering there, used read-only (not ours),
    or one of this test's own on that port when nothing answers."""
    if local_redis_answers():
        yield
        return
    server = start_redis(tmp_path, port=LOCAL_REDIS_PORT)
    try:
        yield
    finally:
        server.stop()


@pytest.mark.usefixtures("redis_at_6379")
def test_04_complete_conversation_defaults_and_limits(serve: Serve, upstream: Process) -> None:
    model = "full_featured_assistant"
    system = {"role": "system", "content": "You are a helpful AI assistant."}
    gateway = serve("04-complete.yaml")
    with sdk(gateway) as client:
        session = open_session(client, model)
        session_id = session["session_id"]
        in_local_redis: list[bytes] = []
        try:
            first = ask(client, upstream, model, "My name is Ada.", session_id=session_id)
            second = ask(client, upstream, model, "What is my name?", session_id=session_id)
            streamed = ask_streaming(client, upstream, model, "Spell it.", session_id=session_id, max_tokens=4000)
            refused_id = turn_headers(session_id)
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model=model, messages=[user("Write a novel.")], max_tokens=5000, extra_headers=refused_id
                )
            shown = show_session(client, session_id)
            with local_redis() as local:
                in_local_redis = keys_naming(local, session_id)
        finally:  # that Redis may not be ours: leave nothing behind
            client.delete(f"/sessions/{session_id}", cast_to=dict)
    with local_redis() as local:
        assert keys_naming(local, session_id) == []

    for reply in (first, second, streamed):
        assert reply.headers["x-session-storage"] == "redis"
        assert reply.headers["x-ratelimit-limit-requests"] == "60"
    assert int(second.headers["x-ratelimit-remaining-requests"]) < int(first.headers["x-ratelimit-remaining-requests"])
    assert lifetime(session) == timedelta(seconds=3600)
    # The system prompt goes first, then the history; the agent's defaults fill what the client left out.
    assert first.sent["messages"] == [system, user("My name is Ada.")]
    assert second.text == "upstream heard 4 messages; last: What is my name?"
    assert second.sent["messages"] == [system, user("My name is Ada."), assistant(first.text), user("What is my name?")]
    assert (first.sent["model"], first.sent["temperature"], first.sent["max_tokens"]) == ("gpt-4", 0.7, 2000)
    # Streamed, with the client's own max_tokens (within max_tokens_per_request: 4000) in place of the default.
    assert streamed.pieces == ["part0 ", "part1 ", "part2 "]
    assert streamed.sent["stream"] is True
    assert streamed.sent["max_tokens"] == 4000
    assert len(streamed.sent["messages"]) == 6
    # Above max_tokens_per_request: refused here, never sent upstream, and not part of the conversation.
    assert refused.value.status_code == 400
    assert refused.value.param == "max_tokens"
    assert "4000" in refused.value.message
    assert seen_upstream(upstream, refused_id["x-request-id"]) is None
    assert shown["messages"] == [*streamed.sent["messages"][1:], assistant("part0 part1 part2 ")]
    assert in_local_redis


def test_04_complete_admits_60_requests_a_minute(serve: Serve) -> None:
    # burst_size 100 would allow more, but limits.max_requests_per_minute (60, no burst) holds it to 60.
    gateway = serve("04-complete.yaml")
    with sdk(gateway) as client:
        assert_sixty_a_minute(client, "full_featured_assistant")


def test_05_quickstart_sessions_live_in_redis_and_survive_a_restart(
    serve: Serve, upstream: Process, redis_url: str
) -> None:
    model = "my_assistant"
    gateway = serve("05-quickstart.yaml", REDIS_URL=redis_url)
    with sdk(gateway) as client:
        session_id = open_session(client, model)["session_id"]
        first = ask(client, upstream, model, "My favourite colour is blue.", session_id=session_id)
    with redis.Redis.from_url(redis_url) as test_redis:
        assert keys_naming(test_redis, session_id)
    gateway.stop()

    restarted = serve("05-quickstart.yaml", REDIS_URL=redis_url)
    with sdk(restarted) as client:
        second = ask_streaming(client, upstream, model, "Which colour do I like?", session_id=session_id)
        shown = show_session(client, session_id)

    assert first.headers["x-session-storage"] == "redis"
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    # A new process, nothing in its memory: the history came from Redis, and the reply streamed from upstream.
    assert second.headers["x-session-storage"] == "redis"
    assert second.pieces == ["part0 ", "part1 ", "part2 "]
    assert second.sent["stream"] is True
    assert second.sent["messages"] == [
        user("My favourite colour is blue."),
        assistant(first.text),
        user("Which colour do I like?"),
    ]
    assert shown["messages"] == [*second.sent["messages"], assistant("part0 part1 part2 ")]


def test_05_quickstart_admits_60_requests_a_minute(serve: Serve, redis_url: str) -> None:
    gateway = serve("05-quickstart.yaml", REDIS_URL=redis_url)
    with sdk(gateway) as client:
        assert_sixty_a_minute(client, "my_assistant")
