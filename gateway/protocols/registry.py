"""Which wire format each side of a request speaks: the client's by the path it called, an upstream's by its
agent's provider (config/providers.py); and how a request crosses from the one to the other."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.config.providers import PROVIDERS
from gateway.errors import BadRequest
from gateway.protocols import anthropic_to_openai, openai_to_anthropic
from gateway.protocols.anthropic.wire import ANTHROPIC
from gateway.protocols.openai.wire import OPENAI
from gateway.protocols.wire import Door, Endpoint, Translator, Wire

if TYPE_CHECKING:
    from gateway.config.agents import Agent

WIRES: Mapping[str, Wire] = MappingProxyType({OPENAI.name: OPENAI, ANTHROPIC.name: ANTHROPIC})
# Front doors by path prefix, first match wins; everything else is OpenAI's.
DOORS: tuple[tuple[str, Door], ...] = (("/v1/messages", ANTHROPIC),)
# Between a client's format (first) and an upstream's that differs: one pure module per pair.
TRANSLATORS: Mapping[tuple[str, str], Translator] = MappingProxyType(
    {
        (ANTHROPIC.name, OPENAI.name): anthropic_to_openai.TRANSLATOR,
        (OPENAI.name, ANTHROPIC.name): openai_to_anthropic.TRANSLATOR,
    }
)


_WHERE = {"anthropic": "at /v1/messages", "openai": "at /v1/chat/completions"}


def door_for(path: str) -> Door:
    """The wire format a client calling `path` speaks: its errors are answered in it."""
    for prefix, wire in DOORS:
        if path.startswith(prefix):
            return wire
    return OPENAI


def wire_of(provider: str) -> Wire:
    """The wire format the upstream of a provider speaks."""
    return WIRES[PROVIDERS[provider].wire]


def translator_for(door: Door, endpoint: Endpoint, upstream: Wire, agent: str) -> Translator | None:
    """None when the client and the upstream speak the same format: the body and events pass as they are. An
    endpoint no translator takes to the upstream's format is a 400 saying where the agent can be called."""
    if door.name == upstream.name:
        return None
    translator = TRANSLATORS.get((door.name, upstream.name))
    if translator is None or endpoint not in translator.endpoints:
        raise BadRequest(
            f"Model `{agent}` is served over the {upstream.name} API, and /v1{endpoint.path} requests are not "
            f"translated to it; call it {_WHERE.get(upstream.name, 'through its own API')}.",
            param="model",
        )
    return translator


def chat_view(upstream: Wire) -> Translator | None:
    """How sessions read an upstream's answers: as chat completions (the one form they keep), through the
    translator for OpenAI clients where the upstream speaks another format."""
    return None if upstream.name == OPENAI.name else TRANSLATORS[(OPENAI.name, upstream.name)]


class Crossing(NamedTuple):
    """How a request reaches an upstream of one wire format: the translator from the client's (None when the two
    agree), the endpoint it calls there, and the body in its format."""

    wire: Wire
    translator: Translator | None
    endpoint: Endpoint
    body: dict[str, Any]


class Crossings:
    """How one request reaches its agents' upstreams, found once per wire format: its own body where the format is
    the client's, else translated."""

    __slots__ = ("_body", "_door", "_endpoint", "_found")

    def __init__(self, door: Door, endpoint: Endpoint, body: dict[str, Any]) -> None:
        self._door = door
        self._endpoint = endpoint
        self._body = body
        self._found: dict[str, Crossing] = {}

    def __call__(self, agent: Agent) -> Crossing:
        """The crossing to `agent`'s upstream; a 400 when the request has none to its format."""
        wire = wire_of(agent.provider)
        found = self._found.get(wire.name)
        if found is None:
            translator = translator_for(self._door, self._endpoint, wire, agent.name)
            if translator is None:
                found = Crossing(wire, None, self._endpoint, self._body)
            else:
                found = Crossing(wire, translator, translator.upstream_endpoint, translator.request(self._body))
            self._found[wire.name] = found
        return found
