"""Every statement that reads or changes a `messages` row, and so every status change.

This module owns the message state machine (docs/state-machine.md has the diagram). Each
change is one conditional UPDATE that names its legal previous states; one that matches no row
means another worker, job or beat got there first, which is normal, never an error:

    PENDING  -> QUEUED     claim_due, reissue            (a job is published for the row)
    QUEUED   -> PENDING    release                       (its job could not be published)
    QUEUED/SENDING/FAILED -> QUEUED  reissue             (a fresh token; old jobs become no-ops)
    PENDING/QUEUED/SENDING(lease over) -> SENDING  claim_many (a worker holds it)
    SENDING  -> SENT       record_sent (a batch at once)
    PENDING/QUEUED/SENDING -> SENT  record_outcome("sent_late")  (recorded after a database outage)
    SENDING  -> QUEUED     record_outcome("retry"), record_outcome("put_back") (no retry spent)
    unfinished -> FAILED   record_outcome("failed"), expire_overdue
    unfinished -> CANCELLED  record_outcome("cancelled"), cancel
    PENDING/QUEUED -> CANCELLED  cancel_unsent_of_users   (users deleted by `import --sync`)
    PENDING  -> PENDING    move_pending                  (SEND_TIME changed: the new instant)
    PENDING  -> CANCELLED  cancel_pending                (not owed at the new SEND_TIME)
    SENT/FAILED/CANCELLED -> (deleted)  delete_finished   (retention; never the last 366 days;
                                        whole months go by dropping their partition)
    any status, no change  forget_answers                 (erasure clears stored answers)
    any status, no change  forget_late_answers            (recovery: answers stored after it)

`failed_at`, `failure_reason` and `last_error` hold a row's latest failure (or retried error)
and are never cleared by a replay, a retry or a success: they are its history, why a
greeting went late. They describe the row's current state only while it is FAILED; the views
(`bday messages show`, `bday dlq list`) show them as "earlier failure" otherwise.

Two styles, on purpose: the hot path of a send (`claim_many`, `record_sent`,
`record_outcome`, `current_state`) runs raw psycopg on a pooled autocommit connection with
server-side prepared statements (SQLAlchemy's execution layer cost three times the statement,
see docs/performance.md); everything else takes the caller's SQLAlchemy session, so it joins the
caller's transaction.

`messages` is partitioned by month of `occasion_date` (docs/partitions.md). The hot path names
each row by its id *and* its occasion date when it knows it (the job carries it), so PostgreSQL
looks in one partition; a row named by id alone (a job published before the date was carried)
is still found, every partition's primary key probed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from bday.store.db import fast_autocommit
from bday.store.models import FINISHED, UNFINISHED, UNSENT, Message, Status


def _in(*statuses: Status) -> str:
    """SQL list of statuses, e.g. `('PENDING', 'QUEUED')`, rendered from the enum."""
    return "(" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


PENDING, QUEUED, SENDING = Status.PENDING.value, Status.QUEUED.value, Status.SENDING.value
UNFINISHED_SQL = _in(*UNFINISHED)
UNSENT_SQL = _in(*UNSENT)
_DEADLINE_SQL = "coalesce(send_deadline, scheduled_send_time + make_interval(hours => :hours))"


def _rowcount(result: Any) -> int:
    """Rows an UPDATE changed (SQLAlchemy types execute() as a generic Result)."""
    return int(result.rowcount)


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """The job to publish for a row claimed QUEUED: the row, its fencing token, and when it
    may run (`bday.scheduling.dispatch` turns it into a `send_message` message)."""

    message_id: uuid.UUID
    token: uuid.UUID
    eta: datetime
    occasion_date: date | None = None  # the partition key, carried by the job (None: unknown)


# --- planning ----------------------------------------------------------------------------------


def insert_pending(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert PENDING rows, skipping occasions that already have a live (non-CANCELLED) row."""
    statement = (
        insert(Message)
        .values(rows)
        .on_conflict_do_nothing(
            index_elements=["idempotency_key", "occasion_date"],
            index_where=text(f"status <> '{Status.CANCELLED.value}'"),
        )
        .returning(Message.id)
    )
    return len(session.execute(statement).all())


_UNSENT_OF_USER = text(
    f"""SELECT id, message_type, occasion_date, scheduled_send_time FROM messages
         WHERE user_id = :user_id AND status IN {UNSENT_SQL}"""
)


def unsent_of_user(session: Session, user_id: uuid.UUID) -> Sequence[Row[Any]]:
    """The user's PENDING and QUEUED rows (what a change of date or zone may cancel)."""
    return session.execute(_UNSENT_OF_USER, {"user_id": user_id}).all()


