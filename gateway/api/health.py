"""Liveness and readiness: /healthz answers while the process runs, /readyz while it can serve."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.exchange import exchange_of
from gateway.http import JSONResponse

if TYPE_CHECKING:
    from gateway.runtime import Runtime


class Health:
    """The probes. /readyz answers 503 while draining, or with what keeps the gateway from serving."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        # A 503 here is an answer, not a failure: it must not count with the gateway's own errors.
        exchange_of(request.scope).error_class = "gateway_not_ready"
        if self.runtime.draining:
            # Shutting down: load balancers should stop sending here while the requests in flight finish.
            draining = {"status": "draining", "agents": len(self.runtime.routes.agents), "problems": ["shutting down"]}
            return JSONResponse(draining, status_code=503)
        problems = list(self.runtime.routes.problems())
        if self.runtime.http is None:
            problems.append("the upstream client is not open")
        if not await self.runtime.store.ping():
            problems.append(f"the {self.runtime.store.name} store is not reachable")
        status = "ready" if not problems else "not_ready"
        body: dict[str, Any] = {"status": status, "agents": len(self.runtime.routes.agents), "problems": problems}
        # Session stores that are `unavailable` refuse only the requests naming a session: shown, not a reason to be
        # unready (the rest of the traffic is served).
        sessions = self.runtime.sessions.status()
        if sessions:
            body["sessions"] = sessions
        if not problems:
            exchange_of(request.scope).error_class = None
        return JSONResponse(body, status_code=503 if problems else 200)
