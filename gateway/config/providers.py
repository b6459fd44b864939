"""The providers an agent may name in `llm.provider`, as one table (uvicorn picks its loops and protocols the same
way): the wire format each one's upstream speaks, how it is reached, and what it defaults to.

A provider that speaks a wire format the gateway knows (protocols/) is one row here. The transport is `http` (the
shared aiohttp pool, upstream/http.py) or an in-process upstream named by import string, loaded only when an agent
uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    wire: str  # the wire format its upstream speaks: a name in protocols.WIRES
    transport: str  # "http", or "module:Class" of an in-process upstream
    base_url: str | None = None  # used when the agent sets none; None: the agent file must set one
    base_url_env: str | None = None  # an environment variable that overrides `base_url`, as the provider's SDK reads
    key_env: str | None = None  # where the upstream key is read from when the agent names no variable
    needs_model: bool = True  # whether the agent must name the upstream model
    key_header: str = "Authorization"  # where the upstream key goes (`Authorization` as `Bearer <key>`)
    path_prefix: str = ""  # added to a base URL that does not end with it (Anthropic's base URL has no /v1)
    # Sent when the client sent none of that name.
    default_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def in_process(self) -> bool:
        return self.transport != "http"


PROVIDERS: Mapping[str, Provider] = MappingProxyType(
    {
        provider.name: provider
        for provider in (
            Provider(
                "openai",
                wire="openai",
                transport="http",
                base_url="https://api.openai.com/v1",
                base_url_env="OPENAI_BASE_URL",
                key_env="OPENAI_API_KEY",
            ),
            Provider("openai-compatible", wire="openai", transport="http"),
            Provider(
                "anthropic",
                wire="anthropic",
                transport="http",
                base_url="https://api.anthropic.com",
                base_url_env="ANTHROPIC_BASE_URL",
                key_env="ANTHROPIC_API_KEY",
                key_header="x-api-key",
                path_prefix="/v1",
                default_headers=MappingProxyType({"anthropic-version": "2023-06-01"}),
            ),
            # Answers in process, as the agent's own name: no network, no key (the bundled `demo` agent).
            Provider(
                "mock",
                wire="openai",
                transport="gateway.protocols.mock:MockUpstream",
                base_url="mock://",
                needs_model=False,
            ),
        )
    }
)


def provider(name: str) -> Provider:
    """The provider named `name`; a `ValueError` naming the known ones otherwise (an agent file's mistake)."""
    found = PROVIDERS.get(name)
    if found is None:
        raise ValueError(f"unknown provider '{name}': one of {', '.join(sorted(PROVIDERS))}")
    return found
