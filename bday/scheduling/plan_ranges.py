"""The hourly plan in id ranges, planned by every worker at once.

A plan of up to PLAN_RANGE_USERS users runs in one process (`jobs.plan_job`). A larger one is
split into `ranges` slices of the UUID space (`split`: user ids are random, so equal slices
hold about equal numbers of users) and fanned out:

* `begin` records the ranges in the plan's heartbeat (`ranges`, `done`: the indexes finished,
  `planned`: rows so far), and one `bday.tasks.plan_ranges` job per other range is published.
* Every process that gets such a job, and the plan's own process, runs one `run` loop: take a
  range nobody holds, plan it, mark it done, until every range is done. A range is held by a
  transaction-scoped advisory lock taken in the transaction that plans it and marks it done:
  a process that dies mid-range releases it with its transaction (nothing of that range is
  committed), and the loops still running take it again. So no lease, no clean-up, and a range
  is done exactly when its rows are committed.
* The transaction that marks the last range done writes the heartbeat's `ended_at` and
  `beat_at`, as a plan in one process does at its end: `bday status`, health and the bench read
  the plan's end from there, and it is never written while a range is still owed.

A loop that finds its process already planning returns at once (`None`): one range at a time
per process, so a fanned-out plan takes one pool thread of each worker, as a plan in one
process took one thread of one worker. A newer plan supersedes an older one's loops: they
stop at their next range. Rows go in with ON CONFLICT DO NOTHING, so a range planned twice
(a re-run, an older plan's loop finishing beside a newer one) plans no occasion twice.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import uuid
import zlib
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bday.config import Settings, get_settings
from bday.scheduling import planner
from bday.scheduling.planner import IdRange, Window
from bday.store.db import transaction

log = logging.getLogger(__name__)

PLAN_RANGES_TASK = "bday.tasks.plan_ranges"  # published by name: scheduling never imports it
MAX_RANGES = 4096  # the heartbeat's `done` list stays a few kB
# A range's candidates are read FOR SHARE (planner), so a bulk update locking the same users in
# another order can deadlock with it; PostgreSQL aborts one side, and the loop tries it again.
RANGE_ATTEMPTS = 3
_SPACE = 1 << 128
_busy = threading.Lock()  # one loop per process


def split(count: int) -> list[IdRange]:
    """`count` ranges in id order covering every UUID exactly once (the first and last open)."""
    if count < 1:
        raise ValueError(f"ranges: expected at least 1, got {count}")
    bounds = [uuid.UUID(int=index * _SPACE // count) for index in range(1, count)]
    lows: list[uuid.UUID | None] = [None, *bounds]
    highs: list[uuid.UUID | None] = [*bounds, None]
    return [IdRange(low, high) for low, high in zip(lows, highs, strict=True)]


# Rows per page at the last ANALYZE times the pages now, as PostgreSQL's planner estimates.
_ESTIMATE = text(
    """SELECT CASE WHEN reltuples > 0 AND relpages > 0
                   THEN reltuples / relpages
                        * (pg_relation_size(oid) / current_setting('block_size')::int)
              END
         FROM pg_class WHERE oid = CAST('users' AS regclass)"""
)


def ranges_needed(session: Session, settings: Settings) -> int:
    """How many ranges this plan needs: 1 (plan in one process) unless there are more users
    than PLAN_RANGE_USERS (estimated from the table's statistics; counted if it has none)."""
    if settings.plan_range_users == 0:
        return 1
    users = session.execute(_ESTIMATE).scalar_one()
    if users is None:  # never analysed while it had rows
        users = session.execute(text("SELECT count(*) FROM users")).scalar_one()
    return min(MAX_RANGES, max(1, math.ceil(users / settings.plan_range_users)))


_BEGIN = text(
    """UPDATE heartbeats SET detail = (detail - 'ended_at') || CAST(:progress AS jsonb)
        WHERE name = 'plan' AND detail ->> 'started_at' = :started"""
)


def plan_in_ranges(started_at: str, ranges: int, detail: dict) -> dict:
    """Fan the plan that started at `started_at` out into `ranges` ranges, and help plan them
    here until all are done; returns {'planned': rows planned here, 'ranges': ranges}."""
    progress = {**detail, "ranges": ranges, "done": [], "planned": 0}
    with transaction() as session:
        session.execute(_BEGIN, {"started": started_at, "progress": json.dumps(progress)})
    helpers = _publish_helpers(started_at, ranges - 1)
    log.info("plan: fanned out into %d ranges (%d helper job(s) published)", ranges, helpers)
    planned = run(started_at, wait=True)
    return {"planned": planned or 0, "ranges": ranges}


def _publish_helpers(started_at: str, count: int) -> int:
    """Ask the workers to help: `count` plan_ranges jobs. A broker that is away costs speed,
    not rows: this process plans every range then."""
    from bday.broker.app import app

    try:
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task(PLAN_RANGES_TASK, args=[started_at], producer=producer)
    except Exception as exc:  # noqa: BLE001 - any publish failure: plan here alone
        log.warning("plan: helpers not published, planning every range here (%s)", exc)
        return 0
    return count


def run(started_at: str, settings: Settings | None = None, *, wait: bool = False) -> int | None:
    """Plan the ranges of the plan that started at `started_at` until every one is done (or a
    newer plan started); rows planned here. None when this process already runs a loop (with
    `wait`, wait for it instead)."""
    if not _busy.acquire(blocking=wait):
        return None
    try:
        return _run(started_at, settings or get_settings())
    finally:
        _busy.release()


_PROGRESS = text(
    """SELECT CAST(detail ->> 'ranges' AS int), detail -> 'done' FROM heartbeats
        WHERE name = 'plan' AND detail ->> 'started_at' = :started"""
)


def _run(started_at: str, settings: Settings, poll_s: float = 0.5) -> int:
    window = Window.around(datetime.fromisoformat(started_at), settings)
    planned = ranges = 0
    failures: Counter[int] = Counter()
    while todo := _todo(started_at):
        held_elsewhere = False
        for index, id_range in todo:
            try:
                outcome, rows = _plan_one(started_at, index, id_range, window, settings)
            except DBAPIError as exc:  # a deadlock with a bulk user update, a lost connection
                failures[index] += 1
                if failures[index] >= RANGE_ATTEMPTS:
                    raise
                log.warning("plan: range %d failed, trying it again: %s", index, exc.orig)
                outcome, rows = "held", 0
            if outcome == "superseded":
                todo = []
                break
            held_elsewhere |= outcome == "held"
            planned, ranges = planned + rows, ranges + (outcome == "planned")
        if held_elsewhere and todo:  # planning there, or its process died and its lock is going
            time.sleep(poll_s)
    if ranges:
        log.info("plan: %d range(s) planned in this process, %d new row(s)", ranges, planned)
    return planned


def _todo(started_at: str) -> list[tuple[int, IdRange]]:
    """The ranges not done yet, starting at a random one (loops spread over the ranges);
    none when the plan is over or superseded."""
    with transaction() as session:
        row = session.execute(_PROGRESS, {"started": started_at}).first()
    if row is None or row[0] is None:
        return []
    done = set(row[1] or ())
    todo = [(index, r) for index, r in enumerate(split(row[0])) if index not in done]
    offset = random.randrange(len(todo)) if todo else 0
    return todo[offset:] + todo[:offset]


_TRY_HOLD = text("SELECT pg_try_advisory_xact_lock(:plan, :index)")
_STATE = text(
    """SELECT detail -> 'done' @> to_jsonb(CAST(:index AS int)) FROM heartbeats
        WHERE name = 'plan' AND detail ->> 'started_at' = :started"""
)
_MARK_DONE = text(
    """UPDATE heartbeats SET detail = detail || jsonb_build_object(
               'done', (detail -> 'done') || to_jsonb(CAST(:index AS int)),
               'planned', CAST(detail ->> 'planned' AS bigint) + :planned)
        WHERE name = 'plan' AND detail ->> 'started_at' = :started
          AND NOT detail -> 'done' @> to_jsonb(CAST(:index AS int))
    RETURNING jsonb_array_length(detail -> 'done') >= CAST(detail ->> 'ranges' AS int),
              CAST(detail ->> 'planned' AS bigint), CAST(detail ->> 'ranges' AS int)"""
)
_END = text(
    """UPDATE heartbeats SET beat_at = CAST(detail ->> 'started_at' AS timestamptz),
              detail = detail || jsonb_build_object('ended_at', CAST(:ended AS text))
        WHERE name = 'plan' AND detail ->> 'started_at' = :started"""
)


def _plan_one(
    started_at: str, index: int, id_range: IdRange, window: Window, settings: Settings
) -> tuple[str, int]:
    """Plan range `index` if nobody holds it: its rows and its mark in one transaction.
    ("planned", rows), or ("held" | "done" | "superseded", 0) when another process holds it,
    another loop finished it since this one looked, or a newer plan started."""
    with transaction() as session:
        if not session.execute(_TRY_HOLD, {"plan": _plan_key(started_at), "index": index}).scalar():
            return "held", 0
        state = session.execute(_STATE, {"started": started_at, "index": index}).first()
        if state is None or state[0]:
            return ("superseded" if state is None else "done"), 0
        planned = planner.plan(session, window, settings, id_range=id_range)
        params = {"started": started_at, "index": index, "planned": planned}
        marked = session.execute(_MARK_DONE, params).first()
        if marked is not None and marked[0]:
            total, ranges = marked[1], marked[2]
            session.execute(_END, {"started": started_at, "ended": datetime.now(UTC).isoformat()})
            log.info("plan: %d new row(s) in %d ranges", total, ranges)
    return "planned", planned


def _plan_key(started_at: str) -> int:
    """The advisory lock's first key: the plan's (an older plan's loop never blocks a newer
    plan's range), in PostgreSQL's int4."""
    return zlib.crc32(started_at.encode()) - (1 << 31)
