"""Real processes for end-to-end tests: free ports, start, wait until ready, stop (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process serving HTTP on 127.0.0.1:`port`, its output kept in a log file for failure messages."""

    def __init__(
        self, name: str, argv: Sequence[str], port: int, log_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}-{port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=log_dir
        )

    def wait_ready(self, path: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def start_upstream(log_dir: Path, behaviour: Mapping[str, Any] | None = None) -> Process:
    """The programmable upstream; `behaviour` applies to every request (the `x-test-behaviour` header adds to it)."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "tests/support/upstream.py"), "--port", str(port)]
    if behaviour:
        argv += ["--behaviour", json.dumps(behaviour)]
    process = Process("upstream", argv, port, log_dir)
    process.wait_ready("/_health")
    return process


def start_anthropic_upstream(log_dir: Path) -> Process:
    """The Anthropic-shaped upstream (tests/support/anthropic_upstream.py)."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "tests/support/anthropic_upstream.py"), "--port", str(port)]
    process = Process("anthropic-upstream", argv, port, log_dir)
    process.wait_ready("/_health")
    return process


def start_gateway(config: Path, log_dir: Path, env: Mapping[str, str] | None = None) -> Process:
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    process = Process("gateway", argv, port, log_dir, {"GATEWAY_LOG_FORMAT": "text", **(env or {})})
    process.wait_ready("/healthz")
    return process
