"""The gateway's benchmark: the gateway and the upstream stand-ins side by side, in one run, on this machine.

    .venv/bin/python bench/run.py            # full run: under 2 minutes once the machine is idle
    .venv/bin/python bench/run.py --quick    # smoke run, a few seconds per phase
    .venv/bin/python bench/run.py --workers 2 --store redis --limits --rate 500   # two workers sharing Redis

Starts nginx (the non-streaming stand-in), an aiohttp SSE server (the streaming stand-in), `gateway serve` and,
with `--store redis`, a redis-server on free 127.0.0.1 ports, measures every phase through the gateway and then
directly against the stand-in, prints a Markdown table with the issue's targets marked PASS/MISS, and writes
bench/results/<timestamp>.json.
docs/benchmarks.md says what each phase measures and why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import loadgen
import procs
import report
import wrkload
from procs import BenchError, Service

CHAT = "/v1/chat/completions"
# The Messages door phase: rounds in which chat completions and Messages requests take turns.
DOOR_ROUNDS = 5
DOOR_ROUNDS_QUICK = 2
RESULTS = procs.BENCH_DIR / "results"


@dataclass(frozen=True)
class Options:
    quick: bool
    saturation_seconds: float
    warmup_seconds: float
    connections: int
    rate: float
    rate_seconds: float
    ttfb_runs: int
    streams: int
    stream_rounds: int
    chunks: int
    interval_ms: float
    api_key: str
    auth: str
    limits: bool
    workers: int
    store: str
    keep: bool
    quiet_wait: float


@dataclass(frozen=True)
class Setup:
    options: Options
    wrk: str
    gateway: Service
    nginx: Service
    stream: Service
    redis: Service | None

    def check_alive(self) -> None:
        for service in (self.gateway, self.nginx, self.stream, self.redis):
            if service is not None:
                service.check_alive()

    def cpu(self) -> dict[str, float]:
        """CPU ms used so far by each party. On 2 cores they compete, so this shows who was the bottleneck."""
        redis = {} if self.redis is None else {"redis-server": procs.cpu_ms(self.redis.pid)}
        return {
            # With several workers: gunicorn's arbiter and every worker.
            "gateway": procs.tree_cpu_ms(self.gateway.pid),
            **redis,
            "nginx": procs.group_cpu_ms(self.nginx.pid),
            "stream stand-in": procs.cpu_ms(self.stream.pid),
            "python client": procs.cpu_ms(os.getpid()),
            # wrk is this process's only child that exits during a phase, so the children's total grows by its use.
            "wrk": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) * 1000,
            "machine": procs.machine_busy_ms(),
        }


class CpuMeter:
    """CPU used by each party from the meter's creation to `stop()`, shown as a share of one core."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.before = setup.cpu()
        self.started = time.perf_counter()
        self.used: dict[str, float] = {}
        self.seconds = 0.0

    def stop(self) -> dict[str, float]:
        self.seconds = time.perf_counter() - self.started
        after = self.setup.cpu()
        used = {name: after[name] - self.before[name] for name in after}
        # Whatever the machine did besides our parties: other people's jobs on this shared box, or steal.
        used["others"] = max(0.0, used.pop("machine") - sum(used.values()))
        self.used = used
        return used

    def share(self, name: str) -> float:
        """What `name` used, as a percentage of one core."""
        return self.used[name] / (self.seconds * 10)

    def summary(self) -> str:
        shares = (f"{name} {self.share(name):.0f}%" for name, ms in self.used.items() if ms > 0)
        return "  CPU (% of one core): " + ", ".join(shares)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few seconds per phase")
    parser.add_argument("--saturation-seconds", type=float, help="wrk duration per target (default 20, quick 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--rate", type=float, default=200, help="open-loop requests per second (default 200)")
    parser.add_argument("--rate-seconds", type=float, help="open-loop duration per target (default 10, quick 3)")
    parser.add_argument("--ttfb-runs", type=int, help="sequential single streams per target (default 20, quick 5)")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams per round (default 100)")
    parser.add_argument("--stream-rounds", type=int, help="rounds of concurrent streams (default 5, quick 2)")
    parser.add_argument("--api-key", default="bench", help="the bearer token clients send with --auth none")
    parser.add_argument(
        "--auth",
        choices=("keys", "none"),
        default="keys",
        help="keys (default): an admin key is set and requests carry a virtual key; none: no authentication",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="with --auth keys: the virtual key gets rpm and tpm limits far above the load, so every request takes "
        "from both buckets and is settled, and none is refused",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway worker processes (GATEWAY_WORKERS; above 1, gunicorn)"
    )
    parser.add_argument(
        "--store",
        choices=("memory", "redis"),
        default="memory",
        help="where the gateway keeps keys, limits and sessions (GATEWAY_STORE); redis starts a redis-server. "
        "The gateway refuses several workers with the memory store",
    )
    parser.add_argument(
        "--quiet-wait", type=float, help="wait up to this many seconds for an idle machine (default 60, quick 5)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with every process's log")
    args = parser.parse_args(argv)
    if args.limits and args.auth != "keys":
        parser.error("--limits needs --auth keys: limits belong to a virtual key")
    if args.workers > 1 and args.store != "redis":
        # The gateway would refuse to start: each worker would keep its own keys, buckets and sessions.
        parser.error("several workers need --store redis (the gateway refuses them with the memory store)")

    def pick(value: float | None, full: float, quick: float) -> float:
        return value if value is not None else (quick if args.quick else full)

    return Options(
        quick=args.quick,
        saturation_seconds=pick(args.saturation_seconds, 20, 3),
        warmup_seconds=pick(None, 3, 1),
        connections=args.connections,
        rate=args.rate,
        rate_seconds=pick(args.rate_seconds, 10, 3),
        ttfb_runs=int(pick(args.ttfb_runs, 20, 5)),
        streams=args.streams,
        stream_rounds=int(pick(args.stream_rounds, 5, 2)),
        chunks=20,
        interval_ms=5.0,
        api_key=args.api_key,
        auth=args.auth,
        limits=args.limits,
        workers=args.workers,
        store=args.store,
        keep=args.keep,
        quiet_wait=pick(args.quiet_wait, 60, 5),
    )


