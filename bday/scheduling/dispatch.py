"""Dispatch: turn owed rows into jobs on the broker, and take them back if publishing fails.

A row is claimed (PENDING -> QUEUED, with a fresh `dispatch_token`, by `bday.store.messages`)
and its job carries the token; a job whose token no longer matches its row (it was superseded
by a re-publish) is a no-op, so re-publishing is always safe. Due rows are claimed and their
jobs published in one transaction (`claim_and_publish`: the minute enqueue and the user hooks),
so a claim commits only once the broker holds its job. Re-issued rows (recovery, the deferral
drain, the occasion hooks, replay, the DLQ) are claimed and committed first, then published,
and the claim is undone if publishing fails (`publish_or_release`: QUEUED -> PENDING for that
token); a process that dies between that commit and the publish leaves a QUEUED row without a
job, which recovery re-publishes after RECOVERY_GRACE_SECONDS.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from bday.config import Settings
from bday.store import messages
from bday.store.db import transaction
from bday.store.messages import QueuedJob

log = logging.getLogger(__name__)

SEND_TASK = "bday.tasks.send_message"  # published by name: scheduling never imports the worker


# How long a publisher waits for RabbitMQ to confirm a batch before it counts the unconfirmed
# jobs as not published (their claim rolls back; the next run tries again).
CONFIRM_TIMEOUT_S = 30.0
# Jobs sent and not yet confirmed, at most: a publisher that runs far ahead of the broker is
# throttled by RabbitMQ's flow control (it stops reading the socket); py-amqp's default
# TCP_USER_TIMEOUT (1 s of unacknowledged data) then kills the connection mid-batch under load.
CONFIRM_WINDOW = 200
# ... and the publishing connection gives the broker this long (ms) instead of py-amqp's 1 s.
TCP_USER_TIMEOUT_MS = 10_000


def publish(jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    """Publish `send_message` for each job, timed for its eta. Returns the jobs not published.

    The broker holds each job until its eta (native delayed delivery), so publishing a minute
    ahead costs no worker memory. One producer serves the batch, on a channel in confirm mode:
    the jobs are sent without waiting for each one's confirm (up to CONFIRM_WINDOW
    unconfirmed), and the publisher waits for the rest once at the end (a wait per message made
    one publisher several times slower: docs/capacity.md). A job counts as published only
    once RabbitMQ confirmed it.
    """
    from bday.broker import topology
    from bday.broker.app import app
    from bday.broker.urls import connect_attempts

    if not jobs:
        return []
    try:
        connection = app.connection_for_write(
            transport_options={"socket_settings": {socket.TCP_USER_TIMEOUT: TCP_USER_TIMEOUT_MS}}
        )
        # Bounded: a hook must not hang its caller's request while RabbitMQ is away. One
        # attempt per node of a failover list (RABBITMQ_URL="amqp://n1;amqp://n2;...").
        attempts = connect_attempts(app.conf.broker_url or "")
        connection.ensure_connection(max_retries=attempts, interval_start=0.2, timeout=5 * attempts)
        topology.ensure_declared(connection)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not now"
        log.warning(
            "broker unreachable, %d job(s) left for the next enqueue run: %s", len(jobs), exc
        )
        return list(jobs)
    with connection, app.amqp.Producer(connection) as producer:
        confirms = Confirms(producer.channel, connection, time.monotonic() + CONFIRM_TIMEOUT_S)
        sent = _send(jobs, producer, confirms)
        confirmed = confirms.settle(sent)
    if len(confirmed) < sent:
        log.warning("RabbitMQ confirmed %d of %d job(s) published", len(confirmed), sent)
    return [job for tag, job in enumerate(jobs, start=1) if tag not in confirmed]


def _send(jobs: Sequence[QueuedJob], producer: Any, confirms: Confirms) -> int:
    """Send the jobs in order, keeping at most CONFIRM_WINDOW unconfirmed; returns how many
    were sent (the first ones: sending stops at the first failure)."""
    from bday.broker.app import app

    send_message = app.signature(SEND_TASK)
    for index, job in enumerate(jobs):
        if index - len(confirms.settled) >= CONFIRM_WINDOW:
            confirms.settle(index - CONFIRM_WINDOW // 2)
        try:
            if confirms.broken:
                raise ConnectionError(confirms.broken)
            send_message.apply_async(
                args=[str(job.message_id)],
                kwargs=_job_kwargs(job),
                producer=producer,
                retry=False,
                **_timing(job.eta),
            )
        except Exception as exc:  # noqa: BLE001 - broker gone: keep the rest for next run
            log.warning("publishing stopped after %d of %d jobs: %s", index, len(jobs), exc)
            return index
    return len(jobs)


class Confirms:
    """Publisher confirms on one channel, counted as they come (RabbitMQ acks by delivery tag,
    1, 2, ... in publish order, `multiple` meaning "every tag up to this one"), waited for
    until a deadline."""

    def __init__(self, channel: Any, connection: Any, deadline: float) -> None:
        self.acked: set[int] = set()
        self.settled: set[int] = set()  # acked or nacked
        self._through = 0  # every tag up to this one is settled (by a `multiple` confirm)
        self.broken = ""  # why confirms stopped coming (timeout, connection lost), if they did
        self.connection, self.deadline = connection, deadline
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)

    def _tags(self, tag: int, multiple: bool) -> set[int]:
        if multiple:  # only the tags after the last `multiple` confirm: linear in the group
            tags = {t for t in range(self._through + 1, tag + 1) if t not in self.settled}
            self._through = max(self._through, tag)
        else:
            tags = {tag}
        self.settled |= tags
        return tags

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self.acked |= self._tags(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._tags(tag, multiple)  # settled, never confirmed: counted as not published

    def settle(self, count: int) -> set[int]:
        """Wait until `count` jobs are settled (or the deadline passed, or the connection
        failed: unsettled jobs are then not confirmed); the tags confirmed up to `count`."""
        try:
            while not self.broken and len(self.settled) < count:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.broken = "no confirm before the deadline"
                    break
                self.connection.drain_events(timeout=left)
        except Exception as exc:  # noqa: BLE001 - timeout or broker gone: unconfirmed stay so
            self.broken = f"waiting for publisher confirms: {exc}"
            log.warning("%s", self.broken)
        return {tag for tag in self.acked if tag <= count}


def _job_kwargs(job: QueuedJob) -> dict[str, str]:
    """`send_message`'s keyword arguments: the fencing token and, when the claim returned it,
    the row's occasion date (its partition key: the worker then looks in one partition)."""
    kwargs = {"token": str(job.token)}
    if job.occasion_date is not None:
        kwargs["occasion_date"] = job.occasion_date.isoformat()
    return kwargs


