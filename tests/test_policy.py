"""Which limits apply to a request, and who the caller is behind proxies (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.config.agents import Agent, AgentSpec, compile_agent
from gateway.keys import KeyRecord, Limits, Quotas, hash_secret, new_secret, utcnow
from gateway.limits.policy import Defaults, charge_for, client_address

NOW = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)


def agent(**spec: object) -> Agent:
    return compile_agent(AgentSpec.model_validate({"name": "a", "llm": {"provider": "mock"}, **spec}), {})


def key(**changes: object) -> KeyRecord:
    secret = new_secret()
    record = KeyRecord(id="key_1", name="k", prefix="p", secret_hash=hash_secret(secret), created_at=utcnow())
    return record.replace(**changes)


def test_key_and_agent_buckets_and_quotas() -> None:
    limited = key(limits=Limits(rpm=10, tpm=1000, tpm_burst=5000), quotas=Quotas(tokens_per_day=9, tokens_per_month=99))
    spec = {"rate_limit": {"enabled": True, "requests_per_minute": 100, "burst_size": 150},
            "limits": {"max_requests_per_minute": 300}}  # fmt: skip
    charge = charge_for(limited, agent(**spec), client=None, tokens=40, prompt_tokens=4, now=NOW, defaults=Defaults())
    assert [(b.id, b.kind, b.per_minute, b.capacity) for b in charge.buckets] == [
        ("agent:a:rate", "requests", 100, 150),
        ("agent:a:max", "requests", 300, 300),
        ("key:key_1:requests", "requests", 10, 10),
        ("key:key_1:tokens", "tokens", 1000, 5000),
    ]
    day, month = charge.quotas
    assert day.id == "quota:key_1:day:2026-12-31"
    assert day.resets_at == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert month.id == "quota:key_1:month:2026-12"
    assert month.resets_at == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert (charge.tokens, charge.prompt_tokens, charge.requests) == (40, 4, 1)


def test_defaults_cover_keys_without_rpm_and_anonymous_callers_by_address() -> None:
    defaults = Defaults(requests_per_minute=30)
    for_key = charge_for(key(), agent(), client=None, tokens=1, prompt_tokens=1, now=NOW, defaults=defaults)
    assert [b.id for b in for_key.buckets] == ["key:key_1:requests"]
    anonymous = charge_for(None, agent(), client="10.1.2.3", tokens=1, prompt_tokens=1, now=NOW, defaults=defaults)
    assert [b.id for b in anonymous.buckets] == ["ip:10.1.2.3:requests"]
    nothing = charge_for(None, agent(), client="10.1.2.3", tokens=1, prompt_tokens=1, now=NOW, defaults=Defaults())
    assert nothing.buckets == ()


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    trusted = ["10.0.0.1", "10.0.0.2"]
    through = {"client": ("10.0.0.1", 1), "headers": [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.2")]}
    assert client_address(through, trusted) == "1.2.3.4"  # the spoofable left part is never reached
    direct = {"client": ("5.5.5.5", 1), "headers": [(b"x-forwarded-for", b"1.2.3.4")]}
    assert client_address(direct, trusted) == "5.5.5.5"
    assert client_address({"client": None, "headers": []}, trusted) is None
