"""Relaying an upstream SSE stream to the client: as it arrives, whole events only, never a silent bad end."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, StoreUnavailable, UpstreamBadResponse, UpstreamError
from gateway.exchange import Exchange
from gateway.http import wait_for_disconnect
from gateway.observability.metrics import Metrics
from gateway.protocols import sse
from gateway.protocols.wire import Door, Endpoint, StreamMeter, StreamTranslator
from gateway.sessions.assembly import ReplyAssembler
from gateway.sessions.service import Turn
from gateway.upstream.base import UpstreamResponse

logger = logging.getLogger("gateway.sessions")

STREAM_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


class StreamRelay(Response):
    """An ASGI response that pumps upstream chunks to the client while watching for the client to leave.

    Bytes are relayed unchanged, but cut at event boundaries: an event split across upstream reads waits for its
    end, so that if the upstream drops mid-event the client still gets well-formed events and then our error event.
    The response starts with the first whole event, so a failure before it is still an HTTP error status.
    When the client disconnects, the upstream response is closed at once, which stops the upstream's generation.
    However the stream ends (completed, failed, left, cut at shutdown, or a bug), its accounting is closed: the
    active-streams gauge, its outcome and the tokens to charge; a bug is raised after that, for the middleware to
    log and end the stream with the error event.
    """

    def __init__(
        self,
        upstream: UpstreamResponse,
        meter: StreamMeter,
        exchange: Exchange,
        prompt_estimate: int,
        *,
        door: Door,
        endpoint: Endpoint,
        translator: StreamTranslator | None = None,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.upstream = upstream
        self.meter = meter
        self.exchange = exchange
        self.prompt_estimate = prompt_estimate
        self.door = door  # the client's wire format: how a failure is told
        self.status_code = upstream.status
        self.raw_headers = [*upstream.relay_headers(), *STREAM_HEADERS]
        self.endpoint = endpoint  # says how a complete upstream stream ends
        self.translator = translator  # the upstream's events into the client's format, where they differ
        self.background = None
        self.outcome = "started"
        self.started = False
        self.turn: Turn | None = None
        self.assembler: ReplyAssembler | None = None
        self.chat_view: StreamTranslator | None = None

    def keep_reply(self, turn: Turn, chat_view: StreamTranslator | None = None) -> None:
        """Assemble the reply from the events relayed (as chat chunks: through `chat_view` where the upstream
        speaks another format), and store it in the session before the stream's end goes out: the client's next
        turn, sent as soon as it has read it, finds this one."""
        self.turn = turn
        self.assembler = ReplyAssembler()
        self.chat_view = chat_view

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The server is cutting the streams that outlived its drain timeout (the middleware tells the client).
            self.outcome = "cut_at_shutdown"
            raise
        finally:
            self.upstream.close()
            bug = self._close(pump, watch)
            try:
                # Waited for without raising what they raised: `_close` has already read it.
                await asyncio.wait((pump, watch))
                if self.outcome != "completed":
                    await self._keep_partial()
            finally:
                if bug is not None:
                    raise bug  # the middleware logs it and ends the stream with the error event

    def _close(self, pump: asyncio.Future[None], watch: asyncio.Future[Any]) -> Exception | None:
        """Close the stream's accounting however it ended (the gauge, its outcome, the tokens to charge), before
        anything else can fail; returns the pump's exception if it was a bug, to be raised once this is done."""
        for task in (pump, watch):
            task.cancel()
        failure = pump.exception() if pump.done() and not pump.cancelled() else None
        if not watch.cancelled() and watch.done():
            watch.exception()  # read, so that a receive() that raised is not reported as never retrieved
        if self.outcome == "cut_at_shutdown":
            pass
        elif not pump.done() or isinstance(failure, OSError):  # OSError: the client went away mid-send
            self.outcome = "client_disconnected"
        elif failure is not None:
            self.outcome = "gateway_error"
        self.exchange.stream = self.outcome
        if self.started:
            self.metrics.stream_closed()
            # Whatever reached the client is charged: the upstream's usage, else an estimate.
            counted = self.meter.result(self.prompt_estimate)
            self.exchange.prompt_tokens = counted.prompt_tokens
            self.exchange.completion_tokens = counted.completion_tokens
            self.exchange.cached_tokens = counted.cached_tokens
            self.exchange.usage_estimated = counted.estimated
        return failure if isinstance(failure, Exception) and not isinstance(failure, OSError) else None

    async def _pump(self, send: Send) -> None:
        pending = b""
        last = b""
        try:
            async for chunk in self.upstream.iter_chunks():
                events, pending = sse.split_events(pending + chunk if pending else chunk)
                events = self.meter.feed(events) if events else events
                if not events:
                    continue
                last = events
                out = self.translator.feed(events) if self.translator is not None else events
                if self.assembler is not None:
                    try:
                        await self._follow(events)
                    except GatewayError:
                        # The reply could not be stored: the client gets all of it but the stream's end (the last
                        # event: the reply is stored when the upstream's end arrives), then the error.
                        await self._send(send, sse.without_last(out))
                        raise
                if out:
                    await self._send(send, out)
        except GatewayError as exc:  # the upstream's failure, or one of ours (a store that went away)
            await (self._fail(send, exc) if self.started else self._refuse(send, exc))
            return
        if not self.started:
            await self._start(send)
        if pending:  # the upstream ended cleanly on a partial event: its bytes as they are, or translated as whole
            last = pending
            out = self.translator.feed(pending + b"\n\n") if self.translator is not None else pending
            await send({"type": "http.response.body", "body": out, "more_body": True})
        if not self.endpoint.stream_ended(last):
            end = self.endpoint.stream_end
            await self._fail(send, UpstreamBadResponse(f"The upstream ended the stream before {end}."))
            return
        self.outcome = "completed"
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, events: bytes) -> None:
        if not self.started:
            await self._start(send)
        if events:
            await send({"type": "http.response.body", "body": events, "more_body": True})

    async def _follow(self, events: bytes) -> None:
        assert self.assembler is not None
        assert self.turn is not None
        chat = self.chat_view.feed(events) if self.chat_view is not None else events
        self.assembler.feed(chat)
        if sse.ends_with_done(chat):
            await self.turn.store_reply(self.assembler.message())

    async def _keep_partial(self) -> None:
        """A turn that failed or was cancelled is stored only if the agent asks for it, and only with a reply."""
        if self.turn is None or self.assembler is None or self.turn.stored or not self.turn.spec.store_partial:
            return
        reply = self.assembler.message()
        if reply is None:
            return
        try:
            await self.turn.store_reply(reply)
        except StoreUnavailable:
            # The stream has already ended with its error; a partial reply is a courtesy, not a promise.
            logger.warning(
                "session %s: the partial reply was not stored: its store is unavailable", self.turn.session.id
            )

    async def _start(self, send: Send) -> None:
        # Sent with the first event rather than with the upstream's headers: until an event has arrived, a failure
        # can still be a proper HTTP error, and the client gets headers and first event in one go.
        self.started = True
        self.metrics.stream_opened()
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

    async def _refuse(self, send: Send, exc: GatewayError) -> None:
        """The upstream failed before its first event: answer as for a request that never streamed."""
        self.outcome = _outcome(exc)
        self.exchange.error_class = exc.error_class
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.door.error_body(exc), "more_body": False})

    async def _fail(self, send: Send, exc: GatewayError) -> None:
        """The upstream failed mid-stream: the status is sent, so the stream ends with an error event."""
        self.outcome = _outcome(exc)
        self.exchange.error_class = exc.error_class
        await send({"type": "http.response.body", "body": self.door.error_event(exc), "more_body": False})


def _outcome(exc: GatewayError) -> str:
    return "upstream_error" if isinstance(exc, UpstreamError) else "gateway_error"
