"""The rate-limit accuracy benchmark: one key's limits shared by 4 replicas through Redis, hammered, against the
numbers the token-bucket arithmetic says must come out; then what the check adds to a request's latency.

    .venv/bin/python bench/accuracy.py            # full run: 30 s per hammer phase, under 3 minutes in all
    .venv/bin/python bench/accuracy.py --quick    # smoke run: 8 s per hammer phase

Starts redis-server, nginx (the non-streaming stand-in), the streaming stand-in reporting a fixed usage, and
4 `gateway serve` processes sharing Redis, all on free 127.0.0.1 ports, then:

1. requests: 50 clients hammer one key (rpm 120, burst 20) round-robin over the 4 gateways;
2. tokens: the same with streaming requests on a key with a token bucket, the real usage far below the estimate;
3. latency: sequential requests with keys with and without limits, taking turns, in memory and in Redis mode.

Prints a Markdown table with PASS/MISS, writes bench/results/accuracy-<timestamp>.json, and stops every process
it started, also on an error, Ctrl-C or SIGTERM. docs/benchmarks.md ("Rate-limit accuracy") derives the formulas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import loadgen
import procs
import redis
import redis.asyncio
from procs import BenchError, Service
from run import command_output, cpu_model, say, wait_for_quiet

CHAT = "/v1/chat/completions"
RESULTS = procs.BENCH_DIR / "results"
DONE = b"data: [DONE]"
# Where the gateway's Redis limiter keeps a key's buckets (gateway/limits/redis.py and gateway/limits/policy.py); only
# read, for the bookkeeping check, which says "n/a" if the names change.
BUCKET_KEY = "gw:rl:key:{key_id}:{kind}"
# Settings that would change what the gateways do if inherited from the caller's environment.
INHERITED = ("GATEWAY_", "REDIS_URL", "RATE_LIMIT_", "SESSION_")


@dataclass(frozen=True)
class Options:
    quick: bool
    seconds: float
    clients: int
    gateways: int
    rpm: int
    rpm_burst: int
    tpm: int
    tpm_burst: int
    max_tokens: int
    prompt_chars: int
    usage: tuple[int, int]  # what the streaming stand-in reports: prompt, completion tokens
    chunks: int
    interval_ms: float
    latency_requests: int
    latency_gap_ms: float
    pin: bool
    tolerance_pct: float
    max_requests: int
    quiet_wait: float
    keep: bool

    @property
    def estimate(self) -> int:
        """The gateway's reservation per streaming request: prompt characters / 4, rounded up, + max_tokens."""
        return math.ceil(self.prompt_chars / 4) + self.max_tokens

    @property
    def real(self) -> int:
        return sum(self.usage)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 s per hammer phase")
    parser.add_argument("--seconds", type=float, help="duration of each hammer phase (default 30, quick 8)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent hammering clients (default 50)")
    parser.add_argument("--gateways", type=int, default=4, help="gateway processes sharing Redis (default 4)")
    parser.add_argument("--tpm", type=int, default=6000, help="tokens per minute of the tokens phase's key")
    parser.add_argument("--tpm-burst", type=int, default=1000, help="token bucket size of the tokens phase's key")
    parser.add_argument("--latency-requests", type=int, help="requests per key and mode (default 2000, quick 300)")
    parser.add_argument(
        "--latency-gap-ms", type=float, default=2.0, help="pause between sequential latency requests (default 2)"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="latency phase: leave the client and the servers unpinned (default: client on CPU 0, servers on 1)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, help="wait up to this many seconds for an idle machine (default 60, quick 5)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with every process's log")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    options = Options(
        quick=quick,
        seconds=args.seconds if args.seconds is not None else (8.0 if quick else 30.0),
        clients=args.clients,
        gateways=args.gateways,
        rpm=120,
        rpm_burst=20,
        tpm=args.tpm,
        tpm_burst=args.tpm_burst,
        max_tokens=200,
        prompt_chars=80,
        usage=(20, 30),
        chunks=5,
        interval_ms=2.0,
        latency_requests=args.latency_requests or (300 if quick else 2000),
        latency_gap_ms=args.latency_gap_ms,
        pin=not args.no_pin,
        tolerance_pct=2.0,
        max_requests=2_000_000,
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else (5.0 if quick else 60.0),
        keep=args.keep,
    )
    if options.tpm_burst < options.estimate:
        # The expected value below assumes a request needs its whole estimate, not a full bucket.
        parser.error(f"--tpm-burst must be at least the estimate per request, {options.estimate}")
    return options


