"""The `gateway` command: serve, check the route config, print the version."""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from dotenv import dotenv_values
from pydantic import ValidationError

from gateway import __version__
from gateway.app import create_app
from gateway.observability import configure_logging
from gateway.routing import ConfigError, RoutingTable, load_routes
from gateway.settings import Settings


def _environ() -> Mapping[str, str]:
    """The process environment over `.env`, so upstream keys may live in either (the environment wins)."""
    from_file = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    return {**from_file, **os.environ}


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("config", "host", "port", "workers")
        if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def route_table(routes: RoutingTable) -> str:
    """The route table as aligned text columns."""
    header = ("AGENT", "ALIASES", "PROVIDER", "UPSTREAM MODEL", "BASE URL", "FEATURES")
    rows = [header] + [
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        routes = load_routes(settings.config, _environ())
    except ConfigError as exc:
        print(f"{settings.config}: invalid route config", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(route_table(routes))
    problems = routes.problems()
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"\n{len(routes.agents)} agent(s) loaded from {settings.config}" + (", with problems" if problems else ""))
    return 1 if problems and args.strict else 0


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        print("gateway: several workers arrive in a later release; run with --workers 1", file=sys.stderr)
        return 2
    try:
        app = create_app(settings, environ=_environ())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    # Everything loaded so far lives as long as the process: keep the cyclic GC from walking it again and again,
    # and let the young generation grow (per request the proxy allocates many short-lived containers).
    gc.freeze()
    gc.set_threshold(10_000, 50, 1000)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout),
    )
    return 0


def version(args: argparse.Namespace) -> int:
    print(f"agent-gateway {__version__}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gateway", description="An OpenAI-compatible gateway in front of LLMs.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument("--config", type=Path, help="agent file or directory (GATEWAY_CONFIG, default ./config)")
    serve_cmd.add_argument("--host", help="address to listen on (GATEWAY_HOST, default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port to listen on (GATEWAY_PORT, default 8080)")
    serve_cmd.add_argument("--workers", type=int, help="worker processes (GATEWAY_WORKERS, default 1)")
    serve_cmd.set_defaults(run=serve)

    check_cmd = commands.add_parser("check", help="validate the route config and print the route table")
    check_cmd.add_argument("--config", type=Path, help="agent file or directory (GATEWAY_CONFIG, default ./config)")
    check_cmd.add_argument("--strict", action="store_true", help="also fail when an agent's upstream key is missing")
    check_cmd.set_defaults(run=check)

    version_cmd = commands.add_parser("version", help="print the version")
    version_cmd.set_defaults(run=version)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ValidationError as exc:
        print(f"gateway: invalid settings:\n{exc}", file=sys.stderr)
        return 2
