"""What a server-side session costs per chat turn: plain requests and session turns side by side, in one run.

    .venv/bin/python bench/sessions.py            # full run: about 1.5 minutes of measuring
    .venv/bin/python bench/sessions.py --quick    # smoke run: about 15 s

Starts redis-server, nginx (bench/run.py's stand-in) and two `gateway serve` processes, one keeping sessions in
memory and one in Redis, then measures (1) one request at a time, the four kinds (plain and session turn on each
gateway) taking turns, and (2) wrk at full speed, plain requests and session turns in rotating rounds. Prints a
Markdown table, writes bench/results/sessions-<timestamp>.json, and stops every process it started, also on an error,
Ctrl-C or SIGTERM. docs/benchmarks.md ("Sessions") says what each number measures and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import loadgen
import procs
import redis
import report
import wrkload
from accuracy import admin, gateway, redis_round_trip
from procs import BenchError, Service
from run import CpuMeter, command_output, meta, say, wait_for_quiet

CHAT = "/v1/chat/completions"
RESULTS = procs.BENCH_DIR / "results"
MAX_HISTORY = 10
# One-at-a-time rounds before measuring: twice the turns that fill a history, so every turn measured trims it.
WARMUP_ROUNDS = MAX_HISTORY
# Between one-at-a-time requests: what a request does after its answer (the access log line, usage totals) is then
# over before the next one starts, instead of landing in it.
GAP_SECONDS = 0.001
# wrk's connections, and sessions per gateway in the saturation rounds: bench/run.py's load.
CONNECTIONS = 64
# The caller's settings that would change what the gateways do; procs.gateway_env drops GATEWAY_* itself.
INHERITED = ("REDIS_URL", "RATE_LIMIT_", "SESSION_")
# bench/post.lua (body, key, summary line) plus an X-Session-Id per request, round-robin over one session per
# connection: in wrk's closed loop each id is then in flight about once at a time, so turns do not queue on one
# session's lock. Plain rounds run the same script without ids, so both pay the same Lua per request.
WRK_SCRIPT = """dofile({post})
local ids = {{{ids}}}
local sent = 0
request = function()
  sent = sent + 1
  if #ids > 0 then wrk.headers["X-Session-Id"] = ids[sent % #ids + 1] end
  return wrk.format()
end
"""


@dataclass(frozen=True)
class Options:
    quick: bool
    requests: int  # one-at-a-time requests of each kind
    rounds: int  # saturation rounds of each kind
    round_seconds: float
    warmup_seconds: float
    quiet_wait: float


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run, about 15 s")
    parser.add_argument("--requests", type=int, help="one-at-a-time requests of each kind (default 500, quick 60)")
    parser.add_argument("--rounds", type=int, help="saturation rounds of each kind (default 5, quick 1)")
    parser.add_argument("--round-seconds", type=float, help="wrk duration of a round (default 5, quick 2)")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        quick=quick,
        requests=args.requests or (60 if quick else 500),
        rounds=args.rounds or (1 if quick else 5),
        round_seconds=args.round_seconds or (2.0 if quick else 5.0),
        warmup_seconds=1.0 if quick else 3.0,
        quiet_wait=5.0 if quick else 60.0,
    )


def write_config(workdir: Path, nginx_port: int) -> Path:
    """The agent directory: one agent for both kinds, so a plain request differs from a turn by X-Session-Id only."""
    config = workdir / "config"
    config.mkdir()
    (config / "bench.yaml").write_text(f"""version: "1.0"
agents:
  - name: bench
    llm: {{provider: openai-compatible, model: bench-model, base_url: "http://127.0.0.1:{nginx_port}/v1", api_key_env: BENCH_UPSTREAM_KEY}}
    session: {{enabled: true, max_history: {MAX_HISTORY}}}
""")  # noqa: E501
    return config


def build_env(base: dict[str, str], workdir: Path, storage: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(INHERITED)}
    # A state dir each: two gateways sharing the embedded store's files would measure its locking.
    return env | {"GATEWAY_STATE_DIR": str(workdir / f"state-{storage}"), "SESSION_STORAGE": storage,
                  "REDIS_URL": redis_url}  # fmt: skip


@dataclass(frozen=True)
class Side:
    """One gateway, named by where it keeps sessions, and the virtual key its requests carry."""

    storage: str
    service: Service
    key: str

    def headers(self, session_id: str | None = None) -> dict[str, str]:
        headers = loadgen.headers(self.key)
        return headers if session_id is None else headers | {"x-session-id": session_id}

    def create_session(self) -> str:
        # accuracy.admin is a JSON call with a bearer token; here the token is the virtual key, as a client's would be.
        return str(admin(self.service, self.key, "POST", "/v1/sessions", {"model": "bench"})["session_id"])

    def count_stored(self, session_id: str) -> int:
        return len(admin(self.service, self.key, "GET", f"/v1/sessions/{session_id}")["messages"])


# A kind of one-at-a-time request: its gateway, its headers, and the x-session-storage every answer must carry.
Kind = tuple[Side, dict[str, str], str | None]


async def time_requests(kinds: dict[str, Kind], options: Options) -> tuple[dict[str, list[float]], Counter[str]]:
    """`options.requests` requests of each kind after `WARMUP_ROUNDS` rounds, one at a time, each kind on its own
    kept-alive connection. The kinds take turns in a new random order every round, so a burst of noise on this shared
    machine, or what one request leaves behind for the next, falls on every kind alike rather than on one."""
    latencies: dict[str, list[float]] = {name: [] for name in kinds}
    misses: Counter[str] = Counter()  # answers from another storage than expected: a Redis fallback, say
    shuffle = random.Random(20261122).shuffle
    order = list(kinds)
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(loadgen.session(limit=1)) for name in kinds}
        for index in range(WARMUP_ROUNDS + options.requests):
            shuffle(order)
            for name in order:
                side, headers, storage = kinds[name]
                url = side.service.url + CHAT
                started = time.perf_counter()
                async with clients[name].post(url, data=loadgen.CHAT_BODY, headers=headers) as answer:
                    body = await answer.read()
                took = (time.perf_counter() - started) * 1000
                if answer.status != 200:
                    raise BenchError(
                        f"{name}: HTTP {answer.status} {body[:200]!r}; the log ends:\n{side.service.tail(8)}"
                    )
                misses[name] += answer.headers.get("x-session-storage") != storage
                if index >= WARMUP_ROUNDS:
                    latencies[name].append(took)
                await asyncio.sleep(GAP_SECONDS)
    return latencies, misses


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def count_redis_calls(client: redis.Redis) -> Counter[str]:
    """Calls of each Redis command since it started; the commands a script runs count too."""
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()})


@dataclass(frozen=True)
class Setup:
    """What both phases need: the options, wrk, the temp dir, the stand-in, Redis and the two gateways."""

    options: Options
    wrk: str
    workdir: Path
    nginx: Service
    redis: Service
    redis_url: str
    sides: dict[str, Side]  # by where they keep sessions: memory, redis


def measure_one_at_a_time(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    options, sides = setup.options, setup.sides
    ids = {storage: side.create_session() for storage, side in sides.items()}
    kinds: dict[str, Kind] = {}
    for storage, side in sides.items():
        kinds[f"{storage}.plain"] = (side, side.headers(), None)
        kinds[f"{storage}.session"] = (side, side.headers(ids[storage]), storage)
    say(f"one at a time: {options.requests} requests of each of 4 kinds taking turns, after {WARMUP_ROUNDS} rounds")
    with contextlib.closing(redis.Redis.from_url(setup.redis_url)) as client:
        before = count_redis_calls(client)
        latencies, misses = loadgen.run(time_requests(kinds, options))
        calls = count_redis_calls(client) - before
    del calls["info"]  # ours
    # The gateway calls Redis only through scripts on a turn's path (gateway/sessions/redis.py): one round trip each.
    turns, scripts = WARMUP_ROUNDS + options.requests, calls["evalsha"] + calls["eval"]
    metrics = {"seq.redis.round_trips": scripts / turns, "seq.redis.commands": (calls.total() - scripts) / turns,
               "seq.redis.fallbacks": float(misses["redis.session"])}  # fmt: skip
    if sum(misses.values()):
        say(f"  FLAG: answers from another session storage than expected: {dict(misses)}")
    for name, values in latencies.items():
        metrics |= {f"seq.{name}.p50_ms": percentile(values, 50), f"seq.{name}.p90_ms": percentile(values, 90)}
    for storage, side in sides.items():
        added = metrics[f"seq.{storage}.session.p50_ms"] - metrics[f"seq.{storage}.plain.p50_ms"]
        metrics |= {
            f"seq.{storage}.added_p50_ms": added,
            f"seq.{storage}.stored": float(side.count_stored(ids[storage])),
        }
        say(f"  {storage}: a turn adds {added:.3f} ms at p50")
    # With the gateway's own Redis client, from Python: the least one of a turn's round trips can cost.
    metrics["seq.redis.ping_ms"] = statistics.median(loadgen.run(redis_round_trip(setup.redis_url, 1000))["ping"])
    return metrics, {"latencies_ms": latencies, "storage_misses": dict(misses)}


@dataclass(frozen=True)
class Load:
    """One kind of saturation round: the gateway it goes to and the wrk script naming its sessions (none: plain)."""

    name: str
    side: Side
    script: Path
    setup: Setup

    def saturate(self, seconds: float) -> wrkload.WrkResult:
        """wrkload.saturate, with this load's script in place of bench/post.lua."""
        argv = [self.setup.wrk, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
                "-s", str(self.script), self.side.service.url + CHAT]  # fmt: skip
        env = {**os.environ, "BENCH_API_KEY": self.side.key, "BENCH_WRONG_KEYS": "0"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30, check=False)
        if done.returncode != 0:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return wrkload.parse(done.stdout)

    def cpu(self) -> dict[str, float]:
        """The CPU so far of everyone a round keeps busy, as run.CpuMeter reads it."""
        return {
            "gateway": procs.cpu_ms(self.side.service.pid),
            "nginx": procs.group_cpu_ms(self.setup.nginx.pid),
            "redis": procs.group_cpu_ms(self.setup.redis.pid),
            # wrk is the only child that exits during a round, so the children's total grows by its use.
            "wrk": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) * 1000,
            "machine": procs.machine_busy_ms(),
        }


def prepare_load(setup: Setup, name: str, side: Side, sessions: int) -> Load:
    ids = ", ".join(json.dumps(side.create_session()) for _ in range(sessions))
    script = setup.workdir / f"wrk-{name}.lua"
    script.write_text(WRK_SCRIPT.format(post=json.dumps(str(wrkload.LUA)), ids=ids))
    return Load(name, side, script, setup)


def measure_saturation(setup: Setup) -> tuple[report.Metrics, dict[str, Any]]:
    """Plain requests and session turns in memory and in Redis at full speed, each round starting with the next
    kind, so drift over the run and other people's jobs fall on all three. A plain request never touches the
    session store, so the memory gateway serves the plain rounds for both comparisons."""
    options, memory = setup.options, setup.sides["memory"]
    loads = [prepare_load(setup, "plain", memory, 0), prepare_load(setup, "memory", memory, CONNECTIONS),
             prepare_load(setup, "redis", setup.sides["redis"], CONNECTIONS)]  # fmt: skip
    for each in loads:
        # Also brings every session's history to its bound: a second of turns is dozens per session.
        each.saturate(options.warmup_seconds)
    say(f"saturation: wrk -t1 -c{CONNECTIONS}, {options.rounds} x {options.round_seconds:g}s per kind")
    samples: dict[str, list[dict[str, Any]]] = {each.name: [] for each in loads}
    for index in range(options.rounds):
        for each in loads[index % 3 :] + loads[: index % 3]:
            meter = CpuMeter(each)
            result = each.saturate(options.round_seconds)
            cpu = {name: ms / max(1, result.requests) for name, ms in meter.stop().items()}
            each.side.service.check_alive()
            samples[each.name].append({**vars(result), "cpu_ms_per_request": cpu, "gateway_pct":
                                       meter.share("gateway"), "others_pct": meter.share("others")})  # fmt: skip
            say(f"  {each.name}: {result.rps:,.0f} req/s, {cpu['gateway']:.3f} gateway CPU ms per request")
    metrics: report.Metrics = {}
    for name, runs in samples.items():
        metrics |= {
            f"sat.{name}.rps": statistics.median(run["requests"] / run["seconds"] for run in runs),
            f"sat.{name}.cpu_ms": statistics.median(run["cpu_ms_per_request"]["gateway"] for run in runs),
            f"sat.{name}.redis_cpu_ms": statistics.median(run["cpu_ms_per_request"]["redis"] for run in runs),
            f"sat.{name}.p50_ms": statistics.median(run["p50_ms"] for run in runs),
            f"sat.{name}.gateway_pct": statistics.median(run["gateway_pct"] for run in runs),
            f"sat.{name}.errors": sum(run["status_errors"] + run["socket_errors"] for run in runs),
            f"sat.{name}.others_pct": statistics.median(run["others_pct"] for run in runs),
        }
    return metrics, samples


class Row(NamedTuple):
    phase: str
    measure: str
    plain: str | None  # metric keys
    session: str
    digits: int
    compare: bool = True  # show what the session adds, and session ÷ plain


ROWS = (
    Row("one at a time, memory", "latency p50 ms", "seq.memory.plain.p50_ms", "seq.memory.session.p50_ms", 3),
    Row("one at a time, memory", "latency p90 ms", "seq.memory.plain.p90_ms", "seq.memory.session.p90_ms", 3),
    Row("one at a time, memory", f"messages stored after it (bound {MAX_HISTORY})", None, "seq.memory.stored", 0),
    Row("one at a time, Redis", "latency p50 ms", "seq.redis.plain.p50_ms", "seq.redis.session.p50_ms", 3),
    Row("one at a time, Redis", "latency p90 ms", "seq.redis.plain.p90_ms", "seq.redis.session.p90_ms", 3),
    Row("one at a time, Redis", f"messages stored after it (bound {MAX_HISTORY})", None, "seq.redis.stored", 0),
    Row("one at a time, Redis", "Redis round trips (scripts) per turn", None, "seq.redis.round_trips", 2),
    Row("one at a time, Redis", "Redis commands run inside them, per turn", None, "seq.redis.commands", 1),
    Row("one at a time, Redis", "Redis round trip: median PING from redis.asyncio, ms", None, "seq.redis.ping_ms", 3),
    Row("one at a time, Redis", "turns served from the memory fallback", None, "seq.redis.fallbacks", 0),
    Row("saturation, memory", "req/s", "sat.plain.rps", "sat.memory.rps", 0),
    Row("saturation, memory", "gateway CPU ms per request", "sat.plain.cpu_ms", "sat.memory.cpu_ms", 3),
    Row("saturation, memory", "errors (non-2xx, socket)", "sat.plain.errors", "sat.memory.errors", 0, compare=False),
    Row("saturation, memory", "other load on the machine, % of one core", "sat.plain.others_pct",
        "sat.memory.others_pct", 0, compare=False),
    Row("saturation, Redis", "req/s", "sat.plain.rps", "sat.redis.rps", 0),
    Row("saturation, Redis", "gateway CPU ms per request", "sat.plain.cpu_ms", "sat.redis.cpu_ms", 3),
    Row("saturation, Redis", "redis-server CPU ms per request", None, "sat.redis.redis_cpu_ms", 3),
    Row("saturation, Redis", "errors (non-2xx, socket)", "sat.plain.errors", "sat.redis.errors", 0, compare=False),
    Row("saturation, Redis", "other load on the machine, % of one core", "sat.plain.others_pct",
        "sat.redis.others_pct", 0, compare=False),
)  # fmt: skip


