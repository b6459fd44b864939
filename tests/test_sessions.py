"""Sessions end to end: the OpenAI SDK against a real gateway process and a real upstream process that says how
many messages it received, with sessions in memory and in a real redis-server that the tests kill and restart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.processes import Process
from tests.support.redis import RedisServer, start_redis
from tests.test_keys import Admin, keyed_gateway, sdk
from tests.test_proxy import behave, seen_upstream
from tests.test_reload import wait_for
from tests.test_workers import wait_for_workers

Connect = Callable[[Process, str], openai.OpenAI]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Makes SDK clients for a gateway and a key, and closes them after the test."""
    opened: list[openai.OpenAI] = []

    def make(gateway: Process, key: str = "unused") -> openai.OpenAI:
        opened.append(sdk(gateway, key))
        return opened[-1]

    yield make
    for client in opened:
        client.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def new_session(client: openai.OpenAI, model: str = "test-chat", **fields: Any) -> str:
    created = client.post("/sessions", body={"model": model, **fields}, cast_to=dict)
    return str(created["session_id"])


def stored(client: openai.OpenAI, session_id: str) -> list[dict[str, Any]]:
    session = client.get(f"/sessions/{session_id}", cast_to=dict)
    return list(session["messages"])


def upstream_messages(upstream: Process, headers: dict[str, str]) -> list[dict[str, Any]]:
    return list(seen_upstream(upstream, headers["x-request-id"])["body"]["messages"])


