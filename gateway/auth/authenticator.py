"""Who is calling: virtual keys from `Authorization: Bearer` or `api-key`, checked against the store."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from typing import Literal

from gateway.errors import AuthenticationFailed, StoreUnavailable
from gateway.keys import KeyRecord, hash_secret, utcnow
from gateway.store.base import Store

AuthMode = Literal["keys", "none"]


class AuthRefused(Exception):
    """Starting would expose the gateway without keys on a non-loopback address."""


def resolve_mode(setting: str, *, admin_key_set: bool, key_count: int, host: str) -> AuthMode:
    """The auth mode in force. `auto` means keys as soon as there is an admin key or any key, else none; an
    implicit `none` is refused on anything but a loopback address (set GATEWAY_AUTH=none to mean it)."""
    if setting in ("keys", "none"):
        return "keys" if setting == "keys" else "none"
    if admin_key_set or key_count:
        return "keys"
    if not is_loopback(host):
        raise AuthRefused(
            f"refusing to serve on {host} without authentication: set GATEWAY_ADMIN_KEY (and create keys), "
            "or GATEWAY_AUTH=none if the gateway is only reachable by trusted callers (e.g. a sidecar)"
        )
    return "none"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CACHE_SIZE = 10_000
# How long a cached valid key keeps working while the store cannot be reached.
STALE_SECONDS = 300.0
# After a failed lookup, the store is left alone this long: lookups meanwhile are answered from the cache or
# refused at once, so a frozen store costs one timeout a second rather than one per request.
RETRY_STORE_AFTER = 1.0


def presented_secret(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (what the OpenAI SDK sends), `x-api-key: <key>` (what
    the Anthropic SDK sends) or `api-key: <key>` (Azure's)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
        elif name in (b"x-api-key", b"api-key") and value.strip():
            return value.decode("latin-1").strip()
    return None


class Authenticator:
    """Turns a request's key into its `KeyRecord`, or refuses it with 401.

    Lookups go through a small per-process cache (unknown keys included, so a flood of wrong keys costs one hash
    and one dict lookup each, not a store round trip) whose entries live `store.cache_ttl` seconds: an admin
    change made on another worker or replica is seen within that time.
    """

    def __init__(
        self, store: Store, mode: AuthMode, cache_ttl: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.mode = mode
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._resting_until = 0.0

    async def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> KeyRecord | None:
        """The caller's key (None in mode `none`); raises `AuthenticationFailed`."""
        if self.mode == "none":
            return None
        secret = presented_secret(headers)
        if secret is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or an `api-key` header)."
            )
        secret_hash = hash_secret(secret)
        record = await self._lookup(secret_hash)
        now = utcnow()
        if record is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if not record.usable(secret_hash, now):
            if record.revoked:
                raise AuthenticationFailed("This API key has been revoked.")
            if record.expires_at is not None and now >= record.expires_at:
                raise AuthenticationFailed("This API key has expired.")
            raise AuthenticationFailed("This API key was rotated and its grace period is over.")
        return record

    async def _lookup(self, secret_hash: str) -> KeyRecord | None:
        now = self._clock()
        cached = self._cache.get(secret_hash)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        # While the store is away no key can change either: a key seen recently keeps working (for at most
        # STALE_SECONDS), an unknown one is refused with 503 rather than 401, since it may well be valid.
        stale = cached[1] if cached is not None and now - cached[0] < STALE_SECONDS else None
        if now < self._resting_until:
            if stale is not None:
                return stale
            raise StoreUnavailable(
                "The gateway's key store is unavailable; retry shortly.", retry_after=self._resting_until - now
            )
        try:
            record = await self.store.find_key(secret_hash)
        except self.store.errors:
            self._resting_until = self._clock() + RETRY_STORE_AFTER
            if stale is not None:
                return stale
            raise
        if self._ttl <= 0:
            return record
        if len(self._cache) >= _CACHE_SIZE:
            # Cheaper than LRU bookkeeping, and entries only live a moment anyway; valid keys are kept so that a
            # flood of made-up keys cannot push them out before a store outage.
            self._cache = {h: entry for h, entry in self._cache.items() if entry[1] is not None}
        self._cache[secret_hash] = (now, record)
        return record

    def forget(self) -> None:
        """Drop every cached lookup (this process changed a key)."""
        self._cache.clear()
