"""Relaying an upstream SSE stream to the client: as it arrives, whole events only, never a silent bad end."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import sse
from gateway.errors import UpstreamBadResponse, UpstreamError
from gateway.upstream import UpstreamResponse

STREAM_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


class StreamRelay(Response):
    """An ASGI response that pumps upstream chunks to the client while watching for the client to leave.

    Bytes are relayed unchanged, but cut at event boundaries: an event split across upstream reads waits for its
    end, so that if the upstream drops mid-event the client still gets well-formed events and then our error event.
    When the client disconnects, the upstream response is closed at once, which stops the upstream's generation.
    """

    def __init__(self, upstream: UpstreamResponse, *, ends_with_done: bool) -> None:
        self.upstream = upstream
        self.status_code = upstream.status
        self.raw_headers = [*upstream.relay_headers(), *STREAM_HEADERS]
        self.ends_with_done = ends_with_done
        self.background = None
        self.outcome = "started"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
            if pump not in done or isinstance(pump.exception(), OSError):  # OSError: the client went away mid-send
                self.outcome = "client_disconnected"
        finally:
            self.upstream.close()
            for task in (pump, watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            scope.setdefault("state", {})["stream_outcome"] = self.outcome

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        pending = b""
        last = b""
        try:
            async for chunk in self.upstream.iter_chunks():
                events, pending = sse.split_events(pending + chunk if pending else chunk)
                if events:
                    last = events
                    await send({"type": "http.response.body", "body": events, "more_body": True})
        except UpstreamError as exc:
            await self._fail(send, exc)
            return
        if pending:  # the upstream ended cleanly on a partial event: its bytes, as they are
            last = pending
            await send({"type": "http.response.body", "body": pending, "more_body": True})
        if self.ends_with_done and not sse.ends_with_done(last):
            await self._fail(send, UpstreamBadResponse("The upstream ended the stream before `data: [DONE]`."))
            return
        self.outcome = "completed"
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _fail(self, send: Send, exc: UpstreamError) -> None:
        self.outcome = "upstream_error"
        await send({"type": "http.response.body", "body": sse.error_event(exc.payload()), "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> Any:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message
