"""The monthly partitions of `messages`: which exist, making them ahead, dropping old ones.

`messages` is partitioned by RANGE (occasion_date), one partition a month (`messages_y2027m03`
holds occasions from 2027-03-01 up to 2027-04-01) and a DEFAULT partition that catches a row
whose month has none, so a missing partition costs an alert, never an insert
(docs/partitions.md has the argument for the key and the locks).

Every change here is DDL, and PostgreSQL takes an ACCESS EXCLUSIVE lock on `messages` for it
(creating or dropping a partition changes what the DEFAULT partition may hold; DETACH ...
CONCURRENTLY is refused while a DEFAULT partition exists). So each change is one short
transaction that first asks for that lock with a `lock_timeout`: if a long query holds the
table, the change gives up after LOCK_TIMEOUT_MS instead of stalling the hot path behind it,
and the caller tries again later. The lock also serialises two runs of the job: each re-reads
the catalogue once it holds the lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from bday.store.models import UNFINISHED

PARENT = "messages"
DEFAULT = "messages_default"
LOCK_TIMEOUT_MS = 500  # how long a change may make the hot path wait for it, at most
_NAME = re.compile(rf"{PARENT}_(y\d{{4}}m\d\d|default)")
_BOUND = re.compile(r"FOR VALUES FROM \('(\d{4}-\d\d-\d\d)'\) TO \('(\d{4}-\d\d-\d\d)'\)")


@dataclass(frozen=True, slots=True)
class Partition:
    """One range partition: occasions in [start, end)."""

    name: str
    start: date
    end: date


def is_partition(table: str) -> bool:
    """Whether `table` is one of the partitions (named as this module names them)."""
    return _NAME.fullmatch(table) is not None


def include_in_autogenerate(name: str | None, kind: str, parent_names: Any) -> bool:
    """Alembic's `include_name` hook: the models declare `messages`, not its partitions, which
    the daily job makes and drops; autogenerate must not propose removing them."""
    return not (kind == "table" and name is not None and is_partition(name))


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, count: int) -> date:
    """The first day of the month `count` months after `month`'s."""
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def name_of(month: date) -> str:
    """`messages_y2027m03`: the partition of that month's occasions."""
    return f"{PARENT}_y{month.year:04d}m{month.month:02d}"


_PARTITIONS = text(
    """SELECT quote_ident(c.relname), pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = CAST(:parent AS regclass)"""
)


def ranges(connection: Connection | Session) -> list[Partition]:
    """The range partitions of `messages`, oldest first (the DEFAULT one is not a range)."""
    found = []
    for name, bound in connection.execute(_PARTITIONS, {"parent": PARENT}):
        match = _BOUND.fullmatch(bound)
        if match:
            start, end = (date.fromisoformat(value) for value in match.groups())
            found.append(Partition(name, start, end))
    return sorted(found, key=lambda partition: partition.start)


def covers(partitions: list[Partition], month: date) -> bool:
    """Whether one partition holds the whole month starting at `month`."""
    end = add_months(month, 1)
    return any(p.start <= month and end <= p.end for p in partitions)


def months_covered(connection: Connection | Session, today: date, limit: int = 24) -> int:
    """Consecutive months, this one first, that have their own partition (0: this month's
    rows land in DEFAULT). The alert's gauge."""
    partitions, month, count = ranges(connection), month_start(today), 0
    while count < limit and covers(partitions, month):
        month, count = add_months(month, 1), count + 1
    return count


def default_rows(connection: Connection | Session) -> int:
    """Rows in the DEFAULT partition: each is a month without its partition (0 when healthy)."""
    return int(connection.execute(text(f"SELECT count(*) FROM {DEFAULT}")).scalar_one())


def default_months(connection: Connection | Session) -> list[date]:
    """First days of the months whose rows sit in the DEFAULT partition."""
    statement = text(f"SELECT DISTINCT date_trunc('month', occasion_date)::date FROM {DEFAULT}")
    return sorted(connection.execute(statement).scalars())


def _lock(session: Session) -> None:
    """ACCESS EXCLUSIVE on the parent (and so on every partition) for this transaction, or
    `LockNotAvailable` after LOCK_TIMEOUT_MS. Parent first, as every statement on it does."""
    session.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
    session.execute(text(f"LOCK TABLE ONLY {PARENT} IN ACCESS EXCLUSIVE MODE"))


def create_month(session: Session, month: date) -> int | None:
    """Make the partition of `month` (in the caller's transaction, which must be fresh):
    None if one already holds it, else how many rows it took over from DEFAULT.

    PostgreSQL refuses a partition whose range some DEFAULT row falls in, so those rows are
    taken out of DEFAULT first and put back through the parent, which routes them to the new
    partition; under the lock nothing else sees the table in between, and every row keeps its
    id, status and key (the unique index checks them again on the way in)."""
    _lock(session)
    if covers(ranges(session), month):
        return None
    bounds = {"start": month, "end": add_months(month, 1)}
    in_month = "occasion_date >= :start AND occasion_date < :end"
    columns = ", ".join(_columns(session))
    session.execute(text(f"CREATE TEMPORARY TABLE bday_moving (LIKE {PARENT}) ON COMMIT DROP"))
    moved = _rowcount(
        session.execute(
            text(
                f"""WITH gone AS (DELETE FROM {DEFAULT} WHERE {in_month} RETURNING {columns})
                    INSERT INTO bday_moving ({columns}) SELECT {columns} FROM gone"""
            ),
            bounds,
        )
    )
    session.execute(
        text(
            f"""CREATE TABLE {name_of(month)} PARTITION OF {PARENT}
                FOR VALUES FROM ('{bounds["start"]}') TO ('{bounds["end"]}')"""
        )
    )
    if moved:
        session.execute(text(f"INSERT INTO {PARENT} ({columns}) SELECT {columns} FROM bday_moving"))
    return moved


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _columns(session: Session) -> list[str]:
    statement = text(
        """SELECT quote_ident(attname) FROM pg_attribute
            WHERE attrelid = CAST(:parent AS regclass) AND attnum > 0 AND NOT attisdropped
            ORDER BY attnum"""
    )
    return list(session.execute(statement, {"parent": PARENT}).scalars())


_UNFINISHED_SQL = "(" + ", ".join(f"'{status.value}'" for status in UNFINISHED) + ")"


def drop_if_finished(session: Session, partition: Partition) -> bool:
    """Drop the partition (in the caller's fresh transaction) unless it holds an unfinished
    row; True if it is gone (dropped here, or by another run meanwhile). The check runs under
    the lock, so no replay or recovery can revive one of its rows between the check and the
    drop. It reads the partial index of unfinished rows (ix_messages_due), not the partition."""
    _lock(session)
    if partition.name not in {p.name for p in ranges(session)}:
        return True  # another run dropped it meanwhile
    busy = session.execute(
        text(f"SELECT 1 FROM {partition.name} WHERE status IN {_UNFINISHED_SQL} LIMIT 1")
    ).first()
    if busy:
        return False
    session.execute(text(f"DROP TABLE {partition.name}"))
    return True