def _timing(eta: datetime, now: datetime | None = None) -> dict:
    """The delay to publish a job with: a countdown measured once, here.

    Celery's native delayed delivery rejects countdowns between 0 and 1 s (it routes on whole
    seconds); such a job goes out at once and the worker waits out the fraction. Passing `eta`
    instead let Celery measure the countdown again a moment later: a job 1.0x s ahead when
    checked could be 0.9x s ahead when published, and the whole publish loop stopped ("countdown
    must be a positive number"; a worker's start-up enqueue of 500 jobs due 3 s ahead lost 368 to
    it). Celery stamps the job's eta as its own now + countdown: never before `eta`."""
    countdown = (eta - (now or datetime.now(UTC))).total_seconds()
    if countdown < 1:
        return {}
    return {"countdown": countdown}


class _Unpublished(Exception):
    """Raised inside the claiming transaction to roll the claim back."""


def claim_and_publish(
    now: datetime,
    settings: Settings,
    *,
    limit: int,
    user_ids: Sequence[uuid.UUID] | None = None,
) -> tuple[int, list[QueuedJob]]:
    """Claim up to `limit` PENDING rows due within ENQUEUE_LEAD_SECONDS of `now` (of `user_ids`
    only, if given) and publish their jobs *inside* the claiming transaction. Returns (rows
    claimed, jobs not published); if any job was not published, the whole claim rolled back and
    every row claimed is PENDING again, for the next enqueue run.

    What guarantees what:

    * A committed QUEUED row has its job on the broker: the claim commits only after RabbitMQ
      confirmed every job of the batch. If publishing fails or this process dies before the
      commit, the claim rolls back, so no row is left QUEUED without a job. (A job the broker
      loses after confirming it is recovery's to re-publish.)
    * The broker does see jobs whose claim has not committed yet, on purpose; only the claim is
      uncommitted: the rows themselves were committed before (by the plan), so a job never
      names a row that is not there. A worker that receives such a job waits on the row lock
      in its own claim until this transaction ends, at most one batch's publishing. If the
      claim rolled back, the job finds its row PENDING without a token, which it may claim; if
      the next enqueue run claimed the row first, the row's fresh token makes this job a no-op.
      Either way the greeting goes out once.
    """
    jobs: list[QueuedJob] = []
    unpublished: list[QueuedJob] = []
    with suppress(_Unpublished), transaction() as session:
        jobs = messages.claim_due(
            session,
            now,
            lead_s=settings.enqueue_lead_s,
            catch_up_hours=settings.catch_up_hours,
            limit=limit,
            user_ids=user_ids,
        )
        unpublished = publish(jobs)
        if unpublished:
            raise _Unpublished
    return len(jobs), unpublished


def publish_or_release(jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    """Publish committed claims; undo the claims of jobs that could not be published (they
    are PENDING again, for the next enqueue run). Returns those jobs."""
    failed = publish(jobs)
    if failed:
        with transaction() as session:
            messages.release(session, failed)
    return failed
