"""Metrics: exchanges counted right in process, a real gateway's /metrics adding up to the requests the SDK sent,
and several gunicorn workers that show one total whichever of them answers the scrape."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.app import create_app
from gateway.exchange import CLIENT_CLOSED_REQUEST, Exchange
from gateway.observability.metrics import Metrics
from gateway.settings import Settings
from tests.support.processes import Process, free_port, start_gateway
from tests.test_proxy import behave

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def parse(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def label_values(samples: list[Sample], name: str, label: str) -> set[str]:
    return {s.labels[label] for s in samples if s.name == name}


async def scrape(metrics: Metrics, accept: str | None = None) -> httpx.Response:
    app = Starlette(routes=[Route("/metrics", metrics.endpoint)])
    headers = {"accept": accept} if accept else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        return await http.get("/metrics", headers=headers)


async def samples_of(metrics: Metrics) -> list[Sample]:
    response = await scrape(metrics)
    assert response.status_code == 200
    return parse(response.text)


def exchange(path: str = CHAT, status: int = 200, **fields: Any) -> Exchange:
    return Exchange("r-1", "POST", path, status=status, **fields)


@pytest.mark.anyio
async def test_requests_are_counted_by_route_agent_status_and_error_class() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.finished(exchange(agent="support", attempts=1))
    metrics.finished(exchange(status=502, agent="support", upstream_status=502, attempts=1))
    metrics.finished(exchange(status=429, agent="support", upstream_status=429, attempts=1))
    metrics.finished(exchange(status=429, agent="support", limited="rate", error_class="policy_rate_limit"))
    metrics.finished(exchange(status=404, error_class="client_not_found"))  # an unknown model: no agent
    metrics.finished(exchange(status=CLIENT_CLOSED_REQUEST, agent="support"))
    metrics.finished(exchange("/healthz"))

    samples = await samples_of(metrics)
    total = "gateway_requests_total"
    assert value(samples, total) == 9
    assert value(samples, total, route=CHAT, agent="support", status="200", error_class="") == 3
    assert value(samples, total, status="502", error_class="upstream_server_error") == 1
    # The provider's 429 and our own are told apart by their class.
    assert value(samples, total, status="429", error_class="upstream_rate_limited") == 1
    assert value(samples, total, status="429", error_class="policy_rate_limit") == 1
    assert value(samples, total, agent="", status="404", error_class="client_not_found") == 1
    assert value(samples, total, status="499", error_class="client_disconnected") == 1
    assert value(samples, total, route="/healthz", agent="") == 1
    assert value(samples, "gateway_limit_rejections_total", agent="support", limit="rate") == 1


@pytest.mark.anyio
async def test_label_values_stay_bounded_whatever_the_client_sends() -> None:
    metrics = Metrics()
    for n in range(50):
        metrics.finished(exchange(f"/probe/{n}", status=404, error_class="client_not_found"))
        metrics.finished(exchange(f"/v1/sessions/sess-{n}", status=404, error_class="client_not_found"))
        metrics.finished(exchange(f"/admin/keys/key-{n}", status=404, error_class="client_not_found"))
        metrics.finished(exchange(f"/v1/models/client-model-{n}", status=404, error_class="client_not_found"))

    samples = await samples_of(metrics)
    assert label_values(samples, "gateway_requests_total", "route") == {
        "other",
        "/v1/sessions/{session_id}",
        "/admin",
        "/v1/models/{model}",
    }
    assert label_values(samples, "gateway_requests_total", "agent") == {""}
    assert value(samples, "gateway_requests_total", route="other") == 50
    assert len([s for s in samples if s.name == "gateway_requests_total"]) == 4


@pytest.mark.anyio
async def test_durations_land_in_the_buckets_of_their_scale() -> None:
    metrics = Metrics()
    metrics.finished(exchange(agent="a", duration_ms=1800.0, overhead_ms=0.3, attempts=1, upstream_ms=1799.0))
    metrics.finished(exchange(agent="a", duration_ms=40.0, overhead_ms=4.0, attempts=2, upstream_ms=35.0))
    metrics.finished(exchange(status=404, error_class="client_not_found", duration_ms=0.2, overhead_ms=0.2))

    samples = await samples_of(metrics)
    duration = "gateway_request_duration_seconds"
    assert value(samples, duration + "_count", agent="a") == 2
    assert value(samples, duration + "_sum", agent="a") == pytest.approx(1.84)
    assert value(samples, duration + "_bucket", agent="a", le="1.0") == 1
    assert value(samples, duration + "_bucket", agent="a", le="2.5") == 2
    overhead = "gateway_overhead_seconds"
    # A third of a millisecond and four milliseconds are told apart: the buckets are made for the gateway's time.
    assert value(samples, overhead + "_bucket", agent="a", le="0.00025") == 0
    assert value(samples, overhead + "_bucket", agent="a", le="0.0005") == 1
    assert value(samples, overhead + "_bucket", agent="a", le="0.005") == 2
    assert value(samples, overhead + "_count", agent="") == 1
    # Only requests that called an upstream have an upstream duration, by agent.
    upstream = "gateway_upstream_duration_seconds"
    assert value(samples, upstream + "_count") == 2
    assert value(samples, upstream + "_sum", agent="a") == pytest.approx(1.834)


@pytest.mark.anyio
async def test_tokens_are_counted_by_kind_and_whether_they_were_estimated() -> None:
    metrics = Metrics()
    metrics.finished(exchange(agent="a", prompt_tokens=5, completion_tokens=7))
    metrics.finished(exchange(agent="a", prompt_tokens=11, completion_tokens=13))
    metrics.finished(exchange(agent="a", prompt_tokens=20, completion_tokens=3, usage_estimated=True))
    metrics.finished(exchange(status=502, agent="a", error_class="upstream_unreachable"))

    samples = await samples_of(metrics)
    tokens = "gateway_tokens_total"
    assert value(samples, tokens, agent="a", kind="prompt", estimated="false") == 16
    assert value(samples, tokens, agent="a", kind="completion", estimated="false") == 20
    assert value(samples, tokens, agent="a", kind="prompt", estimated="true") == 20
    assert value(samples, tokens, agent="a", kind="completion", estimated="true") == 3


@pytest.mark.anyio
async def test_streams_are_counted_while_open_and_by_how_they_ended() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.stream_opened()
    metrics.stream_closed()
    assert value(await samples_of(metrics), "gateway_active_streams") == 2

    metrics.stream_closed()
    metrics.stream_closed()
    metrics.finished(exchange(agent="a", stream="completed", ttfb_ms=250.0, duration_ms=3000.0))
    metrics.finished(exchange(agent="a", stream="upstream_error", ttfb_ms=300.0, error_class="upstream_bad_response"))
    metrics.finished(exchange(agent="a", stream="client_disconnected", ttfb_ms=200.0))
    metrics.finished(exchange(agent="a", ttfb_ms=900.0, duration_ms=900.0))  # a whole answer, not a stream

    samples = await samples_of(metrics)
    assert value(samples, "gateway_active_streams") == 0
    streams = "gateway_streams_total"
    assert value(samples, streams, agent="a", outcome="completed") == 1
    assert value(samples, streams, agent="a", outcome="upstream_error") == 1
    assert value(samples, streams, agent="a", outcome="client_disconnected") == 1
    # A stream that failed mid-way kept its 200 but is counted as the failure it was.
    requests = "gateway_requests_total"
    assert value(samples, requests, status="200", error_class="upstream_bad_response") == 1
    assert value(samples, requests, status="200", error_class="client_disconnected") == 1
    ttfb = "gateway_time_to_first_byte_seconds"
    assert value(samples, ttfb + "_count") == 3
    assert value(samples, ttfb + "_sum") == pytest.approx(0.75)


@pytest.mark.anyio
async def test_limits_and_queueing_are_counted_by_the_limit_that_refused() -> None:
    metrics = Metrics()
    for limited in ("rate", "rate", "quota", "concurrency", "cooldown"):
        metrics.finished(exchange(status=429, agent="a", limited=limited))
    metrics.finished(exchange(agent="a", queued=True))

    samples = await samples_of(metrics)
    rejections = "gateway_limit_rejections_total"
    assert {limit: value(samples, rejections, limit=limit) for limit in label_values(samples, rejections, "limit")} == {
        "rate": 2,
        "quota": 1,
        "concurrency": 1,
        "cooldown": 1,
    }
    assert value(samples, "gateway_queued_requests_total", agent="a") == 1


@pytest.mark.anyio
async def test_retries_fallbacks_circuits_and_redis_trouble_are_counted() -> None:
    metrics = Metrics()
    metrics.retried("a", "api.one", "upstream_server_error")
    metrics.retried("a", "api.one", "upstream_server_error")
    metrics.retried("a", "api.two", "upstream_timeout")
    metrics.fell_back("a", "b")
    metrics.circuit_changed("a", "api.one", "open")
    metrics.circuit_changed("a", "api.two", "open")
    metrics.circuit_changed("a", "api.two", "half_open")
    metrics.circuit_changed("a", "api.two", "closed")
    metrics.circuit_changed("a", "api.two", "something-else")  # not a state: ignored, not a new label value
    metrics.redis_error("limiter")
    metrics.redis_error("limiter")
    metrics.redis_error("sessions")

    samples = await samples_of(metrics)
    retries = "gateway_retries_total"
    assert value(samples, retries, agent="a", target="api.one", reason="upstream_server_error") == 2
    assert value(samples, retries, agent="a", target="api.two", reason="upstream_timeout") == 1
    assert value(samples, "gateway_fallbacks_total", from_agent="a", to_agent="b") == 1
    assert value(samples, "gateway_circuit_state", agent="a", target="api.one") == 2
    assert value(samples, "gateway_circuit_state", agent="a", target="api.two") == 0
    transitions = "gateway_circuit_transitions_total"
    assert label_values(samples, transitions, "state") == {"open", "half_open", "closed"}
    assert value(samples, transitions, target="api.two") == 3
    assert value(samples, "gateway_redis_errors_total", component="limiter") == 2
    assert value(samples, "gateway_redis_errors_total", component="sessions") == 1


@pytest.mark.anyio
async def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.finished(exchange(agent="a"))

    assert value(await samples_of(first), "gateway_requests_total") == 1
    assert value(await samples_of(second), "gateway_requests_total") == 0


@pytest.mark.anyio
async def test_the_endpoint_speaks_prometheus_text_and_openmetrics() -> None:
    metrics = Metrics()
    metrics.finished(exchange(agent="a"))

    text = await scrape(metrics)
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# HELP gateway_requests_total" in text.text
    assert "process_resident_memory_bytes" in text.text

    open_metrics = await scrape(metrics, "application/openmetrics-text; version=1.0.0")
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")


@pytest.mark.anyio
async def test_an_app_counts_its_own_requests(tmp_path: Path) -> None:
    settings = Settings(config=ROOT / "config", state_dir=tmp_path / "state")
    apps = [create_app(settings, environ={}), create_app(settings.model_copy(update={"state_dir": tmp_path / "b"}))]
    for app in apps:  # two apps in one process: each with its series, neither a clash in a shared registry
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
                assert (await http.post(CHAT, json=chat)).status_code == 200
                assert (await http.post(CHAT, json={**chat, "model": "no-such-model"})).status_code == 404
                assert (await http.get("/healthz")).status_code == 200
                samples = parse((await http.get("/metrics")).text)

        total = "gateway_requests_total"
        assert value(samples, total) == 3
        assert value(samples, total, route=CHAT, agent="demo", status="200", error_class="") == 1
        assert value(samples, total, route=CHAT, agent="", status="404", error_class="client_not_found") == 1
        assert "no-such-model" not in label_values(samples, total, "agent")
        assert value(samples, "gateway_request_duration_seconds_count", route=CHAT) == 2


METERED_MODEL = "upstream-model"
METERED_CONFIG = """\
version: "1.0"
agents:
  - name: metered
    llm: {{provider: openai-compatible, model: upstream-model, base_url: "{upstream}/v1"}}
