"""The admin API under /admin: keys, usage, routes and reload, behind the admin key."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.api import reports
from gateway.api.admin_schema import DAYS, KEYS_LIMIT, OFFSET, KeyCreate, KeyUpdate, Rotate, openapi_document
from gateway.config.agents import Agent
from gateway.config.routing import RoutingTable
from gateway.errors import BadRequest, KeyNotFound, KeyRevoked, ValidationFailed
from gateway.http import JSONResponse, int_param, read_model
from gateway.keys import KeyRecord, Limits, Quotas, display_prefix, hash_secret, new_key_id, new_secret, utcnow
from gateway.store.base import Store

M = TypeVar("M", bound=BaseModel)


class AdminAPI:
    """Handlers for /admin; the door (auth/door.py) has checked the admin key."""

    def __init__(
        self,
        store: Store,
        routes: Callable[[], RoutingTable],
        reload: Callable[[], RoutingTable],
        keys_changed: Callable[[], None],
        *,
        usage_reset: Callable[[KeyRecord], Awaitable[None]],
        max_body_bytes: int,
    ) -> None:
        self._usage_reset = usage_reset
        self._max_body_bytes = max_body_bytes
        self._store = store
        self._routes = routes
        self._reload = reload
        self._keys_changed = keys_changed

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin/openapi.json", self.openapi, methods=["GET"]),
            Route("/admin/keys", self.create_key, methods=["POST"]),
            Route("/admin/keys", self.list_keys, methods=["GET"]),
            Route("/admin/keys/{key_id}", self.show_key, methods=["GET"]),
            Route("/admin/keys/{key_id}", self.update_key, methods=["PATCH"]),
            Route("/admin/keys/{key_id}", self.revoke_key, methods=["DELETE"]),
            Route("/admin/keys/{key_id}/rotate", self.rotate_key, methods=["POST"]),
            Route("/admin/keys/{key_id}/usage", self.key_usage, methods=["GET"]),
            Route("/admin/keys/{key_id}/usage/reset", self.reset_usage, methods=["POST"]),
            Route("/admin/usage", self.all_usage, methods=["GET"]),
            Route("/admin/routes", self.show_routes, methods=["GET"]),
            Route("/admin/reload", self.reload, methods=["POST"]),
        ]

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(__version__))

    async def create_key(self, request: Request) -> Response:
        body = await self._body(request, KeyCreate)
        _check_future(body.expires_at)
        secret = new_secret()
        record = KeyRecord(
            id=new_key_id(),
            name=body.name,
            prefix=display_prefix(secret),
            secret_hash=hash_secret(secret),
            created_at=utcnow(),
            expires_at=body.expires_at,
            models=tuple(body.models),
            limits=Limits(**body.limits.model_dump(exclude_none=True)),
            quotas=Quotas(**body.quotas.model_dump(exclude_none=True)),
            metadata=body.metadata,
        )
        await self._store.create_key(record)
        return JSONResponse({**record.public(), "secret": secret}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        query = request.query_params
        offset = int_param(query.get("offset"), OFFSET)
        limit = int_param(query.get("limit"), KEYS_LIMIT)
        name = (query.get("name") or "").lower()
        include_revoked = _bool_param(query.get("include_revoked"), "include_revoked", default=True)
        wanted = {k.removeprefix("metadata."): v for k, v in query.items() if k.startswith("metadata.")}
        matching = [
            record
            for record in await self._store.list_keys()
            if name in record.name.lower()
            and (include_revoked or not record.revoked)
            and all(k in record.metadata and _as_text(record.metadata[k]) == v for k, v in wanted.items())
        ]
        page = [record.public() for record in matching[offset : offset + limit]]
        return JSONResponse({"object": "list", "data": page, "total": len(matching), "offset": offset, "limit": limit})

    async def _body(self, request: Request, model: type[M], *, allow_empty: bool = False) -> M:
        return await read_model(request, model, self._max_body_bytes, allow_empty=allow_empty)

    async def _key(self, request: Request) -> KeyRecord:
        key_id = request.path_params["key_id"]
        record = await self._store.get_key(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        return record

    async def show_key(self, request: Request) -> Response:
        return JSONResponse((await self._key(request)).public())

    async def update_key(self, request: Request) -> Response:
        record = await self._key(request)
        body = await self._body(request, KeyUpdate)
        changes: dict[str, Any] = {}
        sent = body.model_fields_set
        if "name" in sent:
            if body.name is None:
                raise ValidationFailed("name: may not be null", param="name")
            changes["name"] = body.name
        if "models" in sent:
            changes["models"] = tuple(body.models or ())
        if "expires_at" in sent:
            _check_future(body.expires_at)
            changes["expires_at"] = body.expires_at
        if "metadata" in sent:
            changes["metadata"] = body.metadata or {}
        if body.limits is not None:
            changes["limits"] = dataclasses.replace(record.limits, **_sent_fields(body.limits))
        if body.quotas is not None:
            changes["quotas"] = dataclasses.replace(record.quotas, **_sent_fields(body.quotas))
        updated = record.replace(**changes)
        await self._save(updated, record)
        return JSONResponse(updated.public())

    async def revoke_key(self, request: Request) -> Response:
        record = await self._key(request)
        if record.revoked:
            return JSONResponse(record.public())
        revoked = record.replace(revoked=True, revoked_at=utcnow())
        await self._save(revoked, record)
        return JSONResponse(revoked.public())

    async def rotate_key(self, request: Request) -> Response:
        record = await self._key(request)
        if record.revoked:
            raise KeyRevoked(f"Key `{record.id}` is revoked; a new secret for it could never be used.")
        body = await self._body(request, Rotate, allow_empty=True)
        secret = new_secret()
        now = utcnow()
        grace = body.grace_seconds > 0
        rotated = record.replace(
            secret_hash=hash_secret(secret),
            prefix=display_prefix(secret),
            rotated_at=now,
            grace_hash=record.secret_hash if grace else None,
            grace_until=now + timedelta(seconds=body.grace_seconds) if grace else None,
        )
        await self._save(rotated, record)
        return JSONResponse({**rotated.public(), "secret": secret})

    async def _save(self, record: KeyRecord, previous: KeyRecord) -> None:
        await self._store.save_key(record, previous=previous)
        self._keys_changed()

    async def key_usage(self, request: Request) -> Response:
        record = await self._key(request)
        days = int_param(request.query_params.get("days"), DAYS)
        now = utcnow()
        periods = reports.days_back(now.date(), days)
        month = now.date().isoformat()[:7]
        rows = await self._store.usage(record.id, [*periods, month])
        day_rows = [r for r in rows if r.period != month]
        summary = reports.summarize(day_rows, periods)
        today = [r for r in day_rows if r.period == periods[-1]]
        quotas = reports.quota_state(record, [r for r in rows if r.period == month], today, now)
        del summary["by_key"]
        limits = dataclasses.asdict(record.limits)
        return JSONResponse({"key_id": record.id, **summary, "quotas": quotas, "limits": limits})

    async def reset_usage(self, request: Request) -> Response:
        record = await self._key(request)
        await self._store.reset_usage(record.id)
        await self._usage_reset(record)
        return JSONResponse({"key_id": record.id, "reset": True})

    async def all_usage(self, request: Request) -> Response:
        days = int_param(request.query_params.get("days"), DAYS)
        periods = reports.days_back(utcnow().date(), days)
        return JSONResponse(reports.summarize(await self._store.usage(None, periods), periods))

    async def show_routes(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_route(a) for a in self._routes().agents]})

    async def reload(self, request: Request) -> Response:
        table = self._reload()
        return JSONResponse({"reloaded": True, "agents": [agent.name for agent in table.agents]})


def _route(agent: Agent) -> dict[str, Any]:
    return {
        "name": agent.name,
        "aliases": list(agent.aliases),
        "description": agent.description,
        "provider": agent.provider,
        "model": agent.upstream_model,
        "base_url": _without_credentials(agent.base_url),
        "api_key_env": agent.primary.api_key_env,
        "api_key": "missing" if agent.primary.missing_key else "set",
        "targets": [
            {
                "name": target.name,
                "model": target.upstream_model,
                "base_url": _without_credentials(target.base_url),
                "api_key_env": target.api_key_env,
                "api_key": "missing" if target.missing_key else "set",
                "weight": target.weight,
            }
            for target in agent.targets
        ],
        "retries": agent.spec.retries,
        "fallbacks": list(agent.spec.fallbacks),
        "features": agent.features(),
        "timeout": agent.timeout,
        "source": agent.source,
    }


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _sent_fields(model: BaseModel) -> dict[str, Any]:
    return {name: getattr(model, name) for name in model.model_fields_set}


def _check_future(moment: Any) -> None:
    if moment is not None and moment <= utcnow():
        raise ValidationFailed("expires_at: must be in the future", param="expires_at")


def _as_text(value: Any) -> str:
    """A metadata value as a query string would spell it: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _bool_param(raw: str | None, name: str, *, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"`{name}` must be true or false.", param=name)
