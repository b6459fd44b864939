"""The console's pages: sign-in, overview, keys, agents and usage, rendered on the server from the same
operations as the admin API (admin/operations.py). The door (auth/door.py) has checked the session cookie."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import __version__
from gateway.admin.operations import AdminOperations
from gateway.admin.schema import KeyCreate, KeyUpdate
from gateway.auth.console import COOKIE, LOGIN_COOKIE, SESSION_SECONDS, WRONG_KEY_DELAY, ConsoleAuth, new_nonce
from gateway.auth.door import operator_of
from gateway.errors import GatewayError, InvalidConfig
from gateway.http import read_body
from gateway.keys import KeyRecord, utcnow
from gateway.observability.metrics import Metrics
from gateway.pricing import usd
from gateway.sessions.service import Sessions
from gateway.store.base import ANONYMOUS

HERE = Path(__file__).parent
FORM = "application/x-www-form-urlencoded"
FORM_LIMIT = 64 * 1024
# What every page is sent with: no script but ours, no framing, no caching of what an operator saw.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # "no-referrer" makes Chromium send `Origin: null` on our own posts
}
USAGE_DAYS = (7, 30, 90)
SESSIONS_SHOWN = 100
Handler = Callable[[Request], Awaitable[Response]]


class Console:
    """Handlers for /ui. Forms post back to the page they came from; every post carries the session's CSRF
    token and comes from this origin, or it is refused."""

    def __init__(
        self,
        operations: AdminOperations,
        sessions: Sessions,
        auth: ConsoleAuth,
        metrics: Metrics,
        *,
        sleep: Callable[[float], Any],
    ) -> None:
        self._operations = operations
        self._sessions = sessions
        self._auth = auth
        self._metrics = metrics
        self._sleep = sleep
        self._templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
        )
        self._templates.filters["num"] = _grouped
        self._templates.filters["usd"] = _dollars
        self._templates.filters["state"] = describe
        self._templates.filters["agent"] = lambda name: "(none: refused before an agent)" if name == ANONYMOUS else name

    def routes(self) -> list[BaseRoute]:
        pages: list[tuple[str, Handler, str]] = [
            ("/ui", self.overview, "GET"),
            ("/ui/login", self.login_page, "GET"),
            ("/ui/login", self.login, "POST"),
            ("/ui/logout", self.logout, "POST"),
            ("/ui/keys", self.keys, "GET"),
            ("/ui/keys", self.create_key, "POST"),
            ("/ui/keys/new", self.new_key, "GET"),
            ("/ui/keys/{key_id}", self.key, "GET"),
            ("/ui/keys/{key_id}", self.update_key, "POST"),
            ("/ui/keys/{key_id}/rotate", self.rotate_key, "POST"),
            ("/ui/keys/{key_id}/revoke", self.revoke_key, "POST"),
            ("/ui/agents", self.agents, "GET"),
            ("/ui/agents/reload", self.reload, "POST"),
            ("/ui/usage", self.usage, "GET"),
            ("/ui/usage.csv", self.usage_csv, "GET"),
            ("/ui/sessions", self.sessions, "GET"),
            ("/ui/sessions/{session_id}", self.session, "GET"),
            ("/ui/sessions/{session_id}/delete", self.delete_session, "POST"),
        ]
        routes: list[BaseRoute] = [Route(path, self._as_page(h), methods=[method]) for path, h, method in pages]
        return [*routes, Mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")]

    def _as_page(self, handler: Handler) -> Handler:
        """A handler whose refusals (an unknown key, a form from elsewhere, a store away) are pages too."""

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except GatewayError as exc:
                return self._page(request, "error.html", {"error": exc}, status=exc.status)

        return page

    # Sign-in

    async def login_page(
        self, request: Request, *, error: str | None = None, status: int = 200, next_page: str | None = None
    ) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE) or new_nonce()
        next_page = _local_page(next_page or request.query_params.get("next"))
        context = {"csrf": self._auth.csrf_token(nonce), "next": next_page, "error": error}
        response = self._page(request, "login.html", context, status=status)
        _set_cookie(response, request, LOGIN_COOKIE, nonce, max_age=3600)
        return response

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        address = request.client.host if request.client is not None else "-"
        wait = self._auth.wait_before_trying(address)
        if wait > 0:
            message = f"Too many wrong keys from this address: try again in {int(wait) + 1} s."
            return await self.login_page(request, error=message, status=429, next_page=form.get("next"))
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        if not _same_origin(request) or not self._auth.csrf_ok(nonce, form.get("csrf")):
            error = "The form expired: sign in again."
            return await self.login_page(request, error=error, status=403, next_page=form.get("next"))
        if not self._auth.key_matches(form.get("admin_key", "")):
            self._auth.failed(address)
            await self._sleep(WRONG_KEY_DELAY)  # slows guessing down; the attempts limit stops it
            return await self.login_page(request, error="Wrong admin key.", status=401, next_page=form.get("next"))
        _, cookie = self._auth.open()
        response = RedirectResponse(_local_page(form.get("next")) or "/ui", status_code=303)
        _set_cookie(response, request, COOKIE, cookie, max_age=SESSION_SECONDS)
        response.delete_cookie(LOGIN_COOKIE, path="/ui")
        return response

    async def logout(self, request: Request) -> Response:
        await self._checked_form(request)
        self._auth.close(operator_of(request))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # Pages

    async def overview(self, request: Request) -> Response:
        """The last 24 hours, hour by hour, from the store every worker and replica writes to."""
        day = await self._operations.recent_usage(hours=24)
        context = {
            "totals": day["totals"],
            "by_agent": sorted(day["by_agent"].items()),
            "chart": _chart(day["by_day"], ("requests", "total_tokens")),
            "streams": self._metrics.open_streams(),  # this process's: the fleet's sum is on /metrics
        }
        return self._page(request, "overview.html", context)

    async def keys(self, request: Request) -> Response:
        query = request.query_params.get("q", "")
        records = await self._operations.list_keys(name=query)
        return self._page(request, "keys.html", {"keys": records, "q": query})

    async def new_key(self, request: Request) -> Response:
        return self._page(request, "key_new.html", {"form": {}, "error": None})

    async def create_key(self, request: Request) -> Response:
        form = await self._checked_form(request)
        try:
            body = KeyCreate.model_validate(_key_body(form, creating=True))
            record, secret = await self._operations.create_key(body)
        except (ValidationError, ValueError, GatewayError) as exc:
            return self._page(request, "key_new.html", {"form": form, "error": _problem(exc)}, status=400)
        return self._page(request, "key_secret.html", {"key": record, "secret": secret, "created": True})

    async def key(self, request: Request, *, error: str | None = None, status: int = 200) -> Response:
        record = await self._operations.get_key(request.path_params["key_id"])
        usage = await self._operations.key_usage(record.id, days=30)
        context = {
            "key": record,
            "usage": usage,
            "chart": _chart(usage["by_day"], ("requests", "total_tokens")),
            "error": error,
            "saved": request.query_params.get("saved") == "1",
            "metadata": orjson.dumps(record.metadata, option=orjson.OPT_INDENT_2).decode() if record.metadata else "",
        }
        return self._page(request, "key.html", context, status=status)

    async def update_key(self, request: Request) -> Response:
        form = await self._checked_form(request)
        key_id = request.path_params["key_id"]
        try:
            body = KeyUpdate.model_validate(_key_body(form, creating=False))
            await self._operations.update_key(key_id, body)
        except (ValidationError, ValueError, GatewayError) as exc:
            return await self.key(request, error=_problem(exc), status=400)
        return RedirectResponse(f"/ui/keys/{key_id}?saved=1", status_code=303)

    async def rotate_key(self, request: Request) -> Response:
        form = await self._checked_form(request)
        try:
            grace = int(form.get("grace_seconds") or 0)
            record, secret = await self._operations.rotate_key(request.path_params["key_id"], grace_seconds=grace)
        except (ValueError, GatewayError) as exc:
            return await self.key(request, error=_problem(exc), status=400)
        return self._page(request, "key_secret.html", {"key": record, "secret": secret, "created": False})

    async def revoke_key(self, request: Request) -> Response:
        await self._checked_form(request)
        key_id = request.path_params["key_id"]
        await self._operations.revoke_key(key_id)
        return RedirectResponse(f"/ui/keys/{key_id}", status_code=303)

    async def agents(self, request: Request, *, reload: Mapping[str, Any] | None = None) -> Response:
        return self._page(request, "agents.html", {"agents": self._operations.routes(), "reload": reload})

    async def reload(self, request: Request) -> Response:
        await self._checked_form(request)
        try:
            table = self._operations.reload()
        except InvalidConfig as exc:
            return await self.agents(request, reload={"ok": False, "problems": exc.problems})
        return await self.agents(request, reload={"ok": True, "agents": len(table.agents)})

    async def usage(self, request: Request) -> Response:
        days = _days(request)
        report = await self._operations.all_usage(days=days)
        names = {record.id: record.name for record in await self._operations.list_keys()}
        context = {"report": report, "days": days, "choices": USAGE_DAYS, "names": names}
        return self._page(request, "usage.html", context)

    async def usage_csv(self, request: Request) -> Response:
        """One row per key, agent and day with usage, for a spreadsheet."""
        days = _days(request)
        rows = await self._operations.usage_rows(days=days)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["day", "key_id", "agent", "requests", "prompt_tokens", "completion_tokens", "cached_tokens",
                         "cost_usd", "errors"])  # fmt: skip
        for row in rows:
            writer.writerow([row.period, row.key_id, row.agent, row.requests, row.prompt_tokens, row.completion_tokens,
                             row.cached_tokens, f"{usd(row.cost_nanos):.9f}", row.errors])  # fmt: skip
        response = Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=SECURITY_HEADERS)
        response.headers["content-disposition"] = f'attachment; filename="usage-{days}d.csv"'
        return response

    async def sessions(self, request: Request) -> Response:
        """Sessions across every store, newest first: all of them, or one key's, or one agent's."""
        key_id = request.query_params.get("key") or None
        agent = request.query_params.get("agent") or None
        found, total = await self._sessions.list(
            key_id, user_id=None, model=agent, offset=0, limit=SESSIONS_SHOWN, all_keys=key_id is None
        )
        names = {record.id: record.name for record in await self._operations.list_keys()}
        agents = [route["name"] for route in self._operations.routes() if "sessions" in route["features"]]
        context = {"sessions": found, "total": total, "names": names, "key": key_id, "agent": agent,
                   "agents": agents, "shown": SESSIONS_SHOWN}  # fmt: skip
        return self._page(request, "sessions.html", context)

    async def session(self, request: Request) -> Response:
        found, messages, storage = await self._sessions.find(request.path_params["session_id"], None, any_owner=True)
        names = {record.id: record.name for record in await self._operations.list_keys()}
        shown = [_message(message) for message in messages]
        context = {"session": found, "messages": shown, "storage": storage, "owner": names.get(found.key_id or "")}
        return self._page(request, "session.html", context)

    async def delete_session(self, request: Request) -> Response:
        await self._checked_form(request)
        await self._sessions.delete(request.path_params["session_id"], None, any_owner=True)
        return RedirectResponse("/ui/sessions", status_code=303)

    # Helpers

    def _page(self, request: Request, name: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
        session = request.scope["state"].get("console_session")
        page = {
            "path": request.url.path,
            "version": __version__,
            "signed_in": session is not None,
            "csrf": self._auth.csrf_token(session.id) if session is not None else context.get("csrf"),
        }
        html = self._templates.get_template(name).render(page=page, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def _checked_form(self, request: Request) -> dict[str, str]:
        """The form posted, once it is known to come from this console: same origin, and the session's token."""
        form = await _form(request)
        if not _same_origin(request) or not self._auth.csrf_ok(operator_of(request).id, form.get("csrf")):
            raise CsrfRefused()
        return form


