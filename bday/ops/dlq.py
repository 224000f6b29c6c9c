"""The dead-letter queue: look at what landed there and why, replay it, or purge it.

Jobs are read with basic.get and held unacknowledged while we decide; the ones we keep are
returned with a requeue at the end, so nothing is lost if this process dies halfway.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kombu import Connection

from bday.broker.topology import topology
from bday.broker.urls import connect_attempts
from bday.config import get_settings
from bday.ops import history
from bday.scheduling import dispatch
from bday.scheduling.dispatch import SEND_TASK
from bday.store import messages
from bday.store.db import transaction
from bday.store.models import UNSENT, Status

# A dead job whose row is one of these is owed nothing more.
SETTLED = (Status.SENT, Status.CANCELLED)


@dataclass
class DeadJob:
    """One dead-lettered job, with why it died and what its message row says now."""

    task: str | None
    message_id: str | None
    death_reason: str  # rejected | delivery_limit | expired | maxlen
    died_at: datetime | None
    source_queue: str | None
    row_status: str | None = None
    row_sent_at: datetime | None = None
    row_reason: str | None = None  # the row's failure, while it is FAILED (else None)
    row_error: str | None = None
    row_earlier_failure: dict[str, Any] | None = None  # a failure the row has moved on from
    raw: Any = None  # the kombu Message, acked or requeued by the caller

    @property
    def malformed(self) -> bool:
        return self.task != SEND_TASK or self.row_status is None


def _describe(message) -> DeadJob:
    headers = message.headers or {}
    deaths = headers.get("x-death") or []
    death = deaths[0] if deaths else {}
    died = death.get("time")
    return DeadJob(
        task=headers.get("task"),
        message_id=_message_id(message),
        death_reason=str(death.get("reason") or headers.get("x-first-death-reason") or "unknown"),
        died_at=died if isinstance(died, datetime) else None,
        source_queue=death.get("queue"),
        raw=message,
    )


def _message_id(message) -> str | None:
    try:
        args = json.loads(message.body)[0]
        value = str(args[0]) if args else None
        uuid.UUID(value or "")
        return value
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return None


def _attach_rows(jobs: list[DeadJob]) -> None:
    ids = [uuid.UUID(job.message_id) for job in jobs if job.message_id]
    if not ids:
        return
    with transaction() as session:
        rows = messages.summaries(session, ids)
    for job in jobs:
        row = rows.get(job.message_id or "")
        if row is not None:
            current, earlier = history.split_failure(
                row.status, row.failed_at, row.failure_reason, row.last_error
            )
            job.row_status, job.row_sent_at = row.status, row.sent_at
            job.row_reason, job.row_error = current["failure_reason"], current["last_error"]
            job.row_earlier_failure = earlier


@contextmanager
def _held(limit: int | None = None) -> Iterator[list[DeadJob]]:
    """Every dead job (up to `limit`), unacked; jobs the block does not ack are requeued."""
    queue = topology().dead_letter_queue
    with Connection(get_settings().rabbitmq_url, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=connect_attempts(get_settings().rabbitmq_url))
        bound = queue.bind(connection.channel())
        bound.declare()
        held: list[DeadJob] = []
        while limit is None or len(held) < limit:
            message = bound.get(
                no_ack=False,
                accept=[
                    "json",
                    "application/json",
                    "text/plain",
                    "application/data",
                    "application/octet-stream",
                ],
            )
            if message is None:
                break
            held.append(_describe(message))
        _attach_rows(held)
        try:
            yield held
        finally:
            for job in held:
                if not job.raw.acknowledged:
                    job.raw.requeue()


def list_jobs(limit: int | None = None) -> list[DeadJob]:
    with _held(limit) as jobs:
        return jobs


def replay(limit: int | None = None, now: datetime | None = None) -> tuple[int, int]:
    """Re-publish dead jobs whose row is still owed; returns (replayed, kept).

    A FAILED row gets its retries reset; a PENDING or QUEUED row a fresh token. Jobs whose row
    is SENT, CANCELLED or being sent, and malformed jobs, stay in the DLQ (see `purge`).
    """
    now = now or datetime.now(UTC)
    replayed = 0
    with _held(limit) as held:
        owed = [job for job in held if not job.malformed and job.row_status not in SETTLED]
        ids = [uuid.UUID(job.message_id) for job in owed]
        with transaction() as session:
            messages.reset_retries(session, ids)
            jobs = messages.reissue(session, ids, (Status.FAILED, *UNSENT), now)
        failed = dispatch.publish_or_release(jobs)
        published = {job.message_id for job in jobs} - {job.message_id for job in failed}
        for job in owed:
            if uuid.UUID(job.message_id) in published:
                job.raw.ack()
                replayed += 1
        return replayed, len(held) - replayed


def purge(everything: bool = False) -> tuple[int, int]:
    """Drop dead jobs whose row is SENT or CANCELLED (all with `everything`); (purged, kept)."""
    purged = 0
    with _held() as held:
        for job in held:
            if everything or job.row_status in SETTLED:
                job.raw.ack()
                purged += 1
        return purged, len(held) - purged
