"""`bday messages list|show` and `bday preview`: their output, and one line, exit 2, for bad input."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from bday.store.db import transaction
from bday.store.models import Message, Status, idempotency_key
from bday.users import api as users
from tests.harness.cli import bday

pytestmark = pytest.mark.usefixtures("database")


def _user(email: str, birthday: str = "1990-03-05", zone: str = "Asia/Tokyo", **extra) -> uuid.UUID:
    return users.create_user(
        first_name=email.split("@")[0].title(),
        last_name="Tester",
        email=email,
        birthday=birthday,
        timezone=zone,
        **extra,
    )


def _message(user_id: uuid.UUID, status: Status, when: datetime, **values) -> uuid.UUID:
    message_id = uuid.uuid4()
    with transaction() as session:
        session.add(
            Message(
                id=message_id,
                user_id=user_id,
                message_type="BIRTHDAY",
                status=status.value,
                occasion_date=when.date(),
                scheduled_send_time=when,
                idempotency_key=idempotency_key(user_id, "BIRTHDAY", when.date()),
                **values,
            )
        )
    return message_id


def _count() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def test_messages_list_shows_one_users_rows_by_id_or_email_with_filters(monkeypatch, capsys):
    ada, bob = _user("ada@example.com"), _user("bob@example.com")
    now = datetime.now(UTC).replace(microsecond=0)
    sent = _message(ada, Status.SENT, now - timedelta(days=3), sent_at=now, attempts=1)
    _message(ada, Status.FAILED, now - timedelta(days=400), attempts=6)
    _message(bob, Status.SENT, now - timedelta(days=1))
    code, out, _ = bday(monkeypatch, capsys, "messages", "list", "--user", "ADA@example.com")
    assert code == 0 and out.startswith("2 message(s)\n") and str(bob) not in out
    code, out, _ = bday(
        monkeypatch, capsys, "messages", "list", "--user", str(ada), "--since", "7d"
    )
    assert out.startswith("1 message(s)\n") and str(sent) in out and "SENT" in out
    code, out, _ = bday(monkeypatch, capsys, "messages", "list", "--status", "failed", "--json")
    rows = json.loads(out)
    assert [(row["status"], row["attempts"]) for row in rows] == [("FAILED", 6)]


def test_messages_show_prints_every_counter_timestamp_and_answer(monkeypatch, capsys):
    ada = _user("ada@example.com")
    now = datetime.now(UTC).replace(microsecond=0)
    message_id = _message(
        ada,
        Status.SENT,
        now,
        sent_at=now,
        attempts=3,
        retry_count=2,
        deferrals=1,
        provider_status=200,
        provider_response='{"ok": true}',
        sent_via="queue",
        last_error="HTTP 503",
        subject="Alles Gute, Ada!",
        body="Liebe Ada,\nalles Gute!",
    )
    code, out, _ = bday(monkeypatch, capsys, "messages", "show", str(message_id))
    assert code == 0
    assert f"body:{' ' * 16}Liebe Ada,\n{' ' * 21}alles Gute!\n" in out
    lines = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert lines["subject"].strip() == "Alles Gute, Ada!"
    assert lines["attempts"].strip() == "3" and lines["retry_count"].strip() == "2"
    assert lines["deferrals"].strip() == "1" and lines["sent_via"].strip() == "queue"
    assert lines["provider_response"].strip() == '{"ok": true}'
    assert "last_error" not in lines and "failure_reason" not in lines  # SENT: history only
    assert lines["earlier failure"].strip() == "retried after HTTP 503"
    assert lines["sent_at"].strip() == now.isoformat()
    code, out, _ = bday(monkeypatch, capsys, "messages", "show", str(message_id), "--json")
    assert json.loads(out)["provider_status"] == 200


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["messages", "list", "--user", "nobody@example.com"],
            "bday: user nobody@example.com not found",
        ),
        (["messages", "list", "--user", "not-an-id"], "bday: user not-an-id not found"),
        (["messages", "list", "--status", "DONE"], "Invalid value for '--status'"),
        (["messages", "list", "--since", "7x"], "Invalid value for --since"),
        (
            ["messages", "show", str(uuid.UUID(int=1))],
            f"bday: message {uuid.UUID(int=1)} not found",
        ),
        (["messages", "show", "nope"], "bday: message nope not found"),
        (["preview", "--date", "2026-02-30"], "Invalid value for '--date'"),
        (["preview", "--date", "tomorrow"], "Invalid value for '--date'"),
        (["preview", "--zone", "Mars/Olympus"], "bday: timezone: unknown IANA time zone"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, args, expected):
    _user("ada@example.com")
    before = _count()
    code, out, err = bday(monkeypatch, capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and expected in err
    assert _count() == before


# The users must exist before the previewed instants (owed, docs/contract.md behaviour 2): the
# clock stands before 2027-03-05 whatever the date the suite runs on.
BEFORE_MARCH_5 = time_machine.travel(datetime(2027, 1, 15, 12, tzinfo=UTC), tick=False)


@BEFORE_MARCH_5
def test_preview_lists_who_is_owed_on_a_local_date_with_both_instants_and_counts(
    monkeypatch, capsys
):
    tokyo = _user("ada@example.com", "1990-03-05", "Asia/Tokyo")
    london = _user("bob@example.com", "1980-03-05", "Europe/London", anniversary="2015-03-05")
    _user("cy@example.com", "1980-03-06", "Pacific/Kiritimati")  # the 6th: not on the 5th
    _user("di@example.com", "1980-03-04", "Pacific/Pago_Pago")  # the 4th (UTC 5th): not either
    before = _count()
    code, out, _ = bday(monkeypatch, capsys, "preview", "--date", "2027-03-05")
    assert code == 0
    assert out.splitlines()[0] == "3 greeting(s) owed on 2027-03-05"
    assert "2027-03-05 00:00Z  09:00 +0900 Asia/Tokyo" in out and str(tokyo) in out
    assert out.count(str(london)) == 2
    assert out.splitlines()[-2:] == ["  2027-03-05 00:00Z  1", "  2027-03-05 09:00Z  2"]
    code, out, _ = bday(
        monkeypatch, capsys, "preview", "--date", "2027-03-05", "--zone", "Europe/London", "--json"
    )
    report = json.loads(out)
    assert {row["message_type"] for row in report["owed"]} == {"BIRTHDAY", "ANNIVERSARY"}
    assert report["owed"][0]["send_at_local"] == "2027-03-05T09:00:00+00:00"
    assert report["by_instant"] == [{"at": "2027-03-05T09:00:00+00:00", "count": 2}]
    assert _count() == before  # nothing written


@BEFORE_MARCH_5
def test_preview_shows_the_status_of_a_greeting_already_planned(monkeypatch, capsys):
    ada = _user("ada@example.com", "1990-03-05", "Asia/Tokyo")
    _message(ada, Status.QUEUED, datetime(2027, 3, 5, 0, 0, tzinfo=UTC))
    code, out, _ = bday(monkeypatch, capsys, "preview", "--date", "2027-03-05")
    assert code == 0 and out.splitlines()[1].endswith("[QUEUED]")
    code, out, _ = bday(monkeypatch, capsys, "preview", "--date", "2028-03-05")
    assert out.splitlines()[1].endswith("[not planned yet]")


@BEFORE_MARCH_5
def test_preview_shows_the_words_each_greeting_will_carry_in_its_users_language(
    monkeypatch, capsys, tmp_path, settings_env
):
    for name, words in {
        "birthday.subject.txt": "Happy birthday",
        "birthday.body.txt": "Happy $age, $first_name",
        "anniversary.subject.txt": "Anniversary",
        "anniversary.body.txt": "$years years",
        "de/birthday.subject.txt": "Alles Gute",
        "de/birthday.body.txt": "Alles Gute zum $age., $first_name",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(words, encoding="utf-8")
    settings_env.setenv("TEMPLATES_DIR", str(tmp_path))
    _user("ada@example.com", "1990-03-05", "Europe/Vienna", locale="de-AT")
    _user("bob@example.com", "1980-03-05", "Europe/London", anniversary="2015-03-05")
    code, out, _ = bday(monkeypatch, capsys, "preview", "--date", "2027-03-05")
    assert code == 0
    assert "      body:    Alles Gute zum 37., Ada\n" in out
    assert "      body:    Happy 47, Bob\n" in out and "      body:    12 years\n" in out
    assert "      subject: Alles Gute\n" in out
