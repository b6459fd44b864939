"""Who may use the console: the admin key checked once at sign-in, then a signed, expiring session cookie; the
CSRF token each form carries; and how many wrong keys an address may try.

The cookie is `<payload>.<signature>`: the payload says the session's id and when it expires, the signature is an
HMAC-SHA256 under a key derived from the admin key. Nothing is stored on the gateway, so every worker and replica
that has the admin key accepts it; changing the admin key ends every session. Signing out ends the session in the
browser (the cookie is cleared) and in this process (its id is refused until it would have expired anyway).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections import deque
from dataclasses import dataclass

COOKIE = "gw_console"
LOGIN_COOKIE = "gw_console_login"  # a sign-in form's own CSRF nonce, before there is a session
SESSION_SECONDS = 8 * 3600
# Wrong keys an address may try in a window before it must wait; each wrong try is answered late, too.
ATTEMPTS = 5
ATTEMPT_WINDOW = 300.0
WRONG_KEY_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id: str
    expires_at: int  # unix seconds


class ConsoleAuth:
    """Signs and checks console sessions and CSRF tokens, and counts wrong sign-ins per address."""

    def __init__(self, admin_key: str) -> None:
        self._admin_key = admin_key.encode()
        self._signing = hmac.new(self._admin_key, b"agent-gateway console v1", hashlib.sha256).digest()
        self._signed_out: dict[str, int] = {}  # session id -> when it would have expired
        self._failures: dict[str, deque[float]] = {}

    def key_matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._admin_key)

    def open(self, now: float | None = None) -> tuple[ConsoleSession, str]:
        """A new session and its cookie value."""
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        session = ConsoleSession(_token(), expires)
        payload = f"{session.id}:{session.expires_at}".encode()
        return session, f"{_b64(payload)}.{_b64(self._sign(b'session', payload))}"

    def session(self, cookie: str | None, now: float | None = None) -> ConsoleSession | None:
        """The session a cookie holds, if its signature is ours and it has neither expired nor been signed out."""
        if not cookie or cookie.count(".") != 1:
            return None
        encoded, signature = cookie.split(".")
        try:
            payload = _unb64(encoded)
            if not hmac.compare_digest(_unb64(signature), self._sign(b"session", payload)):
                return None
            session_id, _, expires = payload.decode().partition(":")
            session = ConsoleSession(session_id, int(expires))
        except ValueError:  # not base64, not UTF-8, not a number
            return None
        moment = now if now is not None else time.time()
        if session.expires_at <= moment or session.id in self._signed_out:
            return None
        return session

    def close(self, session: ConsoleSession, now: float | None = None) -> None:
        """Refuse the session from now on (in this process; the browser's cookie is cleared too)."""
        moment = now if now is not None else time.time()
        self._signed_out = {sid: until for sid, until in self._signed_out.items() if until > moment}
        self._signed_out[session.id] = session.expires_at

    def csrf_token(self, session_id: str) -> str:
        """The token a form of this session carries (or of a sign-in form, by its nonce)."""
        return _b64(self._sign(b"csrf", session_id.encode()))

    def csrf_ok(self, session_id: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token(session_id), presented or "")

    def wait_before_trying(self, address: str, now: float | None = None) -> float:
        """Seconds `address` must wait before it may try a key again (0: it may now)."""
        moment = now if now is not None else time.monotonic()
        recent = self._failures.get(address)
        if recent is None:
            return 0.0
        while recent and recent[0] <= moment - ATTEMPT_WINDOW:
            recent.popleft()
        if len(recent) < ATTEMPTS:
            return 0.0
        return recent[0] + ATTEMPT_WINDOW - moment

    def failed(self, address: str, now: float | None = None) -> None:
        moment = now if now is not None else time.monotonic()
        if len(self._failures) > 10_000:  # a flood of addresses forgets the oldest rather than growing
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque(maxlen=ATTEMPTS)).append(moment)

    def _sign(self, purpose: bytes, payload: bytes) -> bytes:
        return hmac.new(self._signing, purpose + b"\0" + payload, hashlib.sha256).digest()


def new_nonce() -> str:
    return _token()


def _token() -> str:
    return _b64(os.urandom(18))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
