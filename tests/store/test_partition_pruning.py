"""The hot path's statements look in one monthly partition when they know the row's occasion
date, and in every partition (the row found all the same) when they do not: what a job
published before the date was carried needs."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg
import pytest

from bday.config import get_settings
from bday.devtools import factories
from bday.store import messages, partitions
from bday.store.db import transaction
from bday.store.models import Status

pytestmark = pytest.mark.usefixtures("database")

DAY = date(2031, 7, 9)
AT = datetime.combine(DAY, time(9), UTC)
NOW = AT + timedelta(minutes=1)
MONTHS = [date(2031, month, 1) for month in range(5, 10)]


@pytest.fixture
def row() -> dict[str, Any]:
    for month in MONTHS:
        with transaction() as session:
            partitions.create_month(session, month)
    user = factories.user_row(birthday=date(1990, 7, 9))
    made = factories.message_row(user["id"], AT, status=Status.QUEUED, dispatch_token=uuid.uuid4())
    with transaction() as session:
        factories.insert(session, [user], [made])
    return made


def _looked_in(statement: str, params: dict[str, Any]) -> set[str]:
    """The partitions of `messages` the statement read (EXPLAIN ANALYZE, rolled back)."""
    url = get_settings().database_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as connection:
        [[plan]] = connection.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
        connection.rollback()
    read: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        name = node.get("Relation Name", "")
        if name.startswith("messages_") and node.get("Actual Loops", 0) > 0:
            read.add(name)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return read


def test_a_claim_and_its_record_look_in_the_rows_month_only_when_they_know_it(row):
    one = {partitions.name_of(DAY.replace(day=1))}
    claim = {"ids": [row["id"]], "tokens": [None], "now": NOW, "lease_until": NOW}
    dated = {"days": [DAY], "first": DAY, "last": DAY}
    assert _looked_in(messages._CLAIM_DATED, {**claim, **dated}) == one
    assert len(_looked_in(messages._CLAIM_BY_ID, claim)) > len(MONTHS)
    sent = {"ids": [row["id"]], "statuses": [200], "responses": ["{}"], "now": NOW, "via": "queue"}
    sent |= {"subjects": ["Hi"], "bodies": ["Hey"]}
    assert _looked_in(messages._RECORD_SENT_DATED, {**sent, **dated}) == one
    assert len(_looked_in(messages._RECORD_SENT_BY_ID, sent)) > len(MONTHS)
    state = {"id": row["id"], "occasion_date": DAY}
    assert _looked_in(messages._CURRENT_STATE_DATED, state) == one
    outcome = {"id": row["id"], "occasion_date": DAY, "now": NOW, "next_at": NOW, "token": None}
    assert _looked_in(messages._OUTCOMES_DATED["deferred"], outcome) == one


def test_the_hot_path_finds_a_row_with_or_without_its_date(row):
    lease = NOW + timedelta(minutes=5)
    token = row["dispatch_token"]
    assert messages.current_state(row["id"], DAY)[0] == Status.QUEUED
    assert messages.current_state(row["id"], DAY + timedelta(days=31)) is None
    assert messages.current_state(row["id"])[0] == Status.QUEUED
    assert messages.record_outcome("deferred", row["id"], NOW, occasion_date=DAY, next_at=NOW)
    claimed = messages.claim_many([(row["id"], token)], NOW, lease, days={row["id"]: DAY})
    assert claimed[row["id"]].occasion_date == DAY
    sent = [(row["id"], 200, "{}", "Hi", "Hey")]
    assert messages.record_sent(sent, NOW, days={row["id"]: DAY}) == 1
    assert messages.current_state(row["id"], DAY)[0] == Status.SENT


def test_a_batch_of_dated_and_undated_jobs_is_claimed_whole_once(row):
    other = factories.message_row(
        row["user_id"], AT + timedelta(days=30), status=Status.QUEUED, kind="ANNIVERSARY"
    )
    with transaction() as session:
        factories.insert(session, messages=[other])
    jobs = [(row["id"], row["dispatch_token"]), (other["id"], None)]
    later = AT + timedelta(days=30, minutes=1)
    claimed = messages.claim_many(jobs, later, later, days={row["id"]: DAY})
    assert set(claimed) == {row["id"], other["id"]}
    assert messages.claim_many(jobs, later, later, days={row["id"]: DAY}) == {}  # leased now
