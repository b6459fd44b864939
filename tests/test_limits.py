"""Limits end to end: a real gateway with keys, the OpenAI SDK and raw HTTP reading the headers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY
from tests.support.processes import Process, free_port, start_gateway
from tests.support.redis import RedisServer
from tests.test_keys import ADMIN_KEY, Admin, sdk
from tests.test_proxy import behave

MESSAGES = [{"role": "user", "content": "hi"}]
# One answer per request (no retries, no circuit breaker): these tests make the upstream fail on purpose and count.
CONFIG = """\
agents:
  - name: test-chat
    llm: {{provider: openai-compatible, model: up, base_url: "{upstream}/v1", api_key_env: TEST_UPSTREAM_KEY}}
    retries: 0
    circuit_breaker: {{enabled: false}}
  - name: small-answers
    llm: {{provider: openai-compatible, model: up, base_url: "{upstream}/v1", api_key_env: TEST_UPSTREAM_KEY}}
    limits: {{max_tokens_per_request: 100, max_concurrent_requests: 1}}
    retries: 0
    circuit_breaker: {{enabled: false}}
  - name: clamped
    llm: {{provider: mock}}
    limits: {{max_tokens_per_request: 5, over_max_tokens: clamp}}
  - name: unreachable
    llm: {{provider: openai-compatible, model: up, base_url: "http://127.0.0.1:{dead_port}/v1"}}
    retries: 0
    circuit_breaker: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def limited(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    directory = tmp_path_factory.mktemp("limited")
    config = directory / "agents.yaml"
    config.write_text(CONFIG.format(upstream=upstream.url, dead_port=free_port()))
    env = {
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "GATEWAY_STATE_DIR": str(directory / "state"),
        "GATEWAY_QUEUE_TIMEOUT": "0.3",
    }
    process = start_gateway(config, directory, env)
    yield process
    process.stop()


@pytest.fixture
def admin(limited: Process) -> Iterator[Admin]:
    operator = Admin(limited)
    yield operator
    operator.http.close()


def chat(gateway: Process, secret: str, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}", **body.pop("headers", {})}
    payload = {"model": "test-chat", "messages": MESSAGES, **body}
    return httpx.post(gateway.url + "/v1/chat/completions", json=payload, headers=headers, timeout=10)


def test_remaining_requests_go_down_then_429_with_retry_after(limited: Process, admin: Admin) -> None:
    key = admin.create(limits={"rpm": 60, "rpm_burst": 3})
    answers = [chat(limited, key["secret"]) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "60" for a in answers)
    refused = answers[-1]
    assert refused.headers["retry-after"] == "1"
    assert 0 < int(refused.headers["retry-after-ms"]) <= 1000
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "requests per minute of this key" in error["message"]
    assert "x-ratelimit-limit-tokens" not in refused.headers  # this key has no token limit


def test_the_sdks_own_retry_gets_through_after_retry_after(limited: Process, admin: Admin) -> None:
    key = admin.create(limits={"rpm": 60, "rpm_burst": 1})
    assert chat(limited, key["secret"]).status_code == 200
    with openai.OpenAI(base_url=limited.url + "/v1", api_key=key["secret"]) as client:  # default retries
        raw = client.chat.completions.with_raw_response.create(model="test-chat", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.retries_taken >= 1


def test_token_reservations_are_settled_against_real_usage(limited: Process, admin: Admin) -> None:
    key = admin.create(limits={"tpm": 60, "tpm_burst": 200})  # one token a second: refills barely move
    first = chat(limited, key["secret"], max_tokens=150)
    assert first.status_code == 200
    reserved_left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert reserved_left < 50  # about 150 + the prompt were reserved
    # The upstream reports 12 tokens: the rest is refunded after the response, so a second such request fits.
    deadline = time.monotonic() + 5
    second = chat(limited, key["secret"], max_tokens=150)
    while second.status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
        second = chat(limited, key["secret"], max_tokens=150)
    assert second.status_code == 200
    assert int(second.headers["x-ratelimit-limit-tokens"]) == 60


def test_daily_quota_runs_out_with_insufficient_quota(limited: Process, admin: Admin) -> None:
    key = admin.create(quotas={"tokens_per_day": 20})
    assert chat(limited, key["secret"], max_tokens=5).status_code == 200  # real usage 12
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        answer = chat(limited, key["secret"], max_tokens=5)
        if answer.status_code == 429:
            break
        time.sleep(0.05)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "resets at" in error["message"]
    assert "T00:00:00Z" in error["message"]
    with sdk(limited, key["secret"]) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="test-chat", messages=MESSAGES)
    assert caught.value.code == "insufficient_quota"


def test_a_request_that_never_reached_the_upstream_gives_its_reservation_back(limited: Process, admin: Admin) -> None:
    # A refused connection means nothing was generated: keeping the reservation (as for a timeout, when the
    # provider may have generated and billed) would let requests with a large max_tokens drain the key's tokens.
    key = admin.create(limits={"tpm": 60, "tpm_burst": 10_000})  # one token a second: refills barely move
    unreachable = chat(limited, key["secret"], model="unreachable", max_tokens=9_000)
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["code"] == "upstream_unreachable"
    assert int(unreachable.headers["x-ratelimit-remaining-tokens"]) < 1_000  # reserved while it was tried
    deadline = time.monotonic() + 5
    while True:  # settled in the background, after the answer
        remaining = int(chat(limited, key["secret"], max_tokens=5).headers["x-ratelimit-remaining-tokens"])
        if remaining > 9_000 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert remaining > 9_000


def test_concurrency_slot_is_held_for_a_stream_and_released_on_disconnect(
    limited: Process, upstream: Process, admin: Admin
) -> None:
    key = admin.create(limits={"max_concurrent": 1})
    headers = {**behave(chunks=3, hold_after=1), "authorization": f"Bearer {key['secret']}"}
    body = {"model": "test-chat", "stream": True, "messages": MESSAGES}
    with httpx.stream("POST", limited.url + "/v1/chat/completions", json=body, headers=headers) as stream:
        chunks = stream.iter_raw()
        assert next(chunks).startswith(b"data: ")
        busy = chat(limited, key["secret"])
        assert busy.status_code == 429
        assert "concurrent requests of this key" in busy.json()["error"]["message"]
        assert busy.headers["retry-after"] == "1"
    httpx.post(f"{upstream.url}/_release/{headers['x-request-id']}")
    deadline = time.monotonic() + 5
    answer = chat(limited, key["secret"])
    while answer.status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = chat(limited, key["secret"])
    assert answer.status_code == 200


def test_concurrency_slot_is_released_on_upstream_errors(limited: Process, admin: Admin) -> None:
    key = admin.create(limits={"max_concurrent": 1})
    failing = {"x-test-behaviour": json.dumps({"status": 500})}
    assert [chat(limited, key["secret"], headers=failing).status_code for _ in range(3)] == [500, 500, 500]
    assert chat(limited, key["secret"]).status_code == 200


def test_agent_limits_on_output_size_reject_or_clamp(limited: Process, admin: Admin) -> None:
    key = admin.create()
    too_big = chat(limited, key["secret"], model="small-answers", max_tokens=500)
    assert too_big.status_code == 400
    assert too_big.json()["error"]["param"] == "max_tokens"
    assert "at most 100" in too_big.json()["error"]["message"]
    clamped = chat(limited, key["secret"], model="clamped", max_tokens=50).json()
    assert clamped["choices"][0]["finish_reason"] == "length"
    assert clamped["usage"]["completion_tokens"] == 5


def test_upstream_429_passes_through_and_its_headers_are_kept_apart(limited: Process, admin: Admin) -> None:
    key = admin.create(limits={"rpm": 100})
    upstream_says = {"retry-after": "7", "x-ratelimit-remaining-requests": "0"}
    answer = chat(limited, key["secret"], headers=behave(status=429, headers=upstream_says))
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"
    assert answer.headers["x-upstream-ratelimit-remaining-requests"] == "0"
    assert answer.headers["x-ratelimit-remaining-requests"] == "99"  # the gateway's own bucket for this key


def test_requests_without_any_limit_carry_no_invented_headers(limited: Process, admin: Admin) -> None:
    key = admin.create()
    answer = chat(limited, key["secret"])
    assert answer.status_code == 200
    assert not any(name.startswith("x-ratelimit-") for name in answer.headers)


def test_a_retry_storm_earns_a_cooldown_and_statistics_say_why(limited: Process, admin: Admin) -> None:
    key = admin.create(limits={"rpm": 60, "rpm_burst": 1, "cooldown_after": 3, "cooldown_seconds": 30})
    codes = [chat(limited, key["secret"]).status_code for _ in range(4)]
    assert codes == [200, 429, 429, 429]
    time.sleep(1.1)  # the request bucket has refilled, but the key is cooling down
    cooling = chat(limited, key["secret"])
    assert cooling.status_code == 429
    assert "cooling down after 3 refusals" in cooling.json()["error"]["message"]
    assert int(cooling.headers["retry-after"]) > 20
    usage = admin.usage(key["id"], requests=5)["totals"]
    assert (usage["limited_rate"], usage["limited_cooldown"], usage["upstream_limited"]) == (3, 1, 0)


def test_statistics_count_the_providers_429s_apart(limited: Process, admin: Admin) -> None:
    key = admin.create()
    assert chat(limited, key["secret"], headers=behave(status=429)).status_code == 429
    usage = admin.usage(key["id"], requests=1)["totals"]
    assert (usage["upstream_limited"], usage["limited_rate"]) == (1, 0)


@pytest.mark.parametrize(("failure", "expected"), [("open", 200), ("closed", 503)])
def test_redis_killed_mid_run(
    upstream: Process, redis_server: RedisServer, tmp_path: Path, failure: str, expected: int
) -> None:
    redis_server.start()
    config = tmp_path / "agents.yaml"
    config.write_text(CONFIG.format(upstream=upstream.url, dead_port=free_port()))
    env = {
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "RATE_LIMIT_STORAGE": "redis",
        "REDIS_URL": redis_server.url,
        "GATEWAY_RATE_LIMIT_FAILURE": failure,
    }
    gateway = start_gateway(config, tmp_path, env)
    operator = Admin(gateway)
    try:
        key = operator.create(limits={"rpm": 600})
        assert chat(gateway, key["secret"]).status_code == 200
        redis_server.stop()
        during = chat(gateway, key["secret"])
        assert during.status_code == expected
        if expected == 503:
            assert during.json()["error"]["code"] == "store_unavailable"
        redis_server.start()
        deadline = time.monotonic() + 5
        after = chat(gateway, key["secret"])
        while after.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            after = chat(gateway, key["secret"])
        assert after.status_code == 200
        assert "Traceback" not in gateway.log()
    finally:
        operator.http.close()
        gateway.stop()
        redis_server.start()


def test_a_token_bucket_refusal_says_tokens_and_a_big_request_leaves_debt(limited: Process, admin: Admin) -> None:
    key = admin.create(limits={"tpm": 60, "tpm_burst": 10})
    # Over capacity, admitted from a full bucket: 10 - ~101 reserved + ~89 refunded (real usage 12) = in debt.
    assert chat(limited, key["secret"], max_tokens=100).status_code == 200
    time.sleep(0.2)  # the settlement runs just after the response
    refused = chat(limited, key["secret"], max_tokens=10)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens", refused.text
    assert "tokens per minute of this key" in refused.json()["error"]["message"]


def test_quotas_survive_a_restart_and_follow_a_usage_reset(upstream: Process, tmp_path: Path) -> None:
    config = tmp_path / "agents.yaml"
    config.write_text(CONFIG.format(upstream=upstream.url, dead_port=free_port()))
    env = {"GATEWAY_ADMIN_KEY": ADMIN_KEY, "TEST_UPSTREAM_KEY": UPSTREAM_KEY, "GATEWAY_STATE_DIR": str(tmp_path / "s")}
    first = start_gateway(config, tmp_path, env)
    operator = Admin(first)
    key = operator.create(quotas={"tokens_per_day": 20})
    for _ in range(2):  # 12 tokens each: the second is admitted (room for its prompt) and uses the quota up
        assert chat(first, key["secret"], max_tokens=5).status_code == 200
    operator.usage(key["id"], requests=2)
    operator.http.close()
    first.stop()
    second = start_gateway(config, tmp_path, env)
    operator = Admin(second)
    try:
        after_restart = chat(second, key["secret"], max_tokens=5)
        assert after_restart.status_code == 429
        assert after_restart.json()["error"]["code"] == "insufficient_quota"
        operator.http.post(f"/admin/keys/{key['id']}/usage/reset")
        assert chat(second, key["secret"], max_tokens=5).status_code == 200
    finally:
        operator.http.close()
        second.stop()


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_a_negative_max_tokens_is_refused_and_cannot_lock_a_key_out(
    upstream: Process, redis_server: RedisServer, tmp_path: Path, storage: str
) -> None:
    config = tmp_path / "agents.yaml"
    config.write_text(CONFIG.format(upstream=upstream.url, dead_port=free_port()))
    env = {"GATEWAY_ADMIN_KEY": ADMIN_KEY, "TEST_UPSTREAM_KEY": UPSTREAM_KEY, "GATEWAY_STATE_DIR": str(tmp_path / "s"),
           "RATE_LIMIT_STORAGE": storage}  # fmt: skip
    if storage == "redis":
        redis_server.start()
        redis_server.flush()
        env["REDIS_URL"] = redis_server.url
    gateway = start_gateway(config, tmp_path, env)
    operator = Admin(gateway)
    try:
        key = operator.create(quotas={"tokens_per_day": 1000})
        with ThreadPoolExecutor(1) as pool:
            # Held upstream for a second, so that the next request settles while it is in flight.
            negative = pool.submit(chat, gateway, key["secret"], max_tokens=-(10**8), headers=behave(hang=1.0))
            time.sleep(0.3)
            assert chat(gateway, key["secret"], max_tokens=5).status_code == 200
            refused = negative.result()
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "max_tokens"
        time.sleep(0.3)  # settlements run just after each response
        # About 24 tokens used of 1,000: the key goes on.
        after = chat(gateway, key["secret"], max_tokens=5)
        assert after.status_code == 200, after.text
    finally:
        operator.http.close()
        gateway.stop()


def test_anonymous_callers_cannot_pick_their_address_from_loopback(upstream: Process, tmp_path: Path) -> None:
    config = tmp_path / "agents.yaml"
    config.write_text(CONFIG.format(upstream=upstream.url, dead_port=free_port()))
    env = {"TEST_UPSTREAM_KEY": UPSTREAM_KEY, "RATE_LIMIT_REQUESTS_PER_MINUTE": "2",
           "GATEWAY_STATE_DIR": str(tmp_path / "s")}  # fmt: skip
    gateway = start_gateway(config, tmp_path, env)
    try:
        codes = [chat(gateway, "unused", headers={"x-forwarded-for": f"203.0.113.{n}"}).status_code for n in range(4)]
    finally:
        gateway.stop()
    assert codes == [200, 200, 429, 429]