# PENDING/QUEUED -> CANCELLED, for the rows the WHERE clause's first condition names.
_CANCEL_UNSENT = f"""UPDATE messages SET status = '{Status.CANCELLED.value}', cancelled_at = :now,
                            updated_at = :now
                      WHERE {{rows}} AND status IN {UNSENT_SQL}"""
_CANCEL = text(_CANCEL_UNSENT.format(rows="id = ANY(:ids)"))


def cancel(session: Session, ids: Sequence[uuid.UUID], now: datetime) -> int:
    """PENDING/QUEUED -> CANCELLED (a SENDING row is already with the email service)."""
    return _rowcount(session.execute(_CANCEL, {"ids": list(ids), "now": now}))


_LIVE_BY_KEY = text(
    f"SELECT id FROM messages WHERE idempotency_key = :key AND status <> '{Status.CANCELLED}'"
)


def live_id_by_key(session: Session, key: str) -> uuid.UUID | None:
    """The id of the one live row for an occasion's idempotency key, if any."""
    found: uuid.UUID | None = session.scalar(_LIVE_BY_KEY, {"key": key})
    return found


# Clear the stored service answers and errors (they may quote the address) and the words
# sent (they name the person) on the rows the WHERE clause's first condition names, whatever
# their status. Not a status change.
_FORGET = """UPDATE messages SET provider_response = NULL, last_error = NULL, subject = NULL,
                                 body = NULL, updated_at = :now
              WHERE {rows} AND (provider_response IS NOT NULL OR last_error IS NOT NULL
                                OR subject IS NOT NULL OR body IS NOT NULL)"""
_FORGET_ANSWERS = text(_FORGET.format(rows="user_id = :user_id"))


def forget_answers(session: Session, user_id: uuid.UUID, now: datetime) -> int:
    """Erasure: clear the stored service answers and errors (they may quote the address) and
    the words sent on every row of the user, whatever its status. Not a status change."""
    return _rowcount(session.execute(_FORGET_ANSWERS, {"user_id": user_id, "now": now}))


_FORGET_LATE_ANSWERS = text(
    _FORGET.format(rows="user_id IN (SELECT id FROM users WHERE erased_at >= :since)")
)


def forget_late_answers(session: Session, since: datetime, now: datetime) -> int:
    """Clear answers stored on the rows of users erased since `since`: a send in flight when
    its user was erased records the service's answer afterwards. Rows changed."""
    return _rowcount(session.execute(_FORGET_LATE_ANSWERS, {"since": since, "now": now}))


_CANCEL_OF_USERS = text(_CANCEL_UNSENT.format(rows="user_id = ANY(:user_ids)"))


def cancel_unsent_of_users(session: Session, user_ids: Sequence[uuid.UUID], now: datetime) -> int:
    """PENDING/QUEUED -> CANCELLED for every row of these (deleted) users."""
    params = {"user_ids": list(user_ids), "now": now}
    return _rowcount(session.execute(_CANCEL_OF_USERS, params))


# --- following a change of SEND_TIME --------------------------------------------------------------

_PENDING_INSTANTS = text(
    f"""SELECT u.timezone, m.scheduled_send_time, count(*) FROM messages m
          JOIN users u ON u.id = m.user_id
         WHERE m.status = '{PENDING}' AND u.deleted_at IS NULL
         GROUP BY 1, 2"""
)


def pending_instants(session: Session) -> list[tuple[str, datetime, int]]:
    """(zone, instant, rows) of the live users' PENDING rows: a few hundred groups however many
    rows, so the planner can check each instant against SEND_TIME cheaply."""
    return [(zone, at, int(n)) for zone, at, n in session.execute(_PENDING_INSTANTS)]


_PENDING_AT = text(
    f"""SELECT m.id, m.occasion_date, m.scheduled_send_time, u.timezone,
               CASE m.message_type WHEN 'BIRTHDAY' THEN u.birthday_owed_from
                                   ELSE u.anniversary_owed_from END AS owed_from
          FROM messages m JOIN users u ON u.id = m.user_id
          JOIN unnest(CAST(:zones AS text[]), CAST(:instants AS timestamptz[])) AS g(zone, at)
            ON g.zone = u.timezone AND g.at = m.scheduled_send_time
         WHERE m.status = '{PENDING}' AND u.deleted_at IS NULL"""
)


def pending_at(session: Session, groups: Sequence[tuple[str, datetime]]) -> Sequence[Row[Any]]:
    """The PENDING rows of live users in `groups` of (zone, instant): id, occasion_date,
    scheduled_send_time, timezone and the user's owed_from for the row's type."""
    params = {"zones": [zone for zone, _ in groups], "instants": [at for _, at in groups]}
    return session.execute(_PENDING_AT, params).all()


