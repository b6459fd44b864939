"""What crosses the upstream hop: request headers out, response headers back, the URL, and error mapping."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from gateway.config.agents import Agent, AgentSpec, compile_agent
from gateway.errors import GatewayError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnreachable
from gateway.upstream.base import forward_headers, relay_headers
from gateway.upstream.http import map_exceptions, upstream_url

SECRET = "sk-upstream-secret-4242"


def make_agent(**llm: Any) -> Agent:
    spec = AgentSpec.model_validate(
        {
            "name": "bot",
            "llm": {
                "provider": "openai-compatible",
                "model": "m",
                "base_url": "https://llm.example.com:8443/v1/",
                "api_key_env": "UPSTREAM_KEY",
                "timeout": 2.5,
                **llm,
            },
        }
    )
    return compile_agent(spec, {"UPSTREAM_KEY": SECRET})


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "api-key",
        "X-Api-Key",
        "Cookie",
        "Proxy-Authorization",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "TE",
        "Upgrade",
        "Host",
        "Content-Length",
        "X-Session-Id",
    ],
)
def test_client_credentials_and_hop_by_hop_headers_are_never_forwarded(name: str) -> None:
    forwarded = forward_headers(raw({name: "client-value"}), "req-1")

    assert name.lower() not in forwarded
    assert "client-value" not in forwarded.values()


def test_other_client_headers_are_forwarded() -> None:
    client = {
        "Content-Type": "application/json",
        "User-Agent": "OpenAI/Python 1.50.0",
        "OpenAI-Organization": "org-1",
        "X-Stainless-Lang": "python",
        "Accept": "text/event-stream",
    }

    forwarded = forward_headers(raw(client), "req-1")

    assert forwarded == {
        "content-type": "application/json",
        "user-agent": "OpenAI/Python 1.50.0",
        "openai-organization": "org-1",
        "x-stainless-lang": "python",
        "accept": "text/event-stream",
        "x-request-id": "req-1",
    }


def test_our_request_id_replaces_the_clients() -> None:
    forwarded = forward_headers(raw({"X-Request-Id": "client-chosen"}), "gw-123")

    assert forwarded["x-request-id"] == "gw-123"
    assert "client-chosen" not in forwarded.values()


def test_the_upstream_request_id_comes_back_renamed() -> None:
    relayed = relay_headers([("X-Request-Id", "up-789")])

    assert relayed == [(b"x-upstream-request-id", b"up-789")]


def test_rate_limit_and_retry_headers_pass_back_to_the_client() -> None:
    upstream = [
        ("Content-Type", "application/json"),
        ("x-ratelimit-limit-requests", "500"),
        ("X-RateLimit-Remaining-Tokens", "1234"),
        ("Retry-After", "3"),
        ("retry-after-ms", "2500"),
        ("openai-processing-ms", "87"),
    ]

    relayed = dict(relay_headers(upstream))

    assert relayed == {
        b"content-type": b"application/json",
        b"x-ratelimit-limit-requests": b"500",
        b"x-ratelimit-remaining-tokens": b"1234",
        b"retry-after": b"3",
        b"retry-after-ms": b"2500",
        b"openai-processing-ms": b"87",
    }


@pytest.mark.parametrize(
    "name",
    ["Set-Cookie", "Server", "Content-Length", "Transfer-Encoding", "Connection", "openai-organization", "Via", "Date"],
)
def test_other_upstream_headers_do_not_reach_the_client(name: str) -> None:
    assert relay_headers([(name, "upstream-value")]) == []


def test_upstream_url_joins_base_url_and_path() -> None:
    assert (
        upstream_url(make_agent(), make_agent().primary, "/chat/completions")
        == "https://llm.example.com:8443/v1/chat/completions"
    )


def test_upstream_url_appends_the_agents_query_params() -> None:
    agent = make_agent(query={"api-version": "2024-10-21", "x": "a b&c"})

    url = upstream_url(agent, agent.primary, "/embeddings")

    assert url == "https://llm.example.com:8443/v1/embeddings?api-version=2024-10-21&x=a+b%26c"


def mapped(agent: Agent, exc: BaseException) -> GatewayError:
    with pytest.raises(GatewayError) as info, map_exceptions(agent, agent.primary, "did not answer within 2.5s"):
        raise exc
    return info.value


def connector_error() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("llm.example.com", 8443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        aiohttp.ServerTimeoutError("read"),
        aiohttp.SocketTimeoutError(),
        aiohttp.ConnectionTimeoutError(),
    ],
    ids=["TimeoutError", "ServerTimeoutError", "SocketTimeoutError", "ConnectionTimeoutError"],
)
def test_a_timeout_becomes_upstream_timeout(exc: BaseException) -> None:
    error = mapped(make_agent(), exc)

    assert isinstance(error, UpstreamTimeout)
    assert error.status == 504
    assert "'bot'" in error.message
    assert "2.5s" in error.message


def test_a_refused_connection_becomes_upstream_unreachable() -> None:
    error = mapped(make_agent(), connector_error())

    assert isinstance(error, UpstreamUnreachable)
    assert error.status == 502
    assert "llm.example.com" in error.message
    assert "Connection refused" in error.message


@pytest.mark.parametrize(
    "exc",
    [aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("Response payload is not completed")],
    ids=["ServerDisconnectedError", "ClientPayloadError"],
)
def test_a_broken_response_becomes_upstream_bad_response(exc: BaseException) -> None:
    error = mapped(make_agent(), exc)

    assert isinstance(error, UpstreamBadResponse)
    assert error.status == 502
    assert error.code == "upstream_bad_response"


def test_any_other_client_error_becomes_upstream_unreachable() -> None:
    error = mapped(make_agent(), aiohttp.ClientOSError(104, "Connection reset by peer"))

    assert isinstance(error, UpstreamUnreachable)


def test_errors_outside_aiohttp_are_not_mapped() -> None:
    with pytest.raises(KeyError), map_exceptions(make_agent(), make_agent().primary, "did not answer"):
        raise KeyError("a bug")


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(SECRET),
        connector_error(),
        aiohttp.ServerDisconnectedError(SECRET),
        aiohttp.ClientPayloadError(SECRET),
        aiohttp.ClientResponseError(None, (), message=SECRET),  # type: ignore[arg-type]
    ],
    ids=["timeout", "unreachable", "disconnected", "payload", "other"],
)
def test_error_messages_never_contain_the_api_key(exc: BaseException) -> None:
    agent = make_agent()
    assert agent.primary.api_key == SECRET

    error = mapped(agent, exc)

    assert SECRET not in error.message
    assert SECRET.encode() not in error.body()
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_error_messages_never_contain_credentials_in_the_base_url() -> None:
    agent = make_agent(base_url=f"https://user:{SECRET}@llm.example.com/v1")

    error = mapped(agent, connector_error())

    assert SECRET not in error.message
    assert "llm.example.com" in error.message
