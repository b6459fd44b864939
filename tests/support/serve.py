"""An app built in the test (components injected into `create_app`) served by a real uvicorn in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp

from gateway.server.single import UVICORN_OPTIONS
from tests.support.processes import free_port


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # Ctrl-C stays pytest's


@contextlib.asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """The app (its lifespan included) listening on 127.0.0.1 with the gateway's uvicorn options until the block
    ends; yields its base URL."""
    port = free_port()
    # The test's loop is already running: uvicorn must not set one up.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, **{**UVICORN_OPTIONS, "loop": "none"})
    server = _Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
