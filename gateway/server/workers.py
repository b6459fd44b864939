"""Several worker processes: gunicorn's arbiter over uvicorn workers, each serving its own gateway app.

`gateway serve --workers N` runs `GatewayApplication`; those who run gunicorn themselves use
`gunicorn -c python:gateway.gunicorn_conf` (the same settings, worker class and hooks).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from gunicorn.app.base import BaseApplication
from starlette.applications import Starlette
from uvicorn_worker import UvicornWorker

from gateway.server.single import UNWIND_SECONDS, UVICORN_OPTIONS, DrainingServer, http_protocol
from gateway.settings import Settings, environ_with_dotenv

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
MADE_HERE = "gateway-metrics-"  # the prefix of a metrics directory the arbiter made, and removes at exit


class MultiWorkerRefused(Exception):
    """Several workers cannot share what this configuration keeps in each process."""


def check_shared_state(settings: Settings) -> None:
    """Refuse several workers whose keys, limits or sessions would live in each worker's memory: every worker would
    count its own buckets and keep its own sessions, and the answers would depend on which worker a request hit."""
    kept_apart = [
        name
        for name, where in (
            ("keys and usage (GATEWAY_STORE)", settings.store),
            ("rate limits (RATE_LIMIT_STORAGE)", settings.rate_limit_storage or settings.store),
            ("sessions (SESSION_STORAGE)", settings.session_storage or settings.store),
        )
        if where != "redis"
    ]
    if kept_apart:
        raise MultiWorkerRefused(
            f"{settings.workers} workers would each keep their own {', '.join(kept_apart)}; set GATEWAY_STORE=redis "
            "(and REDIS_URL) to share them, or run one worker"
        )


def server_options(settings: Settings) -> dict[str, Any]:
    """gunicorn's settings for the gateway: the same in `gateway serve` and in `gunicorn.conf`."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gateway.server.workers.GatewayWorker",
        # SIGTERM: each worker's delay and drain, then the unwinding of what was cut; only then does the arbiter
        # kill a worker.
        "graceful_timeout": math.ceil(settings.shutdown_delay + settings.drain_timeout + 2 * UNWIND_SECONDS),
        # A worker that is busy streaming does not heartbeat late: this is only for a hung one.
        "timeout": 60,
        "keepalive": 5,
        # Each worker listens on its own SO_REUSEPORT socket and the kernel spreads new connections over them by
        # hash. On one shared socket, the worker that wakes first accepts a whole burst: 64 keep-alive connections
        # opened at once measured 100 % of one core for two workers, against 165 % with a socket each. Linux only:
        # elsewhere SO_REUSEPORT does not balance.
        "reuse_port": sys.platform == "linux",
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level,
        "proc_name": "agent-gateway",
        # gunicorn's runtime-management socket: not needed here, and a read-only container could not create it.
        "control_socket_disable": True,
        "on_starting": on_starting,
        "child_exit": child_exit,
        "on_exit": on_exit,
        "when_ready": when_ready,
        "post_fork": post_fork,
    }


def on_starting(server: Any) -> None:
    """In the arbiter, before any worker: the listening address checked, and the directory where the workers'
    metrics meet, empty."""
    if server.cfg.reuse_port:
        for address in server.cfg.address:
            if isinstance(address, tuple):
                check_listenable(address[0], int(address[1]))
    directory = os.environ.get(METRICS_DIR_VARIABLE)
    if not directory:
        directory = tempfile.mkdtemp(prefix=MADE_HERE)
        os.environ[METRICS_DIR_VARIABLE] = directory
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.glob("*.db"):  # counters of an earlier run must not add to this one's
        leftover.unlink()


def when_ready(server: Any) -> None:
    """In the arbiter: where the workers listen, since gunicorn's own "Listening at:" names no address when each
    worker binds its own socket."""
    if server.cfg.reuse_port:
        addresses = ", ".join(
            f"http://{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
            for address in server.cfg.address
        )
        server.log.info("%d workers listening on %s, a socket each", server.cfg.workers, addresses)


def check_listenable(host: str, port: int) -> None:
    """Refuse an address the workers could not listen on, or would share with a process already there.

    With a socket per worker the arbiter binds nothing, so a port in use would only fail in the workers, which
    gunicorn restarts forever; and SO_REUSEPORT lets a second gateway of the same user join a port the first
    one serves, each then getting half the connections. gunicorn prints the RuntimeError and exits 1.
    """
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    with contextlib.suppress(OSError), socket.create_connection((local, port), timeout=0.5):
        raise RuntimeError(f"{host}:{port} is in use: something already accepts connections there")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def on_exit(server: Any) -> None:
    """In the arbiter, after the last worker: remove the metrics directory `on_starting` made. Not in a `finally`
    around the arbiter's run: a forked worker unwinds through that frame when it exits, and the first worker to
    stop would delete the directory under the others."""
    directory = os.environ.get(METRICS_DIR_VARIABLE, "")
    if directory and Path(directory).name.startswith(MADE_HERE):
        shutil.rmtree(directory, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges (active streams, circuit states) must stop counting."""
    from prometheus_client import multiprocess  # noqa: PLC0415 (only under gunicorn, after the directory is set)

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def post_fork(server: Any, worker: Any) -> None:
    # The worker imports and builds its app after the fork; freezing then keeps the collector off it for good.
    gc.set_threshold(10_000, 50, 1000)


class GatewayWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn as `gateway serve` runs it, with the gateway's drain on SIGTERM (readiness 503, delay, drain)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = dict(UVICORN_OPTIONS)

    async def _serve(self) -> None:
        settings = Settings()
        app: Starlette = self.wsgi
        self.config.app = app
        self.config.timeout_graceful_shutdown = math.ceil(settings.drain_timeout + UNWIND_SECONDS)
        self.config.http = http_protocol(settings.max_header_bytes)
        server = DrainingServer(
            self.config, app.state.runtime, delay=settings.shutdown_delay, drain_timeout=settings.drain_timeout
        )
        gc.freeze()
        await server.serve(sockets=self.sockets)
        if not server.started:
            raise SystemExit(self.BOOT_ERROR)

    BOOT_ERROR = 3


def create_worker_app() -> Starlette:
    """The app of one worker, from the environment (gunicorn's `wsgi_app`)."""
    from prometheus_client import values  # noqa: PLC0415

    from gateway.app import create_app  # noqa: PLC0415 (in the worker, after the fork)
    from gateway.observability.logs import configure_logging  # noqa: PLC0415

    # prometheus-client picks its value store once, at import: `gateway serve` imported it before the arbiter set
    # PROMETHEUS_MULTIPROC_DIR, so each worker picks again (the shared files) before its metrics exist.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, environ=environ_with_dotenv())


class GatewayApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn run from `gateway serve`, configured from the settings rather than the command line."""

    def __init__(self, settings: Settings) -> None:
        self._options = server_options(settings)
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> Starlette:
        return create_worker_app()
