"""Which limits apply to a request: the buckets and quotas of its key, its agent, or its address. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.config.agents import Agent
from gateway.keys import KeyRecord
from gateway.limits.buckets import Bucket, Charge, Quota


@dataclass(frozen=True, slots=True)
class Defaults:
    """Limits for callers that have none of their own (RATE_LIMIT_REQUESTS_PER_MINUTE)."""

    requests_per_minute: int | None = None


def charge_for(
    key: KeyRecord | None,
    agent: Agent,
    *,
    client: str | None,
    tokens: int,
    prompt_tokens: int,
    now: datetime,
    defaults: Defaults,
    count_request: bool = True,
) -> Charge:
    """One request's charge: 1 from every request bucket, `tokens` (an estimate, settled later) from every token
    bucket and quota. Without `count_request` the caller's own request buckets (key or address) are left out: a
    fallback agent's charge, for a request they counted already."""
    buckets: list[Bucket] = []
    quotas: list[Quota] = []
    spec = agent.spec
    if spec.rate_limit.enabled:
        rpm = spec.rate_limit.requests_per_minute
        burst = spec.rate_limit.burst_size or rpm
        buckets.append(
            Bucket(f"agent:{agent.name}:rate", "requests", rpm, burst, f"requests per minute of `{agent.name}`")
        )
    if spec.limits.max_requests_per_minute:
        rpm = spec.limits.max_requests_per_minute
        buckets.append(
            Bucket(f"agent:{agent.name}:max", "requests", rpm, rpm, f"requests per minute of `{agent.name}`")
        )
    if key is not None:
        limits = key.limits
        key_rpm = limits.rpm or defaults.requests_per_minute
        if key_rpm and count_request:
            burst = limits.rpm_burst or key_rpm
            label = "requests per minute of this key"
            buckets.append(Bucket(f"key:{key.id}:requests", "requests", key_rpm, burst, label))
        if limits.tpm:
            burst = limits.tpm_burst or limits.tpm
            buckets.append(Bucket(f"key:{key.id}:tokens", "tokens", limits.tpm, burst, "tokens per minute of this key"))
        quotas += key_quotas(key, now)
    elif client is not None and defaults.requests_per_minute and count_request:
        rpm = defaults.requests_per_minute
        buckets.append(Bucket(f"ip:{client}:requests", "requests", rpm, rpm, "requests per minute of this address"))
    return Charge(tuple(buckets), tuple(quotas), 1, tokens, prompt_tokens)


def key_quotas(key: KeyRecord, now: datetime) -> list[Quota]:
    """The key's quotas for the periods `now` falls in."""
    quotas = []
    if key.quotas.tokens_per_day:
        tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        day = now.date().isoformat()
        quotas.append(
            Quota(f"quota:{key.id}:day:{day}", key.quotas.tokens_per_day, tomorrow.timestamp(), "tokens per day")
        )
    if key.quotas.tokens_per_month:
        first_of_next = (now.replace(day=28) + timedelta(days=4)).replace(day=1)
        next_month = datetime.combine(first_of_next.date(), datetime.min.time(), UTC)
        month = now.date().isoformat()[:7]
        quotas.append(
            Quota(
                f"quota:{key.id}:month:{month}", key.quotas.tokens_per_month, next_month.timestamp(), "tokens per month"
            )
        )
    return quotas


def client_address(scope: Mapping[str, Any], trusted: Sequence[str]) -> str | None:
    """The caller's address: the peer, or when the peer is a trusted proxy, the nearest address in
    `X-Forwarded-For` that is not one (a client cannot spoof its way past the proxies we trust)."""
    peer = scope.get("client")
    address = str(peer[0]) if peer else None
    if address is None or address not in trusted:
        return address
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops = [hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip()]
            for hop in reversed(hops):
                if hop not in trusted:
                    return str(hop)
    return address
