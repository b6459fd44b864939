"""Agent specs: the YAML schema (pydantic, strict) and the frozen `Agent` the proxy works with."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.config.providers import PROVIDERS, provider
from gateway.pricing import Pricing

Storage = Literal["memory", "redis"]


class Spec(BaseModel):
    """Unknown keys are errors: a typo in a config must not silently do nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PricingSpec(Spec):
    """What the provider charges, in USD per million tokens (see docs/cost.md for where to read the prices)."""

    input_per_million: float = Field(ge=0, le=1_000_000)
    output_per_million: float = Field(ge=0, le=1_000_000)
    cached_input_per_million: float | None = Field(
        default=None, ge=0, le=1_000_000, description="Input read from the provider's cache; default: the input price."
    )


class TargetSpec(Spec):
    """One upstream of an agent with several; what it leaves out comes from the `llm` block."""

    name: str | None = Field(default=None, description="For logs and metrics; default: the base URL's host.")
    base_url: str | None = None
    api_key_env: str | None = None
    model: str | None = None
    weight: float = Field(default=1.0, gt=0)
    pricing: PricingSpec | None = Field(default=None, description="This target's prices; default: the agent's.")

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return self


class TimeoutsSpec(Spec):
    """Seconds; each one breached is a 504 (or an error event once a stream has started)."""

    connect: float | None = Field(default=None, gt=0, description="Default: GATEWAY_UPSTREAM_CONNECT_TIMEOUT.")
    first_byte: float | None = Field(default=None, gt=0, description="Until the first byte; default: llm.timeout.")
    idle: float | None = Field(default=None, gt=0, description="Between stream chunks; default: llm.timeout.")
    total: float | None = Field(default=None, gt=0, description="A whole call; default: llm.timeout, none for streams.")


class LLMSpec(Spec):
    provider: str = Field(default="openai", description=f"One of {', '.join(sorted(PROVIDERS))} (config/providers.py).")
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_header: str | None = Field(
        default=None,
        description="`Authorization` sends `Bearer <key>`; any other header the bare key. Default: the provider's.",
    )
    query: dict[str, str] = Field(default_factory=dict, description="Added to every upstream URL (api-version).")
    headers: dict[str, str] = Field(default_factory=dict, description="Static headers added upstream.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    defaults: dict[str, Any] = Field(default_factory=dict, description="Other body fields the client may omit.")
    timeout: float = Field(default=60.0, gt=0)
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
    supports_streaming: bool = True
    targets: list[TargetSpec] = Field(default_factory=list, description="Several upstreams, balanced by weight.")

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, name: str) -> str:
        provider(name)  # raises, naming the known ones
        return name

    @model_validator(mode="after")
    def _check(self) -> LLMSpec:
        known = provider(self.provider)
        for index, target in enumerate(self.targets or [TargetSpec()]):
            where = f"targets[{index}]: " if self.targets else ""
            if known.base_url is None and not (target.base_url or self.base_url):
                raise ValueError(f"{where}provider '{self.provider}' needs a base_url")
            if known.needs_model and not (target.model or self.model):
                raise ValueError(f"{where}provider '{self.provider}' needs a model")
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


class CircuitBreakerSpec(Spec):
    """A target that fails `failures` times within `window` seconds is skipped for `cooldown` seconds, then one
    request probes it: a success closes the circuit, a failure opens it again."""

    enabled: bool = True
    failures: int = Field(default=5, gt=0)
    window: float = Field(default=30.0, gt=0)
    cooldown: float = Field(default=30.0, gt=0)


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
    retries: int = Field(default=2, ge=0, le=10, description="Attempts after the first, on the next healthy target.")
    retry_backoff: float = Field(default=0.25, ge=0, description="Seconds before the first retry; doubles, jittered.")
    fallbacks: list[str] = Field(default_factory=list, description="Agents tried in order when every target fails.")
    circuit_breaker: CircuitBreakerSpec = Field(default_factory=CircuitBreakerSpec)
    pricing: PricingSpec | None = Field(default=None, description="USD per million tokens: what a request costs.")


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
class Target:
    """One upstream an agent calls: where, as which model, with which key, and how often against the others."""

    name: str
    base_url: str
    upstream_model: str
    api_key_env: str | None
    api_key: str | None = field(repr=False)
    weight: float
    pricing: Pricing | None = None  # its own prices, or its agent's; None: its cost is not counted

    @property
    def missing_key(self) -> bool:
        return self.api_key_env is not None and not self.api_key


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float | None  # None: the gateway's GATEWAY_UPSTREAM_CONNECT_TIMEOUT
    first_byte: float
    idle: float
    total: float | None  # for streams; a whole answer is bounded by `whole`
    whole: float


