"""A programmable OpenAI-compatible upstream, run as its own process by the end-to-end tests.

Each request may carry `x-test-behaviour: <json>` (the gateway forwards it) saying how to misbehave:
    {"status": 500, "body": "...", "content_type": "text/html", "headers": {...}}   answer that instead
    {"hang": 3}               wait that many seconds before answering
    {"chunks": 5, "delay": 0.01}   stream shape (default 3 chunks, no delay)
    {"hold_after": 1}         stream: after that many chunks wait until POST /_release/{request id}
    {"drop_after": 2}         stream: after that many chunks abort the connection
    {"no_done": true}         stream: end cleanly without `data: [DONE]` (on /responses: without response.completed)
    {"no_usage": true}        stream: ignore `stream_options.include_usage` (as some servers do)
    {"raw": "..."}            stream: send exactly these bytes as the body (split in two writes)
    {"not_json": true}        answer 200 with a body that is not JSON
    {"tool_call": true}       answer with a call of tool `lookup` (streamed in pieces when streaming)
    {"ignore_stream": true}   answer whole JSON even when `stream` is asked (an upstream that cannot stream);
                              embeddings always do, as OpenAI-compatible servers ignore `stream` there
    {"fail_first": 2, ...}    misbehave (status, hang, ...) only on the first 2 attempts of a request id; then
                              answer normally (how retries are seen)
    {"stall_after": 1, "stall": 3}   stream: after that many chunks go silent for that many seconds
Run with `--behaviour <json>` the process applies that to every request, under the header's. GET /_stats says
how many requests it received.
Every request is recorded under its `x-request-id`: GET /_requests/{id} returns the path, headers, body, and
`state` (`answering`, `holding`, `finished`, `disconnected`).

Run: python tests/support/upstream.py --port N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

RECORDS = web.AppKey("records", dict[str, dict[str, Any]])
RELEASES = web.AppKey("releases", dict[str, asyncio.Event])
ATTEMPTS = web.AppKey("attempts", dict[str, int])
STATS = web.AppKey("stats", dict[str, int])
DEFAULT = web.AppKey("default", dict[str, Any])


STREAM_USAGE = {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}


def chat_chunk(content: str | None, finish: str | None = None, with_usage: bool = False) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    chunk: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:  # as OpenAI does when asked for usage: every chunk says "usage": null
        chunk["usage"] = None
    return chunk


def echo_text(body: dict[str, Any]) -> str:
    # Whatever the gateway lets through (the fuzz sends odd bodies): this upstream answers, it never crashes.
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    if messages:
        last = messages[-1].get("content") if isinstance(messages[-1], dict) else messages[-1]
    else:
        last = body.get("prompt", body.get("input", ""))
    return f"upstream heard {len(messages)} messages; last: {last}"


async def answer(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = json.loads(raw) if raw else {}
    request_id = request.headers.get("x-request-id", f"anon-{time.monotonic_ns()}")
    record = {
        "path": request.path,
        "query": dict(request.query),
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body": body,
        "state": "answering",
    }
    attempts = request.app[ATTEMPTS]
    attempts[request_id] = attempts.get(request_id, 0) + 1
    record["attempts"] = attempts[request_id]
    request.app[RECORDS][request_id] = record
    request.app[STATS]["requests"] += 1
    behaviour = {**request.app[DEFAULT], **json.loads(request.headers.get("x-test-behaviour", "{}"))}
    if "fail_first" in behaviour and record["attempts"] > behaviour["fail_first"]:
        behaviour = {}
    try:
        response = await _respond(request, request_id, body, behaviour, record)
    except asyncio.CancelledError:
        record["state"] = "disconnected"
        record["disconnected_at"] = time.monotonic()  # the machine's monotonic clock: tests compare with theirs
        raise
    if record["state"] != "disconnected":
        record["state"] = "finished"
    return response


async def _respond(
    request: web.Request, request_id: str, body: dict[str, Any], behaviour: dict[str, Any], record: dict[str, Any]
) -> web.StreamResponse:
    if "hang" in behaviour:
        await asyncio.sleep(behaviour["hang"])
    if "status" in behaviour:
        text = behaviour.get("body", json.dumps({"error": {"message": "upstream says no", "type": "x", "code": "y"}}))
        return web.Response(
            status=behaviour["status"],
            text=text,
            content_type=behaviour.get("content_type", "application/json"),
            headers=behaviour.get("headers", {}),
        )
    if behaviour.get("not_json"):
        return web.Response(text="<html>definitely not json</html>", content_type="text/html")
    if behaviour.get("tool_call"):
        return await _tool_call(request, body)
    if body.get("stream") and not behaviour.get("ignore_stream") and not request.path.endswith("/embeddings"):
        return await _stream(request, request_id, body, behaviour, record)
    return web.json_response(_whole(request.path, body), headers={"x-request-id": "up-" + request_id})


ARGUMENTS = '{"city": "Paris"}'
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ARGUMENTS}}


async def _tool_call(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    if not body.get("stream"):
        message = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        completion = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "up",
                      "choices": [choice], "usage": usage}  # fmt: skip
        return web.json_response(completion)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    opening = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    deltas = [
        {"role": "assistant", "content": None, "tool_calls": [opening]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ARGUMENTS[:8]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ARGUMENTS[8:]}}]},
    ]
    for delta in deltas:
        chunk = {**chat_chunk(None), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: " + json.dumps(chat_chunk(None, "tool_calls")).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _whole(path: str, body: dict[str, Any]) -> dict[str, Any]:
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    if path.endswith("/embeddings"):
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
            "model": body.get("model"),
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }
    if path.endswith("/responses"):
        text = f"upstream heard instructions={body.get('instructions')!r}"
        return {
            "id": "resp-up",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": body.get("model"),
            "output": [
                {
                    "type": "message",
                    "id": "msg-up",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
        }
    if path.endswith("/chat/completions"):
        message = {"role": "assistant", "content": echo_text(body)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": body.get("model"),
                "choices": [choice], "usage": usage}  # fmt: skip
    choice = {"index": 0, "text": echo_text(body), "logprobs": None, "finish_reason": "stop"}
    return {"id": "cmpl-up", "object": "text_completion", "created": 1, "model": body.get("model"),
            "choices": [choice], "usage": usage}  # fmt: skip


async def _stream(
    request: web.Request, request_id: str, body: dict[str, Any], behaviour: dict[str, Any], record: dict[str, Any]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-request-id": "up-" + request_id})
    await response.prepare(request)
    if "raw" in behaviour:
        data = behaviour["raw"].encode()
        half = len(data) // 2
        await response.write(data[:half])
        await asyncio.sleep(0.05)
        await response.write(data[half:])
        await response.write_eof()
        return response
    chunks = behaviour.get("chunks", 3)
    responses = request.path.endswith("/responses")
    if responses:
        await response.write(
            _event({"type": "response.created", "response": {"id": "resp-up", "status": "in_progress"}})
        )
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    with_usage = options.get("include_usage") is True and not behaviour.get("no_usage")
    for index in range(chunks):
        if index == behaviour.get("hold_after"):
            record["state"] = "holding"
            release = request.app[RELEASES].setdefault(request_id, asyncio.Event())
            await asyncio.wait_for(release.wait(), timeout=30)
            record["state"] = "answering"
        if index == behaviour.get("drop_after"):
            assert request.transport is not None
            request.transport.abort()
            record["state"] = "dropped"
            return response
        if index and index == behaviour.get("stall_after"):
            await asyncio.sleep(behaviour.get("stall", 3))
        if index and behaviour.get("delay"):
            await asyncio.sleep(behaviour["delay"])
        if responses:
            await response.write(_event({"type": "response.output_text.delta", "delta": f"part{index} "}))
            continue
        await response.write(b"data: " + json.dumps(chat_chunk(f"part{index} ", None, with_usage)).encode() + b"\n\n")
    if responses:  # the Responses API ends with its terminal event, not [DONE]
        if not behaviour.get("no_done"):
            usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
            done = {"id": "resp-up", "object": "response", "status": "completed", "usage": usage}
            await response.write(_event({"type": "response.completed", "response": done}))
        await response.write_eof()
        return response
    await response.write(b"data: " + json.dumps(chat_chunk(None, "stop", with_usage)).encode() + b"\n\n")
    if with_usage:
        final = {**chat_chunk(None), "choices": [], "usage": STREAM_USAGE}
        await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
    if not behaviour.get("no_done"):
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _event(data: dict[str, Any]) -> bytes:
    """A Responses API event, named as OpenAI names them."""
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


async def get_record(request: web.Request) -> web.Response:
    record = request.app[RECORDS].get(request.match_info["request_id"])
    if record is None:
        return web.json_response({"error": "no such request"}, status=404)
    return web.json_response(record)


async def release(request: web.Request) -> web.Response:
    request.app[RELEASES].setdefault(request.match_info["request_id"], asyncio.Event()).set()
    return web.json_response({"released": True})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


def make_app(behaviour: dict[str, Any] | None = None) -> web.Application:
    app = web.Application()
    app[RECORDS] = {}
    app[RELEASES] = {}
    app[ATTEMPTS] = {}
    app[STATS] = {"requests": 0}
    app[DEFAULT] = behaviour or {}
    app.router.add_get("/_health", health)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_requests/{request_id}", get_record)
    app.router.add_post("/_release/{request_id}", release)
    app.router.add_post("/v1/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--behaviour", type=json.loads, default={})
    args = parser.parse_args()
    # handler_cancellation: a client that goes away cancels the handler, which is how we see disconnects.
    web.run_app(make_app(args.behaviour), host="127.0.0.1", port=args.port, handler_cancellation=True, print=None)


if __name__ == "__main__":
    main()
