"""Bucket and quota arithmetic, with time passed in (pure)."""

from __future__ import annotations

import pytest

from gateway.limits.buckets import MAX_TOKENS, Bucket, Charge, Level, Quota, duration, headers, settle, take, tightest

REQUESTS = Bucket("k:req", "requests", per_minute=60, capacity=10, label="requests per minute of this key")
TOKENS = Bucket("k:tok", "tokens", per_minute=600, capacity=1000, label="tokens per minute of this key")


def charge(tokens: int = 100, *buckets: Bucket, quotas: tuple[Quota, ...] = (), prompt: int = 10) -> Charge:
    return Charge(buckets or (REQUESTS, TOKENS), quotas, 1, tokens, prompt)


def test_a_new_bucket_is_full_and_a_take_lowers_every_bucket() -> None:
    decision, levels, _ = take(charge(100), [None, None], [], now=0)
    assert decision.allowed
    assert [level.tokens for level in levels] == [9, 900]
    assert [round(s.remaining) for s in decision.states] == [9, 900]


@pytest.mark.parametrize(("tokens", "prompt", "expected"), [(-5, -3, (0, 0)), (2**80, 2**70, (MAX_TOKENS, MAX_TOKENS))])
def test_a_charge_is_never_negative_nor_beyond_any_limit(tokens: int, prompt: int, expected: tuple[int, int]) -> None:
    bounded = Charge((TOKENS,), (), 1, tokens, prompt)
    assert (bounded.tokens, bounded.prompt_tokens) == expected


def test_a_negative_charge_never_fills_a_bucket_past_its_capacity() -> None:
    decision, levels, used = take(charge(-500, TOKENS, quotas=(QUOTA,)), [None], [200], now=0)
    assert decision.allowed
    assert levels[0].tokens == 1000
    assert used == [200]
    assert dict(headers(decision))[b"x-ratelimit-remaining-tokens"] == b"1000"  # the capacity, not 1,500


QUOTA = Quota("q:day", 1000, resets_at=86_400, label="tokens per day")


def test_burst_then_the_rate() -> None:
    levels: list[Level | None] = [None]
    allowed = 0
    for _ in range(15):  # all at t=0: the burst of 10, then nothing
        decision, new, _ = take(charge(0, REQUESTS), levels, [], now=0)
        if decision.allowed:
            allowed += 1
            levels = list(new)
    assert allowed == 10
    refused, _, _ = take(charge(0, REQUESTS), levels, [], now=0.5)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)  # one request per second: half a second to go
    assert refused.refused_by == "requests per minute of this key"
    again, _, _ = take(charge(0, REQUESTS), levels, [], now=1.0)
    assert again.allowed


def test_all_or_nothing_across_buckets() -> None:
    empty_tokens = Level(50, 0)
    decision, levels, _ = take(charge(100), [None, empty_tokens], [], now=0)
    assert not decision.allowed
    assert decision.refused_by == "tokens per minute of this key"
    assert levels[0].tokens == 10  # the request bucket was not charged
    assert decision.retry_after == pytest.approx(5.0)  # 50 missing tokens at 10 a second


def test_a_charge_over_capacity_needs_a_full_bucket_and_leaves_debt() -> None:
    decision, levels, _ = take(charge(1500, TOKENS), [None], [], now=0)
    assert decision.allowed
    assert levels[0].tokens == -500
    refused, _, _ = take(charge(10, TOKENS), levels, [], now=10)  # 100 refilled: still at -400
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(41.0)


def test_settlement_refunds_up_to_capacity_and_charges_into_debt() -> None:
    level = Level(100, 0)
    assert settle(level, TOKENS, -2000, now=0).tokens == 1000
    assert settle(level, TOKENS, 300, now=0).tokens == -200
    assert settle(level, TOKENS, 0, now=10).tokens == 200  # refilled meanwhile


def test_quota_admits_while_there_is_room_for_the_prompt() -> None:
    quota = Quota("q:day:2026-11-22", 1000, resets_at=3600, label="tokens per day")
    ok, _, used = take(charge(500, REQUESTS, quotas=(quota,), prompt=50), [None], [940], now=0)
    assert ok.allowed
    assert used == [1440]  # the whole estimate is reserved; settlement corrects it
    refused, _, same = take(charge(500, REQUESTS, quotas=(quota,), prompt=70), [None], [940], now=0)
    assert not refused.allowed
    assert refused.quota == quota
    assert refused.retry_after == 3600
    assert same == [940]
    exhausted, _, _ = take(charge(1, REQUESTS, quotas=(quota,), prompt=0), [None], [1000], now=0)
    assert not exhausted.allowed


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (59.9, "59.9s"), (360, "6m0s"),
     (3723, "1h2m3s")],
)  # fmt: skip
def test_reset_durations_use_openais_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_headers_describe_the_tightest_bucket_of_each_kind() -> None:
    agent = Bucket("a:req", "requests", per_minute=600, capacity=100, label="agent")
    decision, _, _ = take(charge(100, REQUESTS, agent, TOKENS), [None, None, None], [], now=0)
    assert tightest(decision.states, "requests").bucket == REQUESTS  # type: ignore[union-attr]
    assert dict(headers(decision)) == {
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"9",
        b"x-ratelimit-reset-requests": b"1s",
        b"x-ratelimit-limit-tokens": b"600",
        b"x-ratelimit-remaining-tokens": b"900",
        b"x-ratelimit-reset-tokens": b"10s",
    }


def test_a_refusal_carries_retry_after_rounded_up() -> None:
    decision, _, _ = take(charge(0, REQUESTS), [Level(0.2, 0)], [], now=0)
    values = dict(headers(decision))
    assert values[b"retry-after"] == b"1"
    assert values[b"retry-after-ms"] == b"800"


def test_no_bucket_of_a_kind_means_no_headers_of_that_kind() -> None:
    decision, _, _ = take(charge(0, REQUESTS), [None], [], now=0)
    assert {name for name, _ in headers(decision)} == {
        b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests"
    }  # fmt: skip


def test_durations_just_under_a_minute_round_up_to_a_minute() -> None:
    assert duration(59.9991) == "1m0s"
