"""What the gateway learns about one request while serving it, read by the access log and accounting."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.concurrency import Lease
    from gateway.ratelimit import Charge, Decision


@dataclass(slots=True)
class Exchange:
    """One request's facts, filled in as the request moves along; kept in `scope["state"]["exchange"]`."""

    request_id: str
    method: str
    path: str
    status: int = 0
    key_id: str | None = None
    agent: str | None = None
    upstream_status: int | None = None
    stream: str | None = None  # completed | upstream_error | client_disconnected
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    duration_ms: float = 0.0
    ratelimit: Decision | None = None  # the limiter's answer: the x-ratelimit-* headers come from it
    charge: Charge | None = None  # what was taken, to settle once the real usage is known
    reserved_tokens: int = 0
    leases: list[Lease] = field(default_factory=list)
    limited: str | None = None  # the kind of gateway limit that refused it: rate, quota, concurrency, cooldown
    queued: bool = False  # it waited for a concurrency slot
    session_id: str | None = None
    session_storage: str | None = None  # memory | redis: where the session was served from

    def log_fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "key_id": self.key_id,
            "agent": self.agent,
            "upstream_status": self.upstream_status,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "session_id": self.session_id,
        }


def exchange_of(scope: MutableMapping[str, Any]) -> Exchange:
    exchange: Exchange = scope["state"]["exchange"]
    return exchange
