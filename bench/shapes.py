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
import statistics
import tempfile
from pathlib import Path

import loadgen
import procs

CHAT = "/v1/chat/completions"
LIMITS = {"rpm": 10_000_000, "tpm": 1_000_000_000}


async def measure(targets: dict[str, tuple[str, str]], rounds: int) -> dict[str, list[float]]:
    """TTFB in ms per shape, `rounds` streams each, the shapes taking turns on kept-alive connections (as
    `loadgen.sequential_streams` does, with a key per gateway)."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(loadgen.session(limit=1)) for name in targets}
        for warming in (True,) * 3 + (False,) * rounds:
            for name, (url, key) in targets.items():
                timing = await asyncio.wait_for(loadgen.stream_once(clients[name], url + CHAT, key), timeout=30)
                if not timing.complete:
                    raise procs.BenchError(f"a stream through {name} did not complete")
                if not warming:
                    samples[name].append(timing.ttfb_ms)
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
