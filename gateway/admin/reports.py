"""Usage reports for the admin API: counter rows in, totals by agent, day and key, and quota state out. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.keys import KeyRecord
from gateway.pricing import usd
from gateway.store.base import COUNTERS, UsageRow, hour_period


def days_back(today: date, days: int) -> list[str]:
    """The `days` UTC days ending today, oldest first, as store periods."""
    return [(today - timedelta(days=offset)).isoformat() for offset in range(days - 1, -1, -1)]


def hours_back(now: datetime, hours: int) -> list[str]:
    """The `hours` UTC hours ending with the current one, oldest first, as store periods."""
    moments = (now - timedelta(hours=offset) for offset in range(hours - 1, -1, -1))
    return [hour_period(moment.date(), moment.hour) for moment in moments]


def _empty() -> dict[str, int]:
    return dict.fromkeys((*COUNTERS, "total_tokens"), 0)


def _add(totals: dict[str, int], row: UsageRow) -> None:
    for name in COUNTERS:
        totals[name] += getattr(row, name)
    totals["total_tokens"] += row.prompt_tokens + row.completion_tokens


def summarize(rows: Iterable[UsageRow], days: list[str]) -> dict[str, Any]:
    """Totals, by agent, by key and by day (every day listed, zeros included) over day rows."""
    totals = _empty()
    by_agent: dict[str, dict[str, int]] = {}
    by_key: dict[str, dict[str, int]] = {}
    by_day = {day: _empty() for day in days}
    for row in rows:
        if row.period not in by_day:
            continue
        for bucket in (totals, by_agent.setdefault(row.agent, _empty()), by_key.setdefault(row.key_id, _empty())):
            _add(bucket, row)
        _add(by_day[row.period], row)
    return {
        "from": days[0],
        "to": days[-1],
        "totals": _public(totals),
        "by_key": {key: _public(counts) for key, counts in by_key.items()},
        "by_agent": {agent: _public(counts) for agent, counts in by_agent.items()},
        "by_day": [{"day": day, **_public(counts)} for day, counts in by_day.items()],
    }


def _public(counts: dict[str, int]) -> dict[str, Any]:
    """Counters as reports show them: the cost in dollars (counted in nano-dollars)."""
    shown: dict[str, Any] = dict(counts)
    shown["cost_usd"] = usd(shown.pop("cost_nanos"))
    return shown


def quota_state(
    key: KeyRecord, month_rows: Iterable[UsageRow], day_rows: Iterable[UsageRow], now: datetime
) -> dict[str, Any]:
    """Used and remaining tokens of the key's daily and monthly quotas, and when each resets (UTC)."""
    day_used = sum(r.prompt_tokens + r.completion_tokens for r in day_rows)
    month_used = sum(r.prompt_tokens + r.completion_tokens for r in month_rows)
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    first_of_next = (now.replace(day=28) + timedelta(days=4)).replace(day=1)
    next_month = datetime.combine(first_of_next.date(), datetime.min.time(), UTC)

    def state(limit: int | None, used: int, resets: datetime) -> dict[str, Any] | None:
        if limit is None:
            return None
        return {"limit": limit, "used": used, "remaining": max(0, limit - used), "resets_at": _iso(resets)}

    return {
        "tokens_per_day": state(key.quotas.tokens_per_day, day_used, tomorrow),
        "tokens_per_month": state(key.quotas.tokens_per_month, month_used, next_month),
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
