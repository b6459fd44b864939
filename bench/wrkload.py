"""Saturation with wrk: closed-loop POSTs on a fixed number of connections, summarised by bench/post.lua."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from procs import BENCH_DIR, BenchError

LUA = BENCH_DIR / "post.lua"
MARK = "BENCH_JSON "


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    status_errors: int  # responses with status >= 400 (wrk's "Non-2xx or 3xx responses")
    socket_errors: int  # connect, read and write errors and timeouts
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def saturate(
    wrk: str, url: str, seconds: float, connections: int, api_key: str, *, wrong_keys: bool = False
) -> WrkResult:
    """Run wrk against `url` for `seconds`; the subprocess timeout bounds it even if wrk hangs. `wrong_keys`
    sends a different made-up key on every request instead of `api_key`."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "-s", str(LUA), url]  # fmt: skip
    env = {**os.environ, "BENCH_API_KEY": api_key, "BENCH_WRONG_KEYS": "1" if wrong_keys else "0"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)


def parse(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(MARK):
            data = json.loads(line[len(MARK) :])
            break
    else:
        raise BenchError(f"wrk printed no summary line; its output was:\n{output}")
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        status_errors=data["status_errors"],
        socket_errors=sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )
