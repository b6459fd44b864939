"""Which wire format each side of a request speaks: the client's by the path it called, an upstream's by its
agent's provider (config/providers.py)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.config.providers import PROVIDERS
from gateway.errors import BadRequest
from gateway.protocols import anthropic_to_openai
from gateway.protocols.anthropic.wire import ANTHROPIC
from gateway.protocols.openai.wire import OPENAI
from gateway.protocols.wire import Door, Translator, Wire

WIRES: Mapping[str, Wire] = MappingProxyType({OPENAI.name: OPENAI, ANTHROPIC.name: ANTHROPIC})
# Front doors by path prefix, first match wins; everything else is OpenAI's.
DOORS: tuple[tuple[str, Door], ...] = (("/v1/messages", ANTHROPIC),)
# Between a client's format (first) and an upstream's that differs: one pure module per pair.
TRANSLATORS: Mapping[tuple[str, str], Translator] = MappingProxyType(
    {(ANTHROPIC.name, OPENAI.name): anthropic_to_openai.TRANSLATOR}
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


def translator_for(door: Door, upstream: Wire, agent: str) -> Translator | None:
    """None when the client and the upstream speak the same format: the body and events pass as they are. A pair
    with no translator yet is a 400 saying where the agent can be called."""
    if door.name == upstream.name:
        return None
    translator = TRANSLATORS.get((door.name, upstream.name))
    if translator is None:
        raise BadRequest(
            f"Model `{agent}` is served over the {upstream.name} API and cannot be called in the {door.name} format "
            f"yet; call it {_WHERE.get(upstream.name, 'through its own API')}.",
            param="model",
        )
    return translator
