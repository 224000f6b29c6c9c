"""The demo's seeding agrees with the planner: what it calls missed is owed now, what it calls
later is not due yet, at any time of day (a run at 21:35 UTC once announced 8 missed zones and
caught up none: east of the wave the local date had already rolled over)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from sqlalchemy import text

from bday.config import get_settings
from bday.devtools import demo
from bday.scheduling import jobs
from bday.store.db import engine

pytestmark = pytest.mark.usefixtures("database")

_ROWS = text(
    "SELECT u.timezone, m.scheduled_send_time FROM messages m JOIN users u ON u.id = m.user_id"
)


def planned_instants() -> dict[str, list[datetime]]:
    with engine().connect() as connection:
        found: dict[str, list[datetime]] = {}
        for zone_name, at in connection.execute(_ROWS):
            found.setdefault(zone_name, []).append(at)
        return found


@pytest.mark.parametrize("clock", ["00:10", "06:00", "12:00", "21:35", "23:50"])
def test_every_zone_called_missed_is_caught_up_and_none_called_later_is_due(
    clock, database_url, settings_env
):
    hour, minute = map(int, clock.split(":"))
    now = datetime(2027, 3, 5, hour, minute, 7, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        plan = demo.choose_plan(datetime.now(UTC))
        settings_env.setenv("SEND_TIME", plan.send_time)
        get_settings.cache_clear()
        groups = demo.seed(plan, database_url, now, get_settings().catch_up_hours)
        jobs.plan_job(now)
    planned = planned_instants()
    missed, later = groups[demo.MISSED], groups[demo.LATER]
    assert set(demo.CATCH_UP_ZONES) <= set(missed)  # every zone meant to catch up does
    for zone_name in missed:
        assert any(at <= now for at in planned.get(zone_name, [])), zone_name
    for zone_name in later:
        assert all(at > now for at in planned.get(zone_name, [])), zone_name
    for zone_name in plan.wave:
        assert planned[zone_name] == [plan.instant], zone_name
