"""The `gateway` command: serve, check the route config, manage virtual keys over the admin API, print the version."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError

from gateway import __version__
from gateway.app import Runtime, create_app, preflight
from gateway.auth import AuthRefused
from gateway.keys_cli import columns, keys_app
from gateway.observability import configure_logging
from gateway.routing import ConfigError, RoutingTable, load_routes
from gateway.settings import Settings, environ_with_dotenv
from gateway.store.memory import StateDirInUse

app = typer.Typer(
    help="An OpenAI-compatible gateway in front of LLMs.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

logger = logging.getLogger("gateway")

# uvicorn's exit code when the app could not start.
STARTUP_FAILURE = 3
# How long requests cut at the drain timeout get to unwind before uvicorn stops waiting for them.
UNWIND_SECONDS = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line in process and return its exit code (2 for usage errors, as argparse did)."""
    try:
        # Standalone mode prints usage errors the way the library does and turns every outcome into SystemExit,
        # which is how a code comes back from a command here.
        app(args=list(argv) if argv is not None else None, prog_name="gateway")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ValidationError as exc:
        typer.echo(f"gateway: invalid settings:\n{exc}", err=True)
        return 2
    return 0


def _settings(**overrides: Any) -> Settings:
    return Settings(**{name: value for name, value in overrides.items() if value is not None})


def route_table(routes: RoutingTable) -> str:
    """The route table as aligned text columns."""
    header = ("AGENT", "ALIASES", "PROVIDER", "UPSTREAM MODEL", "BASE URL", "FEATURES")
    return columns(
        [header]
        + [
            (
                a.name,
                ",".join(a.aliases) or "-",
                a.provider,
                a.upstream_model if a.provider != "mock" else "-",
                a.base_url if a.provider != "mock" else "(built in)",
                ",".join(a.features()) or "-",
            )
            for a in routes.agents
        ]
    )


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", metavar="PATH", help="agent file or directory (GATEWAY_CONFIG, default ./config)"),
]


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="address to listen on (GATEWAY_HOST, default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="port to listen on (GATEWAY_PORT, default 8080)")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="worker processes (GATEWAY_WORKERS, default 1)")
    ] = None,
) -> None:
    """Run the gateway."""
    settings = _settings(config=config, host=host, port=port, workers=workers)
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        typer.echo("gateway: several workers arrive in a later release; run with --workers 1", err=True)
        raise typer.Exit(2)
    try:
        application = create_app(settings, environ=environ_with_dotenv())
        preflight(settings)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except (AuthRefused, StateDirInUse) as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(2) from None
    # Everything loaded so far lives as long as the process: keep the cyclic GC from walking it again and again,
    # and let the young generation grow (per request the proxy allocates many short-lived containers).
    gc.freeze()
    gc.set_threshold(10_000, 50, 1000)
    server_config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # The gateway reads X-Forwarded-For itself, from GATEWAY_TRUSTED_PROXIES only: uvicorn's own handling
        # trusts loopback by default, which would let a local caller pick its address for per-address limits.
        proxy_headers=False,
        # The server cuts what runs past the drain timeout itself; uvicorn's own timeout is only a backstop.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout + UNWIND_SECONDS),
    )
    server = DrainingServer(
        server_config, application.state.runtime, delay=settings.shutdown_delay, drain_timeout=settings.drain_timeout
    )
    server.run()
    if not server.started:
        raise typer.Exit(STARTUP_FAILURE)
    if server.forced_by is not None:
        raise typer.Exit(128 + server.forced_by)  # what a shell reports for a process a signal ended


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a shutdown delay in front of its graceful shutdown, and a drain timeout that lets
    the requests it cuts unwind.

    The first SIGTERM marks the gateway as draining (`/readyz` answers 503) but keeps accepting requests for
    `delay` seconds, so that load balancers (a Kubernetes Service's endpoints) stop sending here before the
    listener closes. Then uvicorn's graceful shutdown: stop accepting and wait for the requests and streams in
    flight. Those still running `drain_timeout` seconds later are cancelled, and waited for, so that what they
    used is recorded before the lifespan's shutdown writes the last usage (uvicorn cancels them at its own
    timeout and goes on at once). SIGINT (Ctrl-C) skips the delay. The process then exits 0, where uvicorn would
    raise the signal again and look killed. A second signal exits at once, without the lifespan's shutdown, as
    uvicorn does.
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

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags, and the main loop's next tick acts on them.
        if self.runtime.draining:
            self.forced_by = sig
            self.force_exit = True
            self.should_exit = True
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
                asyncio.get_running_loop().call_later(self.drain_timeout, self._cut)
        return await super().on_tick(counter)

    def _cut(self) -> None:
        running = [task for task in self.server_state.tasks if not task.done()]
        if running:
            logger.warning(
                "drain timeout (%gs) reached: cutting %d request(s) in flight", self.drain_timeout, len(running)
            )
        for task in running:
            task.cancel("the drain timeout was reached")


@app.command()
def check(
    config: ConfigOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="also fail when an agent's upstream key is missing")] = False,
) -> None:
    """Validate the route config and print the route table."""
    settings = _settings(config=config)
    try:
        routes = load_routes(settings.config, environ_with_dotenv())
    except ConfigError as exc:
        typer.echo(f"{settings.config}: invalid route config", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1) from None
    typer.echo(route_table(routes))
    problems = routes.problems()
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    typer.echo(
        f"\n{len(routes.agents)} agent(s) loaded from {settings.config}" + (", with problems" if problems else "")
    )
    if problems and strict:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"agent-gateway {__version__}")
