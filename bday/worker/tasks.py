"""Celery tasks. Thin: parse, call a plain function, turn its outcome into a Celery action.

`send_message(message_id)` is the only task that talks to the email service; the periodic
tasks (`plan`, `enqueue`, `recover`) are run by beat and wrap `bday.scheduling.jobs`.
"""

from __future__ import annotations

import logging
import time

import psycopg
from celery.exceptions import Reject
from sqlalchemy.exc import DBAPIError

from bday.broker.app import app
from bday.delivery.attempt import Action, Outcome, UnrecordedDelivery, deliver, record_delivered
from bday.delivery.pacing import Slot, get_pacer
from bday.delivery.sender import get_sender
from bday.scheduling import jobs
from bday.scheduling.jobs import get_breaker

log = logging.getLogger(__name__)

DB_RETRY_MAX_S = 60


@app.task(bind=True, name="bday.tasks.send_message", max_retries=None, acks_late=True)
def send_message(
    self,
    message_id: str,
    token: str | None = None,
    delivered: dict | None = None,
    slot: dict | None = None,
) -> str:
    """Deliver one greeting. Retries and deferrals go back through the broker (one retry
    layer, Celery's); permanent failures, exhausted retries, expired and unknown messages are
    rejected so RabbitMQ dead-letters them. `delivered` is internal: a retry that only has to
    record a send the service already accepted; so is `slot`, a paced send's promised turn."""
    try:
        if delivered is not None:
            return record_delivered(delivered).reason
        outcome = _deliver(message_id, token, Slot.from_json(slot))
        if outcome.action is Action.DEFER and outcome.delay_s < 1:
            # RabbitMQ's delayed delivery counts whole seconds; a sub-second wait is cheaper here.
            time.sleep(outcome.delay_s)
            outcome = _deliver(message_id, token, outcome.slot)
    except UnrecordedDelivery as exc:  # sent, but PostgreSQL went away before we wrote SENT
        log.warning("message %s: sent, recording deferred (database unavailable)", message_id)
        raise self.retry(
            kwargs={"token": token, "delivered": exc.delivered},
            countdown=_db_backoff(self.request.retries),
        ) from None
    except (DBAPIError, psycopg.Error) as exc:  # PostgreSQL away or restarting
        countdown = _db_backoff(self.request.retries)
        log.warning(
            "message %s: database unavailable (%s), again in %d s",
            message_id,
            type(getattr(exc, "orig", None) or exc).__name__,
            countdown,
        )
        raise self.retry(countdown=countdown) from None
    if outcome.action is Action.DEAD_LETTER:
        raise Reject(outcome.reason, requeue=False)
    if outcome.action in (Action.RETRY, Action.DEFER):
        raise self.retry(countdown=_countdown(outcome), kwargs=_kwargs_after(token, outcome))
    return outcome.reason


def _deliver(message_id: str, token: str | None, slot: Slot | None) -> Outcome:
    return deliver(
        message_id,
        token,
        sender=get_sender(),
        breaker=get_breaker(),
        pacer=get_pacer(),
        slot=slot,
    )


def _countdown(outcome: Outcome) -> float:
    # A paced send keeps its slot to the millisecond: the broker holds it for the whole
    # seconds, the worker's eta timer for the fraction (no thread waits), so sends keep the
    # slots' spacing. The broker's delayed delivery refuses less than one second.
    if outcome.slot is not None:
        return max(1.0, outcome.delay_s)
    return max(1, round(outcome.delay_s))


def _kwargs_after(token: str | None, outcome: Outcome) -> dict:
    """The job's kwargs for its next run: the slot it holds now, or none (never a stale one)."""
    return {"token": token, "slot": outcome.slot.to_json() if outcome.slot else None}


def _db_backoff(retries: int) -> int:
    return min(DB_RETRY_MAX_S, 2 ** min(retries, 6))


@app.task(name="bday.tasks.plan", acks_on_failure=True)
def plan() -> dict:
    """Plan owed occasions in the window around now (hourly, and when beat or a worker starts)."""
    return jobs.plan_job()


@app.task(name="bday.tasks.enqueue", acks_on_failure=True)
def enqueue() -> dict:
    """Publish rows due within the enqueue lead (every minute)."""
    return jobs.enqueue_job()


@app.task(name="bday.tasks.recover", acks_on_failure=True)
def recover() -> dict:
    """Re-publish lost and transiently failed rows; expire overdue ones (every 5 minutes)."""
    return jobs.recover_job()


@app.task(name="bday.tasks.retention", acks_on_failure=True)
def retention() -> dict:
    """Delete finished rows older than MESSAGE_RETENTION_DAYS in batches (daily)."""
    return jobs.retention_job()
