"""Admission: the size, concurrency, rate and quota limits a request must pass, and the settling after it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.config.agents import Agent
from gateway.errors import QuotaExceeded, RateLimited
from gateway.exchange import Exchange
from gateway.keys import KeyRecord
from gateway.limits.base import Limiter
from gateway.limits.buckets import Charge, bounded
from gateway.limits.concurrency import Slots
from gateway.limits.policy import Defaults, charge_for, client_address, key_quotas
from gateway.protocols.wire import Outbound, Wire
from gateway.store.base import Store

logger = logging.getLogger("gateway.guard")

DEFAULT_COOLDOWN = 60.0


class Guard:
    """Lets a request through every limit that applies to it, or refuses it with the limit's own answer."""

    def __init__(
        self,
        limiter: Limiter,
        store: Store,
        *,
        defaults: Defaults,
        queue_timeout: float,
        trusted_proxies: Sequence[str],
    ) -> None:
        self.limiter = limiter
        self._store = store
        self._seeded: set[str] = set()  # quota counters this process has started from recorded usage
        self._defaults = defaults
        self._queue_timeout = queue_timeout
        self._trusted = tuple(trusted_proxies)
        self._slots = Slots()
        self._settling: set[asyncio.Task[None]] = set()
        # Cooldowns are per process: refusals seen here, and until when a key is refused outright.
        self._refusals: dict[str, list[float]] = {}
        self._cooling: dict[str, float] = {}

    async def admit(
        self,
        exchange: Exchange,
        *,
        key: KeyRecord | None,
        agent: Agent,
        wire: Wire,
        outbound: Outbound,
        scope: Mapping[str, Any],
    ) -> None:
        """Check and take; on success the exchange holds what `finish` must give back or settle."""
        self._check_cooldown(exchange, key)
        client = None if key is not None else client_address(scope, self._trusted)
        await self._take(exchange, key, agent, wire, outbound, client=client, first=True)

    async def admit_fallback(
        self, exchange: Exchange, *, key: KeyRecord | None, agent: Agent, wire: Wire, outbound: Outbound
    ) -> None:
        """Move the request to a fallback agent, admitted by its own limits as the first agent was: what the agent
        before it held is given back (its token reservation, since it answered nothing; its slot), then the
        fallback's slot, buckets and the key's tokens are taken. The key's request count is not taken again: it is
        still the one request."""
        agent_lease = exchange.leases.pop("agent", None)
        if agent_lease is not None:
            agent_lease.release()
        if exchange.charge is not None and exchange.reserved_tokens:
            self._settle_later(exchange.charge, -exchange.reserved_tokens)
        exchange.charge, exchange.reserved_tokens = None, 0
        try:
            await self._take(exchange, key, agent, wire, outbound, client=None, first=False)
        except RateLimited:  # quotas too
            refused = exchange.leases.pop("agent", None)  # its slot, if it got one before its buckets refused it
            if refused is not None:
                refused.release()
            raise

    async def _take(
        self,
        exchange: Exchange,
        key: KeyRecord | None,
        agent: Agent,
        wire: Wire,
        outbound: Outbound,
        *,
        client: str | None,
        first: bool,
    ) -> None:
        # Only token buckets and quotas need the estimate; most requests skip walking their messages.
        counts_tokens = (
            key is not None
            and outbound.metered
            and bool(key.limits.tpm or key.quotas.tokens_per_day or key.quotas.tokens_per_month)
        )
        prompt = wire.prompt_estimate(outbound.body) if counts_tokens else 0
        tokens = prompt + outbound.output_tokens if counts_tokens else 0
        await self._hold_slots(exchange, key, agent, first=first)
        now = datetime.now(UTC)
        charge = charge_for(
            key,
            agent,
            client=client,
            tokens=tokens,
            prompt_tokens=prompt,
            now=now,
            defaults=self._defaults,
            count_request=first,
        )
        if not charge.buckets and not charge.quotas:
            return
        if key is not None:
            await self._seed_quotas(key, charge)
        decision = await self.limiter.take(charge)
        if first:  # the headers: the first agent's, which hold the key's request bucket
            exchange.ratelimit = decision
        if not decision.allowed:
            if first:  # a fallback refused is skipped (dispatcher.py): not this request's answer
                exchange.limited = "quota" if decision.quota is not None else "rate"
                self._note_refusal(key)
            if decision.quota is not None:
                resets = datetime.fromtimestamp(decision.quota.resets_at, UTC).isoformat().replace("+00:00", "Z")
                raise QuotaExceeded(
                    f"This key has used its {decision.quota.label} quota ({decision.quota.limit} tokens); "
                    f"it resets at {resets}."
                )
            raise RateLimited(
                f"Rate limit reached for {decision.refused_by}; retry in {decision.retry_after:.2f}s.",
                kind=decision.refused_kind,
            )
        exchange.charge = charge
        exchange.reserved_tokens = charge.tokens  # what was taken, bounded: settling corrects exactly that

    async def _hold_slots(self, exchange: Exchange, key: KeyRecord | None, agent: Agent, *, first: bool) -> None:
        """The key's slot (the first agent only: a fallback serves the same request) and the agent's."""
        wanted = []
        if first and key is not None and key.limits.max_concurrent:
            wanted.append(("key", f"key:{key.id}", key.limits.max_concurrent, "concurrent requests of this key"))
        if agent.spec.limits.max_concurrent_requests:
            wanted.append(("agent", f"agent:{agent.name}", agent.spec.limits.max_concurrent_requests,
                           f"concurrent requests of `{agent.name}`"))  # fmt: skip
        for holder, name, limit, label in wanted:
            exchange.queued = exchange.queued or self._slots.busy(name, limit)
            lease = await self._slots.acquire(name, limit, self._queue_timeout)
            if lease is None:
                if first:
                    exchange.limited = "concurrency"
                    self._note_refusal(key)
                raise RateLimited(
                    f"Too many {label} (at most {limit}); none finished within {self._queue_timeout:g}s.",
                    retry_after=1.0,
                )
            exchange.leases[holder] = lease

    async def _seed_quotas(self, key: KeyRecord, charge: Charge) -> None:
        """A quota counter starts from the usage already recorded for its period (before a restart, before the
        quota was set), so the limit and the usage report agree. Once per quota and period per process."""
        for quota in charge.quotas:
            if quota.id in self._seeded:
                continue
            period = quota.id.rsplit(":", 1)[1]
            rows = await self._store.usage(key.id, [period])
            await self.limiter.seed(quota, sum(r.prompt_tokens + r.completion_tokens for r in rows))
            self._seeded.add(quota.id)

    async def reset_quotas(self, key: KeyRecord) -> None:
        """The key's usage was reset: its quotas start again from zero."""
        ids = [quota.id for quota in key_quotas(key, datetime.now(UTC))]
        await self.limiter.reset(ids)
        self._seeded.difference_update(ids)

    def _check_cooldown(self, exchange: Exchange, key: KeyRecord | None) -> None:
        if key is None or not key.limits.cooldown_after:
            return
        until = self._cooling.get(key.id, 0.0)
        now = time.monotonic()
        if now < until:
            exchange.limited = "cooldown"
            raise RateLimited(
                f"This key is cooling down after {key.limits.cooldown_after} refusals; retry in {until - now:.1f}s.",
                retry_after=until - now,
            )

    def _note_refusal(self, key: KeyRecord | None) -> None:
        """Count a refusal towards the key's cooldown, and start one when there were too many in the window."""
        if key is None or not key.limits.cooldown_after:
            return
        now = time.monotonic()
        window = key.limits.cooldown_window or DEFAULT_COOLDOWN
        recent = [t for t in self._refusals.get(key.id, []) if now - t < window]
        recent.append(now)
        if len(recent) >= key.limits.cooldown_after:
            self._cooling[key.id] = now + (key.limits.cooldown_seconds or DEFAULT_COOLDOWN)
            recent = []
            logger.info("key %s cools down after %d refusals", key.id, key.limits.cooldown_after)
        self._refusals[key.id] = recent

    def finish(self, exchange: Exchange) -> None:
        """After the last byte: give back the slots, and settle the token charge against the real usage."""
        for lease in exchange.leases.values():
            lease.release()
        exchange.leases.clear()
        charge = exchange.charge
        if charge is None:
            return
        delta = _settlement(exchange)
        if delta:
            self._settle_later(charge, delta)

    def _settle_later(self, charge: Charge, delta: int) -> None:
        """Move a charge's token buckets and quotas by `delta` (a charge, or a refund when negative), in the
        background: the answer does not wait for it."""
        if not any(b.kind == "tokens" for b in charge.buckets) and not charge.quotas:
            return
        task = asyncio.get_running_loop().create_task(self.limiter.settle(charge, delta))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.limiter.close()


# Failures after which the provider may still have generated (and billed) the answer.
_MAYBE_GENERATED = frozenset({502, 504})
# Failures known to come before any request reached a provider (a refused connection, no key, every circuit open):
# nothing was generated, whatever the status.
_NEVER_SENT = frozenset({"upstream_unreachable", "upstream_not_configured", "upstream_circuit_open"})


def _settlement(exchange: Exchange) -> int:
    """Tokens to charge (> 0) or refund (< 0) once the request is over."""
    reserved = exchange.reserved_tokens
    # Never refund more than was reserved, whatever the counts say: a counter can then never go below what the
    # requests in flight still hold.
    used = bounded((exchange.prompt_tokens or 0) + (exchange.completion_tokens or 0))
    if exchange.prompt_tokens is not None and not exchange.usage_estimated:
        return used - reserved
    if exchange.status >= 400 and (exchange.status not in _MAYBE_GENERATED or exchange.error_class in _NEVER_SENT):
        return -reserved  # an error answer (the provider's own included): nothing was generated
    # Cut short, timed out or dropped without the upstream's count: keep the reservation, never refund what
    # may have been used; charge more only when the text relayed shows more.
    return max(0, used - reserved)
