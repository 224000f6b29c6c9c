"""How late the coming peaks will run at the current send rate (docs/pacing.md).

From the planned rows (PENDING/QUEUED, due within PLAN_AHEAD_HOURS) and the effective rate:
the instants are drained in time order as a queue, starting with the backlog due now, so an
instant that follows a big one inherits its queue. The forecast lateness of an instant is when
its last greeting goes minus the instant. `bday status` shows the biggest instants; the
exporter publishes the worst lateness, and an alert compares it with LATENESS_BUDGET.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bday.config import Settings, get_settings
from bday.delivery import pacing
from bday.store import messages
from bday.store.db import engine

PEAKS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class Peak:
    at: datetime
    count: int
    last_late_s: float | None  # None: no rate limit and none learned, so no forecast


@dataclass(frozen=True, slots=True)
class Forecast:
    rate: float | None  # messages per second for the whole cluster; None = unlimited
    limit: float  # EMAIL_SERVICE_RATE_LIMIT (0: none)
    adaptive: float | None  # the rate learned from 429s, if any
    backlog: int
    drain_s: float | None
    budget_s: float
    peaks: list[Peak] = field(default_factory=list)

    @property
    def worst_late_s(self) -> float:
        """The largest forecast lateness of any planned instant (0 when there is none)."""
        return max((p.last_late_s or 0.0 for p in self.peaks), default=0.0)

    @property
    def over_budget(self) -> bool:
        return self.worst_late_s > self.budget_s


def lateness(
    instants: list[tuple[datetime, int]], rate: float, now: datetime, backlog: int = 0
) -> list[Peak]:
    """Drain `backlog` from `now`, then each instant's greetings in time order at `rate`.

    In float seconds from `now`, never in datetimes: a queue that drains in 10^15 s (a tiny
    rate, a huge backlog) is a lateness to report (inf at worst, which the alert compares
    fine), not an overflow that stops `bday status` and the exporter."""
    if not rate > 0:  # nan, zero or negative (a hand-edited row): nothing would ever be sent
        return [Peak(at, count, math.inf) for at, count in instants]
    free_at = backlog / rate
    peaks = []
    for at, count in instants:
        start = (at - now).total_seconds()
        done = max(start, free_at) + count / rate
        peaks.append(Peak(at, count, done - start))
        free_at = done
    return peaks


def forecast(
    instants: list[tuple[datetime, int]],
    *,
    backlog: int,
    state: pacing.State | None,
    settings: Settings,
    now: datetime,
) -> Forecast:
    """The forecast from planned instants, the backlog and the shared rate's row."""
    rate = pacing.effective_rate(settings.email_service_rate_limit, state, now)
    if rate is None:
        peaks = [Peak(at, count, None) for at, count in instants]
    else:
        peaks = lateness(instants, rate, now, backlog)
    return Forecast(
        rate=rate,
        limit=settings.email_service_rate_limit,
        adaptive=pacing.adaptive_rate(state, now),
        backlog=backlog,
        drain_s=_drain_s(backlog, rate),
        budget_s=settings.lateness_budget_s,
        peaks=sorted(peaks, key=lambda p: (-p.count, p.at)),
    )


def _drain_s(backlog: int, rate: float | None) -> float | None:
    if rate is None:
        return None
    return backlog / rate if rate > 0 else math.inf


def read_forecast(now: datetime | None = None, settings: Settings | None = None) -> Forecast:
    """Read the planned rows, the backlog and the shared rate; forecast the coming peaks."""
    settings, now = settings or get_settings(), now or datetime.now(UTC)
    until = now + timedelta(hours=settings.plan_ahead_hours)
    with engine().connect() as connection:
        instants = messages.planned_by_instant(connection, now, until)
        backlog = messages.due_now(connection, now)
        state = pacing.read(connection)
    return forecast(instants, backlog=backlog, state=state, settings=settings, now=now)
