"""The periodic jobs beat runs (plan, enqueue, recover, retention); tasks.py wraps them.

* plan: PENDING rows for every owed occasion in [now - CATCH_UP_HOURS, now + PLAN_AHEAD_HOURS),
  after moving PENDING rows planned at another SEND_TIME to the current one; past
  PLAN_RANGE_USERS users in id ranges that every worker helps plan (bday.scheduling.plan_ranges).
* enqueue: claim PENDING rows due within ENQUEUE_LEAD_SECONDS, publish them timed for their
  instant (the broker holds them until then), mark them QUEUED; more than ENQUEUE_FANOUT_ROWS
  at once are split into slices the workers publish in parallel (`enqueue_slices`).
* retention (daily): drop monthly partitions older than MESSAGE_RETENTION_DAYS, delete old
  finished rows no partition drop takes, make the coming months' partitions.
* recover: the database decides what is owed, so this job re-publishes whatever the broker
  lost: QUEUED rows whose job never ran, SENDING rows whose worker died, FAILED rows whose
  failure was transient once the email service answers again; it expires rows that are
  more than CATCH_UP_HOURS late, and clears answers stored after their user was erased.

Every job is safe to run twice at once (two beats): claims use SKIP LOCKED and conditional
updates, planning uses ON CONFLICT DO NOTHING, and re-published jobs carry fresh tokens.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from typing import Any

from psycopg.errors import UndefinedTable
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import ProgrammingError

from bday.config import Settings, get_settings
from bday.delivery import breaker
from bday.delivery.breaker import Breaker
from bday.scheduling import dispatch, enqueue_slices, partitioning, plan_ranges, planner
from bday.store import messages
from bday.store.db import engine, transaction
from bday.store.models import FailureReason, Heartbeat, Status

log = logging.getLogger(__name__)

# A send in flight when its user was erased stores the service's answer afterwards: within its
# lease, or after a database outage by its recording retry. Recovery clears such answers on the
# rows of users erased this recently (a partial index finds them).
ERASURE_RECHECK = timedelta(days=7)


# A start-up catch-up is skipped when a plan with the same settings started this recently
# before it was asked for: a worker and beat starting together each ask for one.
CATCH_UP_FRESH = timedelta(seconds=60)


def plan_job(now: datetime | None = None, *, requested_at: datetime | None = None) -> dict:
    """Follow a change of SEND_TIME, then plan the window around `now`; returns
    {'planned': rows inserted}, with 'moved' and 'cancelled' when PENDING rows were planned at
    another SEND_TIME, or 'skipped' for a catch-up (`requested_at`: when a worker or beat
    started) that a fresh plan already covers."""
    settings, now = get_settings(), now or datetime.now(UTC)
    started: dict[str, Any] = {"started_at": now.isoformat(), "settings": _plan_settings(settings)}
    begun, previous_send_time = _start_plan(now, started, requested_at)
    if not begun:
        log.debug("plan: skipped, a plan with these settings started since %s", requested_at)
        return {"planned": 0, "skipped": True}
    with transaction() as session:  # its own short transaction: moved rows may be due now
        followed = planner.follow_send_time(session, now, settings, previous_send_time)
        ranges = plan_ranges.ranges_needed(session, settings)
    result: dict = _followed(followed, settings)
    if ranges > 1:  # many users: every worker helps (bday.scheduling.plan_ranges)
        return plan_ranges.plan_in_ranges(started["started_at"], ranges, result) | result
    with transaction() as session:
        planned = planner.plan(session, planner.Window.around(now, settings), settings)
    result = {"planned": planned, **result}
    heartbeat("plan", now, {**result, **started, "ended_at": datetime.now(UTC).isoformat()})
    log.info("plan: %d new row(s)", planned)
    return result


def _followed(followed: planner.Followed, settings: Settings) -> dict:
    """What following SEND_TIME did, for the plan's result (and its log line)."""
    if not (followed.moved or followed.cancelled):
        return {}
    log.info(
        "plan: SEND_TIME changed %s -> %s: %d pending row(s) moved%s",
        "/".join(followed.planned_at),
        f"{settings.send_time:%H:%M}",
        followed.moved,
        f", {followed.cancelled} no longer owed (cancelled)" if followed.cancelled else "",
    )
    return {"moved": followed.moved, "cancelled": followed.cancelled}


def _plan_settings(settings: Settings) -> dict:
    """The settings a plan's rows depend on: a catch-up after any of them changed must run."""
    return {
        "send_time": f"{settings.send_time:%H:%M}",
        "feb29_policy": settings.feb29_policy,
        "catch_up_hours": settings.catch_up_hours,
        "plan_ahead_hours": settings.plan_ahead_hours,
    }


