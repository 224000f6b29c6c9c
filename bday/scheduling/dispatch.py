"""Dispatch: turn owed rows into jobs on the broker, and take them back if publishing fails.

A row is claimed (PENDING -> QUEUED, with a fresh `dispatch_token`) and its job carries the
token; a job whose token no longer matches its row (it was superseded by a re-publish) is a
no-op, so re-publishing is always safe. The minute enqueue publishes inside the claiming
transaction (see `jobs.enqueue_job`); hooks and recovery claim, commit, then publish, and undo
the claim if publishing fails (QUEUED -> PENDING for that token). A process that dies between
their commit and publish leaves a QUEUED row without a job, which recovery re-publishes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

SEND_TASK = "bday.tasks.send_message"  # published by name: scheduling never imports the worker


@dataclass(frozen=True, slots=True)
class Job:
    """One `send_message` job: the row, its fencing token, and when it may run."""

    message_id: uuid.UUID
    token: uuid.UUID
    eta: datetime


_CLAIM_DUE = text(
    """
    UPDATE messages m
       SET status = 'QUEUED', queued_at = :now, updated_at = :now,
           dispatch_token = gen_random_uuid(),
           next_attempt_at = greatest(m.scheduled_send_time, :now)
      FROM (SELECT id FROM messages
             WHERE status = 'PENDING'
               AND scheduled_send_time <= :until
               AND coalesce(send_deadline, scheduled_send_time + make_interval(hours => :hours)) >= :now
               AND (CAST(:user_ids AS uuid[]) IS NULL OR user_id = ANY(CAST(:user_ids AS uuid[])))
             ORDER BY scheduled_send_time
             LIMIT :limit
             FOR UPDATE SKIP LOCKED) due
     WHERE m.id = due.id
    RETURNING m.id, m.dispatch_token, m.next_attempt_at
    """
)


def claim_due(
    session: Session,
    now: datetime,
    *,
    lead_s: float,
    catch_up_hours: int,
    limit: int,
    user_ids: Sequence[uuid.UUID] | None = None,
) -> list[Job]:
    """Claim PENDING rows due by `now + lead_s` and not past their deadline, oldest first.

    `FOR UPDATE SKIP LOCKED`: two enqueue runs at once split the rows between them; neither
    waits for the other and no row is claimed twice.
    """
    rows = session.execute(
        _CLAIM_DUE,
        {
            "now": now,
            "until": now + timedelta(seconds=lead_s),
            "hours": catch_up_hours,
            "limit": limit,
            "user_ids": list(user_ids) if user_ids is not None else None,
        },
    )
    return [Job(*row) for row in rows]


_REISSUE = text(
    """
    UPDATE messages
       SET status = 'QUEUED', dispatch_token = gen_random_uuid(), updated_at = :now,
           queued_at = coalesce(queued_at, :now), lease_expires_at = NULL,
           next_attempt_at = greatest(scheduled_send_time, :now)
     WHERE id = ANY(:ids) AND status = ANY(:statuses)
    RETURNING id, dispatch_token, next_attempt_at
    """
)


def reissue(
    session: Session, ids: Iterable[uuid.UUID], statuses: Iterable[str], now: datetime
) -> list[Job]:
    """New tokens for rows still in one of `statuses`; their old jobs become no-ops."""
    rows = session.execute(_REISSUE, {"ids": list(ids), "statuses": list(statuses), "now": now})
    return [Job(*row) for row in rows]


_RELEASE = text(
    """
    UPDATE messages SET status = 'PENDING', dispatch_token = NULL, queued_at = NULL
     WHERE id = :id AND status = 'QUEUED' AND dispatch_token = :token
    """
)


def release(session: Session, jobs: Iterable[Job]) -> None:
    """Undo claims whose job could not be published (only while the token still matches)."""
    for job in jobs:
        session.execute(_RELEASE, {"id": job.message_id, "token": job.token})


def publish(jobs: Sequence[Job]) -> list[Job]:
    """Publish `send_message` for each job, timed for its eta. Returns the jobs not published.

    The broker holds each job until its eta (native delayed delivery), so publishing a minute
    ahead costs no worker memory. One producer (and its confirm channel) serves the batch.
    """
    from bday.broker import topology
    from bday.broker.app import app

    if not jobs:
        return []
    failed: list[Job] = []
    try:
        # Confirms: apply_async returns only once RabbitMQ has taken the job.
        connection = app.connection_for_write(transport_options={"confirm_publish": True})
        # Bounded: a hook must not hang its caller's request while RabbitMQ is away.
        connection.ensure_connection(max_retries=1, interval_start=0.2, timeout=5)
        topology.ensure_declared(connection)
    except Exception as exc:
        log.warning(
            "broker unreachable, %d job(s) left for the next enqueue run: %s", len(jobs), exc
        )
        return list(jobs)
    send_message = app.signature(SEND_TASK)
    with connection, app.amqp.Producer(connection) as producer:
        for index, job in enumerate(jobs):
            try:
                send_message.apply_async(
                    args=[str(job.message_id)],
                    kwargs={"token": str(job.token)},
                    producer=producer,
                    retry=False,
                    **_timing(job.eta),
                )
            except Exception as exc:  # broker gone: keep the rest for the next run
                log.warning("publishing stopped after %d of %d jobs: %s", index, len(jobs), exc)
                failed.extend(jobs[index:])
                break
    return failed


def _timing(eta: datetime) -> dict:
    # Celery's native delayed delivery rejects countdowns between 0 and 1 s (it routes on
    # whole seconds); such a job goes out at once and the task waits out the fraction.
    if eta - datetime.now(UTC) < timedelta(seconds=1):
        return {}
    return {"eta": eta}


def publish_or_release(jobs: Sequence[Job]) -> int:
    """Publish committed claims; undo the claims of jobs that could not be published."""
    from bday.store.db import transaction

    failed = publish(jobs)
    if failed:
        with transaction() as session:
            release(session, failed)
    return len(jobs) - len(failed)
