"""Getting an answer from an agent's upstreams: the next healthy target, retries with backoff, then the fallbacks.

Only failures before the first byte reaches the client are retried: a refused connection, a timeout before the
first byte, a 429 or a 5xx. Once a stream's first event has been relayed, trying again would send the client a
second beginning, so failures from then on end the stream with an error event instead (relay.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config.agents import Agent, Target
from gateway.config.routing import RoutingTable
from gateway.errors import ClientError, UpstreamError, UpstreamNotConfigured, UpstreamUnavailable
from gateway.exchange import Exchange
from gateway.observability.metrics import Metrics
from gateway.protocols.wire import Outbound
from gateway.proxy.breaker import Breakers
from gateway.upstream.base import Upstream, UpstreamRequest, UpstreamResponse

logger = logging.getLogger("gateway.dispatcher")

# The longest an upstream's Retry-After is waited out here; a longer one goes back to the client with the 429.
MAX_RETRY_AFTER = 10.0
# Backoff doubles per retry up to this many times the agent's first backoff.
MAX_BACKOFF_FACTOR = 16


@dataclass(frozen=True, slots=True)
class Failed:
    """Every attempt on an agent failed; `last` is what the client gets if no fallback does better."""

    last: UpstreamResponse | UpstreamError


class BufferedResponse:
    """An upstream error answer read whole, so its connection is free while the next attempt runs."""

    __slots__ = ("_body", "_headers", "content_type", "status")

    def __init__(self, status: int, content_type: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self._headers = headers
        self._body = body

    def relay_headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    async def start(self) -> None:
        pass

    async def read(self) -> bytes:
        return self._body

    async def iter_chunks(self) -> Any:
        yield self._body

    def close(self) -> None:
        pass


class Dispatcher:
    """Sends one client request to upstreams until one answers, as the agent's `retries`, `circuit_breaker` and
    `fallbacks` say. Breakers are per process; the rest is per request."""

    def __init__(
        self,
        upstreams: Callable[[str], Upstream],
        routes: Callable[[], RoutingTable],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._upstream_for = upstreams
        self._routes = routes
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._random = rng or random.Random()
        self.breakers = Breakers(metrics.circuit_changed, self._random)

    async def send(
        self,
        exchange: Exchange,
        agent: Agent,
        first: Outbound,
        *,
        headers: Mapping[str, str],
        fallback: Callable[[Agent], Awaitable[Outbound]],
    ) -> tuple[UpstreamResponse, Agent, Outbound]:
        """The first good answer, from `agent` (sent `first`) or else its fallbacks in order, with the agent that
        gave it and what it was sent. `fallback` prepares and admits a fallback agent; one its own limits refuse is
        skipped. When all fail, the last failure: an upstream's error answer is returned (to be relayed), our own
        error raised."""
        routes = self._routes()
        chain = [agent]
        for name in agent.spec.fallbacks:
            candidate = routes.match(name)
            if candidate is not None and candidate not in chain:
                chain.append(candidate)
        outcome: UpstreamResponse | Failed | None = None
        tried, sent = agent, first
        for index, candidate in enumerate(chain):
            if index:
                try:
                    prepared = await fallback(candidate)
                except ClientError as exc:  # its own limits refused it, or the request is too large for it
                    logger.info("model '%s' failed; fallback '%s' refused it: %s", tried.name, candidate.name, exc)
                    continue
                self._metrics.fell_back(tried.name, candidate.name)
                logger.info("model '%s' failed; falling back to '%s'", tried.name, candidate.name)
                exchange.requested_agent = agent.name
                exchange.agent = candidate.name
                tried, sent = candidate, prepared
            outcome = await self._attempts(exchange, candidate, sent, headers)
            if not isinstance(outcome, Failed):
                return outcome, candidate, sent
        assert isinstance(outcome, Failed)
        if isinstance(outcome.last, UpstreamError):
            raise outcome.last
        return outcome.last, tried, sent

    async def _attempts(
        self, exchange: Exchange, agent: Agent, sent: Outbound, headers: Mapping[str, str]
    ) -> UpstreamResponse | Failed:
        """Up to 1 + `retries` calls on the agent's targets, each sent `sent` with the target's model."""
        upstream = self._upstream_for(agent.provider)
        if all(target.missing_key for target in agent.targets):
            return Failed(_not_configured(agent))
        tried: list[Target] = []
        last: UpstreamResponse | UpstreamError = _cooling(agent)
        for attempt in range(agent.spec.retries + 1):
            target = self.breakers.choose(agent, tried, self._clock())
            if target is None:
                last = _cooling(agent) if not tried else last
                break
            tried.append(target)
            exchange.target = target.name
            exchange.pricing = target.pricing  # the answering target's prices are what the request cost
            exchange.upstream_model = target.upstream_model
            exchange.provider = agent.provider
            exchange.attempts += 1
            request = UpstreamRequest(agent, target, sent.path, sent.for_target(target), sent.stream, headers)
            result, wait = await self._attempt(exchange, upstream, request)
            if not isinstance(result, (UpstreamError, BufferedResponse)):
                return result
            last = result
            if attempt == agent.spec.retries:
                break
            delay = _backoff(agent.spec.retry_backoff, attempt, self._random)
            if wait is not None:
                if wait > MAX_RETRY_AFTER:
                    break  # the upstream asked for a long pause: the client hears it and decides
                others = [t for t in agent.targets if t is not target and not t.missing_key]
                # Its Retry-After binds the next call to that target; another target needs only the backoff.
                delay = delay if others else max(delay, wait)
            reason = result.error_class if isinstance(result, UpstreamError) else _status_class(result.status)
            self._metrics.retried(agent.name, target.name, reason)
            exchange.waited_ms += delay * 1000
            await self._sleep(delay)
        return Failed(last)

    async def _attempt(
        self, exchange: Exchange, upstream: Upstream, request: UpstreamRequest
    ) -> tuple[UpstreamResponse | UpstreamError, float | None]:
        """One call: a response to hand on, or the failure (an error, or an error answer read whole) and how long
        the upstream asked us to wait before the next."""
        agent, target = request.agent, request.target
        began = time.perf_counter()
        response: UpstreamResponse | None = None
        try:
            response = await upstream.send(request)
            if request.stream and response.status < 300:
                await response.start()  # the first byte: after it, this answer is the one
        except UpstreamNotConfigured as exc:
            return exc, None  # the target's fault, not its health
        except UpstreamError as exc:
            if response is not None:
                response.close()
            exchange.upstream_ms += (time.perf_counter() - began) * 1000
            self.breakers.record(agent, target, ok=False, now=self._clock())
            return exc, None
        finally:
            exchange.upstream_status = response.status if response is not None else exchange.upstream_status
        if not _retryable(response.status):
            exchange.upstream_ms += (time.perf_counter() - began) * 1000
            self.breakers.record(agent, target, ok=True, now=self._clock())  # a 4xx is the request's fault
            return response, None
        if response.status != 429:  # a 429 is a busy target, not a broken one: its Retry-After says when to return
            self.breakers.record(agent, target, ok=False, now=self._clock())
        try:
            body = await response.read()
        except UpstreamError as exc:
            return exc, None
        finally:
            exchange.upstream_ms += (time.perf_counter() - began) * 1000
        buffered = BufferedResponse(response.status, response.content_type, response.relay_headers(), body)
        return buffered, _retry_after(buffered.relay_headers())


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _status_class(status: int) -> str:
    return "upstream_rate_limited" if status == 429 else "upstream_server_error"


def _backoff(first: float, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half the step for sure, the other half at random, so that clients
    retrying together spread out without any of them retrying at once."""
    step: float = first * min(2**attempt, MAX_BACKOFF_FACTOR)
    return step / 2 + rng.uniform(0, step / 2)


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    """Seconds the upstream asked to wait: `retry-after-ms` (OpenAI's, more precise) or `retry-after` in seconds
    (an HTTP date is not honoured: clocks differ)."""
    values = dict(headers)
    for name, scale in ((b"retry-after-ms", 0.001), (b"retry-after", 1.0)):
        raw = values.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def _cooling(agent: Agent) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"Every upstream of model '{agent.name}' is cooling down after repeated failures; retry shortly."
    )


def _not_configured(agent: Agent) -> UpstreamNotConfigured:
    return UpstreamNotConfigured(
        f"Model '{agent.name}' is not available: its upstream key is not configured "
        f"(the gateway's operator must set {' or '.join(agent.missing_keys())})."
    )