def dropped_stream(client: openai.OpenAI, model: str, session_id: str) -> None:
    """A streamed turn whose upstream drops the connection after two chunks: the SDK raises on our error event."""
    stream = client.chat.completions.create(
        model=model,
        messages=user("dropped"),
        stream=True,
        extra_headers={**behave(chunks=4, drop_after=2), "x-session-id": session_id},
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def contents(messages: list[dict[str, Any]]) -> list[Any]:
    return [message.get("content") for message in messages]


def test_three_turns_send_only_the_new_message_and_the_upstream_sees_it_all(
    client: openai.OpenAI, upstream: Process
) -> None:
    session_id = new_session(client)
    replies = []
    for turn, text in enumerate(["one", "two", "three"]):
        headers = behave()
        # Both ways of naming a session: the header, then the body field (the SDK's extra_body).
        naming: dict[str, Any] = {"extra_headers": {**headers, "x-session-id": session_id}}
        if turn == 2:
            naming = {"extra_headers": headers, "extra_body": {"session_id": session_id}}
        raw = client.chat.completions.with_raw_response.create(model="test-chat", messages=user(text), **naming)
        reply = raw.parse().choices[0].message.content
        replies.append(reply)
        sent = upstream_messages(upstream, headers)
        assert len(sent) == 2 + 2 * turn  # the system prompt, the history, the new message
        assert sent[0] == {"role": "system", "content": "You are a test agent."}
        assert sent[-1] == {"role": "user", "content": text}
        assert reply == f"upstream heard {2 + 2 * turn} messages; last: {text}"
        assert raw.headers["x-session-id"] == session_id
        assert raw.headers["x-session-storage"] == "memory"
        assert "session_id" not in seen_upstream(upstream, headers["x-request-id"])["body"]
    history = stored(client, session_id)
    assert contents(history) == ["one", replies[0], "two", replies[1], "three", replies[2]]
    assert [m["role"] for m in history] == ["user", "assistant"] * 3


def test_a_streamed_turn_stores_the_reply_assembled_from_its_deltas(client: openai.OpenAI, upstream: Process) -> None:
    session_id = new_session(client)
    stream = client.chat.completions.create(
        model="test-chat", messages=user("stream it"), stream=True, extra_headers={"x-session-id": session_id}
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "part0 part1 part2 "
    # Stored before `[DONE]` reached us: asked right away, the session already holds the reply.
    assert stored(client, session_id) == [
        {"role": "user", "content": "stream it"},
        {"role": "assistant", "content": "part0 part1 part2 "},
    ]
    headers = behave()
    client.chat.completions.create(
        model="test-chat", messages=user("and now?"), extra_headers={**headers, "x-session-id": session_id}
    )
    assert contents(upstream_messages(upstream, headers))[1:] == ["stream it", "part0 part1 part2 ", "and now?"]


def test_a_streamed_tool_call_is_stored_and_its_result_continues_the_conversation(
    client: openai.OpenAI, upstream: Process
) -> None:
    session_id = new_session(client)
    stream = client.chat.completions.create(
        model="test-chat",
        messages=user("weather in Paris?"),
        stream=True,
        extra_headers={**behave(tool_call=True), "x-session-id": session_id},
    )
    finish = [chunk.choices[0].finish_reason for chunk in stream if chunk.choices][-1]
    assert finish == "tool_calls"
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}}
    assert stored(client, session_id)[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    headers = behave()
    result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    client.chat.completions.create(
        model="test-chat",
        messages=[result],  # type: ignore[list-item]
        extra_headers={**headers, "x-session-id": session_id},
    )
    sent = upstream_messages(upstream, headers)
    assert sent[2]["tool_calls"] == [call]
    assert sent[3] == result


def test_history_is_bounded_by_messages_dropping_the_oldest_whole_turns(
    client: openai.OpenAI, upstream: Process
) -> None:
    session_id = new_session(client, "test-bounded")  # max_history: 4
    for text in ["one", "two", "three"]:
        headers = behave()
        client.chat.completions.create(
            model="test-bounded", messages=user(text), extra_headers={**headers, "x-session-id": session_id}
        )
    # Turn three was sent with the two turns before it (4 messages), and then turn one was dropped.
    assert contents(upstream_messages(upstream, headers))[::2] == ["one", "two", "three"]
    assert contents(stored(client, session_id))[::2] == ["two", "three"]


def test_history_is_bounded_by_estimated_tokens(client: openai.OpenAI) -> None:
    session_id = new_session(client, "test-token-bounded")  # max_history_tokens: 60, about 240 characters
    for text in ["a" * 100, "b" * 100, "c" * 20]:
        client.chat.completions.create(
            model="test-token-bounded", messages=user(text), extra_headers={"x-session-id": session_id}
        )
    history = stored(client, session_id)
    assert contents(history)[0] == "c" * 20  # the two long turns no longer fit beside it
    assert len(history) == 2


def test_unknown_expired_and_malformed_session_ids_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(
            model="test-chat", messages=user("hi"), extra_headers={"x-session-id": "sess_000000000000000000000000"}
        )
    assert unknown.value.code == "session_not_found"
    assert unknown.value.status_code == 404
    with pytest.raises(openai.BadRequestError, match="1 to 128"):
        client.chat.completions.create(model="test-chat", messages=user("hi"), extra_body={"session_id": "a b"})
    with pytest.raises(openai.BadRequestError, match="name different sessions"):
        client.chat.completions.create(
            model="test-chat", messages=user("hi"), extra_headers={"x-session-id": "x"}, extra_body={"session_id": "y"}
        )
    with pytest.raises(openai.BadRequestError, match="does not keep sessions"):
        client.post("/sessions", body={"model": "test-slow"}, cast_to=dict)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.post("/sessions", body={"model": "no-such-model"}, cast_to=dict)
    with pytest.raises(openai.BadRequestError, match="ttl_seconds"):
        client.post("/sessions", body={"model": "test-chat", "ttl_seconds": -1}, cast_to=dict)
    session_id = new_session(client)
    with pytest.raises(openai.BadRequestError, match="conversation with model `test-chat`"):
        client.chat.completions.create(
            model="test-bounded", messages=user("hi"), extra_headers={"x-session-id": session_id}
        )


def test_a_session_expires_after_its_ttl_and_auto_create_starts_one_under_the_id(client: openai.OpenAI) -> None:
    session_id = new_session(client, ttl_seconds=1)
    session = client.get(f"/sessions/{session_id}", cast_to=dict)
    assert session["expires_at"] > session["created_at"]
    time.sleep(1.3)
    with pytest.raises(openai.NotFoundError):
        client.get(f"/sessions/{session_id}", cast_to=dict)
    # test-auto sets auto_create: a client-chosen id starts a session on first use.
    chosen = f"my-conversation-{time.monotonic_ns()}"
    for text in ["first", "second"]:
        completion = client.chat.completions.create(
            model="test-auto", messages=user(text), extra_headers={"x-session-id": chosen}
        )
    assert completion.choices[0].message.content == "upstream heard 3 messages; last: second"


def test_failed_turns_store_nothing_unless_the_agent_keeps_partial_replies(
    client: openai.OpenAI, upstream: Process
) -> None:
    session_id = new_session(client)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="test-chat", messages=user("lost"), extra_headers={**behave(status=500), "x-session-id": session_id}
        )
    dropped_stream(client, "test-chat", session_id)
    assert stored(client, session_id) == []
    partial = new_session(client, "test-partial")
    dropped_stream(client, "test-partial", partial)
    assert stored(client, partial) == [
        {"role": "user", "content": "dropped"},
        {"role": "assistant", "content": "part0 part1 "},
    ]


