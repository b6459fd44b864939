"""A client for the gateway's admin API, used by `gateway keys`.

Errors, as one tree:

    AdminClientError                the call did not give a usable answer
    ├── GatewayUnreachable          no HTTP answer at all: refused, timed out, bad URL
    └── AdminError(status, message) the admin API answered with an error (401, 404, 422, ...) or a non-JSON body
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from gateway import __version__

JSON = dict[str, Any]

TIMEOUT_SECONDS = 10.0


class AdminClientError(Exception):
    """The admin API call gave no usable answer."""


class GatewayUnreachable(AdminClientError):
    """No HTTP answer from the gateway."""

    def __init__(self, base_url: str, reason: str) -> None:
        super().__init__(f"cannot reach the gateway at {base_url}: {reason}")
        self.base_url = base_url
        self.reason = reason


class AdminError(AdminClientError):
    """An error answer from the admin API, with the fields of its OpenAI-shaped body where it had one."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        details = ", ".join(part for part in (code, f"param: {param}" if param else None) if part)
        super().__init__(f"{message} (HTTP {status}{', ' + details if details else ''})")
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code


class AdminClient:
    """One method per admin endpoint; each returns the decoded JSON body or raises an `AdminClientError`."""

    def __init__(self, base_url: str, admin_key: str, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url
        self._admin_key = admin_key
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {admin_key}", "User-Agent": f"agent-gateway-cli/{__version__}"},
            timeout=TIMEOUT_SECONDS,
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def create_key(self, name: str, **fields: Any) -> JSON:
        """`fields`: models, expires_at, limits, quotas, metadata. The answer holds the secret, once."""
        return self._request("POST", "/admin/keys", json={"name": name, **fields})

    def list_keys(
        self,
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
    ) -> JSON:
        params: dict[str, str | int] = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        for field, value in (("name", name), ("offset", offset), ("limit", limit)):
            if value is not None:
                params[field] = value
        return self._request("GET", "/admin/keys", params=params)

    def get_key(self, key_id: str) -> JSON:
        return self._request("GET", _key_path(key_id))

    def update_key(self, key_id: str, **fields: Any) -> JSON:
        """Only the fields given change; `limits` and `quotas` are merged field by field by the gateway."""
        return self._request("PATCH", _key_path(key_id), json=fields)

    def revoke_key(self, key_id: str) -> JSON:
        return self._request("DELETE", _key_path(key_id))

    def rotate_key(self, key_id: str, grace_seconds: int | None = None) -> JSON:
        """A new secret; the old one keeps working for `grace_seconds` (the gateway's default when None)."""
        body = {} if grace_seconds is None else {"grace_seconds": grace_seconds}
        return self._request("POST", _key_path(key_id) + "/rotate", json=body)

    def key_usage(self, key_id: str, days: int | None = None) -> JSON:
        params = {} if days is None else {"days": days}
        return self._request("GET", _key_path(key_id) + "/usage", params=params)

    def _request(
        self, method: str, path: str, *, json: JSON | None = None, params: Mapping[str, str | int] | None = None
    ) -> JSON:
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TimeoutException:
            raise GatewayUnreachable(self.base_url, f"no answer within {TIMEOUT_SECONDS:g} s") from None
        except httpx.TransportError as exc:
            raise GatewayUnreachable(self.base_url, str(exc) or type(exc).__name__) from None
        except httpx.InvalidURL as exc:
            raise GatewayUnreachable(self.base_url, str(exc)) from None
        if response.is_error:
            raise self._error(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AdminError(response.status_code, "the answer is not a JSON object: is this URL the gateway?")
        return body

    def _error(self, response: httpx.Response) -> AdminError:
        try:
            error = response.json()["error"]
            message, error_type, param, code = (
                error["message"],
                error.get("type"),
                error.get("param"),
                error.get("code"),
            )
        except (ValueError, LookupError, TypeError, AttributeError):
            message = response.text.strip()[:500] or response.reason_phrase or "no message"
            error_type = param = code = None
        # Whatever the answer echoes, the admin key is not shown.
        message = str(message).replace(self._admin_key, "[admin key]") if self._admin_key else str(message)
        return AdminError(response.status_code, message, error_type=error_type, param=param, code=code)


def _key_path(key_id: str) -> str:
    # A key id is a single path segment: `../` or `?` in it must not reach another endpoint.
    return "/admin/keys/" + quote(key_id, safe="")