@dataclass(frozen=True, slots=True)
class Agent:
    """One compiled agent: what the proxy needs, resolved once at load."""

    name: str
    aliases: tuple[str, ...]
    description: str
    provider: str  # a name in config/providers.py
    targets: tuple[Target, ...]
    api_key_header: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    default_headers: Mapping[str, str]  # the provider's, sent when the client sent none of that name
    defaults: Mapping[str, Any]
    system_prompt: str | None
    timeouts: Timeouts
    streaming: StreamingSpec
    spec: AgentSpec = field(repr=False)
    source: str = ""

    @property
    def primary(self) -> Target:
        return self.targets[0]

    @property
    def upstream_model(self) -> str:
        return self.primary.upstream_model

    @property
    def base_url(self) -> str:
        return self.primary.base_url

    @property
    def timeout(self) -> float:
        return self.timeouts.whole

    @property
    def streams(self) -> bool:
        """Whether stream requests are relayed from an upstream stream (else simulated from a whole answer)."""
        return self.spec.llm.supports_streaming and self.spec.streaming.enabled

    def missing_keys(self) -> list[str]:
        """The environment variables its targets need and do not have."""
        return sorted({t.api_key_env for t in self.targets if t.missing_key and t.api_key_env})

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
    defaults: dict[str, Any] = dict(llm.defaults)
    for name in ("temperature", "top_p", "max_tokens"):
        value = getattr(llm, name)
        if value is not None:
            defaults[name] = value
    targets = tuple(_compile_target(spec.name, llm, t, environ, spec.pricing) for t in llm.targets or [TargetSpec()])
    timeouts = llm.timeouts
    return Agent(
        name=spec.name,
        aliases=tuple(spec.aliases),
        description=spec.description,
        provider=llm.provider,
        targets=_unique_names(targets),
        api_key_header=llm.api_key_header or provider(llm.provider).key_header,
        query=MappingProxyType(dict(llm.query)),
        headers=MappingProxyType(dict(llm.headers)),
        default_headers=provider(llm.provider).default_headers,
        defaults=MappingProxyType(defaults),
        system_prompt=spec.system_prompt or None,
        timeouts=Timeouts(
            connect=timeouts.connect,
            first_byte=timeouts.first_byte or llm.timeout,
            idle=timeouts.idle or llm.timeout,
            total=timeouts.total,
            whole=timeouts.total or llm.timeout,
        ),
        streaming=spec.streaming,
        spec=spec,
        source=source,
    )


def _compile_target(
    agent: str, llm: LLMSpec, target: TargetSpec, environ: Mapping[str, str], prices: PricingSpec | None
) -> Target:
    key_env = target.api_key_env or llm.api_key_env or provider(llm.provider).key_env
    base_url = (target.base_url or llm.base_url or _default_base_url(llm.provider, environ)).rstrip("/")
    prefix = provider(llm.provider).path_prefix
    if prefix and not base_url.endswith(prefix):
        base_url += prefix  # `https://api.anthropic.com` as ANTHROPIC_BASE_URL spells it, called on /v1/messages
    return Target(
        name=target.name or urlsplit(base_url).netloc or llm.provider,
        base_url=base_url,
        upstream_model=target.model or llm.model or agent,  # the mock answers as the agent's own name
        api_key_env=key_env,
        api_key=environ.get(key_env) if key_env else None,
        weight=target.weight,
        pricing=_pricing(target.pricing or prices),
    )


def _pricing(spec: PricingSpec | None) -> Pricing | None:
    if spec is None:
        return None
    return Pricing(spec.input_per_million, spec.output_per_million, spec.cached_input_per_million)


def _unique_names(targets: tuple[Target, ...]) -> tuple[Target, ...]:
    """Targets on one host get `#2`, `#3` after their name, so that logs and breakers tell them apart."""
    seen: dict[str, int] = {}
    named = []
    for target in targets:
        seen[target.name] = seen.get(target.name, 0) + 1
        count = seen[target.name]
        named.append(target if count == 1 else dataclasses.replace(target, name=f"{target.name}#{count}"))
    return tuple(named)


def _default_base_url(name: str, environ: Mapping[str, str]) -> str:
    """As the provider's SDK does: e.g. an `openai` agent without a base_url uses OPENAI_BASE_URL when it is set."""
    known = provider(name)
    from_env = environ.get(known.base_url_env, "").strip() if known.base_url_env else ""
    return from_env or known.base_url or ""
