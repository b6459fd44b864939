"""Time to first byte of one stream through three shapes of the gateway, taking turns request by request.

    .venv/bin/python bench/shapes.py            # 300 streams through each shape
    .venv/bin/python bench/shapes.py --rounds 50

One process on the memory store, one process on Redis, and two workers on Redis run side by side, each with a
virtual key limited far above the load (so every stream is admitted through the limiter), in front of the
streaming stand-in. Each round sends one stream through each shape in turn, so a burst of noise on this shared
machine falls on all three. It separates what Redis costs a stream's first byte from what a second worker does,
which the full benchmark, running each shape minutes apart, cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import procs

BODY = {"model": "bench-stream", "messages": [{"role": "user", "content": "hi"}], "stream": True}
LIMITS = {"rpm": 10_000_000, "tpm": 1_000_000_000}


async def ttfb_ms(session: aiohttp.ClientSession, url: str, key: str) -> float:
    """Milliseconds until the first chunk holding an SSE event; the rest of the stream is read and dropped."""
    started = time.perf_counter()
    first = float("nan")
    async with session.post(f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}) as r:
        async for chunk in r.content.iter_any():
            if math.isnan(first) and b"data:" in chunk:
                first = (time.perf_counter() - started) * 1000
    return first


async def measure(targets: dict[str, tuple[str, str]], rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # warm-up: connections and caches
            for url, key in targets.values():
                await ttfb_ms(session, url, key)
        for _ in range(rounds):
            for name, (url, key) in targets.items():
                samples[name].append(await ttfb_ms(session, url, key))
    return samples


def bench(rounds: int) -> int:
    tools = procs.ensure_tools(["nginx"])
    with tempfile.TemporaryDirectory(prefix="gateway-shapes-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        nginx = stack.enter_context(procs.nginx_upstream(tools["nginx"], workdir))
        stream = stack.enter_context(procs.stream_upstream(workdir, 3, 1.0))
        redis = stack.enter_context(procs.redis_server(workdir))
        shapes = {
            "1 process, memory": {},
            "1 process, Redis": {"GATEWAY_STORE": "redis", "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"},
            "2 workers, Redis": {
                "GATEWAY_WORKERS": "2", "GATEWAY_STORE": "redis", "REDIS_URL": f"redis://127.0.0.1:{redis.port}/1"
            },
        }  # fmt: skip
        targets = {}
        for index, (name, settings) in enumerate(shapes.items()):
            own = workdir / f"shape-{index}"
            own.mkdir()
            gateway = stack.enter_context(procs.gateway(own, nginx.port, stream.port, True, settings))
            targets[name] = (gateway.url, procs.create_virtual_key(gateway, LIMITS))
        samples = asyncio.run(measure(targets, rounds))
    print(f"TTFB of one stream, {rounds} per shape, taking turns; ms")
    print("| shape | median | p25 | p75 |\n|---|--:|--:|--:|")
    for name, values in samples.items():
        p25, _, p75 = statistics.quantiles(values, n=4)
        print(f"| {name} | {statistics.median(values):.3f} | {p25:.3f} | {p75:.3f} |")
    return 0


def parse_args() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300, help="streams through each shape (default 300)")
    rounds: int = parser.parse_args().rounds
    return rounds


def main() -> int:
    return procs.run_main("shapes", parse_args, bench)


if __name__ == "__main__":
    raise SystemExit(main())
