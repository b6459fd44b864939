"""Which wire format each side of a request speaks: the client's by the path it called, an upstream's by its
agent's provider (config/providers.py)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gateway.config.providers import PROVIDERS
from gateway.errors import BadRequest
from gateway.protocols import anthropic_to_openai, openai_to_anthropic
from gateway.protocols.anthropic.wire import ANTHROPIC
from gateway.protocols.openai.wire import OPENAI
from gateway.protocols.wire import Door, Translator, Wire

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


def translator_for(door: Door, endpoint: Any, upstream: Wire, agent: str) -> Translator | None:
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
