"""The lateness forecast: queue arithmetic, and `bday status` on a planted peak."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from bday.config import get_settings, load_settings
from bday.delivery.pacing import State
from bday.devtools.factories import born_on
from bday.ops.forecast import forecast, lateness
from bday.scheduling import jobs
from bday.store.db import transaction
from bday.store.models import User
from tests.harness.cli import bday
from tests.harness.queues import declare_topology

NOW = datetime(2027, 3, 5, 12, 0, tzinfo=UTC)
KOLKATA = ZoneInfo("Asia/Kolkata")


def test_the_last_greeting_of_a_peak_is_count_over_rate_late():
    (peak,) = lateness([(NOW + timedelta(hours=1), 5000)], 14, NOW)
    assert peak.last_late_s == pytest.approx(5000 / 14)  # about 6 minutes


def test_an_instant_right_after_a_big_one_inherits_its_queue_and_the_backlog_goes_first():
    first, second = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
    peaks = lateness([(first, 1200), (second, 60)], 10, NOW, backlog=600)
    # The backlog takes 60 s (until `first`), the first instant 120 s (until 1 min after
    # `second`), so the second waits 60 s before its own 6 s.
    assert [p.last_late_s for p in peaks] == [pytest.approx(120), pytest.approx(66)]


def test_without_a_limit_or_a_429_there_is_no_forecast_and_nothing_is_over_budget():
    ahead = forecast(
        [(NOW + timedelta(hours=1), 5000)],
        backlog=10,
        state=None,
        settings=load_settings(EMAIL_SERVICE_RATE_LIMIT=0),
        now=NOW,
    )
    assert ahead.rate is None and ahead.peaks[0].last_late_s is None and not ahead.over_budget


def test_a_rate_learned_from_429s_drives_the_forecast_and_the_budget_verdict():
    learned = State(0, NOW, 1, 1.0, NOW, 1)
    ahead = forecast(
        [(NOW + timedelta(hours=1), 5000)],
        backlog=0,
        state=learned,
        settings=load_settings(LATENESS_BUDGET=3600),
        now=NOW,
    )
    assert ahead.rate == pytest.approx(1.0) and ahead.over_budget


def _next_nine_in_kolkata(now: datetime) -> datetime:
    local = now.astimezone(KOLKATA)
    nine = datetime.combine(local.date(), time(9), KOLKATA)
    return nine if nine > local + timedelta(minutes=5) else nine + timedelta(days=1)


def _kolkata_users(count: int, birthday: date) -> None:
    since = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "first_name": f"K{index}",
            "last_name": "Test",
            "email": f"k{index}@example.com",
            "birthday": born_on(birthday),
            "timezone": "Asia/Kolkata",
            "birthday_owed_from": since,
            "anniversary_owed_from": since,
        }
        for index in range(count)
    ]
    with transaction() as session:
        session.execute(User.__table__.insert(), rows)


@pytest.mark.broker  # status exits 1 when it cannot read the queues
@pytest.mark.usefixtures("database")
def test_status_forecasts_a_planted_peak_of_5000_in_kolkata_at_14_per_second(monkeypatch, capsys):
    monkeypatch.setenv("EMAIL_SERVICE_RATE_LIMIT", "14")
    get_settings.cache_clear()
    instant = _next_nine_in_kolkata(datetime.now(UTC))
    _kolkata_users(5000, instant.date())
    assert jobs.plan_job()["planned"] == 5000
    declare_topology()
    code, out, _ = bday(monkeypatch, capsys, "status", "--json")
    pacing = json.loads(out)["pacing"]
    assert code == 0 and pacing["rate_per_s"] == 14 and pacing["backlog"] == 0
    (peak,) = pacing["peaks"]
    assert peak["count"] == 5000 and datetime.fromisoformat(peak["at"]) == instant
    assert peak["last_late_s"] == pytest.approx(5000 / 14, abs=0.1)  # about 6 minutes
    _code, out, _ = bday(monkeypatch, capsys, "status")
    assert "pacing:    14.0/s (limit 14.0/s)" in out
    assert "5000 due, last ~6.0 min late" in out
    get_settings.cache_clear()
