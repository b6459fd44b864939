"""The fuzz suite: hypothesis over every endpoint's bodies, headers, query strings and paths, raw malformed HTTP,
and schemathesis over the admin OpenAPI document, against real gateway processes (one on the embedded store, one
with keys, limits and sessions in a real Redis) in front of the real test upstream.

Whatever it sent, a client must see no 500, every error in the OpenAI shape, every stream end as its API ends one
or with an error event, no secret; and the gateway must be healthy afterwards (ready, no stream left open, no
traceback in its log, a plain request still answered).

Bounded for CI by default (a fixed seed, so every CI run tries the same cases). A longer run explores new cases each
time, e.g. `FUZZ_EXAMPLES=5000 scripts/test tests/test_fuzz.py` (docs/testing.md).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from tests.conftest import E2E_CONFIG, UPSTREAM_KEY
from tests.support import fuzz
from tests.support.processes import Process, free_port, start_anthropic_upstream, start_gateway
from tests.support.redis import start_redis

ADMIN_KEY = "admin-secret-for-the-fuzz-0123456789"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
LONG_RUN = EXAMPLES > 0


def fuzz_settings(ci_examples: int) -> settings:
    """CI: `ci_examples` cases from a fixed seed, nothing written to disk. A long run: `FUZZ_EXAMPLES` new cases,
    failures kept in `.hypothesis/` and replayed first next time."""
    return settings(
        max_examples=EXAMPLES or ci_examples,
        deadline=None,
        derandomize=not LONG_RUN,
        database=None if not LONG_RUN else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


V1_POSTS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/chat",
    "/v1/chat/stream",
    "/v1/sessions",
    "/v1/messages",
]


class Target:
    """A gateway under fuzz, with what the fuzz needs to know of it."""

    def __init__(self, process: Process, secrets: fuzz.Secrets, sessions: dict[str, str], victim: str) -> None:
        self.process = process
        self.secrets = secrets
        self.sessions = sessions  # agent → a session of that agent, owned by the fuzz's key
        self.session_ids = sorted(sessions.values())
        self.victim_key_id = victim  # a key the fuzz may rotate, revoke and patch: not the one it sends
        self.http = httpx.Client(base_url=process.url, timeout=20)

    def send(self, request: fuzz.Request) -> httpx.Response:
        response = request.send(self.http)
        fuzz.check(request, response, self.secrets)
        return response


# An agent on the Anthropic-shaped upstream: the OpenAI door's bodies cross to it translated, the Messages door's
# pass through.
ANTHROPIC_AGENT = """\
  - name: test-claude
    llm: {{provider: anthropic, model: claude-up, base_url: "{anthropic}", api_key_env: TEST_UPSTREAM_KEY, timeout: 5}}
    session: {{enabled: true}}
    retries: 0
    circuit_breaker: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def anthropic_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_anthropic_upstream(tmp_path_factory.mktemp("fuzz-anthropic-upstream"))
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["embedded", "redis"])
def target(
    request: pytest.FixtureRequest,
    upstream: Process,
    anthropic_upstream: Process,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Target]:
    directory = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    config = directory / "agents.yaml"
    config.write_text(E2E_CONFIG.format(upstream=upstream.url, dead_port=free_port()) + ANTHROPIC_AGENT.format(
        anthropic=anthropic_upstream.url))  # fmt: skip
    env = {"GATEWAY_ADMIN_KEY": ADMIN_KEY, "TEST_UPSTREAM_KEY": UPSTREAM_KEY, "GATEWAY_STATE_DIR": str(directory)}
    redis = None
    if request.param == "redis":
        redis = start_redis(directory)
        env |= {
            "GATEWAY_STORE": "redis",
            "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_SESSION_STORAGE": "redis",
            "GATEWAY_RATE_LIMIT_STORAGE": "redis",
        }
    process = start_gateway(config, directory, env)
    try:
        prepared = _prepared(process)
        with prepared.http:
            yield prepared
            _assert_healthy(prepared)
    finally:
        process.stop()
        if redis is not None:
            redis.stop()


def _prepared(process: Process) -> Target:
    with httpx.Client(base_url=process.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10) as admin:
        return _with_keys_and_sessions(process, admin)


def _with_keys_and_sessions(process: Process, admin: httpx.Client) -> Target:
    # Limits and quotas high enough that the fuzz is seldom refused for them, so it reaches the code behind them.
    limits = {"rpm": 1_000_000, "tpm": 100_000_000, "max_concurrent": 100}
    key = admin.post("/admin/keys", json={"name": "fuzz", "limits": limits, "quotas": {"tokens_per_day": 10**12}})
    victim = admin.post("/admin/keys", json={"name": "victim"})
    assert key.status_code == victim.status_code == 201, key.text + victim.text
    secret = key.json()["secret"]
    sessions = {}
    for agent in ("test-chat", "test-nostream", "test-bounded", "test-claude"):
        created = httpx.post(
            process.url + "/v1/sessions", json={"agent_name": agent}, headers={"authorization": f"Bearer {secret}"}
        )
        assert created.status_code in (200, 201), created.text
        sessions[agent] = created.json()["session_id"]
    secrets = fuzz.Secrets(upstream_key=UPSTREAM_KEY, admin_key=ADMIN_KEY, virtual_key=secret)
    return Target(process, secrets, sessions, victim.json()["id"])