def requests_body() -> bytes:
    return loadgen.CHAT_BODY  # to the nginx agent; its usage does not matter here, the key has no token bucket


def tokens_body(options: Options) -> bytes:
    content = ("Count from one to ten, one number per line. " * 4)[: options.prompt_chars]
    body = {
        "model": "bench-stream",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": options.max_tokens,
        "stream": True,
    }
    return json.dumps(body).encode()


def latency_body() -> bytes:
    # Estimate 2 + 100 tokens against nginx's usage of 10: every request with limits is also settled, as most are.
    return b'{"model":"bench","messages":[{"role":"user","content":"Say ok."}],"max_tokens":100}'


def gateway_env(store: str, state_dir: Path, redis_url: str, admin_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED)}
    env |= {
        "GATEWAY_STORE": store,
        "GATEWAY_STATE_DIR": str(state_dir),
        "GATEWAY_ADMIN_KEY": admin_key,
        # This bench is about accuracy, not speed; warnings still show (a Redis fallback would, for one).
        "GATEWAY_LOG_LEVEL": "warning",
        "BENCH_UPSTREAM_KEY": "x",
    }
    if store == "redis":
        env["REDIS_URL"] = redis_url
    return env


@contextlib.contextmanager
def gateway(name: str, workdir: Path, config: Path, env: dict[str, str]) -> Iterator[Service]:
    command = Path(sys.executable).parent / "gateway"
    if not command.exists():
        raise BenchError(f"{command} not found: run `pip install -e '.[dev]'` in this virtualenv first")
    Path(env["GATEWAY_STATE_DIR"]).mkdir()
    port = procs.free_port()
    argv = [str(command), "serve", "--config", str(config), "--port", str(port)]
    with procs.running(name, argv, port, workdir, env=env, ready="/readyz") as service:
        yield service


@dataclass(frozen=True)
class Key:
    id: str
    secret: str


def admin(service: Service, admin_key: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        service.url + path,
        data=data,
        method=method,
        headers={"authorization": f"Bearer {admin_key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{method} {path} on {service.name}: HTTP {exc.code} {exc.read()[:300]!r}") from None


def create_key(service: Service, admin_key: str, name: str, limits: dict[str, int]) -> Key:
    created = admin(service, admin_key, "POST", "/admin/keys", {"name": name, "limits": limits})
    return Key(str(created["id"]), str(created["secret"]))


def headers(key: Key) -> dict[str, str]:
    return loadgen.headers(key.secret)


@dataclass
class Tally:
    """What the hammer saw. Times are `time.perf_counter()` values."""

    stream: bool
    kind: str  # the bucket kind whose x-ratelimit headers every answer must carry
    sent: int = 0
    allowed: int = 0
    refused: int = 0
    other: Counter[int] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)
    no_retry_after: int = 0
    no_retry_after_ms: int = 0
    retry_after_mismatch: int = 0  # retry-after is not retry-after-ms rounded up to whole seconds
    wrong_code: int = 0
    no_ratelimit_headers: int = 0
    incomplete_streams: int = 0
    leaked_usage: int = 0  # a usage chunk reached a client that had not asked for one
    max_retry_after_ms: int = 0
    first_sent: float = math.inf
    last_received: float = 0.0

    @property
    def elapsed(self) -> float:
        return self.last_received - self.first_sent

    def record(self, status: int, answer: Any, body: bytes) -> None:
        if f"x-ratelimit-limit-{self.kind}" not in answer:
            self.no_ratelimit_headers += 1
        if status == 200:
            self.allowed += 1
            if self.stream:
                self.incomplete_streams += not body.rstrip().endswith(DONE)
                self.leaked_usage += b'"usage"' in body
            return
        if status != 429:
            self.other[status] += 1
            return
        self.refused += 1
        seconds, millis = _integer(answer.get("retry-after")), _integer(answer.get("retry-after-ms"))
        self.no_retry_after += seconds is None
        self.no_retry_after_ms += millis is None
        if seconds is not None and millis is not None:
            self.max_retry_after_ms = max(self.max_retry_after_ms, millis)
            self.retry_after_mismatch += seconds != math.ceil(millis / 1000)
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        self.wrong_code += code != "rate_limit_exceeded"

    def header_problems(self) -> int:
        return self.no_retry_after + self.no_retry_after_ms + self.retry_after_mismatch + self.wrong_code

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "allowed": self.allowed,
            "refused": self.refused,
            "other_statuses": dict(self.other),
            "client_errors": dict(self.client_errors),
            "no_retry_after": self.no_retry_after,
            "no_retry_after_ms": self.no_retry_after_ms,
            "retry_after_mismatch": self.retry_after_mismatch,
            "wrong_code": self.wrong_code,
            "no_ratelimit_headers": self.no_ratelimit_headers,
            "incomplete_streams": self.incomplete_streams,
            "leaked_usage": self.leaked_usage,
            "max_retry_after_ms": self.max_retry_after_ms,
            "elapsed_s": self.elapsed,
        }