# PENDING -> PENDING at a new instant: only a row nothing was published for (a QUEUED row has
# a job on the broker already), and only from the instant it was read at.
_MOVE_PENDING = text(
    f"""UPDATE messages m SET scheduled_send_time = s.new_at, updated_at = :now
          FROM unnest(CAST(:ids AS uuid[]), CAST(:olds AS timestamptz[]),
                      CAST(:news AS timestamptz[])) AS s(id, old_at, new_at)
         WHERE m.id = s.id AND m.status = '{PENDING}' AND m.scheduled_send_time = s.old_at"""
)


def move_pending(
    session: Session, moves: Sequence[tuple[uuid.UUID, datetime, datetime]], now: datetime
) -> int:
    """PENDING rows (id, instant read, new instant) -> the new instant (SEND_TIME changed);
    rows changed. A row claimed or cancelled since it was read is left alone."""
    if not moves:
        return 0
    params = {
        "ids": [row[0] for row in moves],
        "olds": [row[1] for row in moves],
        "news": [row[2] for row in moves],
        "now": now,
    }
    return _rowcount(session.execute(_MOVE_PENDING, params))


_CANCEL_PENDING = text(
    f"""UPDATE messages m SET status = '{Status.CANCELLED.value}', cancelled_at = :now,
               updated_at = :now
          FROM unnest(CAST(:ids AS uuid[]), CAST(:olds AS timestamptz[])) AS s(id, old_at)
         WHERE m.id = s.id AND m.status = '{PENDING}' AND m.scheduled_send_time = s.old_at"""
)


def cancel_pending(
    session: Session, rows: Sequence[tuple[uuid.UUID, datetime]], now: datetime
) -> int:
    """PENDING rows (id, instant read) -> CANCELLED: no longer owed at the new SEND_TIME (their
    user came after its instant); rows changed."""
    if not rows:
        return 0
    params = {"ids": [row[0] for row in rows], "olds": [row[1] for row in rows], "now": now}
    return _rowcount(session.execute(_CANCEL_PENDING, params))


# --- dispatch ----------------------------------------------------------------------------------

