"""The proxy path, in the order the product does it (the caller is known already): match the agent, rewrite, forward,
relay, and note what accounting needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway import jsonbody
from gateway.auth.door import agent_for, key_of
from gateway.config.agents import Agent
from gateway.config.routing import RoutingTable
from gateway.errors import UpstreamBadResponse
from gateway.exchange import Exchange, exchange_of
from gateway.http import DisconnectWatch, read_body
from gateway.keys import KeyRecord
from gateway.limits.admission import Guard
from gateway.observability.metrics import Metrics
from gateway.protocols.registry import Crossings, chat_view, door_for
from gateway.protocols.wire import Endpoint as WireEndpoint
from gateway.protocols.wire import Outbound, Translator, Wire
from gateway.proxy.dispatcher import Dispatcher
from gateway.proxy.relay import StreamRelay
from gateway.sessions.assembly import reply_from_completion
from gateway.sessions.service import Sessions, Turn, requested_id
from gateway.upstream.base import UpstreamResponse, forward_headers

JSON = "application/json"
SSE = "text/event-stream"


class Proxy:
    """Forwards OpenAI requests to the agent named by `model`. Holds no per-request state."""

    def __init__(
        self,
        routes: Callable[[], RoutingTable],
        dispatcher: Dispatcher,
        guard: Guard,
        sessions: Sessions,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        default_max_tokens: int,
    ) -> None:
        self._metrics = metrics
        self._routes = routes
        self._dispatcher = dispatcher
        self._guard = guard
        self._sessions = sessions
        self._max_body_bytes = max_body_bytes
        self._default_max_tokens = default_max_tokens

    async def forward(self, request: Request, endpoint: WireEndpoint) -> Response:
        body = jsonbody.parse(await read_body(request, self._max_body_bytes))
        return await self.serve(request, endpoint, body)

    async def serve(self, request: Request, endpoint: WireEndpoint, body: dict[str, Any]) -> Response:
        """The rest of the path, for a body already read."""
        exchange = exchange_of(request.scope)
        key = key_of(request)
        door = door_for(request.scope["path"])  # the wire format the client speaks
        model, stream = door.read(endpoint, body)
        agent = agent_for(self._routes(), key, model)
        exchange.agent = agent.name
        # Where the client and an agent's upstream speak different formats, the request crosses into the
        # upstream's, once per format (a fallback may speak another than the first agent), and the answer comes
        # back into the client's. A first agent the request cannot cross to is a 400 here.
        crossing = Crossings(door, endpoint, body)
        first_crossing = crossing(agent)
        # A session keeps its history in one form, chat messages, whichever API a turn came through; each
        # upstream's rewrite puts it in its own.
        session_id = requested_id(request.scope["headers"], body)
        turn = None
        if session_id is not None:
            turn = await self._continue_session(
                request, session_id, messages=door.session_messages(endpoint, body), agent=agent, key=key
            )
        history = turn.history if turn is not None else ()

        def prepare(candidate: Agent) -> Outbound:
            wire, _, upstream_endpoint, upstream_body = crossing(candidate)
            return wire.outbound(
                upstream_endpoint,
                upstream_body,
                candidate,
                stream=stream,
                default_max_tokens=self._default_max_tokens,
                history=history,
            )

        async def fallback(candidate: Agent) -> Outbound:
            """What a fallback agent gets, once it is admitted by its own limits as the first agent was (one the
            request cannot cross to is refused with a 400, and skipped)."""
            prepared = prepare(candidate)
            wire = crossing(candidate).wire
            await self._guard.admit_fallback(exchange, key=key, agent=candidate, wire=wire, outbound=prepared)
            return prepared

        first = prepare(agent)
        await self._guard.admit(
            exchange, key=key, agent=agent, wire=first_crossing.wire, outbound=first, scope=request.scope
        )
        # From here until the answer starts, a client that leaves cancels the work (a stream's relay watches the
        # client itself from its first event on).
        watch = DisconnectWatch(request.receive)
        try:
            response, answered, sent = await self._dispatcher.send(
                exchange,
                agent,
                first,
                headers=forward_headers(request.scope["headers"], exchange.request_id),
                fallback=fallback,
            )
            # An agent that cannot stream still serves stream clients: one whole answer, replayed as chunks; so is
            # a whole answer to a stream request (an upstream that ignored `stream`): relayed as it is, the SDK
            # would read it as an empty stream.
            wire, translator, upstream_endpoint, _ = crossing(answered)
            whole = stream and response.status < 300 and response.content_type != SSE and upstream_endpoint.replayable
            if sent.simulated or whole:
                response = await wire.replay(response, upstream_endpoint, answered.streaming)
            if stream and response.status < 300 and response.content_type == SSE:
                prompt_estimate = wire.prompt_estimate(sent.body)
                relay = StreamRelay(
                    response,
                    wire.meter(hide_usage=sent.hide_usage),
                    exchange,
                    prompt_estimate,
                    door=door,
                    endpoint=upstream_endpoint,
                    translator=translator.stream(body, input_estimate=prompt_estimate) if translator else None,
                    metrics=self._metrics,
                )
                if turn is not None:
                    view = chat_view(wire)
                    relay.keep_reply(turn, view.stream(body, input_estimate=0) if view is not None else None)
                return relay
            return await buffered(response, exchange, wire, turn, (translator, model) if translator else None)
        except asyncio.CancelledError:
            if watch.left():
                raise ClientDisconnect from None
            raise
        finally:
            watch.stop()

    async def _continue_session(
        self,
        request: Request,
        session_id: str,
        *,
        messages: list[dict[str, Any]],
        agent: Agent,
        key: KeyRecord | None,
    ) -> Turn:
        """The session the request names: its history goes in front of the client's messages upstream, and what
        the client adds (`messages`) is stored with the reply."""
        turn = await self._sessions.open(agent, key.id if key is not None else None, session_id)
        exchange = exchange_of(request.scope)
        exchange.session_id = turn.session.id
        exchange.session_storage = turn.storage
        turn.new_messages = list(messages)
        return turn


async def buffered(
    upstream: UpstreamResponse,
    exchange: Exchange,
    wire: Wire,
    turn: Turn | None = None,
    translate: tuple[Translator, str] | None = None,
) -> Response:
    """A whole upstream response: success bodies as they are, errors made OpenAI-shaped if they are not; or, with
    `translate` (the translator and the model the client named), both in the client's format. A session's turn is
    stored before the answer goes out, so the client's next turn finds it."""
    began = time.perf_counter()
    body = await upstream.read()
    exchange.upstream_ms += (time.perf_counter() - began) * 1000
    parsed = _json(body)
    if upstream.status < 300:
        if parsed is None:
            raise UpstreamBadResponse(f"The upstream answered HTTP {upstream.status} with a body that is not JSON.")
        counted = wire.usage(parsed)
        if counted is not None:
            exchange.prompt_tokens = counted.prompt_tokens
            exchange.completion_tokens = counted.completion_tokens
            exchange.cached_tokens = counted.cached_tokens
        if turn is not None:
            view = chat_view(wire)  # the reply is stored as a chat message, whatever the upstream's format
            chat = view.answer(parsed, model="") if view is not None and isinstance(parsed, dict) else parsed
            await turn.store_reply(reply_from_completion(chat) if isinstance(chat, dict) else None)
        if translate is not None:
            translator, model = translate
            body = orjson.dumps(translator.answer(parsed if isinstance(parsed, dict) else {}, model=model))
    elif translate is not None:
        error = parsed.get("error") if isinstance(parsed, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str):
            message = upstream_error_payload(upstream.status, body)["error"]["message"]
        body = translate[0].error(upstream.status, message)
    elif not (isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)):
        body = orjson.dumps(upstream_error_payload(upstream.status, body))
    # Every kind is JSON now, whatever content type the upstream claimed.
    response = Response(body, status_code=upstream.status, media_type=JSON)
    response.raw_headers.extend(h for h in upstream.relay_headers() if h[0] != b"content-type")
    return response


def upstream_error_payload(status: int, body: bytes) -> dict[str, Any]:
    """An upstream error that is not OpenAI-shaped (an HTML page from a proxy, say), wrapped so SDKs can read it."""
    snippet = " ".join(body[:200].decode("utf-8", "replace").split())
    message = f"The upstream answered HTTP {status}" + (f": {snippet}" if snippet else ".")
    return {
        "error": {
            "message": message,
            "type": "upstream_error",
            "param": None,
            "code": f"upstream_http_{status}",
        }
    }


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
