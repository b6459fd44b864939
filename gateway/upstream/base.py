"""What every upstream is: a request to send, a response to read, and which headers cross the hop. Pure: the HTTP
transport (upstream/http.py) and in-process upstreams (the mock) implement `Upstream`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config.agents import Agent, Target

# Never forwarded upstream: hop-by-hop headers, what aiohttp sets itself, and the client's own credentials.
_DROP_REQUEST_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "authorization", "api-key",
        "x-api-key", "cookie", "x-session-id", "x-request-id", "x-forwarded-for", "x-real-ip",
    }
)  # fmt: skip
# Relayed back to the client as they are; the upstream's request id is renamed so ours stays `x-request-id`.
_PASS_RESPONSE_HEADERS = frozenset(
    {"content-type", "retry-after", "retry-after-ms", "openai-processing-ms", "openai-version"}
)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    agent: Agent
    target: Target
    path: str
    payload: dict[str, Any]
    stream: bool
    headers: Mapping[str, str]


class UpstreamResponse(Protocol):
    """A response whose headers have arrived; the body is read once, whole or as chunks."""

    status: int

    @property
    def content_type(self) -> str: ...

    def relay_headers(self) -> list[tuple[bytes, bytes]]: ...

    async def start(self) -> None:
        """Wait for the first byte of the body (a stream's first chunk), within the first-byte timeout."""

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...


def forward_headers(client_headers: Iterable[tuple[bytes, bytes]], request_id: str) -> dict[str, str]:
    """The client's headers that may go upstream (credentials and hop-by-hop ones removed)."""
    headers = {}
    for raw_name, raw_value in client_headers:
        name = raw_name.decode("latin-1").lower()
        if name not in _DROP_REQUEST_HEADERS:
            headers[name] = raw_value.decode("latin-1")
    headers["x-request-id"] = request_id
    return headers


def relay_headers(upstream_headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers a client should see, as raw ASGI header pairs."""
    out = []
    for name, value in upstream_headers:
        lower = name.lower()
        if lower in _PASS_RESPONSE_HEADERS or lower.startswith("x-ratelimit-"):
            out.append((lower.encode("latin-1"), value.encode("latin-1")))
        elif lower == "x-request-id":
            out.append((b"x-upstream-request-id", value.encode("latin-1")))
    return out