_CLAIM_DUE = text(
    f"""
    UPDATE messages m
       SET status = '{QUEUED}', queued_at = :now, updated_at = :now,
           dispatch_token = gen_random_uuid(),
           next_attempt_at = greatest(m.scheduled_send_time, :now)
      FROM (SELECT id, occasion_date FROM messages
             WHERE status = '{PENDING}'
               AND scheduled_send_time <= :until
               AND {_DEADLINE_SQL} >= :now
               AND (CAST(:user_ids AS uuid[]) IS NULL OR user_id = ANY(CAST(:user_ids AS uuid[])))
             ORDER BY scheduled_send_time
             LIMIT :limit
             FOR UPDATE SKIP LOCKED) due
     WHERE m.id = due.id AND m.occasion_date = due.occasion_date
    RETURNING m.id, m.dispatch_token, m.next_attempt_at, m.occasion_date
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
) -> list[QueuedJob]:
    """PENDING -> QUEUED for rows due by `now + lead_s` and not past their deadline, oldest
    first, each with a fresh dispatch token.

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
    return [QueuedJob(*row) for row in rows]


_COUNT_DUE = text(
    f"""SELECT count(*) FROM messages
         WHERE status = '{PENDING}' AND scheduled_send_time <= :until
           AND {_DEADLINE_SQL} >= :now"""
)


def count_due(session: Session, now: datetime, *, lead_s: float, catch_up_hours: int) -> int:
    """How many rows `claim_due` would claim at `now` without a limit (the enqueue's split)."""
    params = {"now": now, "until": now + timedelta(seconds=lead_s), "hours": catch_up_hours}
    return int(session.scalar(_COUNT_DUE, params) or 0)


_REISSUE = text(
    f"""
    UPDATE messages
       SET status = '{QUEUED}', dispatch_token = gen_random_uuid(), updated_at = :now,
           queued_at = coalesce(queued_at, :now), lease_expires_at = NULL,
           next_attempt_at = greatest(scheduled_send_time, :now)
     WHERE id = ANY(:ids) AND status = ANY(:statuses)
    RETURNING id, dispatch_token, next_attempt_at, occasion_date
    """
)


def reissue(
    session: Session, ids: Iterable[uuid.UUID], statuses: Iterable[Status], now: datetime
) -> list[QueuedJob]:
    """`statuses` -> QUEUED with new tokens; the rows' old jobs become no-ops."""
    params = {"ids": list(ids), "statuses": [Status(s).value for s in statuses], "now": now}
    return [QueuedJob(*row) for row in session.execute(_REISSUE, params)]


_RELEASE = text(
    f"""UPDATE messages SET status = '{PENDING}', dispatch_token = NULL, queued_at = NULL
         WHERE id = :id AND status = '{QUEUED}' AND dispatch_token = :token"""
)


def release(session: Session, jobs: Iterable[QueuedJob]) -> None:
    """QUEUED -> PENDING for claims whose job could not be published (token must match)."""
    for job in jobs:
        session.execute(_RELEASE, {"id": job.message_id, "token": job.token})


_DUE_PENDING = text(
    f"""SELECT id FROM messages
         WHERE id = ANY(:ids) AND status = '{PENDING}' AND scheduled_send_time <= :now"""
)


def due_pending(session: Session, ids: Sequence[uuid.UUID], now: datetime) -> list[uuid.UUID]:
    """Which of `ids` are PENDING and due (the direct-send fallback sends those)."""
    return list(session.scalars(_DUE_PENDING, {"ids": list(ids), "now": now}))


# --- recovery ----------------------------------------------------------------------------------

_EXPIRE = text(
    f"""
    UPDATE messages
       SET status = '{Status.FAILED}', failure_reason = :reason, failed_at = :now,
           updated_at = :now, last_error = :error, lease_expires_at = NULL
     WHERE {_DEADLINE_SQL} < :now
       AND (status IN {UNSENT_SQL}
            OR (status = '{SENDING}' AND lease_expires_at < :now))
    """
)


def expire_overdue(
    session: Session, now: datetime, *, catch_up_hours: int, reason: str, error: str
) -> int:
    """Unfinished rows past their deadline (a SENDING one only once its lease ended) -> FAILED."""
    params = {"now": now, "hours": catch_up_hours, "reason": reason, "error": error}
    return _rowcount(session.execute(_EXPIRE, params))


_LOST = text(
    f"""
    SELECT id FROM messages
     WHERE (status = '{QUEUED}' AND next_attempt_at < :lost_before)
        OR (status = '{SENDING}' AND lease_expires_at < :now)
     ORDER BY scheduled_send_time
     LIMIT :limit
     FOR UPDATE SKIP LOCKED
    """
)


def lost(session: Session, now: datetime, *, grace_s: float, limit: int) -> list[uuid.UUID]:
    """QUEUED rows whose job should have run `grace_s` ago, and SENDING rows whose lease ended."""
    params = {"now": now, "lost_before": now - timedelta(seconds=grace_s), "limit": limit}
    return list(session.scalars(_LOST, params))


_FAILED_WITH_REASON = text(
    f"""
    SELECT id FROM messages
     WHERE status = '{Status.FAILED}' AND failure_reason = :reason
       AND scheduled_send_time >= :oldest
     ORDER BY scheduled_send_time
     LIMIT :limit
     FOR UPDATE SKIP LOCKED
    """
)


def failed_with_reason(
    session: Session, reason: str, *, oldest: datetime, limit: int
) -> list[uuid.UUID]:
    """FAILED rows with `reason`, scheduled since `oldest`, oldest first, locked."""
    params = {"reason": reason, "oldest": oldest, "limit": limit}
    return list(session.scalars(_FAILED_WITH_REASON, params))


_DEFERRED = text(
    f"""
    SELECT id FROM messages
     WHERE status = '{QUEUED}' AND deferrals > 0 AND next_attempt_at > :now
     ORDER BY scheduled_send_time
     LIMIT :limit
     FOR UPDATE SKIP LOCKED
    """
)


def deferred(session: Session, now: datetime, *, limit: int) -> list[uuid.UUID]:
    """QUEUED rows waiting out a deferral, oldest first, locked: whatever put them off (the
    breaker, the shared pace, a throttle), since the row keeps no cause. When the breaker
    closes, `drain_deferred` re-publishes them all; a paced or throttled one then asks the
    pacer again and waits for its turn, so re-publishing it early costs one job, never an
    early or extra send."""
    return list(session.scalars(_DEFERRED, {"now": now, "limit": limit}))


# The failure's time, reason and error stay: they are the row's history (why it went late),
# shown as such once the row is no longer FAILED; the next failure overwrites them.
_RESET_RETRIES = f"""UPDATE messages SET retry_count = 0{{deadline}}
                     WHERE id = ANY(:ids) AND status = '{Status.FAILED}'"""
_RESET_KEEPING_DEADLINE = text(_RESET_RETRIES.format(deadline=""))
_RESET_WITH_DEADLINE = text(_RESET_RETRIES.format(deadline=", send_deadline = :deadline"))


def reset_retries(session: Session, ids: Sequence[uuid.UUID]) -> None:
    """A FAILED row gets its retries back (recovery, DLQ replay); its deadline stays."""
    session.execute(_RESET_KEEPING_DEADLINE, {"ids": list(ids)})


def reset_for_replay(
    session: Session, ids: Sequence[uuid.UUID], *, deadline: datetime | None
) -> None:
    """`bday replay`: retries back and a new deadline (None: CATCH_UP_HOURS after the instant;
    a forced replay of an older row gets a fresh window)."""
    session.execute(_RESET_WITH_DEADLINE, {"ids": list(ids), "deadline": deadline})


_FAILED_FOR_REPLAY = text(
    f"""
    SELECT id, scheduled_send_time FROM messages
     WHERE status = '{Status.FAILED}'
       AND (CAST(:since AS timestamptz) IS NULL OR failed_at >= CAST(:since AS timestamptz))
       AND (CAST(:type AS text) IS NULL OR message_type = CAST(:type AS text))
     ORDER BY scheduled_send_time
     LIMIT :limit
     FOR UPDATE SKIP LOCKED
    """
)


def failed_for_replay(
    session: Session, *, since: datetime | None, message_type: str | None, limit: int | None
) -> Sequence[Row[Any]]:
    """FAILED rows (id, scheduled_send_time) failed since `since`, of a type, oldest first."""
    params = {"since": since, "type": message_type, "limit": limit}
    return session.execute(_FAILED_FOR_REPLAY, params).all()


# --- retention ---------------------------------------------------------------------------------

# Never a row of the last 366 days, whatever :keep_from says: this year's row of an occasion
# is what makes the planner skip it (its idempotency key), so it must outlive the year.
KEEP_DAYS_AT_LEAST = 366
_DELETE_FINISHED = """
    DELETE FROM {table} WHERE id IN (
        SELECT id FROM {table}
         WHERE occasion_date < :keep_from
           AND occasion_date < CAST(:now AS date) - {keep_days}
           AND scheduled_send_time
               < CAST(:now AS timestamptz) - make_interval(days => {keep_at_least})
           AND status IN {finished}
         ORDER BY occasion_date
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
    """


def delete_finished(
    session: Session, keep_from: date, now: datetime, *, limit: int, table: str = "messages"
) -> int:
    """Delete up to `limit` SENT/FAILED/CANCELLED rows whose occasion is before `keep_from`
    (and over a year old in any case), oldest first; rows locked by others are skipped.
    `table` is `messages` or one of its partitions (a name from `bday.store.partitions`):
    retention deletes by row only where it cannot drop a whole partition."""
    statement = _DELETE_FINISHED.format(
        table=table,
        keep_days=KEEP_DAYS_AT_LEAST + 1,
        keep_at_least=KEEP_DAYS_AT_LEAST,
        finished=_in(*FINISHED),
    )
    params = {"keep_from": keep_from, "now": now, "limit": limit}
    return _rowcount(session.execute(text(statement), params))


# --- reading -----------------------------------------------------------------------------------

_SUMMARY = text(
    """SELECT id, status, sent_at, failed_at, failure_reason, last_error FROM messages
        WHERE id = ANY(:ids)"""
)


def summaries(session: Session, ids: Sequence[uuid.UUID]) -> dict[str, Row[Any]]:
    """id -> (id, status, sent_at, failed_at, failure_reason, last_error) for the rows that
    exist."""
    return {str(row.id): row for row in session.execute(_SUMMARY, {"ids": list(ids)})}


_COUNTS = text("SELECT message_type, status, count(*) FROM messages GROUP BY 1, 2")
_OLDEST_OVERDUE = text(
    f"""SELECT id, scheduled_send_time FROM messages
         WHERE status IN {UNFINISHED_SQL} AND scheduled_send_time < :now
         ORDER BY scheduled_send_time LIMIT 1"""
)


_PLANNED_BY_INSTANT = text(
    f"""SELECT scheduled_send_time, count(*) FROM messages
         WHERE status IN {UNSENT_SQL}
           AND scheduled_send_time > :now AND scheduled_send_time <= :until
         GROUP BY scheduled_send_time ORDER BY scheduled_send_time"""
)
_DUE_NOW = text(
    f"""SELECT count(*) FROM messages
         WHERE status IN {UNFINISHED_SQL} AND scheduled_send_time <= :now"""
)


def planned_by_instant(
    connection: Any, now: datetime, until: datetime
) -> list[tuple[datetime, int]]:
    """PENDING/QUEUED rows due in (now, until], counted per instant, earliest first."""
    rows = connection.execute(_PLANNED_BY_INSTANT, {"now": now, "until": until})
    return [(at, int(count)) for at, count in rows]


def due_now(connection: Any, now: datetime) -> int:
    """Unfinished rows whose instant has come: the backlog still to send."""
    return int(connection.execute(_DUE_NOW, {"now": now}).scalar_one())


_STORAGE = text(
    """SELECT (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
                FROM pg_partition_tree('messages')),
              (SELECT min(occasion_date) FROM messages)"""
)


def storage(connection: Any) -> tuple[int, date | None]:
    """(bytes the table and its indexes take, every partition's, the oldest occasion kept)."""
    size, oldest = connection.execute(_STORAGE).one()
    return int(size), oldest


def counts(connection: Any) -> list[tuple[str, str, int]]:
    """(message_type, status, rows) for every combination present."""
    return [tuple(row) for row in connection.execute(_COUNTS)]


def oldest_overdue(connection: Any, now: datetime) -> Row[Any] | None:
    """The unfinished row longest past its instant: (id, scheduled_send_time), or None."""
    row: Row[Any] | None = connection.execute(_OLDEST_OVERDUE, {"now": now}).first()
    return row


_HISTORY = text(
    """
    SELECT * FROM messages
     WHERE (CAST(:user_id AS uuid) IS NULL OR user_id = CAST(:user_id AS uuid))
       AND (CAST(:status AS text) IS NULL OR status = CAST(:status AS text))
       AND (CAST(:since AS timestamptz) IS NULL
            OR scheduled_send_time >= CAST(:since AS timestamptz))
     ORDER BY scheduled_send_time DESC, id
     LIMIT :limit
    """
)


def history(
    session: Session,
    *,
    user_id: uuid.UUID | None,
    status: Status | None,
    since: datetime | None,
    limit: int,
) -> Sequence[Row[Any]]:
    """Rows of any status, newest instant first, optionally of one user, status or period."""
    params = {
        "user_id": user_id,
        "status": status.value if status else None,
        "since": since,
        "limit": limit,
    }
    return session.execute(_HISTORY, params).all()


_ONE = text("SELECT * FROM messages WHERE id = :id")


def one(session: Session, message_id: uuid.UUID) -> Row[Any] | None:
    """Every column of one row, or None."""
    row: Row[Any] | None = session.execute(_ONE, {"id": message_id}).first()
    return row


_STATUS_BY_KEY = text(
    f"""SELECT idempotency_key, status FROM messages
         WHERE idempotency_key = ANY(:keys) AND status <> '{Status.CANCELLED}'"""
)


def live_status_by_key(session: Session, keys: Sequence[str]) -> dict[str, str]:
    """idempotency key -> status of its live (non-CANCELLED) row, for the keys that have one."""
    rows = session.execute(_STATUS_BY_KEY, {"keys": list(keys)})
    return {key: status for key, status in rows}  # noqa: C416 - rows are Row, not pairs


# --- the hot path of one send (raw psycopg, prepared) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row a worker now holds (SENDING), with what the send needs from its user."""

    id: uuid.UUID
    message_type: str
    scheduled_send_time: datetime
    retry_count: int
    email: str
    first_name: str
    last_name: str
    user_deleted: bool
    send_deadline: datetime | None
    occasion_date: date
    original_date: date | None  # the birthday or first working day the occasion marks
    locale: str | None


# The rows of a batch of jobs, each job's (id, token) joined to its row. Jobs that carry their
# row's occasion date are joined on (id, occasion_date) and bounded by the batch's first and
# last date: PostgreSQL then reads only the partitions of those months (usually one) whatever
# join it picks (a hash join over the unfinished rows' index, say, would otherwise read every
# partition's). A job without one (published before the date was carried) is joined on its id
# alone, every partition's primary key probed.
_JOBS = "unnest(CAST(%(ids)s AS uuid[]), CAST(%(tokens)s AS uuid[])) AS j(id, token)"
_JOBS_DATED = (
    "unnest(CAST(%(ids)s AS uuid[]), CAST(%(tokens)s AS uuid[]), CAST(%(days)s AS date[]))"
    " AS j(id, token, day)"
)
_DATED = " AND m.occasion_date = j.day AND m.occasion_date BETWEEN %(first)s AND %(last)s"

_CLAIM_MANY = f"""
    UPDATE messages m
       SET status = '{SENDING}', lease_expires_at = %(lease_until)s, attempts = m.attempts + 1,
           updated_at = %(now)s
      FROM users u, {{jobs}}
     WHERE m.id = j.id{{dated}} AND u.id = m.user_id
       AND (m.status IN {UNSENT_SQL}
            OR (m.status = '{SENDING}' AND m.lease_expires_at < %(now)s))
       AND (j.token IS NULL OR m.dispatch_token IS NULL OR m.dispatch_token = j.token)
       AND m.scheduled_send_time <= %(now)s
    RETURNING m.id, m.message_type, m.scheduled_send_time, m.retry_count,
              u.email, u.first_name, u.last_name, u.deleted_at IS NOT NULL, m.send_deadline,
              m.occasion_date,
              CASE m.message_type WHEN 'BIRTHDAY' THEN u.birthday ELSE u.anniversary END,
              u.locale
    """
_CLAIM_BY_ID = _CLAIM_MANY.format(jobs=_JOBS, dated="")
_CLAIM_DATED = _CLAIM_MANY.format(jobs=_JOBS_DATED, dated=_DATED)

Days = Mapping[uuid.UUID, date]  # a row's occasion date (its partition key), where known


def _split(rows: Sequence[Any], days: Days | None) -> tuple[list[Any], list[Any]]:
    """`rows` (tuples whose first item is a row id) whose date is known, each with its date
    appended, and those without, both in id order (rows are locked in that order, so two
    statements sharing rows cannot deadlock)."""
    dated, by_id = [], []
    for row in sorted(rows, key=lambda row: row[0]):
        day = days.get(row[0]) if days else None
        if day is None:
            by_id.append(row)
        else:
            dated.append((*row, day))
    return dated, by_id


def claim_many(
    jobs: Sequence[tuple[uuid.UUID, uuid.UUID | None]],
    now: datetime,
    lease_until: datetime,
    *,
    days: Days | None = None,
) -> dict[uuid.UUID, Claimed]:
    """PENDING/QUEUED (or SENDING whose lease ended) -> SENDING for each (id, token) job whose
    token matches and whose instant has come; the rows claimed, by id. One statement for the
    jobs whose row's occasion date `days` gives (one partition looked in per job), one for
    the others, if any.

    Each id must appear once (a row joined twice would come back once, claimed for both)."""
    if not jobs:
        return {}
    claimed: dict[uuid.UUID, Claimed] = {}
    common = {"now": now, "lease_until": lease_until}
    with fast_autocommit() as connection:
        for statement, group in zip((_CLAIM_DATED, _CLAIM_BY_ID), _split(jobs, days), strict=True):
            if group:
                params = {**common, **_columns(group, "ids", "tokens", "days")}
                rows = connection.execute(statement, params, prepare=True).fetchall()
                claimed.update((row[0], Claimed(*row)) for row in rows)
    return claimed


def _columns(rows: Sequence[Sequence[Any]], *names: str) -> dict[str, Any]:
    """Rows as one array parameter per column, named `names` (extra names are left out); rows
    with a date (the last name, `days`) also give the batch's `first` and `last` date."""
    columns = {name: [row[k] for row in rows] for k, name in enumerate(names) if k < len(rows[0])}
    if "days" in columns:
        columns |= {"first": min(columns["days"]), "last": max(columns["days"])}
    return columns


_RECORD_SENT = f"""
    UPDATE messages m
       SET status = '{Status.SENT}', sent_at = %(now)s, updated_at = %(now)s,
           lease_expires_at = NULL, provider_status = j.status, provider_response = j.response,
           sent_via = %(via)s, subject = j.subject, body = j.body
      FROM unnest(CAST(%(ids)s AS uuid[]), CAST(%(statuses)s AS integer[]),
                  CAST(%(responses)s AS text[]), CAST(%(subjects)s AS text[]),
                  CAST(%(bodies)s AS text[]){{days}})
           AS j(id, status, response, subject, body{{day}})
     WHERE m.id = j.id{{dated}} AND m.status = '{SENDING}'
    """
_RECORD_SENT_BY_ID = _RECORD_SENT.format(days="", day="", dated="")
_RECORD_SENT_DATED = _RECORD_SENT.format(
    days=", CAST(%(days)s AS date[])", day=", day", dated=_DATED
)

# (id, the service's status, its answer, the subject sent, the body sent)
Sent = tuple[uuid.UUID, int, str, str | None, str | None]


def record_sent(
    sent: Sequence[Sent], now: datetime, via: str = "queue", *, days: Days | None = None
) -> int:
    """SENDING -> SENT for each greeting the service accepted, with the words it carried;
    returns rows changed (a row recovery took back meanwhile is left alone). `days`: the
    rows' occasion dates (one partition looked in per row), as for `claim_many`."""
    if not sent:
        return 0
    changed = 0
    names = ("ids", "statuses", "responses", "subjects", "bodies", "days")
    with fast_autocommit() as connection:
        for statement, group in zip(
            (_RECORD_SENT_DATED, _RECORD_SENT_BY_ID), _split(sent, days), strict=True
        ):
            if group:
                params = {"now": now, "via": via, **_columns(group, *names)}
                changed += connection.execute(statement, params, prepare=True).rowcount
    return changed


_MARK_SENT = f"""UPDATE messages SET status = '{Status.SENT}', sent_at = %(now)s,
                        updated_at = %(now)s, lease_expires_at = NULL,
                        provider_status = %(status)s, provider_response = %(response)s,
                        sent_via = %(via)s, subject = %(subject)s, body = %(body)s
                  WHERE id = %(id)s"""

_OUTCOMES = {
    # After a database outage: the row may be SENDING still, or taken back by recovery.
    "sent_late": _MARK_SENT + f" AND status IN {UNFINISHED_SQL}",
    "retry": f"""UPDATE messages SET status = '{QUEUED}', retry_count = retry_count + 1,
                        last_error = %(error)s, provider_status = %(status)s,
                        updated_at = %(now)s, next_attempt_at = %(next_at)s,
                        lease_expires_at = NULL
                  WHERE id = %(id)s AND status = '{SENDING}'""",
    "failed": f"""UPDATE messages SET status = '{Status.FAILED}', failed_at = %(now)s,
                         updated_at = %(now)s, failure_reason = %(reason)s,
                         last_error = %(error)s, provider_status = %(status)s,
                         lease_expires_at = NULL
                   WHERE id = %(id)s AND status IN {UNFINISHED_SQL}""",
    "cancelled": f"""UPDATE messages SET status = '{Status.CANCELLED}', cancelled_at = %(now)s,
                            updated_at = %(now)s, lease_expires_at = NULL
                      WHERE id = %(id)s AND status IN {UNFINISHED_SQL}""",
    # A failed probe or a throttle (a 429, an SMTP "too fast"): back to QUEUED without
    # spending a retry; the row's deferrals count it instead.
    "put_back": f"""UPDATE messages SET status = '{QUEUED}', deferrals = deferrals + 1,
                           last_error = %(error)s, provider_status = %(status)s,
                           updated_at = %(now)s, next_attempt_at = %(next_at)s,
                           lease_expires_at = NULL
                     WHERE id = %(id)s AND status = '{SENDING}'""",
    # Not a status change: the row waits (breaker open, paced) and says until when. Only its
    # current job may say so: a superseded one changes nothing (and then ends).
    "deferred": f"""UPDATE messages SET deferrals = deferrals + 1, next_attempt_at = %(next_at)s,
                           updated_at = %(now)s
                     WHERE id = %(id)s AND status IN {UNSENT_SQL}
                       AND (CAST(%(token)s AS uuid) IS NULL OR dispatch_token IS NULL
                            OR dispatch_token = CAST(%(token)s AS uuid))""",
}
OUTCOMES = frozenset(_OUTCOMES)
# Each statement ends in its WHERE clause: the row's occasion date narrows it to one partition.
_OUTCOMES_DATED = {
    kind: statement + " AND occasion_date = %(occasion_date)s"
    for kind, statement in _OUTCOMES.items()
}


def record_outcome(
    kind: str,
    message_id: uuid.UUID,
    now: datetime,
    *,
    occasion_date: date | None = None,
    **values: Any,
) -> int:
    """Record one outcome of a send on its row (`kind` is one of OUTCOMES: `sent_late`,
    `failed` and `cancelled` finish it, `retry` and `put_back` send it back to QUEUED,
    `deferred` only says until when it waits); returns rows changed. `occasion_date`, when
    known, is the row's (its partition key): one partition is looked in instead of all."""
    statement = (_OUTCOMES if occasion_date is None else _OUTCOMES_DATED)[kind]
    params = {
        "id": message_id,
        "occasion_date": occasion_date,
        "now": now,
        "status": None,
        "error": None,
        "reason": None,
        "response": None,
        "next_at": None,
        "token": None,
        "via": "queue",
        "subject": None,
        "body": None,
        **values,
    }
    with fast_autocommit() as connection:
        return connection.execute(statement, params, prepare=True).rowcount


_CURRENT_STATE = """SELECT status, dispatch_token, scheduled_send_time, lease_expires_at
                      FROM messages WHERE id = %(id)s"""
_CURRENT_STATE_DATED = _CURRENT_STATE + " AND occasion_date = %(occasion_date)s"


def current_state(
    message_id: uuid.UUID, occasion_date: date | None = None
) -> tuple[str, uuid.UUID | None, datetime, datetime | None] | None:
    """(status, dispatch_token, scheduled_send_time, lease_expires_at), or None if unknown
    (with `occasion_date`: unknown with that date, the row's partition key)."""
    statement = _CURRENT_STATE if occasion_date is None else _CURRENT_STATE_DATED
    params = {"id": message_id, "occasion_date": occasion_date}
    with fast_autocommit() as connection:
        row = connection.execute(statement, params, prepare=True).fetchone()
    return (row[0], row[1], row[2], row[3]) if row else None
