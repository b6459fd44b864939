"""The sessions the agents use: which store holds an agent's sessions, who may use one, and a turn's bookkeeping."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config.agents import Agent, SessionSpec
from gateway.config.routing import RoutingTable
from gateway.errors import BadRequest, SessionNotFound, StoreUnavailable
from gateway.observability.metrics import Metrics
from gateway.sessions.base import AnyOwner, Owner, Session, SessionStore
from gateway.sessions.memory import MemorySessionStore

logger = logging.getLogger("gateway.sessions")

Storage = Literal["memory", "redis"]
SESSION_HEADER = b"x-session-id"
# Client-chosen ids (auto_create) are held to what is safe in a header, a log line and a Redis key.
_SESSION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(slots=True)
class Turn:
    """One request's use of a session: the history sent upstream, and what to store once the reply is known."""

    session: Session
    history: list[dict[str, Any]]
    store: SessionStore
    spec: SessionSpec
    storage: str  # the store that served it: `memory` or `redis`
    new_messages: list[dict[str, Any]] = field(default_factory=list)  # the client's messages of this turn
    stored: bool = False

    async def store_reply(self, reply: dict[str, Any] | None) -> None:
        """Add the turn's messages and `reply` to the session in one append; once per turn. Without a reply
        nothing is stored: a question left unanswered in the history would confuse every later turn."""
        if self.stored:
            return
        self.stored = True
        if reply is None:
            logger.warning("session %s: the upstream's answer held no message; the turn is not stored", self.session.id)
            return
        messages = [*self.new_messages, reply]
        kept = await self.store.append(
            self.session.id, messages, max_messages=self.spec.max_history, max_tokens=self.spec.max_history_tokens
        )
        if not kept:
            logger.info("session %s was deleted or expired before its turn could be stored", self.session.id)


