"""The chaos suite: real processes broken on purpose. `--long` runs the full sizes.

Every scenario runs on this run's database and vhost with real workers, beat, RabbitMQ,
PostgreSQL and the fake email service, and checks two things at the end: the final state of
every row, and how often the email service saw each Idempotency-Key succeed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from bday.store.db import engine
from tests.harness.stack import Stack, running_stack

# Sends that give up fast, and a breaker that opens on an outage and probes every 5-15 s.
FAST = {"EMAIL_SERVICE_TIMEOUT": "1000", "QUEUE_MAX_RETRIES": "5"}
BREAKER = {"BREAKER_IDLE": "30", "BREAKER_COOLDOWN": "5", "BREAKER_COOLDOWN_MAX": "15"}

RESULTS = Path(__file__).resolve().parents[2] / ".chaos-results.json"


@pytest.fixture
def stack(database_url, tmp_path, monkeypatch) -> Iterator[Stack]:
    """The same stack of real processes as the end-to-end tests' (tests/harness/stack.py)."""
    yield from running_stack(database_url, tmp_path, monkeypatch)


@dataclass(frozen=True)
class Scale:
    long: bool

    def pick(self, ci, full):
        return full if self.long else ci


@pytest.fixture
def scale(request) -> Scale:
    return Scale(request.config.getoption("--long"))


@pytest.fixture
def report(request):
    """Record a scenario's figures (printed at the end; written to .chaos-results.json)."""
    figures: dict = {}
    yield figures
    if figures:
        _store(request.node.name, figures)


def _store(name: str, figures: dict) -> None:
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing[name] = figures
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True))


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
