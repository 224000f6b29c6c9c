"""A `send_message` job carries its row's occasion date (the partition key of `messages`): the
worker names the row by (id, date), so PostgreSQL looks in one monthly partition. A job
published by an older release, without the date, must still be delivered, by id alone: an
upgrade with jobs waiting in the broker loses none."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, time, timedelta

import httpx
import pytest
import respx
from sqlalchemy import text

from bday.config import load_settings
from bday.delivery.attempt import SendJob, deliver_many
from bday.delivery.breaker import Breaker
from bday.delivery.outcomes import Action, record_delivered
from bday.delivery.sender import EmailSender
from bday.devtools import factories
from bday.scheduling import dispatch
from bday.store import messages, partitions
from bday.store.db import engine, transaction
from bday.store.models import Status

pytestmark = pytest.mark.usefixtures("database")

URL = "http://email.test"
DAY = date(2027, 3, 5)
DUE = datetime.combine(DAY, time(9), UTC)
NOW = DUE + timedelta(seconds=5)


@pytest.fixture(autouse=True)
def _months():
    """March 2027 and its neighbours have partitions of their own (not DEFAULT)."""
    for month in (date(2027, 2, 1), DAY.replace(day=1), date(2027, 4, 1)):
        with transaction() as session:
            partitions.create_month(session, month)


@pytest.fixture
def settings():
    return load_settings(EMAIL_SERVICE_URL=URL, BREAKER_IDLE=0)


@pytest.fixture
def sender():
    client = EmailSender(URL, timeout_s=1)
    yield client
    client.close()


def queued(count: int, status: Status = Status.QUEUED) -> list[dict]:
    users = [
        factories.user_row("Ada", f"N{n}", email=f"ada.{n}@example.com", birthday=date(1990, 3, 5))
        for n in range(count)
    ]
    rows = [
        factories.message_row(user["id"], DUE, status=status, dispatch_token=uuid.uuid4())
        for user in users
    ]
    with transaction() as session:
        factories.insert(session, users, rows)
    return rows


def job(row: dict, day: str | None = "row's") -> SendJob:
    dated = row["occasion_date"].isoformat() if day == "row's" else day
    return SendJob(str(row["id"]), str(row["dispatch_token"]), occasion_date=dated)


def statuses(rows: list[dict]) -> list[str]:
    with engine().connect() as connection:
        found = dict(
            connection.execute(
                text("SELECT id, status FROM messages WHERE id = ANY(:ids)"),
                {"ids": [row["id"] for row in rows]},
            ).all()
        )
    return [found[row["id"]] for row in rows]


def go(jobs, sender, settings, breaker=None):
    return deliver_many(
        jobs, sender=sender, breaker=breaker or Breaker(settings), settings=settings, now=NOW
    )


@respx.mock
def test_jobs_with_and_without_their_date_in_one_batch_are_each_sent_once(sender, settings):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200, json={}))
    rows = queued(4)
    # Two as this release publishes them, one as an older release did, one with a date that
    # is not one (treated as absent: the date only narrows where the row is looked for).
    jobs = [job(rows[0]), job(rows[1]), job(rows[2], None), job(rows[3], "soon")]
    outcomes = go(jobs, sender, settings)
    assert [o.reason for o in outcomes] == ["sent"] * 4
    assert statuses(rows) == [Status.SENT] * 4
    sent_to = sorted(json.loads(call.request.content)["email"] for call in route.calls)
    assert sent_to == sorted(f"ada.{n}@example.com" for n in range(4))


@respx.mock
def test_a_job_whose_date_is_not_its_rows_is_dead_lettered_and_the_row_left_for_recovery(
    sender, settings
):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200, json={}))
    [row] = queued(1)
    [outcome] = go([job(row, "2027-02-05")], sender, settings)
    assert outcome.action is Action.DEAD_LETTER
    assert outcome.reason == "the job's occasion date is not its row's"
    assert statuses([row]) == [Status.QUEUED] and not route.called
    [unknown] = go([SendJob(str(uuid.uuid4()), None, occasion_date="2027-03-05")], sender, settings)
    assert unknown.reason == "unknown message id"


@pytest.mark.parametrize("day", ["row's", None])
def test_an_open_breaker_defers_a_dated_or_undated_job_on_its_row(settings, sender, day):
    with transaction() as session:
        session.execute(
            text(
                "INSERT INTO circuit_breakers (name, state, open_until, cooldown_s)"
                " VALUES ('email-service', 'open', :until, 5)"
            ),
            {"until": NOW + timedelta(seconds=30)},
        )
    [row] = queued(1)
    [outcome] = go([job(row, day)], sender, settings)
    assert outcome.action is Action.DEFER
    with engine().connect() as connection:
        deferrals = connection.execute(
            text("SELECT deferrals FROM messages WHERE id = :id"), {"id": row["id"]}
        ).scalar_one()
    assert deferrals == 1


@respx.mock
def test_a_send_whose_sent_is_not_written_comes_back_with_the_rows_date(
    sender, settings, monkeypatch
):
    respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200, json={}))
    [row] = queued(1)

    def away(*args, **kwargs):
        raise __import__("psycopg").OperationalError("gone")

    monkeypatch.setattr(messages, "record_sent", away)
    [outcome] = go([job(row, None)], sender, settings)
    assert outcome.action is Action.RECORD
    assert outcome.delivered is not None
    assert outcome.delivered["occasion_date"] == DAY.isoformat()  # from the row, not the job
    monkeypatch.undo()
    assert record_delivered(outcome.delivered).reason == "sent"
    assert statuses([row]) == [Status.SENT]


def test_enqueue_publishes_each_job_with_its_rows_occasion_date(monkeypatch):
    published: list[dict] = []

    class Signature:
        def apply_async(self, args, kwargs, **options):
            published.append({"args": args, "kwargs": kwargs})

    from bday.broker.app import app

    monkeypatch.setattr(app, "signature", lambda name: Signature())
    monkeypatch.setattr(app, "connection_for_write", lambda **kw: _Connection())
    monkeypatch.setattr("bday.broker.topology.ensure_declared", lambda connection: None)
    monkeypatch.setattr(app.amqp, "Producer", lambda connection: _Connection())
    monkeypatch.setattr(dispatch, "Confirms", _Confirmed)
    rows = queued(2, status=Status.PENDING)
    settings = load_settings()
    claimed, unpublished = dispatch.claim_and_publish(NOW, settings, limit=10)
    assert (claimed, unpublished) == (2, [])
    assert sorted(p["args"][0] for p in published) == sorted(str(r["id"]) for r in rows)
    assert {p["kwargs"]["occasion_date"] for p in published} == {DAY.isoformat()}
    assert all(uuid.UUID(p["kwargs"]["token"]) for p in published)


class _Confirmed:
    """RabbitMQ confirming every job at once (the grouped confirms' count, no channel)."""

    def __init__(self, channel, connection, deadline):
        self.settled: set[int] = set()
        self.broken = ""

    def settle(self, count: int) -> set[int]:
        self.settled = set(range(1, count + 1))
        return self.settled


class _Connection:
    channel = None

    def ensure_connection(self, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
