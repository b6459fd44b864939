"""`gateway keys`: create, list, show, update, revoke and rotate virtual keys, and read usage, over the admin API."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from gateway.cli.admin_client import JSON, AdminClient, AdminClientError
from gateway.settings import environ_with_dotenv

keys_app = typer.Typer(
    help="Create, list, show, update, revoke and rotate virtual keys, and read their usage, over the admin API.",
    no_args_is_help=True,
)
DEFAULT_URL = "http://127.0.0.1:8080"


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as text columns, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


CONNECTION = "Connection"
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help=f"the gateway's base URL (default: $GATEWAY_URL, else {DEFAULT_URL})",
        rich_help_panel=CONNECTION,
    ),
]
AdminKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        metavar="KEY",
        help="the admin key (default: $GATEWAY_ADMIN_KEY, which keeps it out of the process list)",
        rich_help_panel=CONNECTION,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="print the raw JSON answer, for scripts", rich_help_panel=CONNECTION)
]
KeyId = Annotated[str, typer.Argument(metavar="KEY_ID", help="the key's id (key_...)", show_default=False)]

ModelsOption = Annotated[
    list[str] | None,
    typer.Option("--model", metavar="PATTERN", help="an agent name or glob the key may use; repeat for more"),
]
ExpiresInOption = Annotated[
    str | None, typer.Option("--expires-in", metavar="DURATION", help="expire after 90s, 15m, 12h, 30d, ...")
]
ExpiresAtOption = Annotated[
    str | None, typer.Option("--expires-at", metavar="ISO8601", help="expire at this time (UTC unless it says)")
]
LIMITS = "Limits"
RpmOption = Annotated[int | None, typer.Option("--rpm", help="requests per minute", rich_help_panel=LIMITS)]
RpmBurstOption = Annotated[int | None, typer.Option("--rpm-burst", help="request bucket size", rich_help_panel=LIMITS)]
TpmOption = Annotated[int | None, typer.Option("--tpm", help="tokens per minute", rich_help_panel=LIMITS)]
TpmBurstOption = Annotated[int | None, typer.Option("--tpm-burst", help="token bucket size", rich_help_panel=LIMITS)]
MaxConcurrentOption = Annotated[
    int | None, typer.Option("--max-concurrent", help="requests in flight at once", rich_help_panel=LIMITS)
]
TokensPerDayOption = Annotated[
    int | None, typer.Option("--tokens-per-day", help="token quota per UTC day", rich_help_panel=LIMITS)
]
TokensPerMonthOption = Annotated[
    int | None, typer.Option("--tokens-per-month", help="token quota per UTC month", rich_help_panel=LIMITS)
]
MetadataOption = Annotated[
    list[str] | None, typer.Option("--metadata", metavar="KEY=VALUE", help="a metadata entry; repeat for more")
]


@keys_app.command("create")
def create_key(
    *,
    name: Annotated[str, typer.Option("--name", help="a name people recognise the key by")],
    models: ModelsOption = None,
    expires_in: ExpiresInOption = None,
    expires_at: ExpiresAtOption = None,
    rpm: RpmOption = None,
    rpm_burst: RpmBurstOption = None,
    tpm: TpmOption = None,
    tpm_burst: TpmBurstOption = None,
    max_concurrent: MaxConcurrentOption = None,
    tokens_per_day: TokensPerDayOption = None,
    tokens_per_month: TokensPerMonthOption = None,
    metadata: MetadataOption = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print its secret, which is shown this once only."""
    fields = _key_fields(
        models=models,
        expires_in=expires_in,
        expires_at=expires_at,
        limits=_limits(rpm, rpm_burst, tpm, tpm_burst, max_concurrent),
        quotas={"tokens_per_day": tokens_per_day, "tokens_per_month": tokens_per_month},
        metadata=metadata,
    )
    _call(url, admin_key, as_json, lambda client: client.create_key(name, **fields), _record_with_secret)


