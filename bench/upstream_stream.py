"""The streaming upstream stand-in: `POST /v1/chat/completions` with `stream: true` answered as OpenAI SSE.

Every stream is `--chunks` chat.completion.chunk events `--interval-ms` apart, then `data: [DONE]`, which is
roughly the shape of a short real completion. The events are built once at start, so a request costs only the
writes and the timers; uvloop keeps the stand-in cheap, because on a 2-core machine it shares the CPU with the
gateway and the client. A request without `stream: true` gets one small chat.completion, so the gateway's
buffered path can be checked against this server too.

    python bench/upstream_stream.py --port 9001 [--chunks 20] [--interval-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvloop
from aiohttp import web

MODEL = "bench-model"
COMPLETION_ID = "chatcmpl-bench"
CREATED = 1_700_000_000


def chunk_event(delta: dict[str, Any], finish_reason: str | None) -> bytes:
    chunk = {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def usage_event(usage: dict[str, int]) -> bytes:
    """OpenAI's last chunk of a stream asked for `stream_options.include_usage`: no choices, only the usage."""
    chunk = {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": usage,
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def stream_events(chunks: int, usage: dict[str, int] | None = None) -> list[bytes]:
    """The events of one stream: a role delta, content deltas, a last delta with `finish_reason`, the usage chunk
    when `usage` is given, then [DONE]."""
    events = [chunk_event({"role": "assistant", "content": ""}, None)]
    events += [chunk_event({"content": f"tok{i} "}, None) for i in range(1, chunks - 1)]
    events.append(chunk_event({}, "stop"))
    if usage is not None:
        events.append(usage_event(usage))
    return [*events, b"data: [DONE]\n\n"]


def completion_body(usage: dict[str, int] | None = None) -> bytes:
    completion = {
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": usage or usage_object(9, 1),
    }
    return json.dumps(completion, separators=(",", ":")).encode()


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def make_app(chunks: int, interval: float, usage: dict[str, int] | None = None) -> web.Application:
    plain_events = stream_events(chunks)
    # Only built when asked for on the command line: without it every stream is `plain_events`, as before.
    usage_events = stream_events(chunks, usage) if usage is not None else plain_events
    completion = completion_body(usage)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=completion, content_type="application/json")
        events = usage_events if wants_usage(body) else plain_events
        response = web.StreamResponse(headers={"cache-control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        # The gap is between data events only: [DONE] follows the last chunk at once, as OpenAI sends it.
        for index, event in enumerate(events):
            if 0 < index < len(events) - 1:
                await asyncio.sleep(interval)
            await response.write(event)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20, help="data events per stream before [DONE]")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="gap between data events")
    parser.add_argument("--usage-prompt-tokens", type=int, help="prompt_tokens of the usage this server reports")
    parser.add_argument(
        "--usage-completion-tokens", type=int, help="completion_tokens of the usage this server reports"
    )
    args = parser.parse_args()
    if args.chunks < 2:
        parser.error("--chunks must be at least 2 (a role delta and a finish_reason delta)")
    if (args.usage_prompt_tokens is None) != (args.usage_completion_tokens is None):
        parser.error("--usage-prompt-tokens and --usage-completion-tokens go together")
    usage = None
    if args.usage_prompt_tokens is not None:
        usage = usage_object(args.usage_prompt_tokens, args.usage_completion_tokens)
    uvloop.install()
    web.run_app(
        make_app(args.chunks, args.interval_ms / 1000, usage),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
