"""The HTTP server: uvicorn as the gateway runs it, with a cap on request heads and a drain in front of exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import RequestHeadersTooLarge
from gateway.runtime import Runtime

logger = logging.getLogger("gateway")

# How long requests cut at the drain timeout get to unwind before uvicorn stops waiting for them.
UNWIND_SECONDS = 5.0
# The same when stopping at once (a second SIGINT, or SIGQUIT): long enough to record what they used, no more.
FORCED_UNWIND_SECONDS = 1.0
# After a 431, how long the rest of a head the client is still sending is read and dropped before the connection
# closes: closing with bytes unread makes the kernel send a reset, which can destroy the 431 before it is read.
LINGER_SECONDS = 2.0


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on each request's head: the request line and headers together.

    httptools has none, and uvicorn keeps what arrives until the head is complete: one client could make a
    worker hold gigabytes, and the gateway would forward those headers upstream. Here the parser is never given
    more than `max_header_bytes` of one head; past that the client gets a 431 in OpenAI's shape (the request
    never reaches the app, so it is logged here and not counted in its metrics) and the connection closes,
    without the rest of the head being read. (A client that pipelines requests may get up to twice the cap for
    a head that starts in the same read as the end of the request before it.)
    """

    max_header_bytes: ClassVar[int] = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # of the head arriving now; -1 from the end of a head to the end of its request
        self._heads = 0  # heads complete on this connection
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._head_bytes < 0:
            super().data_received(data)
            return
        if self._refused:
            return
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        heads = self._heads
        super().data_received(data[:room])
        if self.transport.is_closing():  # the parser found the request malformed: uvicorn's 400 is on its way
            return
        if self._heads == heads:
            self._refuse()
        else:
            self.data_received(data[room:])  # the body, or the requests after it

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        self._heads += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        super().on_message_complete()

    def _refuse(self) -> None:
        self._refused = True
        request_id = os.urandom(16).hex()
        client = self.client[0] if self.client else "?"
        logger.warning(
            "request headers over %d bytes from %s: refused with 431 (request id %s)",
            self.max_header_bytes,
            client,
            request_id,
        )
        if self.cycle is not None and not self.cycle.response_complete:
            # The answer to an earlier request on this connection is still going out: no room for another.
            self.transport.close()
            return
        error = RequestHeadersTooLarge(
            f"The request's headers exceed {self.max_header_bytes} bytes, the most this gateway accepts."
        )
        body = error.body()
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: " + request_id.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def http_protocol(max_header_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """uvicorn's HTTP protocol for the gateway, with the head cap of GATEWAY_MAX_HEADER_BYTES."""
    attributes = {"max_header_bytes": max_header_bytes}
    return cast(
        type[BoundedHttpToolsProtocol], type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), attributes)
    )


# How uvicorn runs the gateway, in one process or as a gunicorn worker; both replace `http` with the protocol of
# the configured header cap.
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": BoundedHttpToolsProtocol,
    "lifespan": "on",
    "log_config": None,
    "access_log": False,
    "server_header": False,
    # The gateway reads X-Forwarded-For itself, from GATEWAY_TRUSTED_PROXIES only: uvicorn's own handling trusts
    # loopback by default, which would let a local caller pick its address for per-address limits.
    "proxy_headers": False,
}


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a shutdown delay in front of its graceful shutdown, and a drain timeout that lets
    the requests it cuts unwind.

    The first SIGTERM marks the gateway as draining (`/readyz` answers 503) but keeps accepting requests for
    `delay` seconds, so that load balancers (a Kubernetes Service's endpoints) stop sending here before the
    listener closes. Then uvicorn's graceful shutdown: stop accepting and wait for the requests and streams in
    flight. Those still running `drain_timeout` seconds later are cancelled, and waited for, so that what they
    used is recorded before the lifespan's shutdown writes the last usage (uvicorn cancels them at its own
    timeout and goes on at once). SIGINT (Ctrl-C) skips the delay. The process then exits 0, where uvicorn would
    raise the signal again and look killed.

    Another SIGTERM while draining changes nothing: systemd (KillMode=control-group) and `kill -TERM -<pgid>`
    send one to every process, and gunicorn's arbiter sends its workers one more, so counting it as a second
    signal would cut every drain short. A SIGINT while draining, or a SIGQUIT (gunicorn's quick shutdown), stops
    at once: the requests in flight are cut, and what they and earlier requests used is still written, where
    uvicorn would skip the lifespan's shutdown and lose it.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime, *, delay: float, drain_timeout: float) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.delay = delay
        self.drain_timeout = drain_timeout
        self.forced_by: int | None = None
        self._accepting_for = 0.0
        self._close_at: float | None = None
        self._said = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn captures SIGINT and SIGTERM; SIGQUIT too, meaning what it means to gunicorn: stop at once.
        previous = signal.signal(signal.SIGQUIT, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGQUIT, previous)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags, and the main loop's next tick acts on them.
        if sig == signal.SIGQUIT or (self.runtime.draining and sig != signal.SIGTERM):
            self.runtime.draining = True
            self.forced_by = sig
            self.force_exit = True
            self.should_exit = True
            return
        if self.runtime.draining:
            return
        self.runtime.draining = True
        self._accepting_for = self.delay if sig == signal.SIGTERM else 0.0
        self._close_at = time.monotonic() + self._accepting_for

    async def on_tick(self, counter: int) -> bool:
        if self._close_at is not None and not self.should_exit:
            if not self._said:
                self._said = True
                logger.info(
                    "draining: /readyz answers 503%s; then up to %gs for the requests in flight to finish",
                    f", still accepting for {self._accepting_for:g}s" if self._accepting_for else "",
                    self.drain_timeout,
                )
            if time.monotonic() >= self._close_at:
                self.should_exit = True
                reason = f"drain timeout ({self.drain_timeout:g}s) reached"
                asyncio.get_running_loop().call_later(self.drain_timeout, self._cut, reason)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:
            # uvicorn skips the lifespan's shutdown when forced, and the usage counted since the last write with it.
            running = self._cut("stopping at once")
            if running:
                await asyncio.wait(running, timeout=FORCED_UNWIND_SECONDS)
            await self.lifespan.shutdown()

    def _cut(self, reason: str) -> list[asyncio.Task[None]]:
        running = [task for task in self.server_state.tasks if not task.done()]
        if running:
            logger.warning("%s: cutting %d request(s) in flight", reason, len(running))
        for task in running:
            task.cancel(reason)
        return running
