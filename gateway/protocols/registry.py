"""Which wire format each side of a request speaks: the client's by the path it called, an upstream's by its
agent's provider (config/providers.py)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.config.providers import PROVIDERS
from gateway.protocols.openai.wire import OPENAI
from gateway.protocols.wire import Wire

WIRES: Mapping[str, Wire] = MappingProxyType({OPENAI.name: OPENAI})
# Front doors by path prefix, first match wins; everything else is OpenAI's (the next protocol adds its prefix).
DOORS: tuple[tuple[str, Wire], ...] = ()


def door_for(path: str) -> Wire:
    """The wire format a client calling `path` speaks: its errors are answered in it."""
    for prefix, wire in DOORS:
        if path.startswith(prefix):
            return wire
    return OPENAI


def wire_of(provider: str) -> Wire:
    """The wire format the upstream of a provider speaks."""
    return WIRES[PROVIDERS[provider].wire]
