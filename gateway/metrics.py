"""Prometheus metrics: what the gateway counts, and the /metrics endpoint that shows it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.exchange import Exchange


class Metrics:
    """The gateway's counters, histograms and gauges. Every method is cheap and never raises."""

    def finished(self, exchange: Exchange) -> None:
        """A request is over (after its last byte): count it by agent, status and error class, its durations,
        tokens, and any limit that refused it."""

    def stream_opened(self) -> None:
        """A stream started relaying to its client."""

    def stream_closed(self) -> None:
        """A stream ended, however it ended."""

    def retried(self, agent: str, target: str, reason: str) -> None:
        """An upstream call is tried again; `reason` is the error class of the failed attempt."""

    def fell_back(self, from_agent: str, to_agent: str) -> None:
        """Every target of `from_agent` failed; `to_agent` is tried next."""

    def circuit_changed(self, agent: str, target: str, state: str) -> None:
        """A target's circuit breaker moved to `state`: closed, open or half_open."""

    def redis_error(self, component: str) -> None:
        """A Redis call failed; `component`: store, limiter or sessions."""

    def session_fallback(self, store: str) -> None:
        """A session operation was served from memory because its Redis was unreachable."""

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics in Prometheus's text format."""
        return Response(b"", media_type="text/plain; version=0.0.4; charset=utf-8")
