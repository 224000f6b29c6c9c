"""The plan in id ranges: the ranges cover the id space exactly once whatever the split, and a
plan in ranges writes exactly the rows a plan in one process does, across a re-run, a range
that died half-way and a user updated while their range is being planned."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from bday.devtools import factories
from bday.scheduling import jobs, plan_ranges, planner
from bday.store.db import engine, transaction
from bday.users import api

NOW = datetime(2027, 3, 5, 6, 0, tzinfo=UTC)
ZONES = ["UTC", "Asia/Tokyo", "America/New_York", "Pacific/Kiritimati", "Etc/GMT+12"]
_SPACE = 1 << 128


# --- the split (pure) -------------------------------------------------------------------------


def _owners(ranges: list[planner.IdRange], user_id: uuid.UUID) -> list[int]:
    return [index for index, id_range in enumerate(ranges) if user_id in id_range]


@given(count=st.integers(1, plan_ranges.MAX_RANGES), user_id=st.uuids())
@example(count=3, user_id=uuid.UUID(int=0))
@example(count=3, user_id=uuid.UUID(int=_SPACE - 1))
def test_every_id_falls_in_exactly_one_range_whatever_the_split(count, user_id):
    assert len(_owners(plan_ranges.split(count), user_id)) == 1


@given(count=st.integers(2, plan_ranges.MAX_RANGES), data=st.data())
def test_ranges_meet_edge_to_edge_in_id_order(count, data):
    ranges = plan_ranges.split(count)
    assert len(ranges) == count
    assert ranges[0].low is None and ranges[-1].high is None
    for before, after in itertools.pairwise(ranges):
        assert before.high == after.low and before.high is not None
    edge = data.draw(st.sampled_from(ranges[1:])).low.int + data.draw(st.sampled_from([-1, 0]))
    assert len(_owners(ranges, uuid.UUID(int=edge))) == 1  # either side of an edge


def test_a_split_into_no_ranges_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        plan_ranges.split(0)


# --- against the database ---------------------------------------------------------------------


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def in_ranges(settings_env, monkeypatch):
    """Plans of more than 20 users fan out; no broker: this process plans every range."""
    settings_env.setenv("PLAN_RANGE_USERS", "20")
    planner.get_settings.cache_clear()
    monkeypatch.setattr(plan_ranges, "_publish_helpers", lambda started_at, count: 0)


def _users(count: int, seed: int = 7) -> list[uuid.UUID]:
    """Users with birthdays and anniversaries around NOW in zones around the world."""
    rng = random.Random(seed)
    rows = [
        factories.user_row(
            birthday=date(1990, 3, 5) + timedelta(days=rng.randrange(-3, 4)),
            anniversary=date(2015, 3, 5) + timedelta(days=rng.randrange(-3, 4))
            if rng.random() < 0.4
            else None,
            timezone=rng.choice(ZONES),
        )
        for _ in range(count)
    ]
    with transaction() as session:
        factories.insert(session, rows)
    return [row["id"] for row in rows]


def _live_rows() -> list[tuple]:
    with engine().connect() as connection:
        return sorted(
            connection.execute(
                text(
                    "SELECT user_id, message_type, occasion_date, scheduled_send_time "
                    "FROM messages WHERE status <> 'CANCELLED'"
                )
            ).all()
        )


def _single_plan_rows() -> list[tuple]:
    """The rows a plan in one process writes for the users as they are now (then removed)."""
    with transaction() as session:
        session.execute(text("DELETE FROM messages"))
        planner.plan(session, planner.Window.around(NOW, planner.get_settings()))
    rows = _live_rows()
    with transaction() as session:
        session.execute(text("DELETE FROM messages"))
    return rows


def _plan_heartbeat() -> dict:
    with engine().connect() as connection:
        return connection.execute(
            text("SELECT detail FROM heartbeats WHERE name = 'plan'")
        ).scalar_one()


@pytest.mark.usefixtures("database", "clock", "in_ranges")
@pytest.mark.parametrize("users", [45, 230])
def test_a_plan_in_ranges_writes_exactly_the_rows_of_a_single_plan(users):
    _users(users)
    single = _single_plan_rows()
    result = jobs.plan_job(NOW)
    assert result["ranges"] >= users // 20 and result["planned"] == len(single)
    assert _live_rows() == single
    beat = _plan_heartbeat()
    assert sorted(beat["done"]) == list(range(result["ranges"]))
    assert beat["planned"] == len(single) and "ended_at" in beat


@pytest.mark.usefixtures("database", "clock", "in_ranges")
def test_a_second_plan_in_ranges_plans_nothing_twice():
    _users(100)
    first = jobs.plan_job(NOW)
    assert jobs.plan_job(NOW + timedelta(hours=1))["planned"] == 0
    assert len(_live_rows()) == first["planned"]


@pytest.mark.usefixtures("database", "clock", "in_ranges")
def test_a_range_that_dies_half_way_is_planned_by_the_rerun_and_only_then_the_plan_ends(
    monkeypatch,
):
    _users(120)
    single = _single_plan_rows()
    real_plan, calls = planner.plan, []

    def dies_on_the_third_range(session, window, settings, user_ids=None, id_range=None):
        rows = real_plan(session, window, settings, user_ids, id_range)  # written, uncommitted
        calls.append(id_range)
        if len(calls) == 3:
            raise RuntimeError("worker killed")
        return rows

    monkeypatch.setattr(planner, "plan", dies_on_the_third_range)
    with pytest.raises(RuntimeError, match="worker killed"):
        jobs.plan_job(NOW)
    beat = _plan_heartbeat()
    assert len(beat["done"]) == 2 and "ended_at" not in beat
    assert len(_live_rows()) < len(single)  # the dead range's rows were rolled back

    monkeypatch.setattr(planner, "plan", real_plan)
    assert plan_ranges.run(beat["started_at"]) == len(single) - beat["planned"]  # a helper's loop
    beat = _plan_heartbeat()
    assert sorted(beat["done"]) == list(range(beat["ranges"])) and "ended_at" in beat
    assert _live_rows() == single


@pytest.mark.usefixtures("database", "clock", "in_ranges")
def test_a_newer_plan_stops_an_older_plans_loop():
    _users(60)
    older = jobs.plan_job(NOW)
    jobs.plan_job(NOW + timedelta(minutes=1))
    started = datetime.fromisoformat(_plan_heartbeat()["started_at"])
    assert started == NOW + timedelta(minutes=1) and older["ranges"] == 3
    assert plan_ranges.run(NOW.isoformat()) == 0  # superseded: nothing to do


@pytest.mark.usefixtures("database", "clock", "in_ranges")
def test_a_user_updated_while_their_range_is_planned_keeps_only_the_new_occasion(monkeypatch):
    """The range read the old birthday; the update waits for its commit, then the update's
    hook cancels the row planned from the old date. (Without the share lock the update and
    its hook ran first, and the range committed the old occasion after them: two live rows.)"""
    ids = _users(60)
    target = ids[0]
    api.update_user(target, birthday=date(1990, 3, 5), timezone="UTC")  # today 09:00, owed
    real_insert = planner.insert_rows
    read, go = threading.Event(), threading.Event()

    def pause_after_reading(session, owed):
        owed = list(owed)  # the candidates are read (and share-locked) here
        in_the_plan = threading.current_thread() is plan  # not the update's hook
        if in_the_plan and any(user_id == target for user_id, _ in owed):
            read.set()
            assert go.wait(20)
        return real_insert(session, owed)

    monkeypatch.setattr(planner, "insert_rows", pause_after_reading)
    plan = threading.Thread(target=jobs.plan_job, args=(NOW,))
    plan.start()
    assert read.wait(20)
    tomorrow_in_tokyo = {"birthday": date(1990, 3, 6), "timezone": "Asia/Tokyo"}  # in the window
    update = threading.Thread(target=api.update_user, args=(target,), kwargs=tomorrow_in_tokyo)
    update.start()
    assert _waits_on_a_lock_or_ends(update)
    go.set()
    plan.join(30)
    update.join(30)
    monkeypatch.setattr(planner, "insert_rows", real_insert)
    mine = [row for row in _live_rows() if row[0] == target]
    assert [(row[1], row[2]) for row in mine] == [("BIRTHDAY", date(2027, 3, 6))]
    assert _live_rows() == _single_plan_rows()


def _waits_on_a_lock_or_ends(thread: threading.Thread, timeout_s: float = 20) -> bool:
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine().connect() as connection:
            if connection.execute(waiting).scalar() or not thread.is_alive():
                return True
        time.sleep(0.05)
    return False


@pytest.mark.usefixtures("database", "clock", "in_ranges")
def test_a_range_aborted_by_the_database_is_tried_again_and_the_plan_ends(monkeypatch):
    _users(80)
    single = _single_plan_rows()
    real_plan, calls = planner.plan, []

    def deadlocks_once(session, window, settings, user_ids=None, id_range=None):
        calls.append(id_range)
        if len(calls) == 2:  # PostgreSQL chose this range's transaction as the deadlock victim
            raise OperationalError("SELECT ... FOR SHARE", {}, Exception("deadlock detected"))
        return real_plan(session, window, settings, user_ids, id_range)

    monkeypatch.setattr(planner, "plan", deadlocks_once)
    result = jobs.plan_job(NOW)
    assert result["planned"] == len(single) and calls.count(calls[1]) == 2
    assert _live_rows() == single and "ended_at" in _plan_heartbeat()
