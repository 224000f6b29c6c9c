"""Issue 20, slip 6: no forecast input stops `bday status` or the exporter.

EMAIL_SERVICE_RATE_LIMIT=1e-15 was accepted; the forecast then drained the queue in datetimes
(10^15 s: an OverflowError), `bday status` said "a number is out of range" without naming the
setting and the exporter stopped serving bday_forecast_peak_lateness_seconds, so
PeakForecastLate could not fire.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bday.config import load_settings
from bday.delivery.pacing import State
from bday.devtools.factories import born_on
from bday.ops import exporter, forecast, status
from bday.store.db import transaction
from bday.store.models import Message, Status
from bday.users import api as users
from tests.harness.cli import bday

NOW = datetime(2027, 3, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", ["1e-15", "1e-300", "0.0009", "5e-324"])
def test_a_rate_limit_below_the_floor_is_refused_at_load_naming_the_setting(
    monkeypatch, capsys, settings_env, value
):
    settings_env.setenv("EMAIL_SERVICE_RATE_LIMIT", value)
    code, out, err = bday(monkeypatch, capsys, "status")
    assert (code, out) == (2, "")
    assert err == (
        f"bday: invalid setting EMAIL_SERVICE_RATE_LIMIT='{value}': must be 0 (no limit) or "
        "at least 0.001 messages per second\n"
    )


@pytest.mark.parametrize("value", [0, 0.001, 14, 100_000])
def test_no_limit_and_rates_from_the_floor_up_are_accepted(value):
    assert load_settings(EMAIL_SERVICE_RATE_LIMIT=value).email_service_rate_limit == value


rates = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([5e-324, 1e-300, -1.0])
instants = st.lists(st.tuples(st.floats(-1e6, 1e9), st.integers(0, 10**12)), max_size=5).map(
    lambda items: sorted((NOW + timedelta(seconds=s), n) for s, n in items)
)


@settings(max_examples=300, deadline=None)
@given(rate=rates, planned=instants, backlog=st.integers(0, 10**12), learned=st.booleans())
def test_the_forecast_answers_for_any_rate_backlog_and_peak(rate, planned, backlog, learned):
    """Whatever the limit (the setting bypassed), the rate learned from 429s or the rows:
    a number for every peak, never an exception; nan is no answer, so none is nan."""
    state = State(0, NOW, 1, rate, NOW, 1) if learned else None
    limit = 0.0 if learned else rate
    unchecked = load_settings().model_copy(update={"email_service_rate_limit": limit})
    ahead = forecast.forecast(planned, backlog=backlog, state=state, settings=unchecked, now=NOW)
    assert not math.isnan(ahead.worst_late_s) and ahead.worst_late_s >= 0
    for peak in ahead.peaks:
        assert peak.last_late_s is None or peak.last_late_s >= 0


def _planned_row(at: datetime) -> None:
    """One PENDING anniversary row at `at`, of a user whose birthday is half a year away (a
    fixed Jan 1 birthday was planned too on Dec 31 and Jan 1: the date sweep found it)."""
    user_id = users.create_user(
        first_name="Ada",
        last_name="Lovelace",
        email="ada@example.com",
        birthday=born_on(at.date() + timedelta(days=182)),
        timezone="UTC",
    )
    with transaction() as session:
        session.add(
            Message(
                user_id=user_id,
                message_type="ANNIVERSARY",
                status=Status.PENDING.value,
                occasion_date=at.date(),
                scheduled_send_time=at,
                idempotency_key=f"{user_id}:ANNIVERSARY:{at.date()}",
            )
        )


def _scrape(monkeypatch) -> dict[str, list[float]]:
    monkeypatch.setattr(status, "read_broker", lambda: (_ for _ in ()).throw(OSError("no")))
    return {
        family.name: [sample.value for sample in family.samples]
        for family in exporter.StateCollector().collect()
    }


@pytest.mark.usefixtures("database")
def test_the_exporter_serves_the_forecast_whatever_the_rate(monkeypatch):
    _planned_row(datetime.now(UTC) + timedelta(hours=1))
    tiny = load_settings().model_copy(update={"email_service_rate_limit": 1e-300})
    monkeypatch.setattr(forecast, "get_settings", lambda: tiny)
    scraped = _scrape(monkeypatch)
    (late,) = scraped["bday_forecast_peak_lateness_seconds"]
    assert late > 1e299 and late > scraped["bday_lateness_budget_seconds"][0]  # the alert fires
    assert scraped["bday_exporter_errors"] == [1]  # the broker stub only


@pytest.mark.usefixtures("database")
def test_a_failing_forecast_costs_the_scrape_no_other_database_series(monkeypatch):
    _planned_row(datetime.now(UTC) + timedelta(hours=1))

    def broken(*_args, **_kwargs):
        raise OverflowError("Python int too large to convert to C int")

    monkeypatch.setattr(exporter, "read_forecast", broken)
    scraped = _scrape(monkeypatch)
    assert sum(scraped["bday_messages"]) == 1 and scraped["bday_breaker_state"]
    assert scraped["bday_exporter_errors"] == [2]  # the forecast and the broker stub
