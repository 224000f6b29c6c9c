"""The daily job's care of the monthly partitions of `messages` (docs/partitions.md).

* ahead: each month from three days ago (the planner reaches back CATCH_UP_HOURS) to
  MONTHS_AHEAD after this one has its partition; a month whose rows landed in DEFAULT meanwhile
  (its partition was missing) gets one too, and its rows move into it.
* behind: a partition whose every occasion is past the retention cutoff is dropped whole,
  unless it holds an unfinished row; then it stays and retention deletes its finished rows one
  batch at a time, as it does the DEFAULT partition's.

Each change waits at most `partitions.LOCK_TIMEOUT_MS` for its lock and is tried again a few
times; one that still cannot get it is left for the next day (`busy` in the result).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any, TypeVar

from psycopg.errors import LockNotAvailable
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bday.store import partitions
from bday.store.db import engine, transaction
from bday.store.partitions import add_months, month_start

log = logging.getLogger(__name__)

MONTHS_AHEAD = 3  # the alert fires below 2: a month's warning before rows land in DEFAULT
LOCK_ATTEMPTS = 5
LOCK_PAUSE_S = 2.0  # times the attempt number: the long query holding the table may end

T = TypeVar("T")


class Busy(Exception):
    """The table stayed locked by others through every attempt."""


def _locked(change: Callable[[Session, Any], T], target: Any) -> T:
    """Run `change(session, target)` in a fresh transaction, again after a pause while its lock
    is not to be had; Busy once the attempts are spent."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with transaction() as session:
                return change(session, target)
        except OperationalError as exc:
            if not isinstance(exc.orig, LockNotAvailable):
                raise
            log.info("partitions: messages is busy (attempt %d of %d)", attempt, LOCK_ATTEMPTS)
            if attempt < LOCK_ATTEMPTS:
                time.sleep(LOCK_PAUSE_S * attempt)
    raise Busy


def months_wanted(today: date, cutoff: date, in_default: list[date]) -> list[date]:
    """This side of the cutoff: the months the planner may write to now or soon, and each
    month with rows in DEFAULT that retention is not about to delete."""
    month, last = (
        month_start(today - timedelta(days=3)),
        add_months(month_start(today), MONTHS_AHEAD),
    )
    wanted = set()
    while month <= last:
        wanted.add(month)
        month = add_months(month, 1)
    wanted |= {month for month in in_default if add_months(month, 1) > cutoff}
    return sorted(wanted)


def ensure_ahead(today: date, cutoff: date) -> dict[str, Any]:
    """Make the missing partitions of `months_wanted`; names made, rows moved, names busy."""
    with engine().connect() as connection:
        existing = partitions.ranges(connection)
        in_default = partitions.default_months(connection)
    made, moved, busy = [], 0, []
    for month in months_wanted(today, cutoff, in_default):
        if partitions.covers(existing, month):
            continue
        name = partitions.name_of(month)
        try:
            taken = _locked(partitions.create_month, month)
        except Busy:
            busy.append(name)
            continue
        if taken is not None:
            made.append(name)
            moved += taken
            log.info("partitions: %s made, %d row(s) moved out of DEFAULT", name, taken)
    if moved:
        log.warning(
            "partitions: %d row(s) had landed in DEFAULT (a month without partition)", moved
        )
    return {"created": made, "moved": moved, "create_busy": busy}


def drop_behind(cutoff: date, pause_s: float = 0.0) -> dict[str, Any]:
    """Drop each partition whose occasions are all before `cutoff` and finished, `pause_s`
    apart (each drop stops the table a few tens of ms; a backlog of months must not add up to
    one long stall). Names dropped, names kept for an unfinished row (their finished rows go by
    row, `kept`), names busy."""
    with engine().connect() as connection:
        old = [p for p in partitions.ranges(connection) if p.end <= cutoff]
    dropped: list[str] = []
    kept: list[str] = []
    busy: list[str] = []
    for number, partition in enumerate(old):
        if number:
            time.sleep(pause_s)
        try:
            gone = _locked(partitions.drop_if_finished, partition)
        except Busy:
            busy.append(partition.name)
            continue
        (dropped if gone else kept).append(partition.name)
    if dropped:
        log.info("partitions: dropped %s", ", ".join(dropped))
    return {"dropped": dropped, "kept": kept, "drop_busy": busy}


def row_deleted(kept: list[str]) -> list[str]:
    """The tables retention deletes finished rows from one batch at a time: DEFAULT, and the
    old partitions kept because they still hold an unfinished row."""
    return [partitions.DEFAULT, *kept]
