"""Virtual keys: the record, the secret and its hash, and what a key may do. Pure logic, no IO."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SECRET_PREFIX = "sk-gw-"  # noqa: S105 (a prefix, not a secret)
_DISPLAY_PREFIX_LENGTH = len(SECRET_PREFIX) + 6


def new_secret() -> str:
    """`sk-gw-` + 32 random bytes, url-safe base64 (43 characters)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 of the whole secret. The secret has 256 bits of entropy, so no salt or slow hash is needed, and
    every replica computes the same hash without sharing a pepper."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:_DISPLAY_PREFIX_LENGTH]


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    rpm_burst: int | None = None
    tpm: int | None = None
    tpm_burst: int | None = None
    max_concurrent: int | None = None
    cooldown_after: int | None = None  # refusals within cooldown_window seconds that start a cooldown
    cooldown_window: float | None = None  # seconds; None: 60
    cooldown_seconds: float | None = None  # seconds; None: 60


@dataclass(frozen=True, slots=True)
class Quotas:
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A virtual key as stored. The secret itself is never stored: only its hash (and during a rotation's grace
    period, the previous secret's hash)."""

    id: str
    name: str
    prefix: str
    secret_hash: str = field(repr=False)
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool = False
    revoked_at: datetime | None = None
    models: tuple[str, ...] = ()
    limits: Limits = Limits()
    quotas: Quotas = Quotas()
    metadata: dict[str, Any] = field(default_factory=dict)
    rotated_at: datetime | None = None
    grace_hash: str | None = field(default=None, repr=False)
    grace_until: datetime | None = None

    def replace(self, **changes: Any) -> KeyRecord:
        return dataclasses.replace(self, **changes)

    def usable(self, secret_hash: str, now: datetime) -> bool:
        """Whether a request presenting the secret with this hash may proceed (not revoked, expired or past grace)."""
        if self.revoked or (self.expires_at is not None and now >= self.expires_at):
            return False
        if secret_hash == self.secret_hash:
            return True
        return secret_hash == self.grace_hash and self.grace_until is not None and now < self.grace_until

    def allows(self, model: str) -> bool:
        """Whether this key may use the agent called `model` (allowed names or glob patterns; none = all)."""
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def public(self) -> dict[str, Any]:
        """The record as the admin API shows it: no hashes."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked": self.revoked,
            "revoked_at": _iso(self.revoked_at),
            "models": list(self.models),
            "limits": dataclasses.asdict(self.limits),
            "quotas": dataclasses.asdict(self.quotas),
            "metadata": self.metadata,
            "rotated_at": _iso(self.rotated_at),
            "grace_until": _iso(self.grace_until),
        }

    def to_json(self) -> dict[str, Any]:
        """The record as a store keeps it: the public fields plus the hashes."""
        return {**self.public(), "secret_hash": self.secret_hash, "grace_hash": self.grace_hash}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(
            id=data["id"],
            name=data["name"],
            prefix=data["prefix"],
            secret_hash=data["secret_hash"],
            created_at=_parse(data["created_at"]) or utcnow(),
            expires_at=_parse(data.get("expires_at")),
            revoked=bool(data.get("revoked", False)),
            revoked_at=_parse(data.get("revoked_at")),
            models=tuple(data.get("models") or ()),
            limits=Limits(**(data.get("limits") or {})),
            quotas=Quotas(**(data.get("quotas") or {})),
            metadata=dict(data.get("metadata") or {}),
            rotated_at=_parse(data.get("rotated_at")),
            grace_hash=data.get("grace_hash"),
            grace_until=_parse(data.get("grace_until")),
        )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
