"""What an operator can do: create, change, rotate and revoke keys, read usage, inspect routes, reload. One code
path, whichever face calls it: the admin API (api/admin.py) and the console (console/) both come here."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import BaseModel

from gateway.admin import reports
from gateway.admin.schema import KeyCreate, KeyUpdate
from gateway.config.agents import Agent, Target
from gateway.config.routing import RoutingTable
from gateway.errors import KeyNotFound, KeyRevoked, ValidationFailed
from gateway.keys import KeyRecord, Limits, Quotas, display_prefix, hash_secret, new_key_id, new_secret, utcnow
from gateway.store.base import HOURS_KEPT, Store, UsageRow


class AdminOperations:
    """The operations on keys, usage and routes, over the store every worker and replica shares."""

    def __init__(
        self,
        store: Store,
        routes: Callable[[], RoutingTable],
        reload: Callable[[], RoutingTable],
        keys_changed: Callable[[], None],
        *,
        usage_reset: Callable[[KeyRecord], Awaitable[None]],
        circuit: Callable[[Agent, Target], str],
    ) -> None:
        self._circuit = circuit
        self._store = store
        self._routes = routes
        self._reload = reload
        self._keys_changed = keys_changed
        self._usage_reset = usage_reset

    async def create_key(self, body: KeyCreate) -> tuple[KeyRecord, str]:
        """A new key and its secret, which is shown this once and stored only hashed."""
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
        return record, secret

    async def list_keys(
        self, *, name: str = "", include_revoked: bool = True, metadata: Mapping[str, str] | None = None
    ) -> list[KeyRecord]:
        """Every key whose name holds `name` (any case) and whose metadata has the values in `metadata`."""
        name = name.lower()
        wanted = metadata or {}
        return [
            record
            for record in await self._store.list_keys()
            if name in record.name.lower()
            and (include_revoked or not record.revoked)
            and all(k in record.metadata and _as_text(record.metadata[k]) == v for k, v in wanted.items())
        ]

    async def get_key(self, key_id: str) -> KeyRecord:
        record = await self._store.get_key(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        return record

    async def update_key(self, key_id: str, body: KeyUpdate) -> KeyRecord:
        """The fields `body` sets, changed; limits and quotas field by field."""
        record = await self.get_key(key_id)
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
        return updated

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """The key revoked (at once, on every worker); revoking it again changes nothing."""
        record = await self.get_key(key_id)
        if record.revoked:
            return record
        revoked = record.replace(revoked=True, revoked_at=utcnow())
        await self._save(revoked, record)
        return revoked

    async def rotate_key(self, key_id: str, *, grace_seconds: int) -> tuple[KeyRecord, str]:
        """A new secret for the key; the old one keeps working for `grace_seconds`."""
        record = rotatable(await self.get_key(key_id))
        secret = new_secret()
        now = utcnow()
        grace = grace_seconds > 0
        rotated = record.replace(
            secret_hash=hash_secret(secret),
            prefix=display_prefix(secret),
            rotated_at=now,
            grace_hash=record.secret_hash if grace else None,
            grace_until=now + timedelta(seconds=grace_seconds) if grace else None,
        )
        await self._save(rotated, record)
        return rotated, secret

    async def _save(self, record: KeyRecord, previous: KeyRecord) -> None:
        await self._store.save_key(record, previous=previous)
        self._keys_changed()

    async def key_usage(self, key_id: str, *, days: int) -> dict[str, Any]:
        """The key's usage over the last `days` days (totals, by agent and by day), its quotas and limits."""
        record = await self.get_key(key_id)
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
        return {"key_id": record.id, **summary, "quotas": quotas, "limits": limits}

    async def reset_usage(self, key_id: str) -> KeyRecord:
        record = await self.get_key(key_id)
        await self._store.reset_usage(record.id)
        await self._usage_reset(record)
        return record

    async def all_usage(self, *, days: int) -> dict[str, Any]:
        """Every key's usage over the last `days` days: totals, by agent, by key and by day."""
        periods = reports.days_back(utcnow().date(), days)
        return reports.summarize(await self._store.usage(None, periods), periods)

    async def recent_usage(self, *, hours: int = 24) -> dict[str, Any]:
        """Every key's usage over the last `hours` hours (at most HOURS_KEPT), by agent, by key and by hour (in
        `by_day`, whose `day` is then `YYYY-MM-DDTHH`, UTC)."""
        periods = reports.hours_back(utcnow(), min(hours, HOURS_KEPT))
        return reports.summarize(await self._store.usage(None, periods), periods)

    async def usage_rows(self, *, days: int) -> list[UsageRow]:
        """Every key's counters per agent and day over the last `days` days, oldest first."""
        periods = reports.days_back(utcnow().date(), days)
        rows = await self._store.usage(None, periods)
        return sorted(rows, key=lambda row: (row.period, row.key_id, row.agent))

    def routes(self) -> list[dict[str, Any]]:
        """The agents as they are served now, without credentials; each target's circuit as this process sees
        it."""
        return [route(agent, self._circuit) for agent in self._routes().agents]

    def reload(self) -> RoutingTable:
        """The config read again and swapped in whole; a `ConfigError` (file, field) leaves the old one serving."""
        return self._reload()


def rotatable(record: KeyRecord) -> KeyRecord:
    """`record`, unless it is revoked: a new secret for a revoked key could never be used."""
    if record.revoked:
        raise KeyRevoked(f"Key `{record.id}` is revoked; a new secret for it could never be used.")
    return record


def route(agent: Agent, circuit: Callable[[Agent, Target], str]) -> dict[str, Any]:
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
                "circuit": circuit(agent, target),
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
