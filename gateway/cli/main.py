"""The `gateway` command: serve, check the route config, manage virtual keys over the admin API, print the version."""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError

from gateway import __version__
from gateway.app import create_app
from gateway.auth.authenticator import AuthRefused
from gateway.cli.completion import register as register_completion
from gateway.cli.keys import columns, keys_app
from gateway.config.providers import PROVIDERS
from gateway.config.routing import ConfigError, RoutingTable, load_routes
from gateway.observability.logs import configure_logging
from gateway.runtime import preflight
from gateway.server.single import UNWIND_SECONDS, UVICORN_OPTIONS, DrainingServer, http_protocol
from gateway.settings import Settings, environ_with_dotenv
from gateway.store.sqlite import StateDirInUse

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
    in_process = {name for name, known in PROVIDERS.items() if known.in_process}
    return columns(
        [header]
        + [
            (
                a.name,
                ",".join(a.aliases) or "-",
                a.provider,
                a.upstream_model if a.provider not in in_process else "-",
                a.base_url if a.provider not in in_process else "(built in)",
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
        serve_workers(settings)
        return
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
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout + UNWIND_SECONDS),
        **{**UVICORN_OPTIONS, "http": http_protocol(settings.max_header_bytes)},
    )
    server = DrainingServer(
        server_config, application.state.runtime, delay=settings.shutdown_delay, drain_timeout=settings.drain_timeout
    )
    server.run()
    if not server.started:
        raise typer.Exit(STARTUP_FAILURE)
    if server.forced_by is not None:
        raise typer.Exit(128 + server.forced_by)  # what a shell reports for a process a signal ended


def serve_workers(settings: Settings) -> None:
    """Several workers under gunicorn; each builds its app from the environment, which gets the options here."""
    from gateway.server import workers  # noqa: PLC0415 (gunicorn is imported only for this)

    try:
        workers.check_shared_state(settings)
        load_routes(settings.config, environ_with_dotenv())  # a bad config fails here, once, not in every worker
        preflight(settings)
    except workers.MultiWorkerRefused as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(2) from None
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except AuthRefused as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(2) from None
    os.environ.update(
        GATEWAY_CONFIG=str(settings.config),
        GATEWAY_HOST=settings.host,
        GATEWAY_PORT=str(settings.port),
        GATEWAY_WORKERS=str(settings.workers),
    )
    workers.GatewayApplication(settings).run()


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


# Last, so that `gateway --help` lists it after the everyday commands.
register_completion(app)
