"""How a job's delay is handed to Celery: one countdown, measured once; and how a claim and
the publish of its jobs share one transaction."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kombu.transport.native_delayed_delivery import calculate_routing_key
from sqlalchemy import text

from bday.config import get_settings
from bday.devtools import factories
from bday.scheduling import dispatch
from bday.scheduling.dispatch import _timing
from bday.store import messages
from bday.store.db import engine, transaction
from bday.store.messages import QueuedJob
from bday.store.models import Status

NOW = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("ahead_s", [-30.0, 0.0, 0.5, 0.999])
def test_a_job_due_within_a_second_goes_out_at_once(ahead_s):
    assert _timing(NOW + timedelta(seconds=ahead_s), NOW) == {}


@pytest.mark.parametrize("ahead_s", [1.0, 1.0001, 3.0, 69.5])
def test_a_later_job_gets_its_countdown_which_the_broker_can_always_route(ahead_s):
    timing = _timing(NOW + timedelta(seconds=ahead_s), NOW)
    assert timing == {"countdown": pytest.approx(ahead_s)}
    # Celery routes on whole seconds and refuses 0: measured once, it can never shrink below 1.
    assert calculate_routing_key(int(timing["countdown"]), "birthday.send")


# --- claim_and_publish: what guarantees "no QUEUED row without a job" ------------------------


def _due_rows(count: int, at: datetime) -> list[uuid.UUID]:
    users = [factories.user_row(birthday=factories.born_on(at.date())) for _ in range(count)]
    rows = [factories.message_row(user["id"], at) for user in users]
    with transaction() as session:
        factories.insert(session, users, rows)
    return [row["id"] for row in rows]


def _states() -> dict[uuid.UUID, tuple[str, uuid.UUID | None]]:
    with engine().connect() as connection:
        result = connection.execute(text("SELECT id, status, dispatch_token FROM messages"))
        return {row.id: (row.status, row.dispatch_token) for row in result}


@pytest.mark.usefixtures("database")
def test_a_claim_whose_jobs_were_not_all_published_rolls_back_whole(monkeypatch):
    """The first job reached the broker, the second did not: neither row stays QUEUED (a
    QUEUED row would wait for a job that was never published), and the published job still
    claims its row, now PENDING without a token, so the greeting goes out once."""
    now = datetime.now(UTC)
    _due_rows(2, now - timedelta(seconds=1))
    published: list[QueuedJob] = []

    def publish_first_only(jobs):
        published.append(jobs[0])
        return list(jobs[1:])

    monkeypatch.setattr(dispatch, "publish", publish_first_only)
    claimed, unpublished = dispatch.claim_and_publish(now, get_settings(), limit=10)
    assert claimed == 2 and len(unpublished) == 1
    assert set(_states().values()) == {(Status.PENDING.value, None)}
    [orphan] = published
    lease = now + timedelta(minutes=5)
    assert list(messages.claim_many([(orphan.message_id, orphan.token)], now, lease)) == [
        orphan.message_id
    ]


@pytest.mark.usefixtures("database")
def test_a_job_that_arrives_before_its_claim_commits_waits_for_the_commit(monkeypatch):
    """Jobs are published inside the claiming transaction: a worker's claim of one blocks on
    the row lock until the claim commits, then finds the row QUEUED with the job's token."""
    now = datetime.now(UTC)
    [row_id] = _due_rows(1, now - timedelta(seconds=1))
    outcome: dict[uuid.UUID, object] = {}
    worker: list[threading.Thread] = []

    def publish_and_deliver_at_once(jobs):
        [job] = jobs
        lease = now + timedelta(minutes=5)
        thread = threading.Thread(
            target=lambda: outcome.update(
                messages.claim_many([(job.message_id, job.token)], now, lease)
            )
        )
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting on the claim's row lock
        worker.append(thread)
        return []

    monkeypatch.setattr(dispatch, "publish", publish_and_deliver_at_once)
    assert dispatch.claim_and_publish(now, get_settings(), limit=10) == (1, [])
    worker[0].join(10)
    assert list(outcome) == [row_id]
    assert _states()[row_id][0] == Status.SENDING.value