@keys_app.command("list")
def list_keys(
    *,
    name: Annotated[str | None, typer.Option("--name", metavar="TEXT", help="only keys whose name matches")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", metavar="KEY=VALUE", help="only keys with this metadata entry")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="at most this many keys")] = None,
    offset: Annotated[int | None, typer.Option("--offset", help="skip this many keys first")] = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List keys as a table."""
    entries = _metadata(metadata)
    _call(
        url,
        admin_key,
        as_json,
        lambda client: client.list_keys(name=name, metadata=entries, offset=offset, limit=limit),
        _key_table,
    )


@keys_app.command("show")
def show_key(
    key_id: KeyId, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False
) -> None:
    """Show one key."""
    _call(url, admin_key, as_json, lambda client: client.get_key(key_id), _record)


@keys_app.command("update")
def update_key(
    *,
    key_id: KeyId,
    name: Annotated[str | None, typer.Option("--name", help="a new name")] = None,
    models: ModelsOption = None,
    clear_models: Annotated[
        bool, typer.Option("--clear-models", help="allow every agent again (sends an empty model list)")
    ] = False,
    expires_in: ExpiresInOption = None,
    expires_at: ExpiresAtOption = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="never expire")] = False,
    rpm: RpmOption = None,
    rpm_burst: RpmBurstOption = None,
    tpm: TpmOption = None,
    tpm_burst: TpmBurstOption = None,
    max_concurrent: MaxConcurrentOption = None,
    tokens_per_day: TokensPerDayOption = None,
    tokens_per_month: TokensPerMonthOption = None,
    metadata: MetadataOption = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change the given fields of a key; limits and quotas not given keep their values."""
    if clear_models and models:
        raise typer.BadParameter("give either --model or --clear-models", param_hint="'--clear-models'")
    if no_expiry and (expires_in or expires_at):
        raise typer.BadParameter("give either --no-expiry or an expiry", param_hint="'--no-expiry'")
    fields = _key_fields(
        models=models,
        expires_in=expires_in,
        expires_at=expires_at,
        limits=_limits(rpm, rpm_burst, tpm, tpm_burst, max_concurrent),
        quotas={"tokens_per_day": tokens_per_day, "tokens_per_month": tokens_per_month},
        metadata=metadata,
    )
    if name is not None:
        fields["name"] = name
    if clear_models:
        fields["models"] = []
    if no_expiry:
        fields["expires_at"] = None
    if not fields:
        raise typer.BadParameter("nothing to change: give at least one option")
    _call(url, admin_key, as_json, lambda client: client.update_key(key_id, **fields), _record)


@keys_app.command("revoke")
def revoke_key(
    key_id: KeyId, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False
) -> None:
    """Revoke a key: requests with it fail from now on."""
    _call(url, admin_key, as_json, lambda client: client.revoke_key(key_id), _record)


@keys_app.command("rotate")
def rotate_key(
    key_id: KeyId,
    grace: Annotated[
        int | None, typer.Option("--grace", metavar="SECONDS", help="how long the old secret keeps working")
    ] = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a key a new secret, shown this once only."""
    _call(url, admin_key, as_json, lambda client: client.rotate_key(key_id, grace), _record_with_secret)


@keys_app.command("usage")
def key_usage(
    key_id: KeyId,
    days: Annotated[int | None, typer.Option("--days", help="how many days back, today included")] = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a key's usage: totals, per agent, per day, and the quota left."""
    _call(url, admin_key, as_json, lambda client: client.key_usage(key_id, days), _usage)


def _call(
    url: str | None,
    admin_key: str | None,
    as_json: bool,
    request: Callable[[AdminClient], JSON],
    render: Callable[[JSON], str],
) -> None:
    environ = environ_with_dotenv()
    admin_key = admin_key or environ.get("GATEWAY_ADMIN_KEY")
    if not admin_key:
        typer.echo("gateway: no admin key: set GATEWAY_ADMIN_KEY or pass --admin-key", err=True)
        raise typer.Exit(2)
    try:
        with AdminClient(url or environ.get("GATEWAY_URL") or DEFAULT_URL, admin_key) as client:
            answer = request(client)
    except AdminClientError as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(answer, indent=2, ensure_ascii=False) if as_json else render(answer))


def _key_fields(
    *,
    models: list[str] | None,
    expires_in: str | None,
    expires_at: str | None,
    limits: dict[str, int | None],
    quotas: dict[str, int | None],
    metadata: list[str] | None,
) -> JSON:
    """The request fields for the options given: the rest stay out, so an update leaves them as they are."""
    fields: JSON = {}
    if models:
        fields["models"] = models
    if expires_in is not None and expires_at is not None:
        raise typer.BadParameter("give either --expires-in or --expires-at", param_hint="'--expires-in'")
    if expires_in is not None:
        fields["expires_at"] = _iso(datetime.now(UTC) + _duration(expires_in))
    if expires_at is not None:
        fields["expires_at"] = _iso(_moment(expires_at))
    # The gateway merges limits and quotas field by field, so only the ones given are sent.
    for group, values in (("limits", limits), ("quotas", quotas)):
        if given := {name: value for name, value in values.items() if value is not None}:
            fields[group] = given
    if metadata:
        fields["metadata"] = _metadata(metadata)
    return fields


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _limits(
    rpm: int | None, rpm_burst: int | None, tpm: int | None, tpm_burst: int | None, max_concurrent: int | None
) -> dict[str, int | None]:
    return {"rpm": rpm, "rpm_burst": rpm_burst, "tpm": tpm, "tpm_burst": tpm_burst, "max_concurrent": max_concurrent}


def _duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 15m, 12h or 30d", param_hint="'--expires-in'")
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time like 2030-01-31T12:00:00Z", param_hint="'--expires-at'"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _metadata(entries: list[str] | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for entry in entries or ():
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{entry!r} is not KEY=VALUE", param_hint="'--metadata'")
        pairs[key] = value
    return pairs


def _when(value: Any, empty: str = "-") -> str:
    """A time from the API, to the second; anything unexpected is shown as it came."""
    if not value:
        return empty
    try:
        return _iso(datetime.fromisoformat(str(value)))
    except ValueError:
        return str(value)


def _status(record: JSON) -> str:
    if record.get("revoked"):
        return "revoked"
    expires_at = record.get("expires_at")
    try:
        expired = bool(expires_at) and datetime.fromisoformat(str(expires_at)) <= datetime.now(UTC)
    except (ValueError, TypeError):
        expired = False
    return "expired" if expired else "active"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _key_table(page: JSON) -> str:
    header = ("ID", "NAME", "PREFIX", "MODELS", "RPM", "TPM", "EXPIRES", "STATUS")
    rows = [header] + [
        (
            str(r.get("id")),
            str(r.get("name")),
            str(r.get("prefix")),
            ",".join(r.get("models") or ()) or "all",
            _cell((r.get("limits") or {}).get("rpm")),
            _cell((r.get("limits") or {}).get("tpm")),
            _when(r.get("expires_at"), empty="never"),
            _status(r),
        )
        for r in page.get("data", ())
    ]
    shown, total, offset = len(rows) - 1, page.get("total", len(rows) - 1), page.get("offset") or 0
    summary = f"{shown} of {total} key(s)" + (f", from #{offset + 1}" if offset and shown else "")
    return (columns(rows) if shown else "no keys") + f"\n\n{summary}"


def _record(record: JSON) -> str:
    limits, quotas = record.get("limits") or {}, record.get("quotas") or {}
    fields = [
        ("id", _cell(record.get("id"))),
        ("name", _cell(record.get("name"))),
        ("prefix", _cell(record.get("prefix"))),
        ("status", _status(record)),
        ("models", ", ".join(record.get("models") or ()) or "all"),
        ("created_at", _when(record.get("created_at"))),
        ("expires_at", _when(record.get("expires_at"), empty="never")),
        ("revoked_at", _when(record.get("revoked_at"))),
        ("rotated_at", _when(record.get("rotated_at"))),
        ("grace_until", _when(record.get("grace_until"))),
        *((f"limits.{k}", _cell(v)) for k, v in limits.items()),
        *((f"quotas.{k}", _cell(v)) for k, v in quotas.items()),
        *(
            (f"metadata.{k}", v if isinstance(v, str) else json.dumps(v))
            for k, v in (record.get("metadata") or {}).items()
        ),
    ]
    width = max(len(field) for field, _ in fields) + 1
    return "\n".join(f"{field + ':':<{width}} {value}" for field, value in fields)


def _record_with_secret(answer: JSON) -> str:
    lines = [_record(answer), "", f"secret: {answer.get('secret')}"]
    lines.append("warning: the secret is shown only this once; store it now, the gateway keeps only its hash")
    if answer.get("grace_until"):
        lines.append(f"the previous secret keeps working until {_when(answer['grace_until'])}")
    return "\n".join(lines)


COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors", "cancelled", "cost_usd")
COUNTER_HEADER = tuple(name.upper() for name in COUNTERS)


def _counts(counters: JSON) -> tuple[str, ...]:
    return tuple(_money(counters.get(name)) if name == "cost_usd" else str(counters.get(name, 0)) for name in COUNTERS)


def _money(value: Any) -> str:
    """Dollars to the millionth of a cent: small requests cost fractions of a cent."""
    return f"{value:.8f}".rstrip("0").rstrip(".") if isinstance(value, int | float) and value else "0"


def _usage(usage: JSON) -> str:
    sections = [f"usage of {usage.get('key_id')} from {usage.get('from')} to {usage.get('to')}"]
    sections.append("Totals\n" + columns([COUNTER_HEADER, _counts(usage.get("totals") or {})]))
    by_agent = usage.get("by_agent") or {}
    sections.append(
        "By agent\n"
        + (
            columns([("AGENT", *COUNTER_HEADER)] + [(agent, *_counts(c)) for agent, c in sorted(by_agent.items())])
            if by_agent
            else "no requests"
        )
    )
    # The API lists every day of the range; a month of zero rows would bury the days that matter.
    by_day = [day for day in usage.get("by_day") or () if any(day.get(name) for name in COUNTERS)]
    sections.append(
        "By day\n"
        + (
            columns([("DAY", *COUNTER_HEADER)] + [(str(day.get("day")), *_counts(day)) for day in by_day])
            if by_day
            else "no requests"
        )
    )
    quota_rows = [("QUOTA", "LIMIT", "USED", "REMAINING", "RESETS AT")]
    for name, quota in (usage.get("quotas") or {}).items():
        if quota is None:
            quota_rows.append((name, "none", "-", "-", "-"))
        else:
            quota_rows.append(
                (
                    name,
                    _cell(quota.get("limit")),
                    _cell(quota.get("used")),
                    _cell(quota.get("remaining")),
                    _when(quota.get("resets_at")),
                )
            )
    sections.append("Quotas\n" + columns(quota_rows))
    return "\n\n".join(sections)