def _integer(header: str | None) -> int | None:
    """A header holding a whole number, or None when it is missing or anything else."""
    return int(header) if header is not None and header.isdigit() else None


async def hammer(urls: list[str], body: bytes, key: Key, options: Options, tally: Tally) -> None:
    """`options.clients` closed loops, each sending its next request the moment the previous one answered, 429s
    included, to the gateways in turn. Bounded by `options.seconds` and `options.max_requests`."""
    request_headers = headers(key)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        deadline = time.perf_counter() + options.seconds

        async def one_client(index: int) -> None:
            turn = index
            while time.perf_counter() < deadline and tally.sent < options.max_requests:
                url = urls[turn % len(urls)]
                turn += 1
                tally.sent += 1
                tally.first_sent = min(tally.first_sent, time.perf_counter())
                try:
                    async with client.post(url, data=body, headers=request_headers) as response:
                        payload = await response.read()
                        tally.last_received = time.perf_counter()
                        tally.record(response.status, response.headers, payload)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    tally.client_errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.01)  # a dead gateway must not turn the hammer into a busy loop

        clients = [one_client(i) for i in range(options.clients)]
        await asyncio.wait_for(asyncio.gather(*clients), timeout=options.seconds + 60)


def redis_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1_000_000


@dataclass(frozen=True)
class Bookkeeping:
    """The bucket as Redis holds it after the phase, and what that implies: every token that went in (the burst
    and the refill since the phase began) is either still in the bucket or was charged to an admitted request."""

    level: float
    at: float
    residual: float  # burst + rate * (at - start) - level - admitted * real cost: >= 0, about 0 if nothing is lost


def bookkeeping(
    client: redis.Redis, key: Key, kind: str, *, start: float, rate: float, burst: int, charged: float
) -> Bookkeeping | None:
    stored = client.hmget(BUCKET_KEY.format(key_id=key.id, kind=kind), ["t", "at"])
    if stored[0] is None or stored[1] is None:
        return None
    level, at = float(stored[0]), float(stored[1])
    return Bookkeeping(level, at, burst + rate * (at - start) - level - charged)


@dataclass
class Table:
    rows: list[dict[str, str]] = field(default_factory=list)

    def add(self, phase: str, measure: str, value: str, expected: str = "", verdict: str = "") -> None:
        self.rows.append({"phase": phase, "measure": measure, "value": value, "expected": expected, "result": verdict})

    def markdown(self) -> str:
        lines = ["| phase | measure | measured | expected | result |", "|---|---|--:|--:|---|"]
        lines += [
            f"| {r['phase']} | {r['measure']} | {r['value']} | {r['expected']} | {r['result']} |" for r in self.rows
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class Run:
    """What every phase needs: the options, the table it adds to, Redis, the temp dir and the agent config."""

    options: Options
    table: Table
    redis: redis.Redis
    redis_url: str
    workdir: Path
    config: Path
    servers: tuple[int, ...]  # process groups of Redis and the stand-ins


def pin(groups: set[int], cpu: int) -> int:
    """Every thread of every process in these process groups onto one CPU; returns how many threads moved."""
    moved = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as stat:
                pgid = int(stat.read().rsplit(")", 1)[1].split()[2])
            if pgid in groups:
                for task in os.listdir(f"/proc/{entry}/task"):
                    os.sched_setaffinity(int(task), {cpu})
                    moved += 1
    return moved


def verdict(ok: bool, *, check: bool = False) -> str:
    if check:
        return "ok" if ok else "FLAG"
    return "PASS" if ok else "MISS"


def hammer_phase(run: Run, name: str, *, urls: list[str], body: bytes, key: Key, tally: Tally) -> float:
    """The hammer, started at the Redis time returned (the clock the buckets run on)."""
    options, redis_client = run.options, run.redis
    say(f"{name}: {options.clients} clients hammer one key over {len(urls)} gateways for {options.seconds:g}s")
    start = redis_time(redis_client)
    loadgen.run(hammer(urls, body, key, options, tally))
    say(
        f"  {tally.allowed:,} allowed, {tally.refused:,} refused, {sum(tally.other.values())} other, "
        f"{sum(tally.client_errors.values())} client errors in {tally.elapsed:.2f}s"
    )
    if not tally.allowed:
        raise BenchError(f"{name}: not one request was allowed ({tally.summary()})")
    return start


def check_rows(table: Table, phase: str, tally: Tally, max_wait_ms: float) -> None:
    """The rows every hammer phase has: refusals well-formed, nothing else went wrong."""
    table.add(phase, "refused (429)", f"{tally.refused:,}")
    table.add(
        phase,
        "429s without retry-after / retry-after-ms / code rate_limit_exceeded, or seconds ≠ ⌈ms⌉",
        f"{tally.header_problems()}",
        "0",
        verdict(tally.header_problems() == 0, check=True),
    )
    table.add(
        phase,
        "largest retry-after-ms",
        f"{tally.max_retry_after_ms:,}",
        f"≤ {max_wait_ms:,.0f}",
        verdict(tally.max_retry_after_ms <= max_wait_ms + 1, check=True),
    )
    other = sum(tally.other.values()) + sum(tally.client_errors.values()) + tally.no_ratelimit_headers
    table.add(
        phase,
        "other statuses, client errors, answers without x-ratelimit headers",
        f"{other}",
        "0",
        verdict(other == 0, check=True),
    )


def accuracy_rows(
    run: Run, phase: str, measure: str, *, measured: float, expected: float, ceiling: float
) -> dict[str, float]:
    table, options = run.table, run.options
    error = (measured - expected) / expected * 100
    within = abs(error) <= options.tolerance_pct and measured <= ceiling
    table.add(phase, measure, f"{measured:,.0f}", f"{expected:,.1f} ± {options.tolerance_pct:g}%", verdict(within))
    table.add(phase, "error vs expected", f"{error:+.2f}%", f"within ±{options.tolerance_pct:g}%", verdict(within))
    table.add(
        phase,
        "ceiling: burst + rate x elapsed (never exceeded)",
        f"{ceiling:,.1f}",
        f"≥ {measured:,.0f}",
        verdict(measured <= ceiling, check=True),
    )
    return {"measured": measured, "expected": expected, "ceiling": ceiling, "error_pct": error}


def requests_phase(run: Run, urls: list[str], service: Service, admin_key: str) -> dict[str, Any]:
    options, table = run.options, run.table
    key = create_key(service, admin_key, "accuracy-requests", {"rpm": options.rpm, "rpm_burst": options.rpm_burst})
    tally = Tally(stream=False, kind="requests")
    start = hammer_phase(run, "requests", urls=urls, body=requests_body(), key=key, tally=tally)
    rate = options.rpm / 60
    ceiling = options.rpm_burst + rate * tally.elapsed
    # Each request needs 1 and costs 1: what is left in the bucket at the end is uniform in [0, 1).
    expected = ceiling - 0.5
    phase = f"requests (rpm {options.rpm}, burst {options.rpm_burst})"
    table.add(phase, "elapsed s (first request sent → last answer)", f"{tally.elapsed:.3f}")
    result = accuracy_rows(
        run, phase, "requests allowed (200)", measured=tally.allowed, expected=expected, ceiling=ceiling
    )
    check_rows(table, phase, tally, 1000 / rate)
    book = bookkeeping(
        run.redis, key, "requests", start=start, rate=rate, burst=options.rpm_burst, charged=tally.allowed
    )
    table.add(
        phase,
        "bucket bookkeeping residual (requests)",
        "n/a" if book is None else f"{book.residual:.3f}",
        f"0 … {rate * 0.1:.2f}",
        "" if book is None else verdict(-0.01 <= book.residual <= rate * 0.1, check=True),
    )
    return {**result, "tally": tally.summary(), "bookkeeping": None if book is None else vars(book)}


def probe_stream(url: str, key: Key, options: Options, redis_client: redis.Redis) -> dict[str, Any]:
    """One stream on a fresh key: the reservation must be the estimate, and settlement must leave the real usage
    charged; otherwise the tokens phase would measure something else."""
    request = urllib.request.Request(url, data=tokens_body(options), headers=headers(key))
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        remaining = int(response.headers.get("x-ratelimit-remaining-tokens", "-1"))
    if not body.rstrip().endswith(DONE) or b'"usage"' in body:
        raise BenchError(f"the probe stream is malformed or shows the usage chunk: {body[-300:]!r}")
    if remaining != options.tpm_burst - options.estimate:
        raise BenchError(
            f"the probe reserved {options.tpm_burst - remaining} tokens, not the estimate {options.estimate}: "
            "the gateway's estimate changed; update Options.estimate"
        )
    time.sleep(0.3)  # settlement runs just after the last byte
    stored = redis_client.hget(BUCKET_KEY.format(key_id=key.id, kind="tokens"), "t")
    level = None if stored is None else float(stored)
    if level is not None and not options.tpm_burst - options.real - 1 <= level <= options.tpm_burst - 1:
        raise BenchError(
            f"after one settled stream the bucket holds {level:.1f}; expected about {options.tpm_burst - options.real}"
            f" (the real usage {options.real} charged): settlement did not happen as it should"
        )
    return {"reserved": options.tpm_burst - remaining, "level_after_settlement": level}


def tokens_phase(run: Run, urls: list[str], service: Service, admin_key: str) -> dict[str, Any]:
    options, table, redis_client = run.options, run.table, run.redis
    limits = {"tpm": options.tpm, "tpm_burst": options.tpm_burst}
    probe = probe_stream(urls[0], create_key(service, admin_key, "accuracy-probe", limits), options, redis_client)
    say(f"  probe: reserved {probe['reserved']} tokens, bucket after settlement {probe['level_after_settlement']}")
    key = create_key(service, admin_key, "accuracy-tokens", limits)
    tally = Tally(stream=True, kind="tokens")
    start = hammer_phase(run, "tokens", urls=urls, body=tokens_body(options), key=key, tally=tally)
    rate = options.tpm / 60
    estimate, real = options.estimate, options.real
    ceiling = options.tpm_burst + rate * tally.elapsed
    # Admission needs the whole estimate in the bucket, but only the real usage stays charged: at the end the
    # bucket holds between estimate - real and estimate, so on average estimate - real / 2 is never used.
    expected = ceiling - (estimate - real / 2)
    charged = tally.allowed * real
    phase = f"tokens (tpm {options.tpm}, burst {options.tpm_burst}, streams)"
    table.add(
        phase,
        "estimate reserved per request (probe) / real usage settled",
        f"{probe['reserved']} / {real}",
        f"{estimate} / {real}",
    )
    table.add(phase, "elapsed s (first request sent → last answer)", f"{tally.elapsed:.3f}")
    table.add(phase, "requests allowed (200, complete streams)", f"{tally.allowed:,}", f"{expected / real:,.1f}")
    measure = "real tokens charged (allowed x real usage)"
    result = accuracy_rows(run, phase, measure, measured=charged, expected=expected, ceiling=ceiling)
    check_rows(table, phase, tally, 1000 * estimate / rate)
    streams = tally.incomplete_streams + tally.leaked_usage
    table.add(
        phase,
        "streams without [DONE] or with the usage chunk the client did not ask for",
        f"{streams}",
        "0",
        verdict(streams == 0, check=True),
    )
    time.sleep(1.5)  # usage is written in batches every 0.5 s, and settlements trail the last byte
    usage = admin(service, admin_key, "GET", f"/admin/keys/{key.id}/usage?days=1")["totals"]
    recorded = int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
    table.add(
        phase,
        "tokens in the gateway's own usage records (admin API)",
        f"{recorded:,}",
        f"{charged:,}",
        verdict(recorded == charged, check=True),
    )
    book = bookkeeping(redis_client, key, "tokens", start=start, rate=rate, burst=options.tpm_burst, charged=charged)
    table.add(
        phase,
        "bucket bookkeeping residual (tokens)",
        "n/a" if book is None else f"{book.residual:.1f}",
        f"0 … {rate * 0.1:.0f}",
        "" if book is None else verdict(-1 <= book.residual <= rate * 0.1, check=True),
    )
    return {
        **result,
        "estimate": estimate,
        "real": real,
        "probe": probe,
        "usage_totals": usage,
        "tally": tally.summary(),
        "bookkeeping": None if book is None else vars(book),
    }


async def timed_requests(
    url: str, keys: dict[str, Key], count: int, warmup: int, gap: float
) -> tuple[dict[str, list[float]], Counter[str]]:
    """`count` sequential requests per key to one gateway, on one kept-alive connection, after `warmup` each.

    The keys take turns in a new random order every round, so that each follows each other equally often: on
    this VM a request is measurably faster or slower depending on what ran just before it. `gap` seconds pass
    between an answer and the next request, so that a settlement (run after the last byte) is over before the
    next request starts instead of landing in it.
    """
    latencies: dict[str, list[float]] = {name: [] for name in keys}
    failures: Counter[str] = Counter()
    body = latency_body()
    shuffle = random.Random(20261122).shuffle
    order = list(keys)
    async with loadgen.session(limit=1) as client:
        for index in range(warmup + count):
            shuffle(order)
            for name in order:
                started = time.perf_counter()
                async with client.post(url, data=body, headers=headers(keys[name])) as response:
                    await response.read()
                    status = response.status
                took = (time.perf_counter() - started) * 1000
                if status != 200:
                    failures[f"{name}: HTTP {status}"] += 1
                elif index >= warmup:
                    latencies[name].append(took)
                await asyncio.sleep(gap)
    return latencies, failures


async def redis_round_trip(url: str, count: int) -> dict[str, list[float]]:
    """PINGs from Python through redis.asyncio, the gateway's own client, on uvloop as the gateway runs; and the
    gateway's Redis limiter taking a charge like the limited key's, the one round trip the check should cost."""
    from gateway.limits.buckets import Bucket, Charge
    from gateway.limits.redis import RedisLimiter

    huge = 1e9
    buckets = (
        Bucket("bench:latency:requests", "requests", huge, huge, "requests"),
        Bucket("bench:latency:tokens", "tokens", huge, huge, "tokens"),
    )
    charge = Charge(buckets, (), 1, 102, 2)
    client = redis.asyncio.from_url(url)
    limiter = RedisLimiter(url, "closed", prefix="bench:")
    times: dict[str, list[float]] = {"ping": [], "take": []}
    try:
        for index in range(count + 200):
            started = time.perf_counter()
            await client.ping()
            between = time.perf_counter()
            await limiter.take(charge)
            if index >= 200:
                times["ping"].append((between - started) * 1000)
                times["take"].append((time.perf_counter() - between) * 1000)
        return times
    finally:
        await client.aclose()
        await limiter.close()


def latency_phase(run: Run, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Two fresh gateways, one per mode, each with a key that has rpm and tpm limits (settled after each request),
    one with only a request bucket (nothing to settle) and one without limits, taking turns."""
    options, table, workdir, redis_url = run.options, run.table, run.workdir, run.redis_url
    huge = 1_000_000_000
    kinds = {
        "limited": {"rpm": huge, "rpm_burst": huge, "tpm": huge, "tpm_burst": huge},
        "rpm only": {"rpm": huge, "rpm_burst": huge},
        "plain": {},
    }
    services: dict[str, Service] = {}
    keys: dict[str, dict[str, Key]] = {}
    for store in ("memory", "redis"):
        admin_key = secrets.token_hex(16)
        env = gateway_env(store, workdir / f"state-latency-{store}", redis_url, admin_key)
        services[store] = stack.enter_context(gateway(f"gateway {store}", workdir, run.config, env))
        keys[store] = {
            kind: create_key(services[store], admin_key, f"latency {kind}", limits) for kind, limits in kinds.items()
        }
    count = options.latency_requests
    cpus = os.sched_getaffinity(0)
    pinned = options.pin and len(cpus) >= 2
    if pinned:
        # On 2 cores the settlement that follows a response (gateway and Redis) would compete for a core with the
        # client reading that response, and show up as latency that no client on another machine would see.
        servers = {*run.servers, *(service.pid for service in services.values())}
        say(f"latency: client pinned to CPU {min(cpus)}; {pin(servers, max(cpus))} server threads to CPU {max(cpus)}")
        os.sched_setaffinity(0, {min(cpus)})
    medians: dict[str, dict[str, float]] = {}
    try:
        for store, service in services.items():
            say(f"latency, {store} mode: {count} sequential requests per key, 3 keys taking turns")
            timed = timed_requests(
                service.url + CHAT, keys[store], count, max(50, count // 10), options.latency_gap_ms / 1000
            )
            latencies, failures = loadgen.run(timed)
            if failures:
                raise BenchError(f"latency, {store} mode: requests failed: {dict(failures)}")
            medians[store] = {kind: statistics.median(values) for kind, values in latencies.items()}
            say("  median ms: " + ", ".join(f"{kind} {value:.3f}" for kind, value in medians[store].items()))
        if pinned:  # where the gateway sat: its round trips to Redis are the ones to compare with
            os.sched_setaffinity(0, {max(cpus)})
        redis_times = loadgen.run(redis_round_trip(redis_url, count))
    finally:
        os.sched_setaffinity(0, cpus)
    rtt = statistics.median(redis_times["ping"])
    take = statistics.median(redis_times["take"])
    raw: dict[str, Any] = {"medians_ms": medians, "redis_ping_ms": rtt, "redis_limiter_take_ms": take, "pinned": pinned}
    for store, allowance, text in (("memory", 0.3, "≤ 0.300"), ("redis", rtt + 0.3, "≤ RTT + 0.3")):
        phase = f"latency, {store} mode"
        limited, rpm_only, plain = (medians[store][kind] for kind in kinds)
        table.add(phase, "median ms: key with rpm + tpm / rpm only / no limits",
                  f"{limited:.3f} / {rpm_only:.3f} / {plain:.3f}")  # fmt: skip
        table.add(phase, "added by the rate-limit check (rpm + tpm, settled), ms", f"{limited - plain:.3f}",
                  f"{text} ({allowance:.3f})", verdict(limited - plain <= allowance))  # fmt: skip
        table.add(phase, "added by a request bucket alone (nothing to settle), ms", f"{rpm_only - plain:.3f}")
        raw[f"{store}_added_ms"] = limited - plain
        raw[f"{store}_added_rpm_only_ms"] = rpm_only - plain
    where = " on the gateways' CPU" if pinned else ""
    table.add("latency, redis mode", f"Redis round trip (RTT): median PING from redis.asyncio{where}, ms", f"{rtt:.3f}")
    table.add("latency, redis mode", f"the gateway's RedisLimiter.take() called from Python{where}, median ms",
              f"{take:.3f}")  # fmt: skip
    return raw


def meta() -> dict[str, Any]:
    packages = ("agent-gateway", "aiohttp", "redis", "uvloop")
    versions = {name: importlib.metadata.version(name) for name in packages}
    versions["redis-server"] = command_output(["redis-server", "--version"]).split(" v=")[-1].split()[0]
    commit = command_output(["git", "-C", str(procs.ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    if command_output(["git", "-C", str(procs.ROOT), "status", "--porcelain", "--", "gateway"]):
        commit += " + uncommitted changes in gateway/"
    return {
        "bench": "accuracy",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
        "versions": versions,
    }


def headline(raw: dict[str, Any]) -> dict[str, float]:
    """The main numbers, flat, as bench/run.py's results hold theirs."""
    metrics = {}
    for phase in ("requests", "tokens"):
        for name in ("measured", "expected", "ceiling", "error_pct"):
            metrics[f"accuracy.{phase}.{name}"] = float(raw[phase][name])
    for name in ("memory_added_ms", "redis_added_ms", "redis_ping_ms", "redis_limiter_take_ms"):
        metrics[f"accuracy.latency.{name}"] = float(raw["latency"][name])
    return metrics


def gateway_warnings(workdir: Path) -> dict[str, list[str]]:
    """Every line the gateways logged (at warning level and up): a Redis fallback would show here."""
    logs = {}
    for log in sorted(workdir.glob("gateway-*.log")):
        lines = log.read_text(errors="replace").splitlines()
        logs[log.stem] = [line for line in lines if line.strip()][:20]
    return {name: lines for name, lines in logs.items() if lines}


def bench(options: Options) -> int:
    tools = procs.ensure_tools(["nginx"])
    info = meta()
    say(f"{info['date']}  {info['cpu']} x{info['cores']}  commit {info['commit']}")
    table = Table()
    raw: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if options.keep:
            workdir = Path(tempfile.mkdtemp(prefix="gateway-accuracy-"))
            say(f"logs in {workdir}")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-accuracy-")))
        # Entered in this order, stopped in reverse: the gateways first, then the stand-ins and Redis.
        store = stack.enter_context(procs.redis_server(workdir))
        redis_url = f"redis://127.0.0.1:{store.port}/0"
        redis_client = stack.enter_context(contextlib.closing(redis.Redis.from_url(redis_url)))
        nginx = stack.enter_context(procs.nginx_upstream(tools["nginx"], workdir))
        stream = stack.enter_context(
            procs.stream_upstream(workdir, options.chunks, options.interval_ms, usage=options.usage)
        )
        config = workdir / "config"
        config.mkdir()
        (config / "bench.yaml").write_text(procs.agent_config(nginx.port, stream.port))
        say(f"redis on :{store.port}, nginx on :{nginx.port}, stream stand-in on :{stream.port}")
        if options.quiet_wait > 0:
            busy = wait_for_quiet(options.quiet_wait)
            say(f"machine load before measuring: {busy:.0f}% of one core")
        run = Run(options, table, redis_client, redis_url, workdir, config, (store.pid, nginx.pid, stream.pid))
        started = time.monotonic()
        with contextlib.ExitStack() as replicas:
            admin_key = secrets.token_hex(16)
            services = [
                replicas.enter_context(
                    gateway(
                        f"gateway {i}",
                        workdir,
                        config,
                        gateway_env("redis", workdir / f"state-{i}", redis_url, admin_key),
                    )
                )
                for i in range(1, options.gateways + 1)
            ]
            say(f"{len(services)} gateways sharing Redis on :{', :'.join(str(s.port) for s in services)}")
            urls = [s.url + CHAT for s in services]
            raw["requests"] = requests_phase(run, urls, services[0], admin_key)
            for service in services:
                service.check_alive()
            raw["tokens"] = tokens_phase(run, urls, services[1 % len(services)], admin_key)
            for service in services:
                service.check_alive()
        raw["latency"] = latency_phase(run, stack)
        info["seconds"] = round(time.monotonic() - started, 1)
        info["load_average_after"] = os.getloadavg()[0]
        raw["gateway_log_lines"] = gateway_warnings(workdir)
    info["options"] = {**vars(options), "estimate": options.estimate, "real": options.real}
    path = RESULTS / f"accuracy-{datetime.datetime.now():%Y%m%d-%H%M%S}{'-quick' if options.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": info, "metrics": headline(raw), "table": table.rows, "raw": raw}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    say(f"\nmeasured in {info['seconds']}s\n")
    say(table.markdown())
    if raw["gateway_log_lines"]:
        say("\nthe gateways logged (warning and up):")
        for name, lines in raw["gateway_log_lines"].items():
            say(f"  {name}: " + "\n    ".join(lines))
    say(f"\nwrote {path.relative_to(procs.ROOT)}")
    return 0


def main() -> int:
    return procs.run_main("accuracy", parse_args, bench)


if __name__ == "__main__":
    sys.exit(main())
