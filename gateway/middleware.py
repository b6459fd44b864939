"""Pure ASGI middleware: request ids, the access log, and the last line of defence against a bug's 500."""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InternalError
from gateway.observability import AccessLog

error_logger = logging.getLogger("gateway.error")

# What nginx logs for a client that closed the connection before the response; never sent.
CLIENT_CLOSED_REQUEST = 499
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's `x-request-id` when it is a sane token, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id" and _CLIENT_REQUEST_ID.fullmatch(value):
            return value
    return os.urandom(16).hex().encode()


class RequestContextMiddleware:
    """Gives every HTTP request an id (echoed as `x-request-id`), logs one line per request, and turns an
    unexpected exception into an OpenAI-shaped 500 that names the request id instead of showing a traceback."""

    def __init__(self, app: ASGIApp, *, access_log: AccessLog | None = None) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id.decode()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = status or CLIENT_CLOSED_REQUEST  # left before sending its whole body: nobody to answer
        except Exception:
            error_logger.exception("unhandled error", extra={"request_id": state["request_id"]})
            if not status:
                error = InternalError(f"The gateway failed on this request (request id {state['request_id']}).")
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": error.body()})
            status = status or 500
        finally:
            if self.access_log is not None:
                self.access_log.write(
                    {
                        "request_id": state["request_id"],
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "agent": state.get("agent"),
                        "upstream_status": state.get("upstream_status"),
                        "stream": state.get("stream_outcome"),
                    }
                )
