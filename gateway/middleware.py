"""Pure ASGI middleware: request ids, the access log, and the last line of defence against a bug's 500."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import ratelimit
from gateway.errors import InternalError
from gateway.exchange import CLIENT_CLOSED_REQUEST, Exchange

error_logger = logging.getLogger("gateway.error")

JSON = b"application/json"
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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                elapsed = (time.perf_counter() - started) * 1000
                exchange.ttfb_ms = round(elapsed, 3)
                exchange.overhead_ms = round(max(0.0, elapsed - exchange.upstream_ms - exchange.waited_ms), 3)
                headers = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id),
                    (b"x-gateway-overhead-ms", f"{exchange.overhead_ms:.2f}".encode()),
                ]
                if exchange.agent is not None:
                    headers.append((b"x-gateway-agent", exchange.agent.encode()))
                if exchange.ratelimit is not None:
                    headers = with_limit_headers(headers, ratelimit.headers(exchange.ratelimit))
                if exchange.session_id is not None:
                    headers.append((b"x-session-id", exchange.session_id.encode()))
                    headers.append((b"x-session-storage", (exchange.session_storage or "").encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            exchange.status = exchange.status or CLIENT_CLOSED_REQUEST  # left mid-body: nobody to answer
        except Exception:
            error_logger.exception("unhandled error", extra={"request_id": exchange.request_id})
            exchange.error_class = InternalError.error_class
            if not exchange.status:
                error = InternalError(f"The gateway failed on this request (request id {exchange.request_id}).")
                start = {"type": "http.response.start", "status": 500, "headers": [(b"content-type", JSON)]}
                await send_with_id(start)
                await send({"type": "http.response.body", "body": error.body()})
        finally:
            exchange.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            for hook in self.on_complete:
                hook(exchange)
