"""Prometheus metrics: what the gateway counts, and the /metrics endpoint that shows it.

Every label value comes from a bounded set: agent names from the route config ("" when no agent was matched: an
unknown model is never a label), targets from the config, `route` from the fixed table `ROUTES` ("other" for any
other path), error classes from the closed vocabulary of `errors.py` ("" for a success)::

    gateway_requests_total{route, agent, status, error_class}  counter    every request, when its last byte is sent
    gateway_request_duration_seconds{route, agent}             histogram  arrival to last byte (streams included)
    gateway_overhead_seconds{route, agent}                     histogram  time in the gateway outside the upstream
    gateway_time_to_first_byte_seconds{route, agent}           histogram  streams: arrival to the first event relayed
    gateway_upstream_duration_seconds{agent}                   histogram  waiting on upstreams, all attempts
    gateway_tokens_total{agent, kind, estimated}               counter    kind: prompt|completion
    gateway_cost_usd_total{agent}                              counter    USD, from the agents' pricing
    gen_ai_client_token_usage{gen_ai_*}                        histogram  GenAI conventions: tokens per operation
    gen_ai_client_operation_duration_seconds{gen_ai_*, error_type}  histogram  GenAI conventions: upstream time
    gateway_streams_total{agent, outcome}                      counter    completed|upstream_error|gateway_error|
                                                                          client_disconnected|cut_at_shutdown
    gateway_active_streams                                     gauge      streams relaying now (summed over workers)
    gateway_limit_rejections_total{agent, limit}               counter    limit: rate|quota|concurrency|cooldown
    gateway_queued_requests_total{agent}                       counter    requests that waited for a free slot
    gateway_retries_total{agent, target, reason}               counter    reason: the failed attempt's error class
    gateway_fallbacks_total{from_agent, to_agent}              counter    an agent's targets all failed
    gateway_circuit_state{agent, target}                       gauge      0 closed, 1 half_open, 2 open
    gateway_circuit_transitions_total{agent, target, state}    counter    a breaker moved to `state`
    gateway_redis_errors_total{component}                      counter    component: store|limiter|sessions

Under a multi-process server (gunicorn workers), set `PROMETHEUS_MULTIPROC_DIR` to an empty directory before the
server starts: prometheus-client then keeps every worker's values in files there, and /metrics, whichever worker
answers it, merges them. Without it each `Metrics` has a registry of its own (never the global default one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from gateway.exchange import Exchange
from gateway.pricing import usd

# Whole requests and upstream calls of LLMs: from a cached answer in milliseconds to a long generation in minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# The gateway's own time: a fraction of a millisecond in memory, a few with Redis round trips, more only when
# something is wrong (a queue for a concurrency slot, a slow Redis).
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# The paths a `route` label may name, so that a client probing random paths cannot grow the series.
ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/chat",
        "/v1/chat/stream",
        "/v1/sessions",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/ui",
    }
)
ROUTE_PREFIXES = (
    ("/v1/sessions/", "/v1/sessions/{session_id}"),
    ("/v1/models/", "/v1/models/{model}"),
    ("/admin/", "/admin"),
    ("/ui/", "/ui"),  # the console, every page of it
)
OTHER_ROUTE = "other"

# The GenAI semantic conventions' advice for gen_ai.client.token.usage and gen_ai.client.operation.duration.
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# gen_ai.operation.name by the route the client called.
GENAI_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/messages": "chat", "/v1/responses": "chat",
                    "/v1/chat": "chat", "/v1/chat/stream": "chat", "/v1/completions": "text_completion",
                    "/v1/embeddings": "embeddings"}  # fmt: skip

# Ordered so that the worst state is the largest: the max over workers (and over time, in PromQL) is the one to see.
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


def route_of(path: str) -> str:
    """The `route` label for a request path."""
    if path in ROUTES:
        return path
    for prefix, route in ROUTE_PREFIXES:
        if path.startswith(prefix):
            return route
    return OTHER_ROUTE


@dataclass(slots=True)
class _Series:
    """The labelled children one finished request of a (route, agent) touches, looked up once and kept."""

    duration: Histogram
    overhead: Histogram
    ttfb: Histogram
    upstream: Histogram
    prompt: Counter
    prompt_estimated: Counter
    completion: Counter
    completion_estimated: Counter


class Metrics:
    """The gateway's counters, histograms and gauges. Every method is cheap and never raises.

    `finished` runs on every request: the children it touches are kept per label tuple, so after the first
    request of a kind it costs dictionary lookups and the increments themselves, not `labels()` calls.
    """

    def __init__(self) -> None:
        # prometheus-client chooses where values live (memory or the directory's files) from this variable, when
        # it is imported; the endpoint has to read them from the same place.
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        if multiprocess:
            # The metrics write their files and are registered nowhere: the collector reads every worker's files.
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            into: CollectorRegistry | None = None
        else:
            ProcessCollector(registry=self.registry)
            into = self.registry

        self._requests = Counter(
            "gateway_requests_total",
            "Requests served, by route, agent, HTTP status and error class (empty for a success).",
            ("route", "agent", "status", "error_class"),
            registry=into,
        )
        self._duration = Histogram(
            "gateway_request_duration_seconds",
            "From a request's arrival to its last byte sent, streams included.",
            ("route", "agent"),
            buckets=DURATION_BUCKETS,
            registry=into,
        )
        self._overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself until the response started, upstream calls excluded.",
            ("route", "agent"),
            buckets=OVERHEAD_BUCKETS,
            registry=into,
        )
        self._ttfb = Histogram(
            "gateway_time_to_first_byte_seconds",
            "From a stream request's arrival to the first event relayed to its client.",
            ("route", "agent"),
            buckets=DURATION_BUCKETS,
            registry=into,
        )
        self._upstream = Histogram(
            "gateway_upstream_duration_seconds",
            "Time a request spent waiting on upstreams, every attempt included, backoff excluded.",
            ("agent",),
            buckets=DURATION_BUCKETS,
            registry=into,
        )
        self._tokens = Counter(
            "gateway_tokens_total",
            "Tokens used, by kind (prompt, completion) and whether they were estimated (no usage from upstream).",
            ("agent", "kind", "estimated"),
            registry=into,
        )
        # The OpenTelemetry GenAI client metrics, as Prometheus names them (dots as underscores), with the
        # conventions' bucket boundaries: what a tracing backend's GenAI dashboards read.
        genai = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
        self._genai_tokens = Histogram(
            "gen_ai_client_token_usage",
            "GenAI semantic conventions: tokens used per operation, by gen_ai_token_type (input, output).",
            (*genai, "gen_ai_token_type"),
            buckets=GENAI_TOKEN_BUCKETS,
            registry=into,
        )
        self._genai_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI semantic conventions: duration of an operation on the upstream, error_type set on failure.",
            (*genai, "error_type"),
            buckets=GENAI_DURATION_BUCKETS,
            registry=into,
        )
        self._streams = Counter(
            "gateway_streams_total",
            "Streams relayed, by how they ended: completed, upstream_error, gateway_error, client_disconnected or "
            "cut_at_shutdown.",
            ("agent", "outcome"),
            registry=into,
        )
        self._open_streams = 0  # this process's, for the console; the gauge may be summed over workers
        self._active_streams = Gauge(
            "gateway_active_streams",
            "Streams relaying to their clients now.",
            registry=into,
            # A stream belongs to one worker: the total is the sum over the workers alive.
            multiprocess_mode="livesum",
        )
        self._rejections = Counter(
            "gateway_limit_rejections_total",
            "Requests refused by one of the gateway's own limits: rate, quota, concurrency or cooldown.",
            ("agent", "limit"),
            registry=into,
        )
        self._cost = Counter(
            "gateway_cost_usd_total",
            "What requests cost in US dollars, from the agents' `pricing` (agents without prices count nothing).",
            ("agent",),
            registry=into,
        )
        self._queued = Counter(
            "gateway_queued_requests_total",
            "Requests that waited for a concurrency slot.",
            ("agent",),
            registry=into,
        )
        self._retries = Counter(
            "gateway_retries_total",
            "Upstream calls tried again, by the error class of the attempt that failed.",
            ("agent", "target", "reason"),
            registry=into,
        )
        self._fallbacks = Counter(
            "gateway_fallbacks_total",
            "Requests passed to a fallback agent because every target of an agent failed.",
            ("from_agent", "to_agent"),
            registry=into,
        )
        self._circuit = Gauge(
            "gateway_circuit_state",
            "A target's circuit breaker: 0 closed, 1 half_open (probing), 2 open (skipped).",
            ("agent", "target"),
            registry=into,
            # Each worker keeps its own breakers: show the most open one among the workers alive, one series per
            # target (liveall would add a pid label, a new series each time a worker is replaced).
            multiprocess_mode="livemax",
        )
        self._transitions = Counter(
            "gateway_circuit_transitions_total",
            "Circuit breaker changes, by the state entered; counts an open that a scrape of the gauge would miss.",
            ("agent", "target", "state"),
            registry=into,
        )
        self._redis_errors = Counter(
            "gateway_redis_errors_total",
            "Redis calls that failed, by the component that made them: store, limiter or sessions.",
            ("component",),
            registry=into,
        )
        self._request_children: dict[tuple[str, str, int, str], Counter] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._stream_children: dict[tuple[str, str], Counter] = {}

    def finished(self, exchange: Exchange) -> None:
        """A request is over (after its last byte): count it by agent, status and error class, its durations,
        tokens, and any limit that refused it."""
        route = route_of(exchange.path)
        agent = exchange.agent or ""
        key = (route, agent, exchange.status, exchange.classify() or "")
        requests = self._request_children.get(key)
        if requests is None:
            requests = self._request_children[key] = self._requests.labels(route, agent, str(key[2]), key[3])
        requests.inc()

        series = self._series.get((route, agent))
        if series is None:
            series = self._series[(route, agent)] = self._new_series(route, agent)
        series.duration.observe(exchange.duration_ms / 1000)
        if exchange.overhead_ms is not None:
            series.overhead.observe(exchange.overhead_ms / 1000)
        if exchange.attempts:
            series.upstream.observe(exchange.upstream_ms / 1000)
        estimated = exchange.usage_estimated
        if exchange.prompt_tokens:
            (series.prompt_estimated if estimated else series.prompt).inc(max(0, exchange.prompt_tokens))
        if exchange.completion_tokens:
            (series.completion_estimated if estimated else series.completion).inc(max(0, exchange.completion_tokens))
        cost = exchange.cost_nanos
        if cost:
            self._cost.labels(agent).inc(usd(cost))
        operation = GENAI_OPERATIONS.get(route)
        if operation is not None and exchange.attempts and exchange.upstream_model is not None:
            self._genai(exchange, operation)

        if exchange.stream is not None:
            # Only a stream's first byte says something its duration does not: a whole answer starts when it ends.
            if exchange.ttfb_ms is not None:
                series.ttfb.observe(exchange.ttfb_ms / 1000)
            outcome = (agent, exchange.stream)
            streams = self._stream_children.get(outcome)
            if streams is None:
                streams = self._stream_children[outcome] = self._streams.labels(*outcome)
            streams.inc()
        if exchange.limited is not None:
            self._rejections.labels(agent, exchange.limited).inc()
        if exchange.queued:
            self._queued.labels(agent).inc()

    def _genai(self, exchange: Exchange, operation: str) -> None:
        """The GenAI client metrics of a request that reached an upstream (the model is the one it was sent)."""
        labels = (operation, exchange.provider or "", exchange.upstream_model or "")
        failed = exchange.status >= 400 or exchange.stream in ("upstream_error", "gateway_error")
        error = (exchange.classify() or "error") if failed else ""
        self._genai_duration.labels(*labels, error).observe(exchange.upstream_ms / 1000)
        if exchange.prompt_tokens is not None:
            self._genai_tokens.labels(*labels, "input").observe(exchange.prompt_tokens)
        if exchange.completion_tokens is not None:
            self._genai_tokens.labels(*labels, "output").observe(exchange.completion_tokens)

    def _new_series(self, route: str, agent: str) -> _Series:
        return _Series(
            duration=self._duration.labels(route, agent),
            overhead=self._overhead.labels(route, agent),
            ttfb=self._ttfb.labels(route, agent),
            upstream=self._upstream.labels(agent),
            prompt=self._tokens.labels(agent, "prompt", "false"),
            prompt_estimated=self._tokens.labels(agent, "prompt", "true"),
            completion=self._tokens.labels(agent, "completion", "false"),
            completion_estimated=self._tokens.labels(agent, "completion", "true"),
        )

    def stream_opened(self) -> None:
        """A stream started relaying to its client."""
        self._open_streams += 1
        self._active_streams.inc()

    def stream_closed(self) -> None:
        """A stream ended, however it ended."""
        self._open_streams -= 1
        self._active_streams.dec()

    def open_streams(self) -> int:
        """Streams relaying now, in this process."""
        return self._open_streams

    def retried(self, agent: str, target: str, reason: str) -> None:
        """An upstream call is tried again; `reason` is the error class of the failed attempt."""
        self._retries.labels(agent, target, reason).inc()

    def fell_back(self, from_agent: str, to_agent: str) -> None:
        """Every target of `from_agent` failed; `to_agent` is tried next."""
        self._fallbacks.labels(from_agent, to_agent).inc()

    def circuit_changed(self, agent: str, target: str, state: str) -> None:
        """A target's circuit breaker moved to `state`: closed, open or half_open."""
        value = CIRCUIT_STATES.get(state)
        if value is None:  # not a state of ours: a label of it would not be bounded
            return
        self._circuit.labels(agent, target).set(value)
        self._transitions.labels(agent, target, state).inc()

    def redis_error(self, component: str) -> None:
        """A Redis call failed; `component`: store, limiter or sessions."""
        self._redis_errors.labels(component).inc()

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics in the format the scraper asks for: Prometheus text, or OpenMetrics."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), headers={"content-type": content_type})
