"""The protocol seam: what a wire format does for the gateway, on either side of it. Pure: no IO.

A `Wire` is one API's format (OpenAI's, Anthropic's). As a **front door** it says how its clients hear of a failure: the
error body, and the event that ends a stream already under way. As an **upstream** it says what an agent's
upstream is sent (the client's body rewritten for the agent, once per agent) and how its answers are read: usage
from a whole answer, usage and generated text metered out of a stream, a whole answer replayed as a stream for
clients that asked for one. The wire a request's client speaks is chosen by path (registry.door_for), the one an
agent's upstream speaks by its provider (config/providers.py). Where the two differ, a translator between them
goes in between (protocols/<client's>_to_<upstream's>.py, chosen in registry.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.config.agents import Agent, StreamingSpec, Target
    from gateway.errors import GatewayError
    from gateway.upstream.base import UpstreamResponse


# The most tokens any count may say (a trillion): a usage count beyond it is no count at all, and buckets, quotas,
# reservations and settlements stay within it, so every count is an exact integer in Python floats and Lua numbers
# (exact to 2^53) and what the rate-limit headers show always adds up.
MAX_TOKENS = 1_000_000_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used: the upstream's count, or the gateway's estimate (`estimated`)."""

    prompt_tokens: int  # all the input, the cached part included
    completion_tokens: int
    estimated: bool = False
    cached_tokens: int = 0  # the part of the input read from the provider's cache (priced apart)


@dataclass(frozen=True, slots=True)
class Outbound:
    """What goes to one agent's upstream, and what admission, the relay and metering need to know of it."""

    body: dict[str, Any]
    output_tokens: int  # the output limit, reserved against token limits (0 where nothing is generated)
    stream: bool  # whether the upstream is asked to stream
    simulated: bool  # the client asked for a stream the agent cannot give: a whole answer, replayed as one
    hide_usage: bool  # the stream's usage was asked for by the gateway, not the client: it is taken out again
    path: str  # where the upstream is called, below its base URL's /v1
    metered: bool = True  # whether it spends tokens at all (counting them does not): token limits leave it be

    def for_target(self, target: Target) -> dict[str, Any]:
        """The body for one attempt on `target`, which may name its own model."""
        if self.body.get("model") == target.upstream_model:
            return self.body
        return {**self.body, "model": target.upstream_model}


def output_limit(agent: Agent, asked: int | None, default: int, *, field: str) -> tuple[int, bool]:
    """The output tokens a request may generate (and reserves), and whether its body must say so: the request's own
    limit (`asked`, sent as `field`), else `default`, held to the agent's `max_tokens_per_request`. Over it, an
    asked limit is clamped or refused with a 400 naming `field`; an unstated one becomes the ceiling when the agent
    clamps (so the answer cannot exceed it), else the default held to it."""
    limits = agent.spec.limits
    ceiling = limits.max_tokens_per_request
    if ceiling is None:
        return (asked if asked is not None else default), False
    clamp = limits.over_max_tokens == "clamp"
    if asked is None:
        return (ceiling, True) if clamp else (min(default, ceiling), False)
    if asked > ceiling and not clamp:
        raise BadRequest(
            f"`{field}` is {asked}, but model `{agent.name}` allows at most {ceiling} tokens per request.",
            param=field,
        )
    return min(asked, ceiling), asked > ceiling


class Endpoint(Protocol):
    """One of a wire format's endpoints, as the proxy path and the relay see it."""

    @property
    def path(self) -> str:
        """Its path below /v1, as the upstream is called on it."""

    @property
    def replayable(self) -> bool:
        """Whether a whole answer can be replayed as the stream a client asked for."""

    @property
    def stream_end(self) -> str:
        """What a complete stream ends with, as an error message names it."""

    def stream_ended(self, last: bytes) -> bool:
        """Whether `last`, a stream's last block of whole events, ends it as a complete stream ends."""


class StreamMeter(Protocol):
    """Watches the events a relay forwards: takes out what the gateway asked for itself, keeps the usage."""

    def feed(self, events: bytes) -> bytes:
        """Account for a block of whole events; returns the block the client should get."""

    def result(self, prompt_estimate: int) -> Usage:
        """The usage to charge: the upstream's own, or an estimate from what was relayed."""


class Door(Protocol):
    """A wire format as a front door: what its clients' requests must hold and how they hear of a failure."""

    name: str

    def read(self, endpoint: Any, body: dict[str, Any]) -> tuple[str, bool]:
        """The model a client's request names and whether it asks for a stream, once the fields the gateway reads
        are checked (a `BadRequest` naming the field otherwise)."""

    def error_body(self, error: GatewayError) -> bytes:
        """A whole error answer's body."""

    def error_event(self, error: GatewayError) -> bytes:
        """The event that ends a stream already under way with `error`, so that the client's SDK raises."""

    def session_messages(self, endpoint: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The messages a client adds to a session with this request, as sessions keep them whatever the API:
        chat messages. A `BadRequest` for an endpoint that keeps no session."""


class StreamTranslator(Protocol):
    def feed(self, events: bytes) -> bytes:
        """Whole events of the upstream's format in, whole events of the client's out (maybe none yet)."""


class Translator(Protocol):
    """A client's wire format in front of an upstream that speaks another: one pure module per pair."""

    endpoints: frozenset[Any]  # the client's endpoints it translates

    @property
    def upstream_endpoint(self) -> Endpoint:
        """Where the upstream is called."""

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The client's request in the upstream's format."""

    def answer(self, answer: dict[str, Any], *, model: str) -> dict[str, Any]:
        """The upstream's whole answer in the client's format (`model`: the name the client asked for)."""

    def error(self, status: int, message: str) -> bytes:
        """An upstream's error answer in the client's format."""

    def stream(self, request: dict[str, Any], *, input_estimate: int) -> StreamTranslator:
        """A translator for the stream answering the client's `request` (`input_estimate`: its input tokens as
        the gateway estimates them, for a format that tells them before the upstream does)."""


class Wire(Door, Protocol):
    """A wire format on both sides: a front door, and what an upstream that speaks it is sent and answers."""

    def outbound(
        self,
        endpoint: Any,
        body: dict[str, Any],
        agent: Agent,
        *,
        stream: bool,
        default_max_tokens: int,
        history: Sequence[dict[str, Any]] = (),
    ) -> Outbound:
        """The client's `body` rewritten for `agent`'s upstream, without touching `body`."""

    def prompt_estimate(self, body: dict[str, Any]) -> int:
        """The prompt tokens an upstream body will cost, estimated from its text (for token limits, and to charge
        a stream that ends without the upstream's count)."""

    def usage(self, answer: Any) -> Usage | None:
        """The usage a whole answer reports, if it reports one a counter can take."""

    def meter(self, *, hide_usage: bool) -> StreamMeter: ...

    async def replay(self, response: UpstreamResponse, endpoint: Any, streaming: StreamingSpec) -> UpstreamResponse:
        """A successful whole answer turned into the stream the client asked for; an error answer as it is."""
