"""Figures and settings the chaos scenarios share (tests/chaos): what every scenario reports,
pacing's per-second counts, the rows' retries and deferrals, the breaker's trips."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text

from bday.store.db import engine

# Sends that give up fast, and a breaker that opens on an outage and probes every 5-15 s.
FAST = {"EMAIL_SERVICE_TIMEOUT": "1000", "QUEUE_MAX_RETRIES": "5"}
BREAKER = {"BREAKER_IDLE": "30", "BREAKER_COOLDOWN": "5", "BREAKER_COOLDOWN_MAX": "15"}


def sends_summary(per_key: Counter, total: int) -> dict:
    """Figures every scenario reports: delivered keys, lost ones, keys sent more than once."""
    return {
        "messages": total,
        "delivered": len(per_key),
        "lost": total - len(per_key),
        "second_sends": sum(count - 1 for count in per_key.values() if count > 1),
    }


def per_second(records, outcome: str | None = None) -> list[int]:
    """Calls per whole second of arrival (`.arrived`), from the first call's second to the
    last's; only those with `outcome` if given."""
    seconds = Counter(int(r.arrived) for r in records if outcome is None or r.outcome == outcome)
    first, last = min(seconds), max(seconds)
    return [seconds[s] for s in range(first, last + 1)]


def throttle_summary(records, settled_from: float) -> dict:
    """How a provider's unannounced limit was met: calls and throttled answers in all and from
    `settled_from` on (once the cluster's rate should have found the limit)."""
    settled = [r for r in records if r.arrived >= settled_from]
    return {
        "calls": len(records),
        "throttled": sum(1 for r in records if r.outcome == "throttled"),
        "calls_settled": len(settled),
        "throttled_settled": sum(1 for r in settled if r.outcome == "throttled"),
        "per_second_sent": per_second(records, "sent"),
        "per_second_throttled": per_second(records, "throttled"),
    }


def row_figures() -> dict:
    """Retries and deferrals spent over all rows, and rows sent before their time."""
    with engine().connect() as connection:
        row = connection.execute(
            text(
                "SELECT coalesce(sum(retry_count), 0), coalesce(sum(deferrals), 0),"
                " count(*) FILTER (WHERE sent_at < scheduled_send_time)"
                " FROM messages"
            )
        ).one()
    return {"retries_spent": int(row[0]), "deferrals": int(row[1]), "sent_early": int(row[2])}


def breaker_trips() -> int:
    with engine().connect() as connection:
        return connection.execute(
            text("SELECT coalesce(sum(trips), 0) FROM circuit_breakers")
        ).scalar()
