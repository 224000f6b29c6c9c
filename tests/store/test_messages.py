"""The message state machine, statement by statement, against the real database: each status
change moves a row from exactly its legal previous states and leaves every other state alone
(docs/state-machine.md). Rows are built at a fixed instant, so no test depends on the date."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from bday.devtools import factories
from bday.store import messages
from bday.store.db import transaction
from bday.store.models import Status

pytestmark = pytest.mark.usefixtures("database")

NOW = datetime(2027, 3, 5, 9, 0, 30, tzinfo=UTC)
AT = NOW - timedelta(seconds=30)  # the row's send instant: due, well inside its deadline
TOKEN = uuid.UUID(int=7)
ALL = list(Status)
UNSENT = {Status.PENDING, Status.QUEUED}
UNFINISHED = {Status.PENDING, Status.QUEUED, Status.SENDING}
FINISHED = {Status.SENT, Status.FAILED, Status.CANCELLED}


def _row(status: Status, *, at: datetime = AT, lease_over: bool = False) -> uuid.UUID:
    """One message in `status` (a SENDING row's lease running, or over), with TOKEN."""
    user = factories.user_row()
    lease = NOW + (timedelta(seconds=-1) if lease_over else timedelta(minutes=5))
    row = factories.message_row(
        user["id"],
        at,
        status=status,
        dispatch_token=TOKEN,
        lease_expires_at=lease if status is Status.SENDING else None,
        next_attempt_at=at,
    )
    with transaction() as session:
        factories.insert(session, [user], [row])
    return row["id"]


def _state(message_id: uuid.UUID) -> tuple[str, int, int] | None:
    """(status, retry_count, deferrals) of the row, None once deleted."""
    with transaction() as session:
        found = session.execute(
            text("SELECT status, retry_count, deferrals FROM messages WHERE id = :id"),
            {"id": message_id},
        ).first()
    return (found[0], found[1], found[2]) if found else None


def _in_session(change: Callable) -> Callable[[uuid.UUID], object]:
    def apply(message_id: uuid.UUID) -> object:
        with transaction() as session:
            return change(session, message_id)

    return apply


def _outcome(kind: str, **values) -> Callable[[uuid.UUID], object]:
    return lambda message_id: messages.record_outcome(kind, message_id, NOW, **values)


NEXT = {"next_at": NOW + timedelta(seconds=30), "error": "HTTP 503", "status": 503}

# name -> (apply to one row id, legal previous states, the status it ends in)
TRANSITIONS: dict[str, tuple[Callable[[uuid.UUID], object], set[Status], Status]] = {
    "claim_due": (
        _in_session(
            lambda s, _id: messages.claim_due(s, NOW, lead_s=60, catch_up_hours=48, limit=10)
        ),
        {Status.PENDING},
        Status.QUEUED,
    ),
    "release": (
        _in_session(
            lambda s, row_id: messages.release(s, [messages.QueuedJob(row_id, TOKEN, NOW)])
        ),
        {Status.QUEUED},
        Status.PENDING,
    ),
    "reissue": (
        _in_session(
            lambda s, row_id: messages.reissue(
                s, [row_id], [Status.QUEUED, Status.SENDING, Status.FAILED], NOW
            )
        ),
        {Status.QUEUED, Status.SENDING, Status.FAILED},
        Status.QUEUED,
    ),
    "claim_many": (
        lambda row_id: messages.claim_many([(row_id, TOKEN)], NOW, NOW + timedelta(minutes=5)),
        UNSENT,  # a SENDING row only once its lease is over (below)
        Status.SENDING,
    ),
    "record_sent": (
        lambda row_id: messages.record_sent([(row_id, 200, "{}", "Hi", "Hey")], NOW),
        {Status.SENDING},
        Status.SENT,
    ),
    "sent_late": (
        _outcome("sent_late", status=200, response="{}"),
        UNFINISHED,
        Status.SENT,
    ),
    "retry": (_outcome("retry", **NEXT), {Status.SENDING}, Status.QUEUED),
    "put_back": (_outcome("put_back", **NEXT), {Status.SENDING}, Status.QUEUED),
    "failed": (
        _outcome("failed", reason="permanent", error="HTTP 400", status=400),
        UNFINISHED,
        Status.FAILED,
    ),
    "cancelled": (_outcome("cancelled"), UNFINISHED, Status.CANCELLED),
    "cancel": (
        _in_session(lambda s, row_id: messages.cancel(s, [row_id], NOW)),
        UNSENT,
        Status.CANCELLED,
    ),
}


@pytest.mark.parametrize("previous", ALL, ids=lambda status: status.value)
@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_each_status_change_moves_only_its_legal_previous_states(name, previous):
    apply, legal, after = TRANSITIONS[name]
    row_id = _row(previous)
    apply(row_id)
    status = _state(row_id)[0]
    assert status == (after if previous in legal else previous).value


@pytest.mark.parametrize(
    ("kind", "retries", "deferrals"),
    [("retry", 1, 0), ("put_back", 0, 1)],
)
def test_a_retry_spends_a_retry_and_a_deferral_spends_none(kind, retries, deferrals):
    row_id = _row(Status.SENDING)
    assert messages.record_outcome(kind, row_id, NOW, **NEXT) == 1
    assert _state(row_id) == (Status.QUEUED.value, retries, deferrals)


@pytest.mark.parametrize("previous", ALL, ids=lambda status: status.value)
def test_a_deferral_changes_no_status_and_counts_only_on_unsent_rows(previous):
    row_id = _row(previous)
    changed = messages.record_outcome("deferred", row_id, NOW, next_at=NOW + timedelta(seconds=5))
    assert changed == (1 if previous in UNSENT else 0)
    assert _state(row_id) == (previous.value, 0, changed)


def test_a_deferral_from_a_superseded_job_changes_nothing():
    row_id = _row(Status.QUEUED)
    stale = uuid.UUID(int=8)
    assert messages.record_outcome("deferred", row_id, NOW, next_at=NOW, token=stale) == 0
    assert messages.record_outcome("deferred", row_id, NOW, next_at=NOW, token=TOKEN) == 1


def test_a_worker_takes_a_sending_row_only_once_its_lease_is_over():
    held, abandoned = _row(Status.SENDING), _row(Status.SENDING, lease_over=True)
    claimed = messages.claim_many(
        [(held, TOKEN), (abandoned, TOKEN)], NOW, NOW + timedelta(minutes=5)
    )
    assert set(claimed) == {abandoned}


def test_a_job_whose_token_is_not_the_rows_claims_nothing():
    row_id = _row(Status.QUEUED)
    assert messages.claim_many([(row_id, uuid.UUID(int=8))], NOW, NOW) == {}
    assert _state(row_id)[0] == Status.QUEUED.value


def test_nothing_is_claimed_before_its_instant():
    row_id = _row(Status.QUEUED, at=NOW + timedelta(seconds=1))
    assert messages.claim_many([(row_id, TOKEN)], NOW, NOW) == {}


def _expire(now: datetime) -> None:
    with transaction() as session:
        messages.expire_overdue(session, now, catch_up_hours=48, reason="expired", error="late")


@pytest.mark.parametrize("previous", ALL, ids=lambda status: status.value)
def test_an_overdue_row_expires_from_any_unfinished_state_once_no_send_holds_it(previous):
    row_id = _row(previous)  # a SENDING row's lease ends 5 minutes after NOW
    _expire(NOW + timedelta(hours=49))  # past CATCH_UP_HOURS=48 after the instant
    assert _state(row_id)[0] == (Status.FAILED if previous in UNFINISHED else previous).value


def test_a_send_still_holding_its_lease_is_not_expired_under_it():
    row_id = _row(Status.SENDING)
    with transaction() as session:
        session.execute(
            text("UPDATE messages SET lease_expires_at = :until WHERE id = :id"),
            {"until": NOW + timedelta(hours=50), "id": row_id},
        )
    _expire(NOW + timedelta(hours=49))
    assert _state(row_id)[0] == Status.SENDING.value


@pytest.mark.parametrize("previous", ALL, ids=lambda status: status.value)
def test_retention_deletes_only_finished_rows_over_a_year_old(previous):
    old = _row(previous, at=NOW - timedelta(days=400))
    recent = _row(previous, at=NOW - timedelta(days=300))
    with transaction() as session:
        messages.delete_finished(session, (NOW - timedelta(days=1)).date(), NOW, limit=100)
    assert (_state(old) is None) == (previous in FINISHED)
    assert _state(recent) is not None
