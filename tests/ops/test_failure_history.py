"""A greeting that failed, was replayed and then delivered is shown as delivered, with its
failure as history: `bday messages show` and `bday dlq list` never present it as failed.

The row goes the real way (claim, a permanent 400, `bday replay`, claim, the 200 recorded) on
the real database; the dead job in the DLQ is the one a worker's rejection leaves there.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kombu import Connection, Exchange, Producer

from bday.broker.topology import topology
from bday.config import get_settings
from bday.devtools import factories
from bday.store import messages
from bday.store.db import engine, transaction
from tests.harness.cli import bday
from tests.harness.queues import declare_topology, purge_all

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("database", "empty_queues")]

ERROR = 'HTTP 400: {"error": "refused"}'


@pytest.fixture
def empty_queues() -> Iterator[None]:
    declare_topology()
    yield
    purge_all()


def _due_message() -> uuid.UUID:
    """A PENDING birthday of Ada's due a minute ago. Built with the factories, not through
    create_user: its hook plans Ada's own birthday, which met this row's key on her birthday."""
    when = datetime.now(UTC) - timedelta(minutes=1)
    user = factories.user_row(
        "Ada", "Lovelace", email="ada@example.com", birthday=factories.born_on(when.date())
    )
    row = factories.message_row(user["id"], when)
    with transaction() as session:
        factories.insert(session, [user], [row])
    return row["id"]


def _claim(message_id: uuid.UUID) -> None:
    with engine().connect() as connection:
        token = connection.exec_driver_sql(
            "SELECT dispatch_token FROM messages WHERE id = %(id)s", {"id": message_id}
        ).scalar()
    now = datetime.now(UTC)
    assert messages.claim_many([(message_id, token)], now, now + timedelta(seconds=30))


def _fail_permanently(message_id: uuid.UUID) -> datetime:
    _claim(message_id)
    failed_at = datetime.now(UTC)
    changed = messages.record_outcome(
        "failed", message_id, failed_at, reason="permanent", error=ERROR, status=400
    )
    assert changed == 1
    return failed_at


def _dead_letter(message_id: uuid.UUID) -> None:
    """The job as RabbitMQ dead-letters it after the worker rejected it."""
    dlq = topology().dead_letter_queue
    with Connection(get_settings().rabbitmq_url) as connection:
        Producer(connection.channel()).publish(
            json.dumps([[str(message_id)], {}, {}]),
            exchange=Exchange(""),
            routing_key=dlq.name,
            content_type="application/json",
            headers={
                "task": "bday.tasks.send_message",
                "x-death": [{"reason": "rejected", "queue": topology().send_queue.name}],
            },
        )


def _show(monkeypatch, capsys, message_id: uuid.UUID) -> tuple[list[str], dict]:
    code, out, _ = bday(monkeypatch, capsys, "messages", "show", str(message_id))
    assert code == 0
    code, as_json, _ = bday(monkeypatch, capsys, "messages", "show", str(message_id), "--json")
    assert code == 0
    return out.splitlines(), json.loads(as_json)


def _dlq(monkeypatch, capsys) -> tuple[str, dict]:
    code, out, _ = bday(monkeypatch, capsys, "dlq", "list")
    assert code == 0
    code, as_json, _ = bday(monkeypatch, capsys, "dlq", "list", "--json")
    [job] = json.loads(as_json)
    return out, job


def test_a_replayed_greeting_that_was_delivered_shows_its_failure_as_history(monkeypatch, capsys):
    message_id = _due_message()
    failed_at = _fail_permanently(message_id)
    _dead_letter(message_id)

    lines, shown = _show(monkeypatch, capsys, message_id)  # FAILED: the failure is current
    assert lines[0] == "status:              FAILED"
    assert f"last_error:          {ERROR}" in lines and "earlier failure:" not in "\n".join(lines)
    assert (shown["failure_reason"], shown["earlier_failure"]) == ("permanent", None)
    out, job = _dlq(monkeypatch, capsys)
    assert f"row: FAILED (permanent: {ERROR})" in out

    code, out, _ = bday(monkeypatch, capsys, "replay")
    assert (code, out) == (0, "re-queued 1 message(s)\n")
    _claim(message_id)
    sent_at = datetime.now(UTC)
    assert (
        messages.record_sent([(message_id, 200, '{"status": "sent"}', "Hi", "Hey")], sent_at) == 1
    )

    earlier = f"permanent at {failed_at.isoformat()} ({ERROR})"
    lines, shown = _show(monkeypatch, capsys, message_id)
    assert lines[0] == "status:              SENT"
    assert not [line for line in lines if line.split(":")[0] in messages_failure_fields()]
    assert f"sent_at:             {sent_at.isoformat()}" in lines
    assert "provider_status:     200" in lines
    assert lines[-1] == f"earlier failure:     {earlier}"
    assert (shown["status"], shown["failed_at"], shown["last_error"]) == ("SENT", None, None)
    assert shown["earlier_failure"] == {
        "at": failed_at.isoformat(),
        "reason": "permanent",
        "error": ERROR,
    }

    out, job = _dlq(monkeypatch, capsys)
    assert f"row: SENT at {sent_at.isoformat()} (earlier failure: {earlier})" in out
    assert "FAILED" not in out and "row: SENT (" not in out
    assert (job["status"], job["reason"], job["error"]) == ("SENT", None, None)
    assert job["sent_at"] == sent_at.isoformat()
    assert job["earlier_failure"]["error"] == ERROR

    with transaction() as session:  # the store keeps the failure: it is why the row was late
        row = messages.one(session, message_id)
    assert row is not None
    assert (row.failed_at, row.failure_reason, row.last_error) == (failed_at, "permanent", ERROR)


def messages_failure_fields() -> set[str]:
    return {"failed_at", "failure_reason", "last_error"}


def test_a_row_never_failed_shows_no_earlier_failure(monkeypatch, capsys):
    message_id = _due_message()
    lines, shown = _show(monkeypatch, capsys, message_id)
    assert lines[0] == "status:              PENDING"
    assert lines[-1] == "earlier failure:     none" and shown["earlier_failure"] is None