def test_twenty_concurrent_turns_on_one_session_lose_nothing(client: openai.OpenAI) -> None:
    twenty_concurrent_turns(client)


def twenty_concurrent_turns(client: openai.OpenAI) -> None:
    session_id = new_session(client)

    def turn(number: int) -> None:
        client.chat.completions.create(
            model="test-chat", messages=user(f"turn {number}"), extra_headers={"x-session-id": session_id}
        )

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(turn, range(20)))
    history = stored(client, session_id)  # max_history: 50
    assert len(history) == 40
    asked = [m["content"] for m in history if m["role"] == "user"]
    assert sorted(asked) == sorted(f"turn {n}" for n in range(20))
    # Each turn's question and answer stay together.
    for question, answer in zip(history[::2], history[1::2], strict=True):
        assert answer["content"].endswith(f"last: {question['content']}")


def test_the_simple_chat_api_creates_a_session_and_continues_it(client: openai.OpenAI, gateway: Process) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        first = http.post("/v1/chat", json={"agent_name": "test-chat", "message": "hello"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["message"] == {"role": "assistant", "content": "upstream heard 2 messages; last: hello"}
        assert body["usage"]["total_tokens"] == 12
        session_id = body["session_id"]
        assert first.headers["x-session-id"] == session_id
        second = http.post("/v1/chat", json={"agent_name": "test-chat", "message": "again", "session_id": session_id})
        assert second.json()["message"]["content"] == "upstream heard 4 messages; last: again"
        with http.stream(
            "POST", "/v1/chat/stream", json={"agent_name": "test-chat", "message": "streamed", "session_id": session_id}
        ) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            data = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1])
        assert text == "part0 part1 part2 "
        assert contents(stored(client, session_id))[-2:] == ["streamed", "part0 part1 part2 "]
        refused = http.post("/v1/chat", json={"agent_name": "test-chat"})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "message"
        unknown = http.post("/v1/chat", json={"agent_name": "nope", "message": "hi"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("choices", ['["x"]', "[[]]", '[{"message": "x"}]', "{}", "[]", "null"])
def test_the_simple_chat_api_answers_502_for_a_completion_with_no_message(gateway: Process, choices: str) -> None:
    # The session here is one this call creates: its turn holds no reply either way.
    answer = httpx.post(
        gateway.url + "/v1/chat",
        json={"agent_name": "test-chat", "message": "hi"},
        headers=behave(status=200, body=f'{{"choices": {choices}}}'),
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "upstream_bad_response"


def test_a_stream_is_simulated_for_an_upstream_that_cannot_stream(client: openai.OpenAI, upstream: Process) -> None:
    session_id = new_session(client, "test-nostream")
    headers = behave()
    stream = client.chat.completions.create(
        model="test-nostream",
        messages=user("simulate"),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={**headers, "x-session-id": session_id},
    )
    chunks = list(stream)
    assert seen_upstream(upstream, headers["x-request-id"])["body"]["stream"] is False
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    expected = "upstream heard 1 messages; last: simulate"
    assert "".join(pieces) == expected
    assert pieces[0] == "upstream heard "  # chunk_size: 2 words
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12
    assert stored(client, session_id)[-1] == {"role": "assistant", "content": expected}
    plain = list(client.chat.completions.create(model="test-nostream", messages=user("again"), stream=True))
    assert all(chunk.usage is None for chunk in plain)


def test_another_key_cannot_see_or_use_a_session_and_the_admin_can(
    connect: Connect, upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gateway = keyed_gateway(upstream, tmp_path_factory.mktemp("sessions-keys"))
    admin = Admin(gateway)
    try:
        owner = connect(gateway, admin.create()["secret"])
        other = connect(gateway, admin.create()["secret"])
        session_id = new_session(owner, user_id="alice")
        owner.chat.completions.create(
            model="test-chat", messages=user("mine"), extra_headers={"x-session-id": session_id}
        )
        for attempt in (
            lambda: other.get(f"/sessions/{session_id}", cast_to=dict),
            lambda: other.delete(f"/sessions/{session_id}", cast_to=dict),
            lambda: other.chat.completions.create(
                model="test-chat", messages=user("theirs"), extra_headers={"x-session-id": session_id}
            ),
        ):
            with pytest.raises(openai.NotFoundError) as refused:
                attempt()
            assert refused.value.code == "session_not_found"
        assert other.get("/sessions", cast_to=dict)["data"] == []
        listed = owner.get("/sessions", cast_to=dict, options={"params": {"user_id": "alice"}})
        assert [s["session_id"] for s in listed["data"]] == [session_id]
        assert contents(stored(owner, session_id))[0] == "mine"
        everyone = admin.http.get("/admin/sessions").json()
        assert session_id in [s["session_id"] for s in everyone["data"]]
        assert admin.http.get(f"/admin/sessions/{session_id}").json()["messages"][0]["content"] == "mine"
        assert admin.http.delete(f"/admin/sessions/{session_id}").status_code == 200
        with pytest.raises(openai.NotFoundError):
            owner.get(f"/sessions/{session_id}", cast_to=dict)
        assert httpx.get(f"{gateway.url}/admin/sessions").status_code == 401
    finally:
        admin.http.close()
        gateway.stop()


def test_history_counts_against_the_key_token_bucket(
    connect: Connect, upstream: Process, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gateway = keyed_gateway(upstream, tmp_path_factory.mktemp("sessions-tokens"))
    admin = Admin(gateway)
    try:
        limits = {"limits": {"tpm": 100_000}}
        with_history = connect(gateway, admin.create(**limits)["secret"])
        without = connect(gateway, admin.create(**limits)["secret"])
        session_id = new_session(with_history)
        with_history.chat.completions.create(
            model="test-chat", messages=user("x" * 4000), extra_headers={"x-session-id": session_id}
        )
        turn = with_history.chat.completions.with_raw_response.create(
            model="test-chat", messages=user("hi"), extra_headers={"x-session-id": session_id}
        )
        alone = without.chat.completions.with_raw_response.create(model="test-chat", messages=user("hi"))
        left_with = int(turn.headers["x-ratelimit-remaining-tokens"])
        left_without = int(alone.headers["x-ratelimit-remaining-tokens"])
        assert left_without - left_with >= 1000  # the 4,000 characters of history are about 1,000 tokens
    finally:
        admin.http.close()
        gateway.stop()


@pytest.fixture
def redis_for_sessions(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def redis_gateway(upstream: Process, directory: Path, server: RedisServer) -> Process:
    directory.mkdir(exist_ok=True)
    return keyed_gateway(upstream, directory, GATEWAY_AUTH="none", SESSION_STORAGE="redis", REDIS_URL=server.url)


def test_redis_sessions_survive_a_restart_and_are_shared_by_replicas(
    connect: Connect, upstream: Process, redis_for_sessions: RedisServer, tmp_path: Path
) -> None:
    first = redis_gateway(upstream, tmp_path / "a", redis_for_sessions)
    try:
        client = connect(first, "unused")
        session_id = new_session(client)
        raw = client.chat.completions.with_raw_response.create(
            model="test-chat", messages=user("remember me"), extra_headers={"x-session-id": session_id}
        )
        assert raw.headers["x-session-storage"] == "redis"
    finally:
        first.stop()
    second = redis_gateway(upstream, tmp_path / "b", redis_for_sessions)
    replica = redis_gateway(upstream, tmp_path / "c", redis_for_sessions)
    try:
        completion = connect(second, "unused").chat.completions.create(
            model="test-chat", messages=user("still there?"), extra_headers={"x-session-id": session_id}
        )
        assert completion.choices[0].message.content == "upstream heard 4 messages; last: still there?"
        assert contents(stored(connect(replica, "unused"), session_id))[::2] == ["remember me", "still there?"]
    finally:
        second.stop()
        replica.stop()


def turn_over_a_new_connection(gateway: Process, session_id: str, text: str) -> httpx.Response:
    """One turn as curl sends it: its own connection, so the workers' listening sockets share the turns out."""
    body = {"model": "test-chat", "messages": user(text)}
    headers = {**behave(), "x-session-id": session_id}
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        return http.post("/v1/chat/completions", json=body, headers=headers)


def seen_upstream_or_none(upstream: Process, request_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{upstream.url}/_requests/{request_id}")
    return None if response.status_code == 404 else dict(response.json())


def questions_sent_upstream(upstream: Process, response: httpx.Response) -> list[str]:
    sent = seen_upstream(upstream, response.request.headers["x-request-id"])["body"]["messages"]
    return [message["content"] for message in sent if message["role"] == "user"]


def test_two_workers_lose_no_acknowledged_turn_across_a_redis_outage(upstream: Process, tmp_path: Path) -> None:
    # Redis writes every command to its append-only file before answering, so what it acknowledged survives the
    # kill; whatever the gateway acknowledged must survive too, and no turn may be answered on a history that
    # misses one the client was told is stored.
    redis_server = start_redis(tmp_path, durable=True)
    gateway = keyed_gateway(
        upstream, tmp_path, GATEWAY_WORKERS="2", GATEWAY_STORE="redis", SESSION_STORAGE="redis",
        GATEWAY_AUTH="none", REDIS_URL=redis_server.url,
    )  # fmt: skip
    acknowledged: list[str] = []

    def take_turns(texts: list[str], *, storage: str | None) -> list[httpx.Response]:
        answers = []
        for text in texts:
            answer = turn_over_a_new_connection(gateway, session_id, text)
            if answer.status_code == 200:
                # Answered on exactly the turns acknowledged before it, in order, then its own question.
                assert questions_sent_upstream(upstream, answer) == [*acknowledged, text]
                assert answer.headers["x-session-storage"] == storage
                acknowledged.append(text)
            answers.append(answer)
        return answers

    try:
        wait_for_workers(gateway)
        with httpx.Client(base_url=gateway.url) as http:
            session_id = http.post("/v1/sessions", json={"model": "test-chat"}).json()["session_id"]
        before = take_turns([f"before {n}" for n in range(6)], storage="redis")
        assert [answer.status_code for answer in before] == [200] * 6

        redis_server.stop()
        during = take_turns([f"during {n}" for n in range(6)], storage=None)
        for answer in during:
            # Refused honestly, in OpenAI's shape, with the wait the SDK honours before it retries.
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "store_unavailable"
            assert 0 < float(answer.headers["retry-after-ms"]) <= 1000
        ready = httpx.get(f"{gateway.url}/readyz").json()
        assert list(ready["sessions"].values()) == ["unavailable"]

        redis_server.start()
        time.sleep(1.1)  # each worker tries Redis again once a second
        after = take_turns([f"after {n}" for n in range(10)], storage="redis")
        # Back at the first turn on each worker: no pooled connection from before the outage fails a turn.
        assert [answer.status_code for answer in after] == [200] * 10

        with httpx.Client(base_url=gateway.url) as http:
            history = http.get(f"/v1/sessions/{session_id}").json()["messages"]
        assert [message["content"] for message in history[::2]] == acknowledged
        assert acknowledged == [f"before {n}" for n in range(6)] + [f"after {n}" for n in range(10)]
    finally:
        gateway.stop()
        redis_server.stop()
    assert "Traceback" not in gateway.log()


def test_a_turn_whose_reply_cannot_be_stored_is_refused_and_not_half_stored(
    connect: Connect, upstream: Process, tmp_path: Path
) -> None:
    redis_for_sessions = start_redis(tmp_path, durable=True)
    gateway = redis_gateway(upstream, tmp_path / "a", redis_for_sessions)
    try:
        client = connect(gateway, "unused").with_options(max_retries=0)
        session_id = new_session(client)
        client.chat.completions.create(
            model="test-chat", messages=user("one"), extra_headers={"x-session-id": session_id}
        )
        headers = {**behave(hang=1.5), "x-session-id": session_id}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                client.chat.completions.create, model="test-chat", messages=user("lost"), extra_headers=headers
            )
            wait_for(lambda: seen_upstream_or_none(upstream, headers["x-request-id"]) is not None, timeout=5)
            redis_for_sessions.stop()  # while the upstream is answering: the reply has nowhere to go
            with pytest.raises(openai.InternalServerError) as refused:
                pending.result()
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"] == "1"
        redis_for_sessions.start()
        time.sleep(1.1)
        assert contents(stored(client, session_id))[::2] == ["one"]
    finally:
        gateway.stop()
        redis_for_sessions.stop()
    assert gateway.log().count("is unreachable") == 1


def test_a_streamed_turn_whose_reply_cannot_be_stored_ends_with_an_error_in_place_of_done(
    connect: Connect, upstream: Process, tmp_path: Path
) -> None:
    redis_for_sessions = start_redis(tmp_path, durable=True)
    gateway = redis_gateway(upstream, tmp_path / "a", redis_for_sessions)
    try:
        client = connect(gateway, "unused").with_options(max_retries=0)
        session_id = new_session(client)
        headers = {**behave(chunks=3, hold_after=1), "x-session-id": session_id}
        stream = client.chat.completions.create(
            model="test-chat", messages=user("lost"), stream=True, extra_headers=headers
        )
        pieces: list[str] = []

        def read_all() -> None:
            for chunk in stream:
                pieces.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
                if len(pieces) == 1:
                    redis_for_sessions.stop()  # while the upstream holds the rest: the reply has nowhere to go
                    httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}").raise_for_status()

        with pytest.raises(openai.APIError) as failed:
            read_all()
        # Every piece of the reply reached the client; only `[DONE]` gave way to the error, so the SDK raised.
        assert "".join(pieces) == "part0 part1 part2 "
        assert failed.value.code == "store_unavailable"
        redis_for_sessions.start()
        time.sleep(1.1)
        assert stored(client, session_id) == []
    finally:
        gateway.stop()
        redis_for_sessions.stop()
    assert "Traceback" not in gateway.log()


def test_twenty_concurrent_turns_on_one_redis_session_across_two_replicas_lose_nothing(
    connect: Connect, upstream: Process, redis_for_sessions: RedisServer, tmp_path: Path
) -> None:
    first = redis_gateway(upstream, tmp_path / "a", redis_for_sessions)
    second = redis_gateway(upstream, tmp_path / "b", redis_for_sessions)
    try:
        clients = [connect(first, "unused"), connect(second, "unused")]
        session_id = new_session(clients[0])

        def turn(number: int) -> None:
            clients[number % 2].chat.completions.create(
                model="test-chat", messages=user(f"turn {number}"), extra_headers={"x-session-id": session_id}
            )

        with ThreadPoolExecutor(20) as pool:
            list(pool.map(turn, range(20)))
        history = stored(clients[1], session_id)
        assert len(history) == 40
        assert sorted(m["content"] for m in history[::2]) == sorted(f"turn {n}" for n in range(20))
        for question, answer in zip(history[::2], history[1::2], strict=True):
            assert answer["content"].endswith(f"last: {question['content']}")
    finally:
        first.stop()
        second.stop()


def test_a_message_of_the_wrong_shape_is_refused_before_it_reaches_a_redis_session(
    connect: Connect, upstream: Process, redis_for_sessions: RedisServer, tmp_path: Path
) -> None:
    gateway = redis_gateway(upstream, tmp_path / "a", redis_for_sessions)
    try:
        client = connect(gateway, "unused")
        session_id = new_session(client, model="test-bounded")  # max_history: 4, so every turn is bounded
        headers = {"x-session-id": session_id}
        client.chat.completions.create(model="test-bounded", messages=user("one"), extra_headers=headers)
        odd_messages = [
            ({"role": {}, "content": "x"}, "messages[0].role"),
            ({"role": "tool", "content": "x", "tool_call_id": {}}, "messages[0].tool_call_id"),
            ({"role": "assistant", "content": None, "tool_calls": [{"id": ["x"]}]}, "messages[0].tool_calls[0].id"),
        ]
        for message, param in odd_messages:
            odd: Any = [message]
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="test-bounded", messages=odd, extra_headers=headers)
            assert refused.value.param == param
        # The session was not poisoned: later turns are answered and the history stays bounded.
        for text in ("two", "three", "four"):
            raw = client.chat.completions.with_raw_response.create(
                model="test-bounded", messages=user(text), extra_headers=headers
            )
            assert raw.headers["x-session-storage"] == "redis"
        kept = contents(stored(client, session_id))
        assert kept == [
            "three",
            "upstream heard 5 messages; last: three",
            "four",
            "upstream heard 5 messages; last: four",
        ]
        assert "Traceback" not in gateway.log()
    finally:
        gateway.stop()


def test_malformed_session_and_chat_bodies_get_openai_shaped_400s(gateway: Process) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        for path, body in [
            ("/v1/sessions", b"{not json"),
            ("/v1/sessions", b""),
            ("/v1/sessions", b'{"model": 7}'),
            ("/v1/sessions", b'{"model": "test-chat", "surprise": 1}'),
            ("/v1/chat", b'{"agent_name": "test-chat", "message": ["not", "text"]}'),
            ("/v1/chat", b"[]"),
        ]:
            answer = http.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 400, (path, body, answer.text)
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["message"]
        paged = http.get("/v1/sessions", params={"limit": "lots"})
        assert paged.status_code == 400
        assert paged.json()["error"]["param"] == "limit"