def render_table(metrics: report.Metrics) -> str:
    lines = ["| phase | measure | plain | session | added | session ÷ plain |", "|---|---|--:|--:|--:|--:|"]
    for row in ROWS:
        cells = [report.cell(metrics, row.plain, row.digits), report.cell(metrics, row.session, row.digits), "", ""]
        if row.compare and row.plain is not None and metrics.get(row.plain):
            plain, session = metrics[row.plain], metrics[row.session]
            cells[2:] = [f"{session - plain:+,.{row.digits}f}", f"{session / plain:.2f}"]
        lines.append(f"| {row.phase} | {row.measure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench(options: Options) -> int:
    tools = procs.ensure_tools(["wrk", "nginx"])
    info = {"bench": "sessions", **meta(tools)}
    info["versions"]["redis-server"] = command_output(["redis-server", "--version"]).split(" v=")[-1].split()[0]
    info["versions"]["redis-py"] = importlib.metadata.version("redis")
    say(f"{info['date']}  {info['cpu']} x{info['cores']}  commit {info['commit']}")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-sessions-")))
        # Entered in this order, stopped in reverse: the gateways first, then nginx and Redis.
        store = stack.enter_context(procs.redis_server(workdir))
        redis_url = f"redis://127.0.0.1:{store.port}/0"
        nginx = stack.enter_context(procs.nginx_upstream(tools["nginx"], workdir))
        config = write_config(workdir, nginx.port)
        base = procs.gateway_env(keys=True)
        sides: dict[str, Side] = {}
        for storage in ("memory", "redis"):
            env = build_env(base, workdir, storage, redis_url)
            service = stack.enter_context(gateway(f"gateway {storage}", workdir, config, env))
            sides[storage] = Side(storage, service, procs.create_virtual_key(service))
        ports = ", ".join(f":{side.service.port} (sessions in {storage})" for storage, side in sides.items())
        say(f"redis on :{store.port}, nginx on :{nginx.port}, gateways on {ports}")
        say(f"machine load before measuring: {wait_for_quiet(options.quiet_wait):.0f}% of one core")
        setup = Setup(options, tools["wrk"], workdir, nginx, store, redis_url, sides)
        started = time.monotonic()
        try:
            metrics, raw_seq = measure_one_at_a_time(setup)
            sat_metrics, raw_sat = measure_saturation(setup)
        except (aiohttp.ClientError, TimeoutError) as exc:
            for side in sides.values():
                side.service.check_alive()  # a gateway that died is the better explanation
            raise BenchError(f"the client failed: {exc!r}") from None
        metrics |= sat_metrics
        info["seconds"] = round(time.monotonic() - started, 1)
        info["load_average_after"] = os.getloadavg()[0]
    info["options"] = vars(options)
    path = RESULTS / f"sessions-{datetime.datetime.now():%Y%m%d-%H%M%S}{'-quick' if options.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = {"one_at_a_time": raw_seq, "saturation": raw_sat}
    document = {"meta": info, "metrics": metrics, "table": render_table(metrics), "raw": raw}
    path.write_text(json.dumps(document, indent=2) + "\n")
    say(f"\nmeasured in {info['seconds']}s\n\n{render_table(metrics)}\n\nwrote {path.relative_to(procs.ROOT)}")
    return 0


def main() -> int:
    return procs.run_main("sessions", parse_args, bench)


if __name__ == "__main__":
    sys.exit(main())