class Sessions:
    """Session stores by where they live, made when an agent first needs one, and the rules of using them."""

    def __init__(
        self,
        routes: Callable[[], RoutingTable],
        *,
        default_storage: Storage,
        redis_url: str,
        ttl_seconds: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._routes = routes
        self._metrics = metrics
        self._default_storage = default_storage
        self._redis_url = redis_url
        self._ttl_seconds = ttl_seconds
        self._stores: dict[str, SessionStore] = {}

    def _where(self, agent: Agent) -> str:
        spec = agent.spec.session
        if (spec.storage or self._default_storage) == "memory":
            return "memory"
        return spec.redis_url or self._redis_url

    async def store_for(self, agent: Agent) -> SessionStore:
        where = self._where(agent)
        store = self._stores.get(where)
        if store is None:
            store = self._stores[where] = _make_store(where)
            if self._metrics is not None and where != "memory":
                _observe(store, self._metrics)
            await store.open()
        return store

    async def _all_stores(self) -> list[SessionStore]:
        """Every store a session could be in: those of the agents configured now, and any opened before."""
        for agent in self._routes().agents:
            if agent.spec.session.enabled:
                await self.store_for(agent)
        return list(self._stores.values())

    def describe(self, agent: Agent) -> str:
        """Where `agent`'s sessions live, as a log line may say it."""
        where = self._where(agent)
        return where if where == "memory" else _describe(where)

    def status(self) -> dict[str, str]:
        """Each store opened so far and its state: `memory`, `redis`, or `unavailable` while Redis is away."""
        return {
            (where if where == "memory" else _describe(where)): serving(store) for where, store in self._stores.items()
        }

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        self._stores.clear()

    def ttl_for(self, agent: Agent) -> int:
        return agent.spec.session.ttl_seconds or self._ttl_seconds

    async def create(
        self,
        agent: Agent,
        key_id: str | None,
        *,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        session_id: str | None = None,
    ) -> tuple[Session, str]:
        """A new session of `agent` owned by `key_id`, and the storage that holds it."""
        require_sessions(agent, param="model")
        session = Session.new(
            model=agent.name,
            key_id=key_id,
            ttl_seconds=ttl_seconds or self.ttl_for(agent),
            user_id=user_id,
            metadata=dict(metadata or {}),
        )
        if session_id is not None:
            session = dataclasses.replace(session, id=session_id)
        store = await self.store_for(agent)
        if not await store.create(session):
            # Only a client-chosen id can be taken (ours are random): by the same key's concurrent first turn,
            # which the caller reads back, or by another key's session, which must look like nothing.
            raise SessionNotFound(session.id)
        return session, serving(store)

    async def find(
        self, session_id: str, key_id: str | None, *, any_owner: bool = False
    ) -> tuple[Session, list[dict[str, Any]], str]:
        """The session with its messages and storage, wherever it is; 404 unless `key_id` owns it (or `any_owner`)."""
        session, messages, store = await self._find(session_id, key_id, any_owner=any_owner)
        return session, messages, serving(store)

    async def _find(
        self, session_id: str, key_id: str | None, *, any_owner: bool
    ) -> tuple[Session, list[dict[str, Any]], SessionStore]:
        owner: Owner = AnyOwner.ANY if any_owner else key_id
        unavailable: StoreUnavailable | None = None
        for store in await self._all_stores():
            try:
                found = await store.get(session_id, owner=owner)
            except StoreUnavailable as exc:
                # Another store may hold it; if none does, "not found" would be a guess: the refusal is the answer.
                unavailable = exc
                continue
            if found is not None:
                return found[0], found[1], store
        if unavailable is not None:
            raise unavailable
        raise SessionNotFound(session_id)

    async def delete(self, session_id: str, key_id: str | None, *, any_owner: bool = False) -> None:
        session, _, store = await self._find(session_id, key_id, any_owner=any_owner)
        await store.delete(session.id)

    async def list(
        self,
        key_id: str | None,
        *,
        user_id: str | None,
        model: str | None,
        offset: int,
        limit: int,
        all_keys: bool = False,
    ) -> tuple[list[Session], int]:
        """One page of sessions across every store, newest first, and how many match in all."""
        pages: list[Session] = []
        total = 0
        for store in await self._all_stores():
            page, count = await store.list(
                key_id=key_id, user_id=user_id, model=model, offset=0, limit=offset + limit, all_keys=all_keys
            )
            pages.extend(page)
            total += count
        pages.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return pages[offset : offset + limit], total

    async def open(self, agent: Agent, key_id: str | None, session_id: str) -> Turn:
        """The session a request continues: it must be `agent`'s and `key_id`'s; an unknown id is 404, or a new
        session under that id when the agent sets `auto_create`."""
        spec = require_sessions(agent)
        store = await self.store_for(agent)
        found = await store.get(session_id, owner=key_id)
        if found is None and spec.auto_create:
            try:
                session, storage = await self.create(agent, key_id, session_id=session_id)
                return Turn(session, [], store, spec, storage)
            except SessionNotFound:
                found = await store.get(session_id, owner=key_id)
        if found is None:
            raise SessionNotFound(session_id)
        session, history = found
        if session.model != agent.name:
            raise BadRequest(
                f"Session `{session_id}` is a conversation with model `{session.model}`; "
                f"send it with that model, or start a new session for `{agent.name}`.",
                param="session_id",
            )
        return Turn(session, history, store, spec, serving(store))


def require_sessions(agent: Agent, *, param: str = "session_id") -> SessionSpec:
    spec = agent.spec.session
    if not spec.enabled:
        raise BadRequest(
            f"Model `{agent.name}` does not keep sessions (its agent file does not set `session.enabled`).",
            param=param,
        )
    return spec


def requested_id(headers: Iterable[tuple[bytes, bytes]], body: Mapping[str, Any]) -> str | None:
    """The session a request names, by header `X-Session-Id` or body field `session_id`; checked."""
    header = next((value.decode("latin-1") for name, value in headers if name == SESSION_HEADER), None)
    field_value = body.get("session_id")
    if field_value is not None and not isinstance(field_value, str):
        raise BadRequest("`session_id` must be a string.", param="session_id")
    if header is not None and field_value is not None and header != field_value:
        raise BadRequest(
            "The X-Session-Id header and the body's `session_id` name different sessions; send one.",
            param="session_id",
        )
    chosen = header if header is not None else field_value
    if chosen is not None and not _SESSION_ID.fullmatch(chosen):
        raise BadRequest(
            "A session id is 1 to 128 letters, digits or `._:-` characters.",
            param="session_id",
        )
    return chosen


def serving(store: SessionStore) -> str:
    """Which storage answers for `store` right now: `memory`, `redis`, or `unavailable` while Redis is away."""
    return str(getattr(store, "serving", store.name))


def _make_store(where: str) -> SessionStore:
    if where == "memory":
        return MemorySessionStore()
    # Imported only when used: the redis client adds ~15 MB to a process that does not need it.
    from gateway.sessions.guarded import GuardedSessionStore  # noqa: PLC0415
    from gateway.sessions.redis import RedisSessionStore  # noqa: PLC0415

    return GuardedSessionStore(RedisSessionStore(where), label=_describe(where))


def _describe(url: str) -> str:
    """A Redis URL as it may be logged: scheme, host, port and database, never credentials."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _observe(store: SessionStore, metrics: Metrics) -> None:
    """Count a Redis store's failed calls (set on the guarded store `_make_store` makes for Redis)."""
    from gateway.sessions.guarded import GuardedSessionStore  # noqa: PLC0415 (see _make_store)

    if isinstance(store, GuardedSessionStore):
        store.on_error = lambda: metrics.redis_error("sessions")