class CsrfRefused(GatewayError):
    status = 403
    error_type = "permission_error"
    code = "csrf_refused"

    def __init__(self) -> None:
        super().__init__("This form did not come from the console: reload the page and try again.")


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != FORM:
        raise CsrfRefused()
    raw = await read_body(request, FORM_LIMIT)
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _same_origin(request: Request) -> bool:
    """A browser names where a post comes from; one from another site is refused (a missing Origin is let through
    to the token check: some browsers leave it out on same-origin posts)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def _local_page(target: str | None) -> str | None:
    """A page of this console to go on to after signing in; anything else (another site) is dropped."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def _set_cookie(response: Response, request: Request, name: str, value: str, *, max_age: int) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(name, value, max_age=max_age, path="/ui", secure=secure, httponly=True, samesite="strict")


def _key_body(form: Mapping[str, str], *, creating: bool) -> dict[str, Any]:
    """A key form as the admin API's body: empty fields left out (or cleared, when editing)."""
    body: dict[str, Any] = {}
    if creating or "name" in form:
        body["name"] = form.get("name", "").strip()
    if "models" in form:
        body["models"] = [m.strip() for m in form["models"].replace("\n", ",").split(",") if m.strip()]
    limits = {n: _whole(form, n) for n in ("rpm", "tpm", "max_concurrent") if n in form}
    quotas = {n: _whole(form, n) for n in ("tokens_per_day", "tokens_per_month") if n in form}
    body["limits"] = {n: v for n, v in limits.items() if v is not None or not creating}
    body["quotas"] = {n: v for n, v in quotas.items() if v is not None or not creating}
    if form.get("expires_in_days", "").strip():
        days = _whole(form, "expires_in_days")
        if days is not None:
            body["expires_at"] = (utcnow() + timedelta(days=days)).isoformat()
    if "metadata" in form:
        text = form["metadata"].strip()
        body["metadata"] = orjson.loads(text) if text else {}
    return body