# Record that a plan starts (in the heartbeat's detail; `beat_at` stays the last plan that
# ended), unless this is a catch-up and one with the same settings started since
# :fresh_since. One conditional upsert: two catch-ups at once cannot both pass. The last
# plan's end and range progress go, so the detail never shows a running plan as ended.
_START_PLAN = text(
    """
    WITH previous AS (
        SELECT detail -> 'settings' ->> 'send_time' AS send_time FROM heartbeats WHERE name = 'plan'
    )
    INSERT INTO heartbeats AS h (name, beat_at, detail)
    VALUES ('plan', :now, CAST(:detail AS jsonb))
    ON CONFLICT (name) DO UPDATE
       SET detail = (h.detail - 'ended_at' - 'ranges' - 'done' - 'planned') || excluded.detail
     WHERE CAST(:fresh_since AS timestamptz) IS NULL
        OR h.detail -> 'settings' IS DISTINCT FROM excluded.detail -> 'settings'
        OR coalesce(CAST(h.detail ->> 'started_at' AS timestamptz), '-infinity')
           < CAST(:fresh_since AS timestamptz)
    RETURNING h.name, (SELECT send_time FROM previous)
    """
)


def _start_plan(
    now: datetime, started: dict, requested_at: datetime | None
) -> tuple[bool, wall_time | None]:
    """(False, _) for a catch-up that a plan started since `requested_at - CATCH_UP_FRESH`,
    with the same settings, already covers; otherwise record this plan's start: (True, the
    SEND_TIME the plan before it ran with, None if none is recorded)."""
    fresh_since = requested_at - CATCH_UP_FRESH if requested_at is not None else None
    params = {"now": now, "detail": json.dumps(started), "fresh_since": fresh_since}
    with transaction() as session:
        row = session.execute(_START_PLAN, params).first()
    if row is None:
        return False, None
    return True, wall_time.fromisoformat(row[1]) if row[1] else None


def enqueue_job(now: datetime | None = None) -> dict:
    """Publish every PENDING row due within the lead; returns counts published and expired,
    and, for a run that found more than ENQUEUE_FANOUT_ROWS due rows, how many it found and
    how many slices it fanned them out to (the workers publish them: `enqueue_slices`)."""
    settings, now = get_settings(), now or datetime.now(UTC)
    expired = expire_overdue(now, settings)
    fanout = enqueue_slices.fan_out(now, settings)
    result: dict[str, Any] = {"published": 0, "expired": expired}
    if fanout.slices:
        result |= {"due": fanout.due, "slices": fanout.slices}
    else:
        result["published"] = enqueue_slices.publish_due(now, settings)
    heartbeat("enqueue", now, result)
    if fanout.slices:
        log.info("enqueue: %d due, fanned out to %d slice(s)", fanout.due, fanout.slices)
    elif result["published"] or expired:
        log.info("enqueue: %d published, %d expired", result["published"], expired)
    return result


def enqueue_slice_job(now: datetime, limit: int) -> dict:
    """One slice of a fanned-out enqueue run at `now` (see `enqueue_slices`)."""
    return enqueue_slices.run_slice(now, limit, get_settings())


def expire_overdue(now: datetime, settings: Settings) -> int:
    """Owed rows more than CATCH_UP_HOURS late end FAILED `expired`; returns how many."""
    with transaction() as session:
        return messages.expire_overdue(
            session,
            now,
            catch_up_hours=settings.catch_up_hours,
            reason=FailureReason.EXPIRED.value,
            error=f"not sent within CATCH_UP_HOURS={settings.catch_up_hours}",
        )


def recover_job(now: datetime | None = None, *, service_answering: bool | None = None) -> dict:
    """Re-publish lost and transiently failed rows, expire overdue ones; returns counts.

    `service_answering` says whether the email service has answered recently (the breaker is
    closed and warm). While it is not, only the oldest transiently failed row is re-published,
    as a probe: an outage costs one call per recovery run, not one per failed message.
    """
    settings, now = get_settings(), now or datetime.now(UTC)
    expired = expire_overdue(now, settings)
    with transaction() as session:
        lost_ids = messages.lost(
            session, now, grace_s=settings.recovery_grace_s, limit=settings.enqueue_batch
        )
        lost = messages.reissue(session, lost_ids, (Status.QUEUED, Status.SENDING), now)
    if service_answering is None:
        service_answering = _service_answering(now, settings)
    with transaction() as session:
        failed_ids = messages.failed_with_reason(
            session,
            FailureReason.RETRIES_EXHAUSTED.value,
            oldest=_catch_up_start(now, settings),
            limit=settings.enqueue_batch if service_answering else 1,
        )
        messages.reset_retries(session, failed_ids)
        revived = messages.reissue(session, failed_ids, (Status.FAILED,), now)
    published = len(lost) + len(revived) - len(dispatch.publish_or_release(lost + revived))
    with transaction() as session:
        forgotten = messages.forget_late_answers(session, now - ERASURE_RECHECK, now)
    result = {
        "republished_lost": len(lost),
        "revived_failed": len(revived),
        "published": published,
        "expired": expired,
        "forgot_late_answers": forgotten,
    }
    heartbeat("recover", now, result)
    if lost or revived or expired or forgotten:
        log.info("recover: %s", result)
    return result


