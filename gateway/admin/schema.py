"""The admin API's bodies (validated with pydantic) and its OpenAPI document, built from the same models."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from gateway.http import IntParam
from gateway.limits.buckets import MAX_TOKENS

MAX_GRACE_SECONDS = 30 * 24 * 3600
# Ceilings far above any real use. They keep every bucket, counter and header exact (Lua numbers and the floats
# the headers come from are exact up to 2^53) and storable (SQLite and Redis hold 64-bit integers).
MAX_REQUESTS_PER_MINUTE = 1_000_000_000
MAX_CONCURRENT = 1_000_000
MAX_OFFSET = 1_000_000_000
# Integers a store keeps exactly: orjson writes at most 64 bits, SQLite and Redis hold signed 64-bit integers.
_INT64 = 2**63
METADATA_RULES = "Free-form: user, team, purpose. Integers within signed 64 bits; no NaN or infinity."


OFFSET = IntParam("offset", 0, 0, MAX_OFFSET)
KEYS_LIMIT = IntParam("limit", 50, 1, 500)
SESSIONS_LIMIT = IntParam("limit", 20, 1, 100)
DAYS = IntParam("days", 30, 1, 400)


def _storable(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Refuse what no store could write back: integers beyond 64 bits, and NaN or infinite numbers."""
    problem = _unstorable(value, info.field_name or "metadata")
    if problem is not None:
        raise PydanticCustomError("unstorable", "{problem}", {"problem": problem})
    return value


def _unstorable(value: Any, where: str) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -_INT64 <= value < _INT64 else f"`{where}` is an integer beyond 64 bits, which cannot be stored"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"`{where}` is not a finite number, which cannot be stored"
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _unstorable(v, f"{where}.{k}")) is not None), None)
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _unstorable(v, f"{where}[{i}]")) is not None), None)
    return None


# Free-form JSON a client or operator attaches to a key or a session.
Metadata = Annotated[dict[str, Any], AfterValidator(_storable)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsBody(Body):
    rpm: int | None = Field(default=None, gt=0, le=MAX_REQUESTS_PER_MINUTE, description="Requests per minute.")
    rpm_burst: int | None = Field(
        default=None, gt=0, le=MAX_REQUESTS_PER_MINUTE, description="Request bucket size (default: rpm)."
    )
    tpm: int | None = Field(default=None, gt=0, le=MAX_TOKENS, description="LLM tokens per minute.")
    tpm_burst: int | None = Field(default=None, gt=0, le=MAX_TOKENS, description="Token bucket size (default: tpm).")
    max_concurrent: int | None = Field(default=None, gt=0, le=MAX_CONCURRENT, description="Requests in flight at once.")
    cooldown_after: int | None = Field(
        default=None,
        gt=0,
        le=MAX_CONCURRENT,
        description="After this many refusals within cooldown_window, refuse all for a while.",
    )
    cooldown_window: float | None = Field(default=None, gt=0, le=86400, description="Seconds (default 60).")
    cooldown_seconds: float | None = Field(default=None, gt=0, le=86400, description="Seconds (default 60).")


class QuotasBody(Body):
    tokens_per_day: int | None = Field(default=None, gt=0, le=MAX_TOKENS, description="Tokens per UTC calendar day.")
    tokens_per_month: int | None = Field(
        default=None, gt=0, le=MAX_TOKENS, description="Tokens per UTC calendar month."
    )


class KeyCreate(Body):
    name: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(default_factory=list, description="Allowed agent names or glob patterns; empty: all.")
    expires_at: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a time zone, e.g. ...Z; in the future."
    )
    limits: LimitsBody = Field(default_factory=LimitsBody)
    quotas: QuotasBody = Field(default_factory=QuotasBody)
    metadata: Metadata = Field(default_factory=dict, description=METADATA_RULES)


def _string_only(schema: dict[str, Any]) -> None:
    """The schema of an optional string field whose null is refused: the string's own schema, no null default."""
    string = next(s for s in schema.pop("anyOf") if s.get("type") == "string")
    schema.pop("default", None)
    schema.update(string)


class KeyUpdate(Body):
    """Only the fields sent change; `limits` and `quotas` are merged field by field (null clears one)."""

    # Absent: unchanged. null is refused by the handler (a key always has a name): the schema shows a string only.
    name: str | None = Field(default=None, min_length=1, max_length=200, json_schema_extra=_string_only)
    models: list[str] | None = None
    expires_at: AwareDatetime | None = Field(default=None, description="ISO 8601 with a time zone; in the future.")
    limits: LimitsBody | None = None
    quotas: QuotasBody | None = None
    metadata: Metadata | None = Field(default=None, description=METADATA_RULES)