"""


@pytest.fixture(scope="module")
def metered_gateway(upstream: Process, logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A gateway of its own, so that no other test's requests are in its counters."""
    directory = tmp_path_factory.mktemp("metered")
    config = directory / "agents.yaml"
    config.write_text(METERED_CONFIG.format(upstream=upstream.url))
    process = start_gateway(config, directory, {"GATEWAY_STATE_DIR": str(directory / "state")})
    yield process
    process.stop()


def scrape_until(url: str, name: str, expected: float, **labels: str) -> list[Sample]:
    """The gateway counts a request after its last byte, which the client may read first: wait for the count,
    then return the scrape that shows it (or the last one, for the assertion to name)."""
    deadline = time.monotonic() + 5
    while True:
        samples = parse(httpx.get(url + "/metrics").text)
        if value(samples, name, **labels) >= expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def test_a_gateways_counters_add_up_to_the_requests_sent(metered_gateway: Process) -> None:
    with openai.OpenAI(base_url=metered_gateway.url + "/v1", api_key="sk-any", max_retries=0, timeout=20) as sdk:
        messages: Any = [{"role": "user", "content": "hi"}]
        for _ in range(3):
            sdk.chat.completions.create(model="metered", messages=messages, extra_headers=behave())
        stream = sdk.chat.completions.create(model="metered", messages=messages, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="no-such-model", messages=messages)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                sdk.chat.completions.create(model="metered", messages=messages, extra_headers=behave(status=500))

    total = "gateway_requests_total"
    samples = scrape_until(metered_gateway.url, total, 7, route=CHAT)
    assert value(samples, total, route=CHAT) == 7
    assert value(samples, total, route=CHAT, agent="metered", status="200", error_class="") == 4
    assert value(samples, total, route=CHAT, agent="", status="404", error_class="client_not_found") == 1
    failed = [s for s in samples if s.name == total and s.labels["error_class"].startswith("upstream_")]
    assert sum(s.value for s in failed) == 2
    assert all(s.labels["agent"] == "metered" and s.labels["status"].startswith("5") for s in failed)
    assert label_values(samples, total, "agent") <= {"metered", ""}

    assert value(samples, "gateway_request_duration_seconds_count", route=CHAT) == 7
    assert value(samples, "gateway_overhead_seconds_count", route=CHAT) == 7
    assert value(samples, "gateway_time_to_first_byte_seconds_count", route=CHAT, agent="metered") == 1
    # Once per request that reached the upstream, however many attempts it took; never for the unknown model.
    assert value(samples, "gateway_upstream_duration_seconds_count") == 6
    assert value(samples, "gateway_upstream_duration_seconds_count", agent="metered") == 6
    assert value(samples, "gateway_streams_total", agent="metered", outcome="completed") == 1
    assert value(samples, "gateway_active_streams") == 0
    # Three whole answers of 5 + 7 tokens and a stream of 11 + 13, as the upstream reported them.
    tokens = "gateway_tokens_total"
    assert value(samples, tokens, agent="metered", kind="prompt", estimated="false") == 26
    assert value(samples, tokens, agent="metered", kind="completion", estimated="false") == 34
    assert value(samples, tokens, estimated="true") == 0

    # The GenAI semantic conventions' client metrics, for the requests that reached the upstream: the model is the
    # one it was sent, tokens by type, a failure's duration under its error type.
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai-compatible",
             "gen_ai_request_model": METERED_MODEL}  # fmt: skip
    usage = "gen_ai_client_token_usage"
    assert value(samples, usage + "_sum", **genai, gen_ai_token_type="input") == 26
    assert value(samples, usage + "_sum", **genai, gen_ai_token_type="output") == 34
    assert value(samples, usage + "_count", **genai, gen_ai_token_type="output") == 4
    duration = "gen_ai_client_operation_duration_seconds_count"
    assert value(samples, duration, **genai, error_type="") == 4
    assert value(samples, duration, **genai, error_type="upstream_server_error") == 2
    assert value(samples, duration) == 6  # never for the unknown model, which reached no upstream


WORKER_CONFIG = """\
version: "1.0"
agent:
  name: demo
  llm: {provider: mock}
"""


def counted_by_each_worker(directory: Path, route: str) -> dict[str, float]:
    """Requests to `route` counted by each worker (by file name), read from that worker's own file in the
    multiprocess directory."""
    counted = {}
    for path in directory.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        samples = [s for m in merged for s in m.samples]
        counted[path.name] = value(samples, "gateway_requests_total", route=route)
    return counted


def answered_by_both(before: dict[str, float], after: dict[str, float]) -> bool:
    return sum(1 for name, n in after.items() if n > before.get(name, 0)) == 2


@pytest.mark.redis
@pytest.mark.parametrize("launch", ["gateway serve --workers 2", "gunicorn -c python:gateway.gunicorn_conf"])
def test_workers_under_gunicorn_show_one_total_whichever_answers(
    redis_url: str, tmp_path: Path, logs: Path, launch: str
) -> None:
    config = tmp_path / "agents.yaml"
    config.write_text(WORKER_CONFIG)
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "stale.db").write_bytes(b"")  # a leftover of an earlier run: cleared before the workers start
    port = free_port()
    module = "gateway" if launch.startswith("gateway") else "gunicorn"
    argv = [sys.executable, "-m", module, *launch.split()[1:]]
    env = {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_PORT": str(port),
        "GATEWAY_WORKERS": "2",
        "GATEWAY_STORE": "redis",
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "REDIS_URL": redis_url,
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    server = Process("gunicorn", argv, port, logs, env)
    try:
        server.wait_ready("/healthz")
        chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        sent = 0
        # Each request on a new connection, until both workers have counted some: which worker accepts a
        # connection is the kernel's choice.
        while sent < 20 or not answered_by_both({}, counted_by_each_worker(directory, CHAT)):
            assert sent < 1000, "one worker answered every request"
            assert httpx.post(server.url + CHAT, json=chat).status_code == 200
            sent += 1

        total = "gateway_requests_total"
        samples = scrape_until(server.url, total, sent, route=CHAT)
        before = counted_by_each_worker(directory, "/metrics")  # scrapes that did not have to show it all yet
        scrapes = 1
        # Scrape on new connections until each worker has answered some: every answer shows every worker's count.
        while True:
            assert value(samples, total, route=CHAT, agent="demo", status="200") == sent
            assert value(samples, "gateway_request_duration_seconds_count", route=CHAT) == sent
            assert value(samples, "gateway_active_streams") == 0
            if scrapes >= 5 and answered_by_both(before, counted_by_each_worker(directory, "/metrics")):
                break
            assert scrapes < 200, "one worker answered every scrape"
            samples = parse(httpx.get(server.url + "/metrics").text)
            scrapes += 1
        assert not (directory / "stale.db").exists()
    finally:
        assert server.stop() == 0  # SIGTERM: every worker drains and the arbiter exits cleanly
