"""Circuit breakers and the choice of target, with time passed in; the backoff and Retry-After arithmetic."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.config.agents import Agent, AgentSpec, CircuitBreakerSpec, compile_agent
from gateway.proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, CircuitBreaker
from gateway.proxy.dispatcher import MAX_BACKOFF_FACTOR, _backoff, _retry_after


def agent(*weights: float, **breaker: Any) -> Agent:
    targets = [
        {"name": f"t{i}", "base_url": f"http://127.0.0.1:{9000 + i}/v1", "weight": w} for i, w in enumerate(weights)
    ]
    spec = AgentSpec.model_validate(
        {
            "name": "a",
            "llm": {"provider": "openai-compatible", "model": "m", "targets": targets},
            "circuit_breaker": {"failures": 2, "window": 10, "cooldown": 5, **breaker},
        }
    )
    return compile_agent(spec, {})


def test_failures_within_the_window_open_the_circuit_and_old_ones_are_forgotten() -> None:
    breaker = CircuitBreaker(CircuitBreakerSpec(failures=3, window=10, cooldown=5))
    breaker.failed(0)
    breaker.failed(1)
    breaker.failed(12)  # the first two are older than the window by now
    assert breaker.state == CLOSED
    breaker.failed(13)
    breaker.failed(14)
    assert breaker.state == OPEN
    assert not breaker.available(18)
    assert breaker.available(19)


def test_after_the_cooldown_one_probe_goes_through_and_decides() -> None:
    breaker = CircuitBreaker(CircuitBreakerSpec(failures=1, window=10, cooldown=5))
    breaker.failed(0)
    assert not breaker.acquire(4)
    assert breaker.acquire(5)
    assert breaker.state == HALF_OPEN
    assert not breaker.acquire(5.1)  # one probe at a time
    breaker.failed(6)
    assert breaker.state == OPEN
    assert not breaker.acquire(10)
    assert breaker.acquire(11)
    breaker.succeeded()
    assert breaker.state == CLOSED
    assert breaker.acquire(11)


def test_a_disabled_breaker_never_opens() -> None:
    breaker = CircuitBreaker(CircuitBreakerSpec(enabled=False, failures=1))
    for moment in range(10):
        breaker.failed(moment)
    assert breaker.available(10)


def test_targets_are_chosen_by_weight() -> None:
    breakers = Breakers(lambda *_: None, random.Random(7))
    weighted = agent(3, 1)
    picks = [breakers.choose(weighted, [], 0) for _ in range(4000)]
    share = sum(1 for target in picks if target is weighted.targets[0]) / len(picks)
    assert 0.72 < share < 0.78


def test_an_untried_target_comes_first_then_any_healthy_one_and_none_when_all_are_open() -> None:
    changes: list[tuple[str, str, str]] = []
    breakers = Breakers(lambda *change: changes.append(change), random.Random(1))
    two = agent(1, 1)
    first = breakers.choose(two, [], 0)
    assert first is not None
    assert breakers.choose(two, [first], 0) is not first
    assert breakers.choose(two, list(two.targets), 0) is not None  # every one tried: any healthy one again
    for target in two.targets:
        breakers.record(two, target, ok=False, now=0)
        breakers.record(two, target, ok=False, now=0)
    assert breakers.choose(two, [], 1) is None
    assert [change[2] for change in changes] == [OPEN, OPEN]
    assert breakers.choose(two, [], 5) is not None  # cooled down: a probe
    assert changes[-1][2] == HALF_OPEN


def test_a_target_without_its_key_is_never_chosen() -> None:
    spec = AgentSpec.model_validate(
        {
            "name": "a",
            "llm": {
                "provider": "openai-compatible",
                "model": "m",
                "targets": [
                    {"base_url": "http://one/v1", "api_key_env": "MISSING"},
                    {"base_url": "http://two/v1", "api_key_env": "PRESENT"},
                ],
            },
        }
    )
    keyed = compile_agent(spec, {"PRESENT": "k"})
    breakers = Breakers(lambda *_: None)
    assert {breakers.choose(keyed, [], 0) for _ in range(50)} == {keyed.targets[1]}


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_doubles_with_jitter_and_is_capped(attempt: int) -> None:
    rng = random.Random(attempt)
    step = 0.25 * min(2**attempt, MAX_BACKOFF_FACTOR)
    delays = [_backoff(0.25, attempt, rng) for _ in range(200)]
    assert all(step / 2 <= delay <= step for delay in delays)
    assert max(delays) - min(delays) > step / 4  # jittered, not fixed


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([(b"retry-after-ms", b"1500")], 1.5),
        ([(b"retry-after", b"3")], 3.0),
        ([(b"retry-after", b"3"), (b"retry-after-ms", b"250")], 0.25),
        ([(b"retry-after", b"Wed, 21 Oct 2026 07:28:00 GMT")], None),
        ([(b"retry-after", b"-1")], None),
        ([], None),
    ],
)
def test_retry_after_prefers_milliseconds_and_ignores_dates(
    headers: list[tuple[bytes, bytes]], seconds: float | None
) -> None:
    assert _retry_after(headers) == seconds


def test_targets_inherit_the_llm_block_and_get_unique_names() -> None:
    spec = AgentSpec.model_validate(
        {
            "name": "a",
            "llm": {
                "provider": "openai-compatible",
                "model": "m",
                "base_url": "http://shared:8000/v1",
                "targets": [{}, {"model": "other", "weight": 2}, {"base_url": "https://b.example/v1/"}],
            },
        }
    )
    compiled = compile_agent(spec, {})
    assert [t.name for t in compiled.targets] == ["shared:8000", "shared:8000#2", "b.example"]
    assert [t.upstream_model for t in compiled.targets] == ["m", "other", "m"]
    assert compiled.targets[2].base_url == "https://b.example/v1"
    assert compiled.targets[1].weight == 2