def _whole(form: Mapping[str, str], name: str) -> int | None:
    text = form.get(name, "").replace(",", "").replace("_", "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: must be a whole number") from None


def _problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'form'}: {error['msg']}" for error in exc.errors()
        )
    if isinstance(exc, orjson.JSONDecodeError):
        return f"metadata: not a JSON object ({exc})"
    return exc.message if isinstance(exc, GatewayError) else str(exc)


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A stored chat message as the session page shows it: its role, its text, and any tool calls as JSON."""
    content = message.get("content")
    if isinstance(content, list):
        text = "\n".join(str(part.get("text", f"[{part.get('type')}]")) for part in content if isinstance(part, dict))
    else:
        text = "" if content is None else str(content)
    calls = message.get("tool_calls")
    return {
        "role": str(message.get("role", "?")),
        "text": text,
        "tool_calls": orjson.dumps(calls, option=orjson.OPT_INDENT_2).decode() if calls else None,
        "tool_call_id": message.get("tool_call_id"),
    }


def _days(request: Request) -> int:
    try:
        days = int(request.query_params.get("days", "30"))
    except ValueError:
        days = 30
    return min(max(days, 1), 400)


def _dollars(value: Any) -> str:
    """Dollars as the pages show them: cents for amounts of a cent or more, else to the millionth of a cent."""
    if not isinstance(value, int | float) or not value:
        return "$0"
    return f"${value:,.2f}" if value >= 0.01 else f"${value:.8f}".rstrip("0")


def _grouped(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _chart(by_day: list[dict[str, Any]], series: tuple[str, str]) -> dict[str, Any]:
    """Bars for an SVG chart drawn on the server (no script needed): per day, each series scaled to its own
    highest value."""
    width, height, gap = 24, 80, 4
    bars = []
    for name in series:
        top = max((day[name] for day in by_day), default=0) or 1
        points = [
            {"x": i * (width + gap), "h": round(day[name] / top * height), "day": _when(day["day"]), "value": day[name]}
            for i, day in enumerate(by_day)
        ]
        bars.append({"name": name, "top": top, "bars": points})
    unit = "hour" if by_day and len(by_day[0]["day"]) == 13 else "day"
    return {"width": len(by_day) * (width + gap), "height": height, "bar": width, "series": bars, "unit": unit}


def _when(period: str) -> str:
    """A period as a bar's label says it: a day as it is, an hour as `YYYY-MM-DD HH:00 UTC`."""
    return f"{period[:10]} {period[11:]}:00 UTC" if len(period) == 13 else period


def describe(record: KeyRecord) -> str:
    """A key's state in a word, as the pages show it."""
    if record.revoked:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= utcnow():
        return "expired"
    return "active"
