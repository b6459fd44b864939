"""OpenAI's front door: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses and /v1/models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.door import agent_for, key_of
from gateway.config.routing import RoutingTable
from gateway.http import JSONResponse
from gateway.protocols.openai.payload import Endpoint
from gateway.proxy.pipeline import Proxy

if TYPE_CHECKING:
    from gateway.runtime import Runtime


class OpenAIEndpoints:
    """The OpenAI routes. Thin: the proxy does the work."""

    def __init__(self, runtime: Runtime, proxy: Proxy) -> None:
        self.runtime = runtime
        self.proxy = proxy

    async def chat_completions(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.COMPLETIONS)

    async def embeddings(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.EMBEDDINGS)

    async def responses(self, request: Request) -> Response:
        return await self.proxy.forward(request, Endpoint.RESPONSES)

    async def list_models(self, request: Request) -> Response:
        key = key_of(request)
        routes = self.runtime.routes
        visible = [a for a in routes.agents if key is None or key.allows(a.name)]
        return JSONResponse({"object": "list", "data": [_model(a.name, routes) for a in visible]})

    async def get_model(self, request: Request) -> Response:
        model = request.path_params["model"]
        agent_for(self.runtime.routes, key_of(request), model, hide=True)  # another key's model: as if none
        return JSONResponse(_model(model, self.runtime.routes))


def _model(model: str, routes: RoutingTable) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": routes.loaded_at, "owned_by": "agent-gateway"}
