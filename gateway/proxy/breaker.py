"""Circuit breakers for upstream targets, and the weighted choice among the healthy ones. Pure: time is passed in."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.config.agents import Agent, CircuitBreakerSpec, Target

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Closed: calls go through and failures are counted over a sliding window. `failures` of them within `window`
    seconds open it: calls are refused for `cooldown` seconds. Then it is half open: one call probes the target; its
    success closes the circuit, its failure opens it again for another cooldown."""

    spec: CircuitBreakerSpec
    state: str = CLOSED
    opened_at: float = 0.0
    probing: bool = False
    _failures: deque[float] = field(default_factory=deque)

    def available(self, now: float) -> bool:
        """Whether a call may go to the target now (without claiming the half-open probe)."""
        if not self.spec.enabled or self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now - self.opened_at >= self.spec.cooldown
        return not self.probing

    def acquire(self, now: float) -> bool:
        """Claim a call; in the half-open state only one at a time is allowed through."""
        if not self.available(now):
            return False
        if self.state == OPEN:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN:
            self.probing = True
        return True

    def succeeded(self) -> None:
        self.state = CLOSED
        self.probing = False
        self._failures.clear()

    def failed(self, now: float) -> None:
        self.probing = False
        if self.state == HALF_OPEN:
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.spec.window:
            self._failures.popleft()
        if self.spec.enabled and len(self._failures) >= self.spec.failures:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.opened_at = now
        self._failures.clear()


class Breakers:
    """One breaker per agent and target, in this process, and the choice of the next target to try."""

    def __init__(self, on_change: Callable[[str, str, str], None], rng: random.Random | None = None) -> None:
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._on_change = on_change  # (agent, target, state): the circuit-state metric
        self._random = rng or random.Random()

    def breaker(self, agent: Agent, target: Target) -> CircuitBreaker:
        key = (agent.name, target.name)
        spec = agent.spec.circuit_breaker
        found = self._breakers.get(key)
        # New, or changed by a reload (a reload makes new spec objects: compare values only then).
        if found is None or (found.spec is not spec and found.spec != spec):
            found = self._breakers[key] = CircuitBreaker(spec)
        found.spec = spec
        return found

    def state(self, agent: Agent, target: Target) -> str:
        """The circuit of `target` in this process: `closed`, `open`, `half_open`, or `off` when the agent has
        none."""
        if not agent.spec.circuit_breaker.enabled:
            return "off"
        found = self._breakers.get((agent.name, target.name))
        return found.state if found is not None else CLOSED

    def choose(self, agent: Agent, tried: Iterable[Target], now: float) -> Target | None:
        """A target for the next attempt, by weight among those with a closed (or probe-ready) circuit, preferring
        the ones this request has not tried yet; None when every circuit is open."""
        seen = set(tried)
        usable = [t for t in agent.targets if not t.missing_key and self.breaker(agent, t).available(now)]
        fresh = [t for t in usable if t not in seen]
        for group in (fresh, usable):
            candidates = list(group)
            while candidates:
                target = _pick(candidates, self._random)
                breaker = self.breaker(agent, target)
                before = breaker.state
                if breaker.acquire(now):
                    self._changed(agent, target, before, breaker.state)
                    return target
                candidates.remove(target)  # its half-open probe is taken by another request
        return None

    def record(self, agent: Agent, target: Target, *, ok: bool, now: float) -> None:
        breaker = self.breaker(agent, target)
        before = breaker.state
        if ok:
            breaker.succeeded()
        else:
            breaker.failed(now)
        self._changed(agent, target, before, breaker.state)

    def _changed(self, agent: Agent, target: Target, before: str, after: str) -> None:
        if before != after:
            self._on_change(agent.name, target.name, after)


def _pick(targets: Sequence[Target], rng: random.Random) -> Target:
    if len(targets) == 1:
        return targets[0]
    return rng.choices(targets, weights=[t.weight for t in targets])[0]
