"""/v1/sessions for clients (their own sessions) and /admin/sessions for operators (everyone's)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from gateway.admin.schema import OFFSET, SESSIONS_LIMIT, Metadata
from gateway.auth.door import agent_for, key_id_of, key_of
from gateway.config.routing import RoutingTable
from gateway.errors import BadRequest
from gateway.exchange import exchange_of
from gateway.http import JSONResponse, int_param, read_model
from gateway.sessions.base import Session
from gateway.sessions.service import Sessions

MAX_TTL_SECONDS = 366 * 24 * 3600


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, validation_alias=AliasChoices("model", "agent_name"))
    user_id: str | None = Field(default=None, max_length=256)
    metadata: Metadata = Field(default_factory=dict)
    ttl_seconds: int | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)


class SessionsAPI:
    """Handlers for sessions. A client sees only the sessions of the key it authenticates with: any other id is
    404, exactly as for an id that never existed."""

    def __init__(
        self,
        sessions: Sessions,
        routes: Callable[[], RoutingTable],
        max_body_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._routes = routes
        self._max_body_bytes = max_body_bytes

    async def create(self, request: Request) -> Response:
        body = await read_model(request, SessionCreate, self._max_body_bytes, error=BadRequest)
        agent = agent_for(self._routes(), key_of(request), body.model)
        session, storage = await self._sessions.create(
            agent,
            key_id_of(request),
            user_id=body.user_id,
            metadata=body.metadata,
            ttl_seconds=body.ttl_seconds,
        )
        _note(request, session, storage)
        return JSONResponse(session.public(), status_code=201)

    async def show(self, request: Request) -> Response:
        return await self._show(request, key_id_of(request), any_owner=False)

    async def list(self, request: Request) -> Response:
        return await self._list(request, key_id_of(request), all_keys=False)

    async def delete(self, request: Request) -> Response:
        return await self._delete(request, key_id_of(request), any_owner=False)

    async def admin_show(self, request: Request) -> Response:
        return await self._show(request, None, any_owner=True)

    async def admin_list(self, request: Request) -> Response:
        key_id = request.query_params.get("key_id") or None
        return await self._list(request, key_id, all_keys=key_id is None, show_owner=True)

    async def admin_delete(self, request: Request) -> Response:
        return await self._delete(request, None, any_owner=True)

    async def _show(self, request: Request, key_id: str | None, *, any_owner: bool) -> Response:
        session_id = request.path_params["session_id"]
        session, messages, storage = await self._sessions.find(session_id, key_id, any_owner=any_owner)
        _note(request, session, storage)
        shown = {**session.public(), "messages": messages}
        if any_owner:
            shown["key_id"] = session.key_id
        return JSONResponse(shown)

    async def _list(
        self, request: Request, key_id: str | None, *, all_keys: bool, show_owner: bool = False
    ) -> Response:
        query = request.query_params
        offset = int_param(query.get("offset"), OFFSET)
        limit = int_param(query.get("limit"), SESSIONS_LIMIT)
        model = query.get("model") or None
        agent = self._routes().match(model) if model else None
        page, total = await self._sessions.list(
            key_id,
            user_id=query.get("user_id") or None,
            model=agent.name if agent is not None else model,  # sessions keep the agent's name, not an alias
            offset=offset,
            limit=limit,
            all_keys=all_keys,
        )
        data = [{**s.public(), "key_id": s.key_id} if show_owner else s.public() for s in page]
        return JSONResponse({"object": "list", "data": data, "total": total, "offset": offset, "limit": limit,
                              "has_more": offset + len(page) < total})  # fmt: skip

    async def _delete(self, request: Request, key_id: str | None, *, any_owner: bool) -> Response:
        session_id = request.path_params["session_id"]
        await self._sessions.delete(session_id, key_id, any_owner=any_owner)
        return JSONResponse({"session_id": session_id, "object": "session.deleted", "deleted": True})


def _note(request: Request, session: Session, storage: str) -> None:
    exchange = exchange_of(request.scope)
    exchange.session_id = session.id
    exchange.session_storage = storage
