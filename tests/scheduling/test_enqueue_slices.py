"""The minute enqueue's fan-out, against the real database and broker (no worker: slice jobs are
only published; slices are run here, in threads, as two workers would run them).

When a run splits (and when not); the slice jobs it publishes; two slices at once never claim
the same row; a slice that comes too late does nothing; grouped publisher confirms count a
nacked or unconfirmed job as not published."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from kombu import Connection
from sqlalchemy import text

from bday.broker.topology import topology
from bday.config import get_settings
from bday.devtools import factories
from bday.scheduling import dispatch, enqueue_slices, jobs
from bday.scheduling.dispatch import Confirms
from bday.store.db import engine, transaction
from bday.store.messages import QueuedJob
from tests.harness.queues import purge_all, queue_counts

pytestmark = pytest.mark.broker

NOW = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clean_queues(database):
    purge_all()
    yield
    purge_all()


@pytest.fixture
def small_runs(settings_env):
    """Batches of 50, fan-out above 200 rows, as if three workers consumed the scheduler queue."""
    settings_env.setenv("ENQUEUE_BATCH", "50")
    settings_env.setenv("ENQUEUE_FANOUT_ROWS", "200")
    settings_env.setattr(enqueue_slices, "_scheduler_consumers", lambda: 3)
    return settings_env


def _due(count: int, at: datetime) -> list[uuid.UUID]:
    users = [factories.user_row(birthday=factories.born_on(at.date())) for _ in range(count)]
    rows = [factories.message_row(user["id"], at) for user in users]
    with transaction() as session:
        factories.insert(session, users, rows)
    return [row["id"] for row in rows]


def _count(sql: str) -> int:
    with engine().connect() as connection:
        return int(connection.execute(text(sql)).scalar() or 0)


def _slice_jobs() -> list[dict]:
    """The slice jobs waiting in the scheduler queue (taken off it)."""
    found = []
    with Connection(get_settings().rabbitmq_url) as connection:
        queue = topology().scheduler_queue.bind(connection.channel())
        while (message := queue.get(no_ack=True)) is not None:
            found.append({"task": message.headers["task"], "kwargs": message.decode()[1]})
    return found


@pytest.mark.parametrize(
    ("due", "consumers", "slices"),
    [
        (200, 3, 0),  # not above ENQUEUE_FANOUT_ROWS: one process clears it
        (201, 1, 0),  # one worker: slicing would only add a hop
        (201, 0, 0),  # consumers unknown
        (201, 3, 3),  # one slice per worker process...
        (120, 8, 0),
        (260, 8, 6),  # ...but never a slice smaller than one batch (ENQUEUE_BATCH=50)
    ],
)
def test_a_run_splits_only_rows_one_publisher_would_take_too_long_over(
    small_runs, due, consumers, slices
):
    assert enqueue_slices.slices_for(due, get_settings(), consumers) == slices


def test_a_small_run_publishes_its_rows_itself(small_runs):
    _due(200, NOW - timedelta(seconds=5))
    with time_machine.travel(NOW, tick=False):
        result = jobs.enqueue_job()
    assert result == {"published": 200, "expired": 0}
    assert _slice_jobs() == []
    assert queue_counts()["queue"] == 200


def test_a_large_run_fans_out_one_slice_per_worker_and_says_so(small_runs):
    _due(260, NOW - timedelta(seconds=5))
    _due(5, NOW + timedelta(minutes=5))  # beyond the lead: not counted
    with time_machine.travel(NOW, tick=False):
        result = jobs.enqueue_job()
    assert result == {"published": 0, "expired": 0, "due": 260, "slices": 3}
    kwargs = {"now": NOW.isoformat(), "limit": 260}
    assert _slice_jobs() == [{"task": "bday.tasks.enqueue_slice", "kwargs": kwargs}] * 3
    assert _count("SELECT count(*) FROM messages WHERE status = 'PENDING'") == 265
    beat = _count("SELECT count(*) FROM heartbeats WHERE name = 'enqueue' AND detail ? 'slices'")
    assert beat == 1


def test_a_run_whose_slices_cannot_be_published_publishes_its_rows_itself(small_runs):
    _due(260, NOW - timedelta(seconds=5))
    small_runs.setattr(enqueue_slices, "_publish_slices", lambda *args: False)
    with time_machine.travel(NOW, tick=False):
        result = jobs.enqueue_job()
    assert result == {"published": 260, "expired": 0}
    assert queue_counts()["queue"] == 260


def test_two_slices_at_once_never_claim_the_same_row(small_runs):
    ids = _due(600, NOW - timedelta(seconds=5))
    real_publish = dispatch.publish
    published: dict[str, list[uuid.UUID]] = {}
    both_claiming = threading.Barrier(2, timeout=30)

    def recording_publish(batch: list[QueuedJob]) -> list[QueuedJob]:
        # The first batches of both slices are claimed (locked, uncommitted) at the same time.
        if threading.current_thread().name not in published:
            both_claiming.wait()
        published.setdefault(threading.current_thread().name, []).extend(
            job.message_id for job in batch
        )
        return real_publish(batch)

    small_runs.setattr(dispatch, "publish", recording_publish)
    results: dict[str, dict] = {}
    with time_machine.travel(NOW, tick=False):
        threads = [
            threading.Thread(
                target=lambda: results.update(
                    {threading.current_thread().name: jobs.enqueue_slice_job(NOW, 600)}
                ),
                name=f"slice-{index}",
            )
            for index in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    first, second = (set(published[f"slice-{index}"]) for index in range(2))
    assert first and second and not first & second
    assert first | second == set(ids)
    assert sum(r["published"] for r in results.values()) == 600
    assert _count("SELECT count(*) FROM messages WHERE status = 'QUEUED'") == 600
    assert queue_counts()["queue"] == 600
    with engine().connect() as connection:
        detail = connection.execute(
            text("SELECT detail FROM heartbeats WHERE name = 'enqueue-slices'")
        ).scalar()
    assert detail == {"run": NOW.isoformat(), "slices_done": 2, "published": 600}


def test_a_slice_stops_at_the_rows_its_run_found(small_runs):
    _due(120, NOW - timedelta(seconds=5))
    with time_machine.travel(NOW, tick=False):
        assert jobs.enqueue_slice_job(NOW, 75) == {"published": 75}
    assert _count("SELECT count(*) FROM messages WHERE status = 'PENDING'") == 45


def test_a_slice_that_arrives_after_its_lead_leaves_the_rows_to_the_next_run(small_runs):
    _due(60, NOW - timedelta(seconds=5))
    late = NOW + timedelta(seconds=get_settings().enqueue_lead_s + 1)
    with time_machine.travel(late, tick=False):
        assert jobs.enqueue_slice_job(NOW, 60) == {"published": 0, "stale": True}
    assert _count("SELECT count(*) FROM messages WHERE status = 'PENDING'") == 60


class _Channel:
    def __init__(self) -> None:
        self.events: dict[str, set] = {"basic_ack": set(), "basic_nack": set()}
        self.selected = False

    def confirm_select(self) -> None:
        self.selected = True


class _Connection:
    """Delivers the confirms RabbitMQ would send, one per drain; then times out."""

    def __init__(self, channel: _Channel, frames: list[tuple[str, int, bool]]) -> None:
        self.channel, self.frames = channel, list(frames)

    def drain_events(self, timeout: float) -> None:
        if not self.frames:
            raise TimeoutError("no confirm")
        kind, tag, multiple = self.frames.pop(0)
        for callback in self.channel.events[kind]:
            callback(tag, multiple)


@pytest.mark.parametrize(
    ("frames", "confirmed"),
    [
        ([("basic_ack", 5, True)], {1, 2, 3, 4, 5}),  # one ack for the whole group
        (
            [("basic_ack", 2, True), ("basic_ack", 3, False), ("basic_ack", 5, True)],
            {1, 2, 3, 4, 5},
        ),
        ([("basic_ack", 2, True), ("basic_nack", 3, False), ("basic_ack", 5, True)], {1, 2, 4, 5}),
        ([("basic_ack", 3, True)], {1, 2, 3}),  # 4 and 5 never confirmed: not published
        (  # a single ack ahead of the multiple ones: each tag settled once
            [("basic_ack", 4, False), ("basic_ack", 2, True), ("basic_ack", 5, True)],
            {1, 2, 3, 4, 5},
        ),
    ],
)
def test_a_group_counts_only_the_jobs_rabbitmq_confirmed(frames, confirmed):
    channel = _Channel()
    confirms = Confirms(channel, _Connection(channel, frames), time.monotonic() + 5)
    assert channel.selected
    assert confirms.settle(5) == confirmed
    assert bool(confirms.broken) == (len(confirms.settled) < 5)  # no confirm came for some


def test_jobs_sent_but_not_confirmed_are_returned_unpublished(monkeypatch):
    due = datetime.now(UTC) - timedelta(seconds=1)
    jobs_ = [QueuedJob(uuid.uuid4(), uuid.uuid4(), due) for _ in range(3)]

    def ack_first_only(self, count):
        return {1}

    monkeypatch.setattr(Confirms, "settle", ack_first_only)
    assert dispatch.publish(jobs_) == jobs_[1:]
    assert queue_counts()["queue"] == 3  # all three reached the broker; one was confirmed
