"""The upstream hop: one shared aiohttp session, request building and exception mapping.

This is the only module that imports aiohttp (httpx's pool cost 16x more CPU per request here); everything else
talks to an `Upstream` and gets an `UpstreamResponse`, whichever provider answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson

from gateway.config.agents import Agent, Target
from gateway.errors import (
    UpstreamBadResponse,
    UpstreamNotConfigured,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.upstream.base import UpstreamRequest, UpstreamResponse, relay_headers


def upstream_url(agent: Agent, target: Target, path: str) -> str:
    url = target.base_url + path
    return f"{url}?{urlencode(dict(agent.query))}" if agent.query else url


@contextlib.contextmanager
def map_exceptions(agent: Agent, target: Target, waited: str) -> Iterator[None]:
    """Translate aiohttp's exceptions (and our deadlines) into the gateway's upstream errors, in this one place;
    `waited` says which deadline a timeout broke ("did not answer within 60s")."""
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout(f"The upstream {_where(agent, target)} {waited}.") from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        raise UpstreamUnreachable(f"Cannot connect to the upstream {_where(agent, target)}: {reason}.") from None
    except aiohttp.ServerDisconnectedError:
        raise UpstreamBadResponse(
            f"The upstream {_where(agent, target)} closed the connection before finishing its response."
        ) from None
    except aiohttp.ClientPayloadError:
        raise UpstreamBadResponse(f"The upstream {_where(agent, target)} broke off its response body.") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"The request to the upstream {_where(agent, target)} failed: {type(exc).__name__}."
        ) from None


def _where(agent: Agent, target: Target) -> str:
    """Which upstream, for an error message: the model and host, never the path or query (they may hold secrets)."""
    return f"of model '{agent.name}' ({urlsplit(target.base_url).hostname})"


class HTTPResponse:
    """An aiohttp response seen through `UpstreamResponse`, with the agent's deadlines on reading it."""

    __slots__ = ("_agent", "_deadline", "_first", "_response", "_target", "status")

    def __init__(self, agent: Agent, target: Target, response: aiohttp.ClientResponse, deadline: float) -> None:
        self._agent = agent
        self._target = target
        self._response = response
        self._deadline = deadline  # loop time by which a stream's first byte must have come
        self._first: bytes | None = None
        self.status = response.status

    @property
    def content_type(self) -> str:
        return self._response.content_type

    def relay_headers(self) -> list[tuple[bytes, bytes]]:
        return relay_headers(self._response.headers.items())

    async def start(self) -> None:
        waited = f"sent no first byte within {self._agent.timeouts.first_byte:g}s"
        with map_exceptions(self._agent, self._target, waited):
            async with asyncio.timeout_at(self._deadline):
                self._first = await self._response.content.readany()

    async def read(self) -> bytes:
        whole = self._agent.timeouts.whole
        with map_exceptions(self._agent, self._target, f"did not answer within {whole:g}s"):
            try:
                if self._first is None:
                    return await self._response.read()
                # A stream was asked, and a whole answer came (JSON: an error, or an upstream that does not
                # stream). Its first chunk was read to see the stream begin: it is the body's beginning. And a
                # stream request has no deadline for its whole answer in aiohttp: this one gets the agent's.
                async with asyncio.timeout(whole):
                    return self._first + await self._response.read()
            finally:
                self._response.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._first is None:
            await self.start()
        if self._first:
            yield self._first
        timeouts = self._agent.timeouts
        content = self._response.content
        loop = asyncio.get_running_loop()
        ends = None if timeouts.total is None else loop.time() + timeouts.total
        idle = f"sent nothing for {timeouts.idle:g}s in the middle of its stream"
        with map_exceptions(self._agent, self._target, idle):
            while True:
                if ends is not None and loop.time() >= ends:
                    raise UpstreamTimeout(
                        f"The upstream {_where(self._agent, self._target)} did not finish its stream within "
                        f"{timeouts.total:g}s."
                    )
                wait = timeouts.idle if ends is None else min(timeouts.idle, ends - loop.time())
                async with asyncio.timeout(wait):
                    chunk = await content.readany()
                if not chunk:
                    return
                yield chunk

    def close(self) -> None:
        # An unfinished response cannot go back to the pool: closing drops its connection, which is what tells
        # the upstream to stop generating.
        self._response.close()


class HTTPUpstream:
    """Every OpenAI-compatible provider, over one keep-alive pool per process."""

    def __init__(self, session: aiohttp.ClientSession, connect_timeout: float) -> None:
        self._session = session
        self._connect_timeout = connect_timeout

    @classmethod
    def open(cls, max_connections: int, connect_timeout: float) -> HTTPUpstream:
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return cls(session, connect_timeout)

    async def close(self) -> None:
        await self._session.close()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        agent, target = request.agent, request.target
        if target.missing_key:
            raise UpstreamNotConfigured(
                f"Model '{agent.name}' is not available: its upstream key is not configured "
                f"(the gateway's operator must set {target.api_key_env})."
            )
        headers = dict(request.headers)
        for name, value in agent.default_headers.items():
            headers.setdefault(name, value)  # the client's own (a newer anthropic-version, say) wins
        headers.update(agent.headers)
        headers["content-type"] = "application/json"
        if target.api_key:
            is_bearer = agent.api_key_header.lower() == "authorization"
            headers[agent.api_key_header] = f"Bearer {target.api_key}" if is_bearer else target.api_key
        timeouts = agent.timeouts
        connect = timeouts.connect or self._connect_timeout
        # A whole answer has one deadline; a stream has one for its first byte and one for each pause after it.
        timeout = aiohttp.ClientTimeout(total=None if request.stream else timeouts.whole, connect=connect)
        # The first byte is the response's head: for a whole answer most servers send it once the answer is done.
        deadline = asyncio.get_running_loop().time() + timeouts.first_byte
        waited = f"sent no first byte within {timeouts.first_byte:g}s"
        with map_exceptions(agent, target, waited):
            async with asyncio.timeout_at(deadline):
                response = await self._session.post(
                    upstream_url(agent, target, request.path),
                    data=orjson.dumps(request.payload),
                    headers=headers,
                    timeout=timeout,
                )
        return HTTPResponse(agent, target, response, deadline)
