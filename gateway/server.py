"""The HTTP server: uvicorn as the gateway runs it, with a shutdown delay and a drain timeout in front of exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from gateway.app import Runtime

logger = logging.getLogger("gateway")

# How long requests cut at the drain timeout get to unwind before uvicorn stops waiting for them.
UNWIND_SECONDS = 5.0
# The same when stopping at once (a second SIGINT, or SIGQUIT): long enough to record what they used, no more.
FORCED_UNWIND_SECONDS = 1.0

# How uvicorn runs the gateway, in one process or as a gunicorn worker.
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
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