def say(message: str) -> None:
    print(message, flush=True)


def probe(setup: Setup) -> None:
    """One request of each kind through the gateway, so a broken setup fails here with a clear message instead
    of as a page of errors counted by wrk."""
    request = urllib.request.Request(
        setup.gateway.url + CHAT, data=loadgen.CHAT_BODY, headers=loadgen.headers(setup.options.api_key)
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
    except OSError as exc:
        raise BenchError(f"the gateway failed a plain chat request: {exc}\n{setup.gateway.tail()}") from None
    if b'"usage"' not in body:
        raise BenchError(f"the gateway's chat answer has no usage object: {body[:200]!r}")
    urls = {"gateway": setup.gateway.url + CHAT}
    timings = loadgen.run(loadgen.sequential_streams(urls, 1, setup.options.api_key))["gateway"]
    if not timings[0].complete:
        raise BenchError(f"a stream through the gateway did not end with [DONE]:\n{setup.gateway.tail()}")
    try:
        urllib.request.urlopen(setup.gateway.url + "/metrics", timeout=10).close()
    except OSError as exc:
        raise BenchError(f"the gateway's /metrics failed: {exc}") from None


def saturation(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    """wrk at full speed; the gateway's CPU per request comes from its /proc stat across the measured run."""
    options = setup.options
    metrics: report.Metrics = {}
    raw: dict[str, Any] = {}
    for name, service in (("gateway", setup.gateway), ("direct", setup.nginx)):
        url = service.url + CHAT
        say(
            f"saturation, {name}: wrk -t1 -c{options.connections}, {options.warmup_seconds:g}s warm-up, "
            f"{options.saturation_seconds:g}s measured"
        )
        wrkload.saturate(setup.wrk, url, options.warmup_seconds, options.connections, options.api_key)
        meter = CpuMeter(setup)
        result = wrkload.saturate(setup.wrk, url, options.saturation_seconds, options.connections, options.api_key)
        cpu = meter.stop()
        setup.check_alive()
        prefix = f"sat.{name}"
        metrics |= {
            f"{prefix}.rps": result.rps,
            f"{prefix}.status_errors": result.status_errors,
            f"{prefix}.socket_errors": result.socket_errors,
            f"{prefix}.p50_ms": result.p50_ms,
            f"{prefix}.p99_ms": result.p99_ms,
        }
        if name == "gateway":
            metrics[f"{prefix}.cpu_ms_per_req"] = cpu["gateway"] / max(1, result.requests)
            metrics[f"{prefix}.cpu_pct"] = meter.share("gateway")
            metrics["sat.others_pct"] = meter.share("others")
            if setup.redis is not None:
                metrics["sat.redis.cpu_ms_per_req"] = cpu["redis-server"] / max(1, result.requests)
        raw[name] = {**vars(result), "cpu_ms": cpu}
        say(
            f"  {result.rps:,.0f} req/s, {result.requests:,} requests, {result.status_errors} non-2xx, "
            f"{result.socket_errors} socket errors"
        )
        say(meter.summary())
    metrics["sat.headroom"] = metrics["sat.direct.rps"] / metrics["sat.gateway.rps"]
    if metrics["sat.headroom"] < 10:
        say(
            f"  FLAG: the stand-in is only {metrics['sat.headroom']:.1f}x faster than the gateway (need >= 10x); "
            "it may be limiting the gateway's number"
        )
    return metrics, raw


def wrong_key_flood(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    """A brute-force caller at full speed, a new made-up key per request: what does a rejection cost?

    Every guess misses the key cache, so this is the worst case for the key check; it should cost a fraction of
    a proxied request (no body parsing, no upstream), which is what keeps a flood from slowing valid callers
    beyond the CPU it takes.
    """
    options = setup.options
    if options.auth != "keys":
        return {}, {}
    seconds = max(1.0, options.saturation_seconds / 2)
    url = setup.gateway.url + CHAT
    say(f"wrong-key flood: wrk -t1 -c{options.connections}, a new made-up key per request, {seconds:g}s")
    meter = CpuMeter(setup)
    result = wrkload.saturate(setup.wrk, url, seconds, options.connections, options.api_key, wrong_keys=True)
    cpu = meter.stop()
    setup.check_alive()
    say(f"  {result.rps:,.0f} rejections/s, {result.requests - result.status_errors} not rejected")
    metrics = {
        "flood.rps": result.rps,
        "flood.cpu_ms_per_req": cpu["gateway"] / max(1, result.requests),
        "flood.accepted": float(result.requests - result.status_errors),
    }
    return metrics, {**vars(result), "cpu_ms": cpu}


def fixed_rate(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    options = setup.options
    metrics: report.Metrics = {}
    raw: dict[str, Any] = {}
    for name, service in (("gateway", setup.gateway), ("direct", setup.nginx)):
        url = service.url + CHAT
        say(
            f"open loop, {name}: {options.rate:g} req/s, {options.warmup_seconds:g}s warm-up, "
            f"{options.rate_seconds:g}s measured"
        )
        loadgen.run(loadgen.fixed_rate(url, options.rate, options.warmup_seconds, options.api_key))
        meter = CpuMeter(setup)
        result = loadgen.run(loadgen.fixed_rate(url, options.rate, options.rate_seconds, options.api_key))
        meter.stop()
        setup.check_alive()
        prefix = f"rate.{name}"
        metrics |= {
            f"{prefix}.p50_ms": result.percentile(50),
            f"{prefix}.p99_ms": result.percentile(99),
            f"{prefix}.errors": result.errors,
            f"{prefix}.lag_p99_ms": result.lag_p99_ms,
        }
        raw[name] = {
            "sent": len(result.latencies_ms) + result.errors,
            "errors": result.errors,
            "p90_ms": result.percentile(90),
            "max_ms": max(result.latencies_ms),
            "cpu_ms": meter.used,
        }
        say(f"  p50 {result.percentile(50):.3f} ms, p99 {result.percentile(99):.3f} ms, {result.errors} failed")
        say(meter.summary())
    metrics["rate.added_p50_ms"] = metrics["rate.gateway.p50_ms"] - metrics["rate.direct.p50_ms"]
    metrics["rate.rps"] = options.rate
    return metrics, raw


def messages_door(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    """The same request through the gateway as a chat completion and as an Anthropic Messages request (translated
    both ways for the OpenAI-shaped stand-in), at the open loop's rate: what translation adds.

    The two take turns in several short rounds, each going first in every other round, and each round's Messages
    numbers are compared with the chat numbers of that same round: on this shared machine a burst of other work,
    or a slow drift, then lands on both sides rather than on whichever ran second (measured one after the other,
    10 s each, the difference swung between runs by 0.4 ms of CPU and 3 ms of p50, either way). The gateway's CPU
    is the scheduler's exact count (`procs.tree_run_ms`), not the tick-sampled one."""
    options = setup.options
    doors = {"chat": (CHAT, loadgen.CHAT_BODY), "messages": ("/v1/messages", loadgen.MESSAGES_BODY)}
    rounds = DOOR_ROUNDS_QUICK if options.quick else DOOR_ROUNDS
    seconds = options.rate_seconds / rounds  # each side measured as long as in the other open-loop phase
    say(
        f"open loop, gateway {CHAT} and /v1/messages taking turns: {options.rate:g} req/s, "
        f"{options.warmup_seconds:g}s warm-up each, {rounds} rounds of {seconds:g}s each"
    )
    for path, body in doors.values():
        url = setup.gateway.url + path
        loadgen.run(loadgen.fixed_rate(url, options.rate, options.warmup_seconds, options.api_key, body))
    runs: dict[str, dict[str, list[float]]] = {
        name: {"p50_ms": [], "cpu_ms_per_req": [], "errors": []} for name in doors
    }
    for index in range(rounds):
        for name in doors if index % 2 == 0 else reversed(doors):
            path, body = doors[name]
            before = procs.tree_run_ms(setup.gateway.pid)
            result = loadgen.run(
                loadgen.fixed_rate(setup.gateway.url + path, options.rate, seconds, options.api_key, body)
            )
            used = procs.tree_run_ms(setup.gateway.pid) - before
            setup.check_alive()
            sent = len(result.latencies_ms) + result.errors
            runs[name]["p50_ms"].append(result.percentile(50))
            runs[name]["cpu_ms_per_req"].append(used / max(1, sent))
            runs[name]["errors"].append(result.errors)
    metrics: report.Metrics = {}
    for name, measured in runs.items():
        metrics |= {
            f"door.{name}.p50_ms": statistics.median(measured["p50_ms"]),
            f"door.{name}.cpu_ms_per_req": statistics.median(measured["cpu_ms_per_req"]),
            f"door.{name}.errors": sum(measured["errors"]),
        }
        say(
            f"  {name}: p50 {metrics[f'door.{name}.p50_ms']:.3f} ms, CPU {metrics[f'door.{name}.cpu_ms_per_req']:.3f} "
            f"ms per request (medians of {rounds} rounds), {sum(measured['errors']):g} failed"
        )
    chat, messages = runs["chat"], runs["messages"]
    # Medians of the round-by-round differences: each compares two runs measured side by side.
    for metric, added in (("p50_ms", "door.added_p50_ms"), ("cpu_ms_per_req", "door.added_cpu_ms")):
        metrics[added] = statistics.median(m - c for m, c in zip(messages[metric], chat[metric], strict=True))
    metrics["door.errors"] = metrics["door.chat.errors"] + metrics["door.messages.errors"]
    added = f"p50 {metrics['door.added_p50_ms']:+.3f} ms, CPU {metrics['door.added_cpu_ms']:+.3f} ms"
    say(f"  added by translation (medians of the rounds' differences): {added}")
    return metrics, {"rounds": rounds, "seconds": seconds, **runs}


def single_stream(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    options = setup.options
    urls = {"gateway": setup.gateway.url + CHAT, "direct": setup.stream.url + CHAT}
    say(
        f"one stream alone: {options.ttfb_runs} sequential streams each, gateway and direct taking turns, "
        "after 3 each to warm up"
    )
    loadgen.run(loadgen.sequential_streams(urls, 3, options.api_key))
    runs = loadgen.run(loadgen.sequential_streams(urls, options.ttfb_runs, options.api_key))
    setup.check_alive()
    metrics: report.Metrics = {}
    raw: dict[str, Any] = {}
    for name, timings in runs.items():
        ttfbs = [t.ttfb_ms for t in timings]
        metrics[f"ttfb.{name}.median_ms"] = statistics.median(ttfbs)
        metrics[f"ttfb.{name}.total_ms"] = statistics.median(t.total_ms for t in timings)
        raw[name] = {"ttfb_ms": ttfbs, "incomplete": sum(not t.complete for t in timings)}
        say(f"  {name}: TTFB median {metrics[f'ttfb.{name}.median_ms']:.3f} ms")
    metrics["ttfb.added_ms"] = metrics["ttfb.gateway.median_ms"] - metrics["ttfb.direct.median_ms"]
    return metrics, raw


def concurrent_streams(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    options = setup.options
    metrics: report.Metrics = {}
    raw: dict[str, Any] = {}
    for name, service in (("gateway", setup.gateway), ("direct", setup.stream)):
        url = service.url + CHAT
        say(f"{options.streams} concurrent streams, {name}: 1 warm-up round, {options.stream_rounds} measured")
        # One client session for all rounds: the warm-up round opens the connections the measured ones reuse.
        meter = CpuMeter(setup)
        rounds = loadgen.run(
            loadgen.concurrent_streams(url, options.streams, options.stream_rounds + 1, options.api_key)
        )[1:]
        setup.check_alive()
        timings = [t for r in rounds for t in r.timings]
        prefix = f"streams.{name}"
        metrics |= {
            f"{prefix}.ttfb_ms": statistics.median(t.ttfb_ms for t in timings),
            f"{prefix}.total_ms": statistics.median(t.total_ms for t in timings),
            f"{prefix}.per_s": statistics.median(r.streams_per_second for r in rounds),
            f"{prefix}.incomplete": sum(not t.complete for t in timings),
        }
        raw[name] = {"round_seconds": [r.seconds for r in rounds], "cpu_ms_all_rounds": meter.stop()}
        say(f"  {metrics[f'{prefix}.per_s']:,.0f} streams/s, TTFB median {metrics[f'{prefix}.ttfb_ms']:.1f} ms")
        say(meter.summary() + " (warm-up round included)")
    metrics["streams.ratio"] = metrics["streams.gateway.per_s"] / metrics["streams.direct.per_s"]
    return metrics, raw


def command_output(argv: list[str]) -> str:
    """The first line a command prints on stdout or stderr (`nginx -v` and `wrk -v` use either), or ""."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def meta(tools: dict[str, str]) -> dict[str, Any]:
    packages = ("agent-gateway", "aiohttp", "starlette", "uvicorn", "uvloop", "httptools")
    versions = {name: importlib.metadata.version(name) for name in packages}
    versions |= {
        "python": platform.python_version(),
        "nginx": command_output([tools["nginx"], "-v"]).removeprefix("nginx version: nginx/"),
        "wrk": command_output([tools["wrk"], "-v"]).split(" [")[0].removeprefix("wrk "),
    }
    commit = command_output(["git", "-C", str(procs.ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    # Others edit gateway/ while benchmarks run: say when the measured code is not the commit's.
    if command_output(["git", "-C", str(procs.ROOT), "status", "--porcelain", "--", "gateway"]):
        commit += " + uncommitted changes in gateway/"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "load_average_before": os.getloadavg()[0],
        "versions": versions,
    }


def wait_for_quiet(max_seconds: float, threshold_pct: float = 20.0) -> float:
    """Wait, at most `max_seconds`, for a second in which the machine is nearly idle; return the last load seen.

    Others run their test suites on this shared machine, and a run measured beside one says little.
    """
    deadline = time.monotonic() + max_seconds
    while True:
        before = procs.machine_busy_ms()
        time.sleep(1.0)
        busy_pct = (procs.machine_busy_ms() - before) / 10
        if busy_pct <= threshold_pct or time.monotonic() >= deadline:
            return busy_pct
        say(f"the machine is busy ({busy_pct:.0f}% of one core used by others); waiting for it to calm down")


def measure(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    probe(setup)
    metrics: report.Metrics = {}
    raw: dict[str, Any] = {}
    for phase in (saturation, wrong_key_flood, fixed_rate, messages_door, single_stream, concurrent_streams):
        try:
            phase_metrics, phase_raw = phase(setup)
        except (aiohttp.ClientError, TimeoutError) as exc:
            setup.check_alive()  # a process that died is the better explanation
            raise BenchError(f"{phase.__name__}: the client failed: {exc!r}") from None
        metrics |= phase_metrics
        raw[phase.__name__] = phase_raw
    # Several workers: the largest process, which is what the per-process bound is about.
    peaks = [procs.status_kb(pid, "VmHWM") for pid in procs.tree_pids(setup.gateway.pid)]
    metrics["rss.gateway.peak_mb"] = max(peaks) / 1024
    # The shape measured, which decides the targets that apply (report.targets).
    metrics["shape.workers"] = setup.options.workers
    metrics["shape.redis"] = float(setup.redis is not None)
    return metrics, raw


# Far above anything the bench sends (a few thousand requests a second), so none is refused.
LIMITS = {"rpm": 10_000_000, "tpm": 1_000_000_000}


def gateway_settings(options: Options, redis: Service | None) -> dict[str, str]:
    """The environment that sets the gateway's workers and store; empty for the single-process default."""
    settings = {"GATEWAY_WORKERS": str(options.workers)} if options.workers != 1 else {}
    if redis is not None:
        settings |= {"GATEWAY_STORE": "redis", "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"}
    return settings


def bench(options: Options) -> int:
    tools = procs.ensure_tools(["wrk", "nginx"])
    info = meta(tools)
    say(
        f"{info['date']}  {info['cpu']} x{info['cores']}  commit {info['commit']}  "
        f"load {info['load_average_before']:.2f}"
    )
    say("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    with contextlib.ExitStack() as stack:
        if options.keep:
            workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
            say(f"logs in {workdir}")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        # Entered in this order, stopped in reverse: the gateway goes first, before its upstreams.
        nginx = stack.enter_context(procs.nginx_upstream(tools["nginx"], workdir))
        stream = stack.enter_context(procs.stream_upstream(workdir, options.chunks, options.interval_ms))
        redis = stack.enter_context(procs.redis_server(workdir)) if options.store == "redis" else None
        settings = gateway_settings(options, redis)
        gateway = stack.enter_context(procs.gateway(workdir, nginx.port, stream.port, options.auth == "keys", settings))
        if options.auth == "keys":
            limits = LIMITS if options.limits else None
            options = dataclasses.replace(options, api_key=procs.create_virtual_key(gateway, limits))
            say(
                "auth: every request through the gateway carries a virtual key made with the admin API"
                + (f", limited to {LIMITS}" if limits else "")
            )
        say(
            f"nginx on :{nginx.port}, stream stand-in on :{stream.port}, gateway (pid {gateway.pid}) on :{gateway.port}"
            + (f", redis-server on :{redis.port}" if redis else "")
        )
        say(f"gateway settings: {settings or 'the defaults'}")
        if options.quiet_wait > 0:
            busy = wait_for_quiet(options.quiet_wait)
            say(f"machine load before measuring: {busy:.0f}% of one core")
        started = time.monotonic()
        metrics, raw = measure(Setup(options, tools["wrk"], gateway, nginx, stream, redis))
        info["seconds"] = round(time.monotonic() - started, 1)
        info["load_average_after"] = os.getloadavg()[0]
        with gateway.log.open("rb") as log:
            info["gateway_log_lines"] = sum(1 for _ in log)
    # The virtual key is a secret, even a throwaway one: results name only its prefix.
    info["options"] = {**vars(options), "api_key": options.api_key[:12] + "..."}
    shape = f"-{options.workers}w-{options.store}" if (options.workers, options.store) != (1, "memory") else ""
    path = RESULTS / f"{datetime.datetime.now():%Y%m%d-%H%M%S}{shape}{'-quick' if options.quick else ''}.json"
    report.write_json(path, info, metrics, raw)
    say(f"\nmeasured in {info['seconds']}s; the gateway wrote {info['gateway_log_lines']:,} log lines\n")
    say(report.table(metrics))
    say(f"\nwrote {path.relative_to(procs.ROOT)}")
    return 0


def main() -> int:
    return procs.run_main("bench", parse_args, bench)


if __name__ == "__main__":
    sys.exit(main())
