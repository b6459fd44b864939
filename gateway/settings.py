"""Process-wide settings, read from the environment (and `.env`) by pydantic-settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_ADMIN_KEY_LENGTH = 12
SENTINEL_SCHEME = "redis+sentinel://"


class Settings(BaseSettings):
    """Everything the process needs that is not per agent. Agent behaviour lives in the route config."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    config: Path = Field(default=Path("config"), description="Agent file or directory of *.yaml files.")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    admin_key: SecretStr | None = None
    auth: Literal["auto", "keys", "none"] = Field(
        default="auto", description="auto: keys when an admin key is set or any key exists, else none (loopback only)."
    )
    store: Literal["memory", "redis"] = "memory"
    state_dir: Path = Path("state")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("GATEWAY_REDIS_URL", "REDIS_URL")
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("GATEWAY_REDIS_SENTINELS", "REDIS_SENTINELS"),
        description="Redis behind Sentinel: the sentinels' host:port, comma-separated (with REDIS_SENTINEL_MASTER).",
    )
    redis_sentinel_master: str | None = Field(
        default=None, validation_alias=AliasChoices("GATEWAY_REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_MASTER")
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="The most bytes a request's head (request line and headers) may take; more is a 431.",
    )
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    upstream_max_connections: int = Field(default=1000, ge=1)
    drain_timeout: float = Field(default=30.0, ge=0)
    shutdown_delay: float = Field(
        default=0.0,
        ge=0,
        description="Seconds after SIGTERM during which /readyz says 503 but requests are still accepted.",
    )
    watch_config: bool = Field(default=False, description="Reload the route config when its files change.")
    rate_limit_storage: Literal["memory", "redis"] | None = Field(
        default=None,
        validation_alias=AliasChoices("GATEWAY_RATE_LIMIT_STORAGE", "RATE_LIMIT_STORAGE"),
        description="Where buckets live; default: the same as GATEWAY_STORE.",
    )
    rate_limit_requests_per_minute: int | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices("GATEWAY_RATE_LIMIT_REQUESTS_PER_MINUTE", "RATE_LIMIT_REQUESTS_PER_MINUTE"),
        description="Requests per minute for keys without their own rpm, and per address in auth mode none.",
    )
    rate_limit_failure: Literal["open", "closed"] = Field(
        default="open", description="Redis unreachable: open = in-process buckets meanwhile, closed = 503."
    )
    session_storage: Literal["memory", "redis"] | None = Field(
        default=None,
        validation_alias=AliasChoices("GATEWAY_SESSION_STORAGE", "SESSION_STORAGE"),
        description="Where sessions live for agents that do not say; default: the same as GATEWAY_STORE.",
    )
    session_ttl: int = Field(
        default=3600,
        gt=0,
        validation_alias=AliasChoices("GATEWAY_SESSION_TTL", "SESSION_TTL"),
        description="Seconds a session lives after its last use, for agents without session.ttl_seconds.",
    )
    queue_timeout: float = Field(default=5.0, ge=0, description="Seconds to wait for a concurrency slot.")
    default_max_tokens: int = Field(default=1024, gt=0, description="Output tokens reserved when nothing says.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Peers whose X-Forwarded-For is believed (comma-separated)."
    )

    @model_validator(mode="after")
    def _sentinel(self) -> Settings:
        # Everything that takes the default Redis URL (store, limiter, sessions, reload) then finds the master
        # through the sentinels. The settings are frozen, hence the object.__setattr__.
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: set both, or neither")
        if self.redis_sentinels and self.redis_sentinel_master:
            url = sentinel_url(self.redis_sentinels, self.redis_sentinel_master, self.redis_url)
            object.__setattr__(self, "redis_url", url)
        return self

    @field_validator("trusted_proxies", "redis_sentinels", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("admin_key", mode="before")
    @classmethod
    def _admin_key(cls, value: object) -> object:
        # An empty GATEWAY_ADMIN_KEY= means "off", never "an admin key that an empty header matches".
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str) and len(value.strip()) < MIN_ADMIN_KEY_LENGTH:
            raise ValueError(
                f"GATEWAY_ADMIN_KEY must be at least {MIN_ADMIN_KEY_LENGTH} characters; make one with "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value.strip() if isinstance(value, str) else value


def environ_with_dotenv() -> Mapping[str, str]:
    """The process environment over `.env`, so upstream keys and the admin key may live in either (the
    environment wins), as they may for the settings above."""
    from_file = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    return {**from_file, **os.environ}


def sentinel_url(sentinels: list[str], master: str, url: str) -> str:
    """The URL a `RedisConnection` takes for Redis behind Sentinel: the sentinels' `host:port` list, the master's
    name, and the database and password of `url` (REDIS_URL), e.g. `redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0`."""
    parts = urlsplit(url)
    password = f":{parts.password}@" if parts.password else ""
    db = parts.path.strip("/") or "0"
    return f"{SENTINEL_SCHEME}{password}{','.join(sentinels)}/{master}/{db}"
