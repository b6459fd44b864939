"""The Python load clients: an open-loop fixed-rate generator and streaming clients that time the first event.

They run on uvloop with aiohttp, the cheapest client at hand, because on 2 cores the client's CPU is taken from
the server it measures. The gateway and the direct runs use the same client, so its own cost cancels out in the
"added" numbers. Every loop is bounded by a request count and an overall deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import uvloop
from procs import BenchError

T = TypeVar("T")

CHAT_BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say ok."}],"max_tokens":8}'
# The same request in Anthropic's Messages format, for the Messages door on the same OpenAI-shaped stand-in.
MESSAGES_BODY = b'{"model":"bench","max_tokens":8,"messages":[{"role":"user","content":"Say ok."}]}'
STREAM_BODY = b'{"model":"bench-stream","messages":[{"role":"user","content":"Count."}],"stream":true}'
DONE = b"data: [DONE]"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def headers(api_key: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {api_key}"}


def session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


@dataclass(frozen=True)
class RateResult:
    latencies_ms: list[float]  # of the requests that succeeded, measured from their scheduled send time
    errors: int
    lag_p99_ms: float  # how late the generator itself started sends: large values mean the client fell behind

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[p - 1]


async def fixed_rate(url: str, rate: float, seconds: float, api_key: str, body: bytes = CHAT_BODY) -> RateResult:
    """Send `rate * seconds` requests on a fixed timetable, whether or not earlier ones have answered.

    A closed loop would wait for a slow answer before sending the next request and so hide the slowness
    (coordinated omission); here latency counts from when the request was due, not from when it went out.
    """
    count = round(rate * seconds)
    lags: list[float] = []
    async with session(limit=512) as client:

        async def one(due: float) -> float | None:
            lags.append(time.perf_counter() - due)
            try:
                async with client.post(url, data=body, headers=headers(api_key)) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError):
                return None
            return (time.perf_counter() - due) * 1000 if ok else None

        start = time.perf_counter() + 0.01
        tasks = []
        for index in range(count):
            due = start + index / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(due)))
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    latencies = [r for r in results if r is not None]
    if not latencies:
        raise BenchError(f"not one of {count} requests to {url} succeeded")
    lag_p99 = statistics.quantiles(lags, n=100, method="inclusive")[98] * 1000
    return RateResult(latencies, count - len(latencies), lag_p99)


@dataclass(frozen=True)
class StreamTiming:
    ttfb_ms: float  # until the first chunk holding a `data:` event
    total_ms: float  # until the response ended
    complete: bool  # 200, and every event through `data: [DONE]` arrived


async def stream_once(client: aiohttp.ClientSession, url: str, api_key: str) -> StreamTiming:
    started = time.perf_counter()
    ttfb = 0.0
    chunks = []
    async with client.post(url, data=STREAM_BODY, headers=headers(api_key)) as response:
        async for chunk in response.content.iter_any():
            if not ttfb and b"data:" in chunk:
                ttfb = time.perf_counter() - started
            chunks.append(chunk)
        status = response.status
    total = time.perf_counter() - started
    body = b"".join(chunks)
    return StreamTiming(ttfb * 1000, total * 1000, status == 200 and body.rstrip().endswith(DONE))


async def sequential_streams(urls: dict[str, str], count: int, api_key: str) -> dict[str, list[StreamTiming]]:
    """`count` streams per target, one at a time, each target on its own kept-alive connection: the latency of a
    stream when nothing else is going on. The targets take turns, so a burst of noise on this shared machine
    lands on both sides of the comparison rather than on one."""
    timings: dict[str, list[StreamTiming]] = {name: [] for name in urls}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(session(limit=1)) for name in urls}
        for _ in range(count):
            for name, url in urls.items():
                timings[name].append(await asyncio.wait_for(stream_once(clients[name], url, api_key), timeout=30))
    return timings


@dataclass(frozen=True)
class Round:
    seconds: float  # from the first request sent to the last stream ended
    timings: list[StreamTiming]

    @property
    def streams_per_second(self) -> float:
        return len(self.timings) / self.seconds


async def concurrent_streams(url: str, streams: int, rounds: int, api_key: str) -> list[Round]:
    """`rounds` times: open `streams` streams at once and wait for all of them to end."""
    results = []
    async with session(limit=0) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            batch = [stream_once(client, url, api_key) for _ in range(streams)]
            timings = await asyncio.wait_for(asyncio.gather(*batch), timeout=60)
            results.append(Round(time.perf_counter() - started, timings))
    return results
