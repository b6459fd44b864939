"""An Anthropic-shaped upstream (the Messages API), run as its own process by the end-to-end tests.

`POST /v1/messages` answers a whole message or, with `"stream": true`, Anthropic's events (message_start with
input and cache tokens, a ping, a text block in three deltas, message_delta with the output tokens, message_stop).
A request may carry `x-test-behaviour: <json>` (the gateway forwards it):
    {"status": 529}        answer that status with an Anthropic error body (`overloaded_error` for 529)
    {"drop_after": 2}      stream: abort the connection after that many text deltas
    {"error_after": 2}     stream: send `event: error` (overloaded) after that many text deltas, and stop
A request that offers tools, and whose last message is not a tool result, is answered with a short text and a call
of the first tool (`{"city": "Paris", "days": 2}`; streamed as `input_json_delta` pieces).
`POST /v1/messages/count_tokens` answers `{"input_tokens": 1000 + the number of messages}`.
Every request is recorded under its `x-request-id`: GET /_requests/{id} gives its path, headers and body.

Run: python tests/support/anthropic_upstream.py --port N
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiohttp import web

RECORDS = web.AppKey("records", dict[str, dict[str, Any]])
USAGE = {"input_tokens": 9, "output_tokens": 11, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 0}
ERRORS = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error", 400: "invalid_request_error"}


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def heard(body: dict[str, Any]) -> str:
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    last = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    return f"anthropic heard {len(messages)} messages; last: {last}"


TOOL_INPUT = ('{"city": ', '"Paris", "days": 2}')


def record(request: web.Request, body: Any) -> None:
    request_id = request.headers.get("x-request-id", "anon")
    request.app[RECORDS][request_id] = {"path": request.path, "body": body,
                                        "headers": {k.lower(): v for k, v in request.headers.items()}}  # fmt: skip


def calls_tool(body: dict[str, Any]) -> str | None:
    """The tool this answer calls: the first one offered, unless the conversation is answering a call already."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    last = body["messages"][-1].get("content") if body.get("messages") else None
    if isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
        return None
    return str(tools[0].get("name"))


async def count_tokens(request: web.Request) -> web.Response:
    body = await request.json()
    record(request, body)
    messages = body.get("messages") if isinstance(body, dict) else None
    return web.json_response({"input_tokens": 1000 + (len(messages) if isinstance(messages, list) else 0)})


async def messages(request: web.Request) -> web.StreamResponse:
    """Never a 500 of its own, whatever the gateway lets through (the fuzz counts any 500 as the gateway's): a body
    it cannot read is a 400, as Anthropic would answer it."""
    try:
        return await answer(request)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": f"unreadable: {exc!r}"}}
        return web.json_response(error, status=400)


async def answer(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    record(request, body)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ValueError("messages: must be an array")
    behaviour = json.loads(request.headers.get("x-test-behaviour", "{}"))
    behaviour = behaviour if isinstance(behaviour, dict) else {}
    if isinstance(behaviour.get("status"), int) and behaviour["status"] != 500:
        status = behaviour["status"]
        error = {"type": "error", "error": {"type": ERRORS.get(status, "api_error"), "message": "upstream says no"}}
        return web.json_response(error, status=status)
    text = heard(body)
    tool = calls_tool(body)
    stop = "tool_use" if tool else "end_turn"
    if not body.get("stream"):
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if tool:
            content.append({"type": "tool_use", "id": "toolu_up1", "name": tool,
                            "input": json.loads("".join(TOOL_INPUT))})  # fmt: skip
        message = {"id": "msg_up", "type": "message", "role": "assistant", "model": body.get("model"),
                   "content": content, "stop_reason": stop, "stop_sequence": None, "usage": USAGE}  # fmt: skip
        return web.json_response(message)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    start = {"id": "msg_up", "type": "message", "role": "assistant", "model": body.get("model"), "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {**USAGE, "output_tokens": 1}}  # fmt: skip
    await response.write(_event({"type": "message_start", "message": start}))
    await response.write(_event({"type": "ping"}))
    await response.write(_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                                            "text": ""}}))  # fmt: skip
    for index, piece in enumerate(("part0 ", "part1 ", "part2 ")):
        if index == behaviour.get("drop_after"):
            assert request.transport is not None
            request.transport.abort()
            return response
        if index == behaviour.get("error_after"):
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded mid-stream"}}
            await response.write(_event(error))
            await response.write_eof()
            return response
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        await response.write(_event(delta))
    await response.write(_event({"type": "content_block_stop", "index": 0}))
    if tool:
        block = {"type": "tool_use", "id": "toolu_up1", "name": tool, "input": {}}
        await response.write(_event({"type": "content_block_start", "index": 1, "content_block": block}))
        for piece in TOOL_INPUT:
            delta = {"type": "content_block_delta", "index": 1,
                     "delta": {"type": "input_json_delta", "partial_json": piece}}  # fmt: skip
            await response.write(_event(delta))
        await response.write(_event({"type": "content_block_stop", "index": 1}))
    await response.write(_event({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                 "usage": {"output_tokens": 11}}))  # fmt: skip
    await response.write(_event({"type": "message_stop"}))
    await response.write_eof()
    return response


async def get_record(request: web.Request) -> web.Response:
    record = request.app[RECORDS].get(request.match_info["request_id"])
    return web.json_response(record if record is not None else {"error": "no such request"},
                             status=200 if record is not None else 404)  # fmt: skip


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    app = web.Application()
    app[RECORDS] = {}
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/_requests/{request_id}", get_record)
    app.router.add_get("/_health", health)
    web.run_app(app, host="127.0.0.1", port=options.port, print=None)


if __name__ == "__main__":
    main()
