"""What a session store offers, and the session record it keeps. No IO here."""

from __future__ import annotations

import builtins
import dataclasses
import enum
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from gateway.keys import utcnow

SESSION_ID_PREFIX = "sess_"


class AnyOwner(enum.Enum):
    """A read for whoever owns the session (the admin API)."""

    ANY = "any"


# Whose session a read is for: a key id, None for the anonymous clients of auth mode `none`, or anyone.
Owner = str | None | AnyOwner


def new_session_id() -> str:
    """`sess_` + 24 random hex digits (96 bits): unguessable, so an id alone reveals nothing to another key."""
    return SESSION_ID_PREFIX + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Session:
    """A server-side conversation as stored; its messages are kept beside it, not in the record."""

    id: str
    key_id: str | None  # the virtual key that owns it; None when auth is off (mode `none`)
    model: str  # the agent name the client used
    user_id: str | None
    metadata: dict[str, Any]
    created_at: datetime  # UTC, like every time here
    expires_at: datetime  # moves forward on every use
    ttl_seconds: int

    @classmethod
    def new(
        cls,
        *,
        model: str,
        key_id: str | None,
        ttl_seconds: int,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Session:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        created = now or utcnow()
        return cls(
            id=new_session_id(),
            key_id=key_id,
            model=model,
            user_id=user_id,
            metadata=dict(metadata or {}),
            created_at=created,
            expires_at=created + timedelta(seconds=ttl_seconds),
            ttl_seconds=ttl_seconds,
        )

    def touched(self, now: datetime) -> Session:
        """The session as one more use leaves it: alive for another `ttl_seconds` from `now`."""
        return dataclasses.replace(self, expires_at=now + timedelta(seconds=self.ttl_seconds))

    def public(self) -> dict[str, Any]:
        """What the sessions API shows a client (never the owning key)."""
        return {
            "session_id": self.id,
            "model": self.model,
            "user_id": self.user_id,
            "metadata": self.metadata,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
        }

    def to_json(self) -> dict[str, Any]:
        """The record as a store keeps it."""
        return {
            "id": self.id,
            "key_id": self.key_id,
            "model": self.model,
            "user_id": self.user_id,
            "metadata": self.metadata,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "ttl_seconds": self.ttl_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        return cls(
            id=data["id"],
            key_id=data.get("key_id"),
            model=data["model"],
            user_id=data.get("user_id"),
            metadata=dict(data.get("metadata") or {}),
            created_at=_parse(data["created_at"]),
            expires_at=_parse(data["expires_at"]),
            ttl_seconds=int(data["ttl_seconds"]),
        )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class SessionStore(Protocol):
    """Sessions and their messages. Implementations: `MemorySessionStore` (one process) and `RedisSessionStore`.

    Every read or write of a session counts as a use and refreshes its TTL; an expired session is gone everywhere.
    """

    name: str
    # The exceptions that mean "the store is unavailable right now", as opposed to a bug.
    errors: tuple[type[Exception], ...]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def create(self, session: Session) -> bool:
        """Store a new session with no messages; False (and nothing changed) when a live one has its id."""

    async def get(
        self, session_id: str, *, owner: Owner = AnyOwner.ANY
    ) -> tuple[Session, builtins.list[dict[str, Any]]] | None:
        """The session (its TTL refreshed) and its messages, oldest first; None if unknown, expired, or not owned
        by `owner` (a key id, None for anonymous) when one is given: then it is not touched either."""

    async def append(
        self,
        session_id: str,
        messages: builtins.list[dict[str, Any]],
        *,
        max_messages: int | None,
        max_tokens: int | None,
    ) -> bool:
        """Add `messages` at the end and bound the history (`history.bound`), refreshing the TTL; False if the
        session is gone. A concurrent append never loses messages and keeps each call's messages together."""

    async def list(
        self,
        *,
        key_id: str | None,
        user_id: str | None = None,
        model: str | None = None,
        offset: int = 0,
        limit: int = 20,
        all_keys: bool = False,
    ) -> tuple[builtins.list[Session], int]:
        """One page of the sessions owned by `key_id` (None: the anonymous ones; `all_keys`: everyone's, for the
        admin API), filtered by `user_id` and `model` when given, newest first; and how many match in all.
        Listing does not count as a use."""

    async def delete(self, session_id: str) -> bool:
        """Remove the session and its messages; False if it was already gone."""