class Rotate(Body):
    grace_seconds: int = Field(default=0, ge=0, le=MAX_GRACE_SECONDS, description="How long the old secret works.")


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The secret's first characters, for recognising it.")
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    revoked_at: datetime | None
    models: list[str]
    limits: LimitsBody
    quotas: QuotasBody
    metadata: dict[str, Any]
    rotated_at: datetime | None
    grace_until: datetime | None


class KeyWithSecret(KeyOut):
    secret: str = Field(description="The virtual key. Shown only in this response.")


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyOut]
    total: int
    offset: int
    limit: int


class Counters(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    errors: int = Field(description="Answers with status >= 400, the gateway's refusals and the provider's.")
    cancelled: int = Field(description="Requests the client left before the end.")
    limited_rate: int = Field(description="Refused by a requests or tokens bucket (429).")
    limited_quota: int = Field(description="Refused by a daily or monthly quota (429 insufficient_quota).")
    limited_concurrency: int = Field(description="Refused for lack of a concurrency slot (429).")
    limited_cooldown: int = Field(description="Refused during a key's cooldown (429).")
    queued: int = Field(description="Waited for a concurrency slot.")
    upstream_limited: int = Field(description="The provider answered 429 (passed through, counted apart).")
    cached_tokens: int = Field(description="Of prompt_tokens, read from the provider's cache.")
    cost_usd: float = Field(description="What it cost, from the agents' `pricing` (0 where an agent has none).")


class DayCounters(Counters):
    day: str


class QuotaState(BaseModel):
    limit: int
    used: int
    remaining: int
    resets_at: datetime


class Quotas(BaseModel):
    tokens_per_day: QuotaState | None
    tokens_per_month: QuotaState | None


class KeyUsage(BaseModel):
    key_id: str
    from_: str = Field(alias="from")
    to: str
    totals: Counters
    by_agent: dict[str, Counters]
    by_day: list[DayCounters]
    quotas: Quotas
    limits: LimitsBody


class AllUsage(BaseModel):
    from_: str = Field(alias="from")
    to: str
    totals: Counters
    by_key: dict[str, Counters]
    by_agent: dict[str, Counters]
    by_day: list[DayCounters]


class RouteTarget(BaseModel):
    name: str
    model: str
    base_url: str
    api_key_env: str | None
    api_key: str = Field(description="`set` or `missing`; never the key.")
    weight: float
    circuit: str = Field(description="Its circuit breaker in the process that answered: closed, open, half_open, off.")


class Route(BaseModel):
    name: str
    aliases: list[str]
    description: str
    provider: str
    model: str = Field(description="The first target's upstream model.")
    base_url: str = Field(description="The first target's base URL.")
    api_key_env: str | None
    api_key: str = Field(description="`set` or `missing`; never the key.")
    targets: list[RouteTarget]
    retries: int
    fallbacks: list[str]
    features: list[str]
    timeout: float
    source: str


class RouteList(BaseModel):
    object: str = "list"
    data: list[Route]


class Reloaded(BaseModel):
    reloaded: bool
    agents: list[str]


class UsageReset(BaseModel):
    key_id: str
    reset: bool


class SessionOut(BaseModel):
    session_id: str
    model: str
    user_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    key_id: str | None = Field(description="The key that owns it; null when auth is off.")


class SessionWithMessages(SessionOut):
    messages: list[dict[str, Any]] = Field(description="The stored history, oldest first (no system prompt).")


class SessionList(BaseModel):
    object: str = "list"
    data: list[SessionOut]
    total: int
    offset: int
    limit: int
    has_more: bool


class SessionDeleted(BaseModel):
    session_id: str
    object: str = "session.deleted"
    deleted: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(BaseModel):
    error: ErrorDetail


_SCHEMAS: tuple[type[BaseModel], ...] = (
    KeyCreate, KeyUpdate, Rotate, KeyOut, KeyWithSecret, KeyList, KeyUsage, AllUsage, RouteList, Reloaded,
    UsageReset, SessionWithMessages, SessionList, SessionDeleted, Error,
)  # fmt: skip

# (method, path, summary, request body model, success status, response model, extra query parameters)
_OPERATIONS: tuple[tuple[str, str, str, str | None, int, str, tuple[str | IntParam, ...]], ...] = (
    ("post", "/admin/keys", "Create a key; the secret is in this response only", "KeyCreate", 201, "KeyWithSecret", ()),
    ("get", "/admin/keys", "List keys; also filter by metadata with `metadata.<field>=<value>`", None, 200, "KeyList",
     ("name", OFFSET, KEYS_LIMIT, "include_revoked")),
    ("get", "/admin/keys/{key_id}", "Show a key", None, 200, "KeyOut", ()),
    ("patch", "/admin/keys/{key_id}", "Change a key's name, models, expiry, limits, quotas or metadata",
     "KeyUpdate", 200, "KeyOut", ()),
    ("delete", "/admin/keys/{key_id}", "Revoke a key", None, 200, "KeyOut", ()),
    ("post", "/admin/keys/{key_id}/rotate", "New secret; the old one works for grace_seconds", "Rotate", 200,
     "KeyWithSecret", ()),
    ("get", "/admin/keys/{key_id}/usage", "A key's usage by agent and day, and its quotas", None, 200, "KeyUsage",
     (DAYS,)),
    ("post", "/admin/keys/{key_id}/usage/reset", "Forget a key's usage", None, 200, "UsageReset", ()),
    ("get", "/admin/usage", "Usage of every key", None, 200, "AllUsage", (DAYS,)),
    ("get", "/admin/routes", "The route table in force (keys masked)", None, 200, "RouteList", ()),
    ("post", "/admin/reload", "Re-read the route config; a bad one is refused and the old one stays", None, 200,
     "Reloaded", ()),
    ("get", "/admin/sessions", "Every key's sessions, newest first; `key_id` narrows to one key's", None, 200,
     "SessionList", ("key_id", "user_id", "model", OFFSET, SESSIONS_LIMIT)),
    ("get", "/admin/sessions/{session_id}", "A session with its messages, whoever owns it", None, 200,
     "SessionWithMessages", ()),
    ("delete", "/admin/sessions/{session_id}", "Delete a session, whoever owns it", None, 200, "SessionDeleted", ()),
)  # fmt: skip
# What a 404 means, per path parameter.
_MISSING = {"key_id": "No such key", "session_id": "No such session (or it has expired)"}


def openapi_document(version: str) -> dict[str, Any]:
    """The admin API as an OpenAPI 3.1 document."""
    schemas: dict[str, Any] = {}
    for model in _SCHEMAS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, status, response, query in _OPERATIONS:
        missing = next((text for name, text in _MISSING.items() if f"{{{name}}}" in path), None)
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): _content(response, "Success"),
                "401": _content("Error", "Missing or wrong admin key"),
                **({"404": _content("Error", missing)} if missing else {}),
                **({"400": _content("Error", "A query parameter is not valid")} if query else {}),
                **(
                    {"400": _content("Error", "The new config is not valid; the old one keeps serving")}
                    if path == "/admin/reload"
                    else {}
                ),
                **({"409": _content("Error", "The key is revoked")} if path.endswith("/rotate") else {}),
                **({"422": _content("Error", "The body is not valid; `param` names the field")} if body else {}),
            },
        }
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _MISSING
            if f"{{{name}}}" in path
        ]
        parameters += [_query_parameter(param) for param in query]
        if parameters:
            operation["parameters"] = parameters
        if body:
            # Rotate's body is optional (no body: no grace period).
            required = body != "Rotate"
            operation["requestBody"] = {"required": required, "content": _content(body, "")["content"]}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "agent-gateway admin API", "version": version},
        "security": [{"adminKey": []}],
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer", "description": "GATEWAY_ADMIN_KEY"}},
            "schemas": schemas,
        },
        "paths": paths,
    }


def _query_parameter(param: str | IntParam) -> dict[str, Any]:
    if isinstance(param, IntParam):
        bounds = {"minimum": param.low, "maximum": param.high, "default": param.default}
        return {"name": param.name, "in": "query", "schema": {"type": "integer", **bounds}}
    if param in _BOOLEAN_PARAMS:
        return {"name": param, "in": "query", "schema": {"type": "boolean", "default": _BOOLEAN_PARAMS[param]}}
    return {"name": param, "in": "query", "schema": {"type": "string"}}


# Boolean query parameters, with their defaults.
_BOOLEAN_PARAMS = {"include_revoked": True}


def _content(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }
