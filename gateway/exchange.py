"""What the gateway learns about one request while serving it, read by the access log and accounting."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.pricing import Pricing, usd

# What nginx logs for a client that left before its answer; no response is ever sent with it.
CLIENT_CLOSED_REQUEST = 499

if TYPE_CHECKING:
    from gateway.limits.buckets import Charge, Decision
    from gateway.limits.concurrency import Lease


@dataclass(slots=True)
class Exchange:
    """One request's facts, filled in as the request moves along; kept in `scope["state"]["exchange"]`."""

    request_id: str
    method: str
    path: str
    status: int = 0
    key_id: str | None = None
    agent: str | None = None
    upstream_status: int | None = None
    stream: str | None = None  # completed | upstream_error | gateway_error | client_disconnected | cut_at_shutdown
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0  # the part of prompt_tokens read from the provider's cache
    pricing: Pricing | None = None  # the prices of the target that answered (or was tried last)
    usage_estimated: bool = False
    duration_ms: float = 0.0
    ratelimit: Decision | None = None  # the limiter's answer: the x-ratelimit-* headers come from it
    charge: Charge | None = None  # what was taken, to settle once the real usage is known
    reserved_tokens: int = 0
    leases: dict[str, Lease] = field(default_factory=dict)  # held slots: `key`, `agent`
    limited: str | None = None  # the kind of gateway limit that refused it: rate, quota, concurrency, cooldown
    queued: bool = False  # it waited for a concurrency slot
    session_id: str | None = None
    session_storage: str | None = None  # memory | redis: where the session was served from
    requested_agent: str | None = None  # the agent the model named, when a fallback agent answered instead
    target: str | None = None  # the upstream target of the last attempt (its name: host, or as configured)
    upstream_model: str | None = None  # the model that target was sent
    provider: str | None = None  # the provider of the agent that answered (or was tried last)
    attempts: int = 0  # upstream calls made; retries = attempts - 1
    upstream_ms: float = 0.0  # time spent waiting on the upstream, every attempt
    waited_ms: float = 0.0  # backoff between attempts: neither the upstream's time nor the gateway's work
    overhead_ms: float | None = None  # time in the gateway itself until the response started
    ttfb_ms: float | None = None  # from the request's arrival to the first byte of the response
    error_class: str | None = None  # the closed vocabulary of errors.py: client_*, policy_*, upstream_*, gateway_*

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    @property
    def cost_nanos(self) -> int | None:
        """What the request cost in nano-dollars, by the prices of its target; None where nothing says."""
        if self.pricing is None or self.prompt_tokens is None:
            return None
        return self.pricing.cost(self.prompt_tokens, self.completion_tokens or 0, self.cached_tokens)

    def classify(self) -> str | None:
        """The error class of a finished request, None for a success."""
        if self.error_class is not None:
            return self.error_class
        if self.status == CLIENT_CLOSED_REQUEST or self.stream == "client_disconnected":
            return "client_disconnected"
        if self.status < 400:
            return None
        if self.upstream_status == self.status:  # the upstream's own answer, relayed
            if self.status == 429:
                return "upstream_rate_limited"
            return "upstream_client_error" if self.status < 500 else "upstream_server_error"
        return "gateway_internal" if self.status >= 500 else "client_bad_request"

    def log_fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "key_id": self.key_id,
            "agent": self.agent,
            "upstream_status": self.upstream_status,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": usd(cost) if (cost := self.cost_nanos) is not None else None,
            "session_id": self.session_id,
            "requested_agent": self.requested_agent,
            "target": self.target,
            "retries": self.retries,
            "overhead_ms": self.overhead_ms,
            "ttfb_ms": self.ttfb_ms,
            "error_class": self.classify(),
        }


def exchange_of(scope: MutableMapping[str, Any]) -> Exchange:
    exchange: Exchange = scope["state"]["exchange"]
    return exchange
