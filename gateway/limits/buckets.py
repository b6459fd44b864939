"""Rate-limit arithmetic: token buckets and period quotas taken all together or not at all. Pure: values in,
values out, time passed in. The memory limiter runs this code; the Redis limiter runs the same rules in Lua."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from gateway.protocols import wire

Kind = Literal["requests", "tokens"]
# The most tokens a bucket or quota holds and a request reserves or settles (protocols/wire.py).
MAX_TOKENS = wire.MAX_TOKENS


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: holds up to `capacity`, refills at `per_minute / 60` a second, starts full.

    A charge larger than the capacity is allowed when the bucket is full and leaves it in debt, so one big
    request is never refused forever; the debt delays what follows instead.
    """

    id: str  # storage key, e.g. "key:key_ab12:requests"
    kind: Kind
    per_minute: float
    capacity: float
    label: str  # what a 429 message names: "requests per minute of this key"

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True, slots=True)
class Quota:
    """A number of tokens per calendar period; its counter lives under an id that names the period, so it resets by
    the calendar, never by a stale counter."""

    id: str  # e.g. "quota:key_ab12:day:2026-11-22"
    limit: int
    resets_at: float  # epoch seconds
    label: str  # "tokens per day of this key"


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request takes: `cost` from each bucket of a kind, `tokens` from each quota.

    A quota admits a request while it has room for `prompt_tokens` (the part a request cannot do without); the
    reservation is the whole estimate, settled later, so the last request admitted may overshoot by its output.
    """

    buckets: tuple[Bucket, ...]
    quotas: tuple[Quota, ...]
    requests: int
    tokens: int
    prompt_tokens: int = 0

    def __post_init__(self) -> None:
        # Never less than nothing, never more than any limit holds: a negative reservation would lower a counter
        # that a concurrent settlement then clamps at 0, and settling it would add the difference back for good.
        object.__setattr__(self, "tokens", bounded(self.tokens))
        object.__setattr__(self, "prompt_tokens", bounded(self.prompt_tokens))

    def cost(self, bucket: Bucket) -> float:
        return self.requests if bucket.kind == "requests" else self.tokens


@dataclass(frozen=True, slots=True)
class Level:
    """A bucket's content at a moment."""

    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class BucketState:
    """What the headers need of one bucket after a decision."""

    bucket: Bucket
    remaining: float
    reset_seconds: float  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    states: tuple[BucketState, ...]
    retry_after: float = 0.0  # seconds, when refused
    refused_by: str = ""  # the label of the limit that refused
    quota: Quota | None = None  # set when a quota refused
    refused_kind: Kind = "requests"  # the kind of the bucket that refused


def bounded(tokens: int) -> int:
    """A token count within 0 and `MAX_TOKENS`."""
    return min(max(tokens, 0), MAX_TOKENS)


def bounded_delta(delta: int) -> int:
    """A settlement within what a reservation can have been: a refund of at most `MAX_TOKENS`, a charge of at
    most as much."""
    return min(max(delta, -MAX_TOKENS), MAX_TOKENS)


def refill(level: Level | None, bucket: Bucket, now: float) -> float:
    if level is None:
        return bucket.capacity
    return min(bucket.capacity, level.tokens + max(0.0, now - level.at) * bucket.rate)


def state(bucket: Bucket, tokens: float) -> BucketState:
    missing = max(0.0, bucket.capacity - tokens)
    return BucketState(bucket, tokens, missing / bucket.rate if bucket.rate > 0 else math.inf)


def take(
    charge: Charge, levels: list[Level | None], used: list[int], now: float
) -> tuple[Decision, list[Level], list[int]]:
    """Take `charge` from every bucket and quota, or from none. `levels` and `used` are the stored states in the
    order of `charge.buckets` and `charge.quotas`; returns the decision and the states to store (unchanged when
    refused)."""
    current = [refill(level, bucket, now) for level, bucket in zip(levels, charge.buckets, strict=True)]
    waits = []
    for tokens, bucket in zip(current, charge.buckets, strict=True):
        needed = min(charge.cost(bucket), bucket.capacity)  # a charge over capacity needs a full bucket
        if tokens < needed:
            waits.append(((needed - tokens) / bucket.rate if bucket.rate > 0 else math.inf, bucket.label, bucket.kind))
    for count, quota in zip(used, charge.quotas, strict=True):
        if count >= quota.limit or count + charge.prompt_tokens > quota.limit:
            states = tuple(state(b, t) for b, t in zip(charge.buckets, current, strict=True))
            decision = Decision(False, states, max(0.0, quota.resets_at - now), quota.label, quota)
            return decision, [Level(t, now) for t in current], used
    if waits:
        wait, label, kind = max(waits)
        states = tuple(state(b, t) for b, t in zip(charge.buckets, current, strict=True))
        return Decision(False, states, wait, label, None, kind), [Level(t, now) for t in current], used
    after = [tokens - charge.cost(bucket) for tokens, bucket in zip(current, charge.buckets, strict=True)]
    states = tuple(state(b, t) for b, t in zip(charge.buckets, after, strict=True))
    return Decision(True, states), [Level(t, now) for t in after], [u + charge.tokens for u in used]


def settle(level: Level | None, bucket: Bucket, delta: float, now: float) -> Level:
    """Correct a token bucket once real usage is known: `delta` > 0 charges more (debt allowed), < 0 refunds."""
    tokens = refill(level, bucket, now) - delta
    return Level(min(bucket.capacity, tokens), now)


def tightest(states: tuple[BucketState, ...], kind: Kind) -> BucketState | None:
    """The bucket of a kind closest to refusing: what the `x-ratelimit-*-<kind>` headers describe."""
    of_kind = [s for s in states if s.bucket.kind == kind]
    if not of_kind:
        return None
    return min(of_kind, key=lambda s: (s.remaining / s.bucket.capacity, s.remaining))


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds <= 0:
        return "0s"
    millis = math.ceil(seconds * 1000)
    if millis < 1000:
        return f"{millis}ms"
    if millis < 60_000:
        return f"{millis / 1000:g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's rate-limit headers for the tightest bucket of each kind (none for a kind with no bucket)."""
    out = []
    kinds: tuple[Kind, ...] = ("requests", "tokens")
    for kind in kinds:
        state = tightest(decision.states, kind)
        if state is None:
            continue
        out += [
            (f"x-ratelimit-limit-{kind}".encode(), str(int(state.bucket.per_minute)).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, math.floor(state.remaining))).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), duration(state.reset_seconds).encode()),
        ]
    if not decision.allowed:
        wait = max(decision.retry_after, 0.001)
        out += [
            (b"retry-after", str(math.ceil(wait)).encode()),
            (b"retry-after-ms", str(math.ceil(wait * 1000)).encode()),
        ]
    return out
