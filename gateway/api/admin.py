"""The admin API under /admin: keys, usage, routes and reload, behind the admin key; the operations themselves
are admin/operations.py's, shared with the console."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.admin.operations import AdminOperations, rotatable
from gateway.admin.schema import DAYS, KEYS_LIMIT, OFFSET, KeyCreate, KeyUpdate, Rotate, openapi_document
from gateway.errors import BadRequest
from gateway.http import JSONResponse, int_param, read_model

M = TypeVar("M", bound=BaseModel)


class AdminAPI:
    """Handlers for /admin; the door (auth/door.py) has checked the admin key."""

    def __init__(self, operations: AdminOperations, *, max_body_bytes: int) -> None:
        self._operations = operations
        self._max_body_bytes = max_body_bytes

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
        record, secret = await self._operations.create_key(await self._body(request, KeyCreate))
        return JSONResponse({**record.public(), "secret": secret}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        query = request.query_params
        offset = int_param(query.get("offset"), OFFSET)
        limit = int_param(query.get("limit"), KEYS_LIMIT)
        matching = await self._operations.list_keys(
            name=query.get("name") or "",
            include_revoked=_bool_param(query.get("include_revoked"), "include_revoked", default=True),
            metadata={k.removeprefix("metadata."): v for k, v in query.items() if k.startswith("metadata.")},
        )
        page = [record.public() for record in matching[offset : offset + limit]]
        return JSONResponse({"object": "list", "data": page, "total": len(matching), "offset": offset, "limit": limit})

    async def _body(self, request: Request, model: type[M], *, allow_empty: bool = False) -> M:
        return await read_model(request, model, self._max_body_bytes, allow_empty=allow_empty)

    async def show_key(self, request: Request) -> Response:
        return JSONResponse((await self._operations.get_key(request.path_params["key_id"])).public())

    async def update_key(self, request: Request) -> Response:
        key_id = request.path_params["key_id"]
        await self._operations.get_key(key_id)  # an unknown key is a 404 before its body is judged
        updated = await self._operations.update_key(key_id, await self._body(request, KeyUpdate))
        return JSONResponse(updated.public())

    async def revoke_key(self, request: Request) -> Response:
        return JSONResponse((await self._operations.revoke_key(request.path_params["key_id"])).public())

    async def rotate_key(self, request: Request) -> Response:
        key_id = request.path_params["key_id"]
        rotatable(await self._operations.get_key(key_id))  # a revoked key is the answer whatever the body
        body = await self._body(request, Rotate, allow_empty=True)
        rotated, secret = await self._operations.rotate_key(key_id, grace_seconds=body.grace_seconds)
        return JSONResponse({**rotated.public(), "secret": secret})

    async def key_usage(self, request: Request) -> Response:
        key_id = request.path_params["key_id"]
        await self._operations.get_key(key_id)
        days = int_param(request.query_params.get("days"), DAYS)
        return JSONResponse(await self._operations.key_usage(key_id, days=days))

    async def reset_usage(self, request: Request) -> Response:
        record = await self._operations.reset_usage(request.path_params["key_id"])
        return JSONResponse({"key_id": record.id, "reset": True})

    async def all_usage(self, request: Request) -> Response:
        days = int_param(request.query_params.get("days"), DAYS)
        return JSONResponse(await self._operations.all_usage(days=days))

    async def show_routes(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self._operations.routes()})

    async def reload(self, request: Request) -> Response:
        table = self._operations.reload()
        return JSONResponse({"reloaded": True, "agents": [agent.name for agent in table.agents]})


def _bool_param(raw: str | None, name: str, *, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"`{name}` must be true or false.", param=name)
