"""Pure ASGI middleware: request ids, the access log, and the last line of defence against a bug's 500."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, InternalError, ShuttingDown
from gateway.exchange import CLIENT_CLOSED_REQUEST, Exchange
from gateway.limits import buckets
from gateway.protocols.registry import door_for

error_logger = logging.getLogger("gateway.error")

JSON = b"application/json"
SSE = b"text/event-stream"
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's `x-request-id` when it is a sane token, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id" and _CLIENT_REQUEST_ID.fullmatch(value):
            return value
    return os.urandom(16).hex().encode()


def with_limit_headers(
    headers: list[tuple[bytes, bytes]], ours: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The gateway's rate-limit headers added; an upstream's headers of the same names are kept, renamed
    `x-upstream-ratelimit-*`, so that each name has one meaning: the limit this client is held to here."""
    names = {name for name, _ in ours}
    kept = [
        (b"x-upstream-" + name[2:], value) if name in names and name.startswith(b"x-ratelimit-") else (name, value)
        for name, value in headers
        if not (name in names and not name.startswith(b"x-ratelimit-"))
    ]
    return kept + ours


class RequestContextMiddleware:
    """Gives every HTTP request an id (echoed as `x-request-id`) and an `Exchange` that the handlers fill in,
    turns an unexpected exception into an OpenAI-shaped 500 that names the request id instead of showing a
    traceback, and hands the finished exchange to `on_complete` (access log, accounting) after the last byte."""

    def __init__(self, app: ASGIApp, *, on_complete: Sequence[Callable[[Exchange], None]] = ()) -> None:
        self.app = app
        self.on_complete = tuple(on_complete)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        exchange = Exchange(request_id.decode(), scope["method"], scope["path"])
        scope.setdefault("state", {})["exchange"] = exchange
        response = _Response(send)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                elapsed = (time.perf_counter() - started) * 1000
                exchange.ttfb_ms = round(elapsed, 3)
                exchange.overhead_ms = round(max(0.0, elapsed - exchange.upstream_ms - exchange.waited_ms), 3)
                message["headers"] = _headers(message.get("headers", ()), exchange, request_id)
            await response.send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            exchange.status = exchange.status or CLIENT_CLOSED_REQUEST  # left mid-body: nobody to answer
        except asyncio.CancelledError:
            # The server cut the request (drain timeout, or stopping at once): told so, where uvicorn would log
            # "Exception in ASGI application" and answer 500, or drop the connection mid-stream.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            exchange.error_class = ShuttingDown.error_class
            await response.fail(ShuttingDown("The gateway is shutting down and cut this request short; retry it."),
                                send_with_id, scope["path"])  # fmt: skip
        except Exception:
            error_logger.exception("unhandled error", extra={"request_id": exchange.request_id})
            exchange.error_class = InternalError.error_class
            # A 500 if nothing was sent yet; a stream under way ends with the error event, so that the client
            # raises rather than taking a cut-off stream for a whole one.
            error = InternalError(f"The gateway failed on this request (request id {exchange.request_id}).")
            await response.fail(error, send_with_id, scope["path"])
        finally:
            exchange.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            for hook in self.on_complete:
                try:
                    hook(exchange)
                except Exception:
                    # One broken hook must not keep the others (slots released, usage settled, the request
                    # counted and logged) from running, nor turn an answer already sent into a server error.
                    error_logger.exception("completion hook failed", extra={"request_id": exchange.request_id})


def _headers(
    headers: Iterable[tuple[bytes, bytes]], exchange: Exchange, request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """The response's headers with the gateway's own added: request id, overhead, agent, limits, session."""
    added = [
        *headers,
        (b"x-request-id", request_id),
        (b"x-gateway-overhead-ms", f"{exchange.overhead_ms:.2f}".encode()),
    ]
    if door_for(exchange.path).name == "anthropic":
        added.append((b"request-id", request_id))  # where the Anthropic SDK looks for it (`_request_id`)
    if exchange.agent is not None:
        added.append((b"x-gateway-agent", exchange.agent.encode()))
    if exchange.ratelimit is not None:
        added = with_limit_headers(added, buckets.headers(exchange.ratelimit))
    if exchange.session_id is not None:
        added.append((b"x-session-id", exchange.session_id.encode()))
        added.append((b"x-session-storage", (exchange.session_storage or "").encode()))
    return added


class _Response:
    """How far one response has gone, so that a failure reaches the client in the form it can still take."""

    __slots__ = ("_send", "finished", "started", "streaming")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = self.streaming = self.finished = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.streaming = any(n == b"content-type" and v.startswith(SSE) for n, v in message["headers"])
        elif message["type"] == "http.response.body":
            self.finished = not message.get("more_body", False)
        await self._send(message)

    async def fail(self, error: GatewayError, start: Send, path: str) -> None:
        """An error response if nothing was sent yet (`start` adds the gateway's headers); an error event that
        ends a stream already under way; nothing for a whole answer already sent."""
        if not self.started:
            await start({"type": "http.response.start", "status": error.status, "headers": [(b"content-type", JSON)]})
            await self.send({"type": "http.response.body", "body": door_for(path).error_body(error)})
        elif self.streaming and not self.finished:
            await self.send({"type": "http.response.body", "body": door_for(path).error_event(error)})