def _assert_healthy(target: Target) -> None:
    """After the fuzz: ready, no stream still counted open, a plain request answered, no traceback logged."""
    process = target.process
    # The config's `test-nokey` agent has no upstream key on purpose: the one problem /readyz may report.
    ready = httpx.get(process.url + "/readyz").json()
    assert all("test-nokey" in problem for problem in ready["problems"]), ready
    deadline = time.monotonic() + 5
    while (open_streams := _active_streams(process)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_streams == 0, f"{open_streams} streams still counted open after the fuzz"
    # A new key: the fuzz's own may rightly have used up its quota (a request that asked for 2^63 tokens and whose
    # upstream then failed in a way that may have generated keeps its reservation).
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    fresh = target.http.post("/admin/keys", json={"name": "after the fuzz"}, headers=admin).json()["secret"]
    plain = {"model": "test-chat", "messages": [{"role": "user", "content": "still there?"}]}
    answer = target.http.post("/v1/chat/completions", json=plain, headers={"authorization": f"Bearer {fresh}"})
    assert answer.status_code == 200, answer.text
    assert "still there?" in answer.json()["choices"][0]["message"]["content"]
    assert "Traceback" not in process.log(), process.log()[-3000:]


def _active_streams(process: Process) -> float:
    text = httpx.get(process.url + "/metrics").text
    return sum(float(m) for m in re.findall(r"^gateway_active_streams(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE))


@st.composite
def v1_requests(draw: st.DrawFn, target: Target) -> fuzz.Request:
    path = draw(st.sampled_from(V1_POSTS))
    faults = draw(fuzz.defects())
    body = draw(fuzz.body(path, faults, target.sessions))
    return fuzz.Request("POST", path, draw(fuzz.headers(target.secrets, target.session_ids, faults)), body=body)


@st.composite
def reads(draw: st.DrawFn, target: Target) -> fuzz.Request:
    """GETs and DELETEs: query strings on the lists, odd ids in the paths, on both the client and admin routes."""
    session = st.sampled_from(target.session_ids) | fuzz.path_segments
    key = st.sampled_from([target.victim_key_id]) | fuzz.path_segments
    method, path = draw(
        st.sampled_from(
            [
                ("GET", "/v1/sessions"),
                ("GET", "/v1/models"),
                ("GET", "/admin/keys"),
                ("GET", "/admin/sessions"),
                ("GET", "/admin/usage"),
                ("GET", "/admin/routes"),
            ]
        )
        | st.tuples(st.sampled_from(["GET", "DELETE"]), session.map(lambda s: f"/v1/sessions/{s}"))
        | st.tuples(st.just("GET"), session.map(lambda s: f"/admin/sessions/{s}"))
        | st.tuples(st.just("GET"), fuzz.path_segments.map(lambda m: f"/v1/models/{m}"))
        | st.tuples(st.just("GET"), key.map(lambda k: f"/admin/keys/{k}/usage"))
        | st.tuples(st.sampled_from(["PUT", "PATCH", "HEAD"]), st.sampled_from(["/v1/chat/completions", "/admin/keys"]))
    )
    headers = draw(fuzz.headers(target.secrets, target.session_ids, draw(fuzz.defects())))
    if path.startswith("/admin") and not fuzz.one_in(draw, 4):
        headers["authorization"] = f"Bearer {ADMIN_KEY}"
    return fuzz.Request(method, path, headers, draw(fuzz.queries))


@st.composite
def admin_writes(draw: st.DrawFn, target: Target) -> fuzz.Request:
    """Bodies on the admin API's writes, beyond what its schema allows (schemathesis keeps closer to it)."""
    victim = target.victim_key_id
    key = draw(st.sampled_from([victim]) | fuzz.path_segments)
    method, path = draw(
        st.sampled_from(
            [
                ("POST", "/admin/keys"),
                ("PATCH", f"/admin/keys/{key}"),
                ("POST", f"/admin/keys/{key}/rotate"),
                ("POST", f"/admin/keys/{key}/usage/reset"),
                ("POST", "/admin/reload"),
            ]
        )
    )
    template = st.fixed_dictionaries(
        {"name": st.text(max_size=10)},
        optional={
            "limits": st.dictionaries(st.sampled_from(["rpm", "rpm_burst", "tpm", "max_concurrent"]), fuzz.json_values),
            "quotas": st.dictionaries(st.sampled_from(["tokens_per_day", "tokens_per_month"]), fuzz.json_values),
            "metadata": st.dictionaries(st.text(max_size=5), fuzz.json_values, max_size=3),
            "models": st.lists(st.sampled_from(fuzz.MODELS)),
            "expires_at": fuzz.json_values | st.sampled_from(["2999-01-01T00:00:00Z", "2000-01-01", "tomorrow"]),
            "grace_seconds": fuzz.json_values,
        },
    )
    body = draw(fuzz.encoded(draw(fuzz.mutated(template)), spoil=fuzz.one_in(draw, 5)))
    headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    return fuzz.Request(method, path, headers, body=body)


def test_fuzzed_bodies_on_the_v1_endpoints(target: Target) -> None:
    @fuzz_settings(300)
    @given(request=v1_requests(target))
    def run(request: fuzz.Request) -> None:
        target.send(request)

    run()


def test_fuzzed_queries_paths_and_methods(target: Target) -> None:
    @fuzz_settings(150)
    @given(request=reads(target))
    def run(request: fuzz.Request) -> None:
        target.send(request)

    run()


def test_fuzzed_admin_writes(target: Target) -> None:
    @fuzz_settings(100)
    @given(request=admin_writes(target))
    def run(request: fuzz.Request) -> None:
        target.send(request)

    run()


RAW_REQUEST_LINES = [
    b"POST /v1/chat/completions HTTP/1.1",
    b"GET /healthz HTTP/1.1",
    b"GET / HTTP/1.1",
    b"POST /admin/keys HTTP/1.1",
    b"GET /v1/models HTTP/1.0",
]


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Bytes on the socket that are not quite HTTP: odd request lines, broken headers, lengths that lie."""
    line = draw(st.sampled_from(RAW_REQUEST_LINES) | st.binary(max_size=40))
    headers = [b"Host: 127.0.0.1"]
    for _ in range(draw(st.integers(0, 3))):
        headers.append(
            draw(
                st.sampled_from(
                    [
                        b"Content-Length: -1",
                        b"Content-Length: 99999999999999999999",
                        b"Content-Length: 1e3",
                        b"Transfer-Encoding: chunked",
                        b"Transfer-Encoding: gzip, chunked",
                        b"X: \x00",
                        b"No colon",
                        b": empty name",
                        b"Content-Type: application/json",
                    ]
                )
                | st.binary(max_size=30)
            )
        )
    body = draw(st.sampled_from([b"", b"{}", b"0\r\n\r\n", b"zz\r\nxx\r\n"]) | st.binary(max_size=40))
    return line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def test_raw_malformed_http_gets_a_4xx_or_a_closed_connection(target: Target) -> None:
    port = target.process.port

    @fuzz_settings(150)
    @given(raw=raw_requests())
    def run(raw: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = _read_all(sock)
        if not answer:
            return  # the server closed the connection: acceptable for bytes that are not HTTP
        status = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        assert status is not None, f"not an HTTP answer to {raw!r}: {answer[:200]!r}"
        code = int(status.group(1))
        assert code != 500, f"500 for {raw!r}: {answer[:400]!r}"
        assert code < 500 or code in (502, 503, 504), f"{code} for {raw!r}"

    run()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def test_admin_api_against_its_openapi_document(target: Target) -> None:
    """schemathesis: cases from the admin API's own OpenAPI document (valid and invalid), each answer checked
    against that document and the oracle, on every operation."""
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    document = target.http.get("/admin/openapi.json", headers=auth)
    assert document.status_code == 200, document.text
    schema = schemathesis.openapi.from_dict(document.json())
    schema.config.update(base_url=target.process.url, headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [operation.label for operation in operations]
    for operation in operations:

        @fuzz_settings(25)
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call()
            # Its auth probe re-sends with our admin key in the headers we set, so it cannot tell; the admin key
            # checks are tests of their own (test_keys.py).
            excluded = [ignored_auth]
            if _breaks_a_rule_no_schema_can_say(case.body):  # refused with 422, as the descriptions say
                excluded.append(positive_data_acceptance)
            case.validate_response(response, excluded_checks=excluded)
            request = fuzz.Request(case.method, case.formatted_path, {}, body=None)
            headers = {name: ", ".join(values) for name, values in response.headers.items()}
            fuzz.check_answer(request, response.status_code, headers, response.content, target.secrets)

        run()


def _breaks_a_rule_no_schema_can_say(body: object) -> bool:
    """An expiry in the past, or an integer beyond signed 64 bits in the metadata (JSON Schema cannot tell 2^70
    from 2.0^70)."""
    if not isinstance(body, dict):
        return False
    expires = body.get("expires_at")
    try:
        if isinstance(expires, str) and datetime.fromisoformat(expires) <= datetime.now(UTC):
            return True
    except (ValueError, TypeError):  # not a date, or one without a time zone: refused by the schema itself
        pass
    return _has_wide_integer(body.get("metadata"))


def _has_wide_integer(value: object) -> bool:
    if isinstance(value, dict):
        return any(_has_wide_integer(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_wide_integer(item) for item in value)
    return isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63
