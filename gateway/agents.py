"""Agent specs: the YAML schema (pydantic, strict) and the frozen `Agent` the proxy works with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Provider = Literal["openai", "openai-compatible", "mock"]
Storage = Literal["memory", "redis"]

DEFAULT_BASE_URLS: Mapping[str, str] = MappingProxyType({"openai": "https://api.openai.com/v1"})
# As the OpenAI SDK does: an `openai` agent without a base_url uses OPENAI_BASE_URL when it is set.
DEFAULT_BASE_URL_ENVS: Mapping[str, str] = MappingProxyType({"openai": "OPENAI_BASE_URL"})
DEFAULT_KEY_ENVS: Mapping[str, str] = MappingProxyType({"openai": "OPENAI_API_KEY"})


class Spec(BaseModel):
    """Unknown keys are errors: a typo in a config must not silently do nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LLMSpec(Spec):
    provider: Provider = "openai"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_header: str = Field(
        default="Authorization",
        description="`Authorization` sends `Bearer <key>`; any other header the bare key.",
    )
    query: dict[str, str] = Field(default_factory=dict, description="Added to every upstream URL (api-version).")
    headers: dict[str, str] = Field(default_factory=dict, description="Static headers added upstream.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    defaults: dict[str, Any] = Field(default_factory=dict, description="Other body fields the client may omit.")
    timeout: float = Field(default=60.0, gt=0)
    supports_streaming: bool = True

    @model_validator(mode="after")
    def _check(self) -> LLMSpec:
        if self.provider == "openai-compatible" and not self.base_url:
            raise ValueError("provider 'openai-compatible' needs a base_url")
        if self.provider != "mock" and not self.model:
            raise ValueError(f"provider '{self.provider}' needs a model")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return self


class SessionSpec(Spec):
    enabled: bool = False
    storage: Storage | None = Field(default=None, description="Default: SESSION_STORAGE, else GATEWAY_STORE.")
    redis_url: str | None = Field(default=None, description="Default: REDIS_URL.")
    ttl_seconds: int | None = Field(default=None, gt=0, description="Default: SESSION_TTL (3600).")
    max_history: int = Field(default=10, ge=0, description="Stored messages kept, newest whole turns first.")
    max_history_tokens: int | None = Field(default=None, gt=0, description="Estimated tokens of history kept.")
    auto_create: bool = Field(default=False, description="An unknown session id starts a session under that id.")
    store_partial: bool = Field(default=False, description="Keep the partial reply of a failed or cancelled turn.")


class StreamingSpec(Spec):
    enabled: bool = True
    chunk_size: int = Field(default=10, gt=0)
    delay: float = Field(default=0.05, ge=0)


class RateLimitSpec(Spec):
    enabled: bool = False
    requests_per_minute: int = Field(default=60, gt=0)
    burst_size: int | None = Field(default=None, gt=0)
    storage: Storage | None = None
    redis_url: str | None = None


class LimitsSpec(Spec):
    max_concurrent_requests: int | None = Field(default=None, gt=0)
    max_tokens_per_request: int | None = Field(default=None, gt=0)
    over_max_tokens: Literal["reject", "clamp"] = Field(
        default="reject", description="A request asking for more output than max_tokens_per_request: 400, or cut down."
    )
    max_requests_per_minute: int | None = Field(default=None, gt=0)


class LoggingSpec(Spec):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    output: Literal["console"] = "console"


class AgentSpec(Spec):
    name: str = Field(min_length=1)
    description: str = ""
    aliases: list[str] = Field(default_factory=list)
    llm: LLMSpec
    system_prompt: str | None = None
    session: SessionSpec = Field(default_factory=SessionSpec)
    streaming: StreamingSpec = Field(default_factory=StreamingSpec)
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    logging: LoggingSpec = Field(default_factory=LoggingSpec)


class AgentFile(Spec):
    """One YAML file: a single agent under `agent:` or several under `agents:`."""

    version: str = "1.0"
    agent: AgentSpec | None = None
    agents: list[AgentSpec] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> AgentFile:
        if (self.agent is None) == (self.agents is None):
            raise ValueError("a file holds either `agent:` or `agents:` (exactly one of them)")
        return self

    def specs(self) -> list[AgentSpec]:
        return [self.agent] if self.agent is not None else list(self.agents or [])


@dataclass(frozen=True, slots=True)
class Agent:
    """One compiled agent: what the proxy needs, resolved once at load."""

    name: str
    aliases: tuple[str, ...]
    description: str
    provider: Provider
    upstream_model: str
    base_url: str
    api_key_env: str | None
    api_key: str | None = field(repr=False)
    api_key_header: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    defaults: Mapping[str, Any]
    system_prompt: str | None
    timeout: float
    streaming: StreamingSpec
    spec: AgentSpec = field(repr=False)
    source: str = ""

    @property
    def streams(self) -> bool:
        """Whether stream requests are relayed from an upstream stream (else simulated from a whole answer)."""
        return self.spec.llm.supports_streaming and self.spec.streaming.enabled

    @property
    def missing_key(self) -> bool:
        return self.api_key_env is not None and not self.api_key

    def features(self) -> list[str]:
        on = []
        if self.spec.session.enabled:
            on.append("sessions")
        if self.spec.streaming.enabled:
            on.append("streaming")
        if self.spec.rate_limit.enabled:
            on.append("rate-limit")
        limits = self.spec.limits
        if any(
            v is not None
            for v in (limits.max_concurrent_requests, limits.max_tokens_per_request, limits.max_requests_per_minute)
        ):
            on.append("limits")
        if self.system_prompt:
            on.append("system-prompt")
        return on


def compile_agent(spec: AgentSpec, environ: Mapping[str, str], source: str = "") -> Agent:
    llm = spec.llm
    key_env = llm.api_key_env or DEFAULT_KEY_ENVS.get(llm.provider)
    defaults: dict[str, Any] = dict(llm.defaults)
    for name in ("temperature", "top_p", "max_tokens"):
        value = getattr(llm, name)
        if value is not None:
            defaults[name] = value
    return Agent(
        name=spec.name,
        aliases=tuple(spec.aliases),
        description=spec.description,
        provider=llm.provider,
        upstream_model=llm.model or spec.name,
        base_url=(llm.base_url or _default_base_url(llm.provider, environ)).rstrip("/"),
        api_key_env=key_env,
        api_key=environ.get(key_env) if key_env else None,
        api_key_header=llm.api_key_header,
        query=MappingProxyType(dict(llm.query)),
        headers=MappingProxyType(dict(llm.headers)),
        defaults=MappingProxyType(defaults),
        system_prompt=spec.system_prompt or None,
        timeout=llm.timeout,
        streaming=spec.streaming,
        spec=spec,
        source=source,
    )


def _default_base_url(provider: str, environ: Mapping[str, str]) -> str:
    env = DEFAULT_BASE_URL_ENVS.get(provider)
    from_env = environ.get(env, "").strip() if env else ""
    return from_env or DEFAULT_BASE_URLS.get(provider, "mock://")