def retention_job(now: datetime | None = None, *, max_batches: int | None = None) -> dict:
    """The daily job: drop the monthly partitions past MESSAGE_RETENTION_DAYS whose rows are
    all finished, delete old finished rows one RETENTION_BATCH at a time where no partition
    can go whole (DEFAULT, or a partition still holding an unfinished row), then make the
    coming months' partitions (bday.scheduling.partitioning). Returns what it did.

    A dropped partition costs one short lock, not a delete per row. Each row batch is a short
    transaction that skips rows others hold (SKIP LOCKED) and touches only finished rows, which
    no send, claim or recovery wants; RETENTION_PAUSE between batches leaves the database to
    the hot path. Rows of the last 366 days are kept whatever the setting.
    """
    settings, now = get_settings(), now or datetime.now(UTC)
    keep_from = (now - timedelta(days=settings.message_retention_days)).date()
    # Every occasion before this may go: the row statement's own two conditions on the date.
    cutoff = min(keep_from, now.date() - timedelta(days=messages.KEEP_DAYS_AT_LEAST + 1))
    behind = partitioning.drop_behind(cutoff, settings.retention_pause_s)
    deleted = batches = 0
    for table in partitioning.row_deleted(behind["kept"]):
        rows, runs = _delete_rows(table, keep_from, now, settings, max_batches)
        deleted, batches = deleted + rows, batches + runs
    ahead = partitioning.ensure_ahead(now.date(), cutoff)
    result = {"deleted": deleted, "batches": batches, "keep_from": keep_from.isoformat()}
    result |= behind | ahead
    heartbeat("retention", now, result)
    log.info(
        "retention: %d partition(s) dropped, %d finished row(s) before %s deleted",
        len(behind["dropped"]),
        deleted,
        keep_from,
    )
    return result


def _delete_rows(
    table: str, keep_from: date, now: datetime, settings: Settings, max_batches: int | None
) -> tuple[int, int]:
    """Delete `table`'s old finished rows in batches until none is left; (rows, batches)."""
    deleted = batches = 0
    while max_batches is None or batches < max_batches:
        try:
            with transaction() as session:
                rows = messages.delete_finished(
                    session, keep_from, now, limit=settings.retention_batch, table=table
                )
        except ProgrammingError as exc:
            if not isinstance(exc.orig, UndefinedTable):
                raise
            break  # a kept partition another run (two beats) dropped once its rows finished
        deleted, batches = deleted + rows, batches + 1
        if rows < settings.retention_batch:
            break
        time.sleep(settings.retention_pause_s)  # leave the database to the hot path a while
    return deleted, batches


def drain_deferred(now: datetime | None = None) -> int:
    """The breaker just closed: re-publish every deferred send now, oldest first, a batch at a
    time until none is left (an outage's backlog can be many batches; a drain of one batch left
    the rest for the next recovery run, minutes later). Paced and throttled ones too: see
    `messages.deferred`, they ask the pacer again.

    Their deferred jobs are still waiting in the broker; the fresh tokens make those no-ops.
    """
    settings, now = get_settings(), now or datetime.now(UTC)
    published, seen = 0, set()
    while True:  # ENQUEUE_BATCH rows a transaction, until none is left
        with transaction() as session:
            ids = messages.deferred(session, now, limit=settings.enqueue_batch)
            fresh = [i for i in ids if i not in seen]  # a row deferred again meanwhile waits
            jobs = messages.reissue(session, fresh, (Status.QUEUED,), now)
        seen.update(fresh)
        unpublished = dispatch.publish_or_release(jobs)
        published += len(jobs) - len(unpublished)
        if unpublished or len(ids) < settings.enqueue_batch or not fresh:
            break
    if published:
        log.info("breaker closed: %d deferred send(s) re-published", published)
    return published


def _service_answering(now: datetime, settings: Settings) -> bool:
    with engine().connect() as connection:
        row = breaker.read(connection)
    if row is None or row.last_success_at is None:
        return False
    recent = row.last_success_at >= now - timedelta(seconds=max(settings.breaker_idle_s, 60))
    return row.state == "closed" and recent


@functools.cache
def get_breaker() -> Breaker:
    """This process's view of the shared breaker; closing it re-publishes deferred sends."""
    return Breaker(get_settings(), on_close=drain_deferred)


def heartbeat(name: str, now: datetime, detail: dict | None = None) -> None:
    """Record that `name` ran at `now` (read by `bday health` and `bday status`)."""
    statement = insert(Heartbeat).values(name=name, beat_at=now, detail=detail or {})
    statement = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={"beat_at": statement.excluded.beat_at, "detail": statement.excluded.detail},
    )
    with transaction() as session:
        session.execute(statement)


def _catch_up_start(now: datetime, settings: Settings) -> datetime:
    return now - timedelta(hours=settings.catch_up_hours)
