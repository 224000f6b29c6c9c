"""Opt-out (all or per type, through the API, the CLI and the planner) and erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import text

from bday.ops.status import read_database
from bday.scheduling import jobs, planner
from bday.store.db import engine, transaction
from bday.store.models import Kind, Message, Status, User
from bday.users import api as users
from bday.users.api import UserInputError, UserNotFound
from tests.harness.cli import bday
from tests.users.test_api import ADA, messages

pytestmark = pytest.mark.usefixtures("database")

BEFORE_NINE = datetime(2027, 3, 4, 15, 0, tzinfo=UTC)  # Tokyo's 09:00 on Mar 5 is 00:00 UTC


def _statuses(user_id) -> dict[str, str]:
    return {m.message_type: m.status for m in messages(user_id) if m.status != Status.CANCELLED}


@time_machine.travel(BEFORE_NINE, tick=False)
def test_opting_out_of_one_type_cancels_its_unsent_row_and_keeps_the_other():
    user_id = users.create_user(**{**ADA, "anniversary": "2015-03-05"})
    users.set_opt_out(user_id, "birthday")
    assert _statuses(user_id) == {"ANNIVERSARY": Status.PENDING}
    assert users.get_user(user_id).opted_out() == {Kind.BIRTHDAY}
    with transaction() as session:  # the beat's planner does not plan it either
        assert planner.plan(session, planner.Window.around(BEFORE_NINE, _settings())) == 0


@time_machine.travel(BEFORE_NINE, tick=False)
def test_opting_out_of_all_plans_nothing_even_at_creation():
    user_id = users.create_user(**{**ADA, "anniversary": "2015-03-05", "opt_out": "all"})
    assert messages(user_id) == []
    assert jobs.plan_job(BEFORE_NINE)["planned"] == 0


def test_turning_greetings_back_on_owes_nothing_for_an_instant_that_passed_meanwhile():
    with time_machine.travel(BEFORE_NINE, tick=False):
        user_id = users.create_user(**ADA)
        users.set_opt_out(user_id, "all")
    with time_machine.travel(datetime(2027, 3, 5, 1, 0, tzinfo=UTC), tick=False):  # 10:00 JST
        users.set_opt_out(user_id, "none")
        assert _statuses(user_id) == {}  # today's 09:00 passed while opted out
        assert jobs.plan_job()["planned"] == 0
    with time_machine.travel(datetime(2028, 3, 4, 15, 0, tzinfo=UTC), tick=False):
        assert jobs.plan_job()["planned"] == 1  # next year's is owed again


@time_machine.travel(BEFORE_NINE, tick=False)
def test_turning_back_on_before_the_instant_plans_it_again():
    user_id = users.create_user(**ADA)
    users.set_opt_out(user_id, "all")
    users.set_opt_out(user_id, None)
    assert _statuses(user_id) == {"BIRTHDAY": Status.PENDING}


@time_machine.travel(BEFORE_NINE, tick=False)
def test_the_occasion_hook_respects_an_opt_out():
    from bday.users.hooks import on_birthday_hook

    user_id = users.create_user(**{**ADA, "opt_out": "birthday"})
    assert on_birthday_hook(user_id) is None and messages(user_id) == []


@pytest.mark.parametrize("value", ["sometimes", "birthdays", 3, ["CHRISTMAS"]])
def test_a_bad_opt_out_is_refused_by_name(value):
    with pytest.raises(UserInputError, match="^opt_out: "):
        users.create_user(**{**ADA, "opt_out": value})


@time_machine.travel(BEFORE_NINE, tick=False)
def test_the_cli_sets_and_clears_an_opt_out_and_refuses_a_bad_one(monkeypatch, capsys):
    user_id = users.create_user(**ADA)
    code, out, _ = bday(monkeypatch, capsys, "users", "update", str(user_id), "--opt-out", "all")
    assert code == 0 and _statuses(user_id) == {}
    code, _, err = bday(monkeypatch, capsys, "users", "update", str(user_id), "--opt-out", "x")
    assert code == 2 and err.startswith("bday: opt_out: 'x' is not one of")
    assert users.get_user(user_id).opted_out() == set(Kind)


def _settings():
    from bday.config import get_settings

    return get_settings()


# --- erasure -----------------------------------------------------------------------------------

ERASED_EMAIL = "ada.secret@example.com"


def _text_columns() -> list[tuple[str, str]]:
    query = text(
        """SELECT table_name, column_name FROM information_schema.columns
            WHERE table_schema = 'public'
              AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'character')
              -- a partition's rows are its parent's (messages): each is scanned once
              AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)"""
    )
    with engine().connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def _tables_holding(needle: str) -> list[str]:
    found = []
    with engine().connect() as connection:
        for table, column in _text_columns():
            hit = connection.execute(
                text(f'SELECT 1 FROM "{table}" WHERE strpos(lower("{column}"::text), :n) > 0'),
                {"n": needle.lower()},
            ).first()
            if hit:
                found.append(f"{table}.{column}")
    return found


def _answered(user_id, status: Status, when: datetime) -> None:
    """A finished row whose stored answers quote the address, as a service might."""
    with transaction() as session:
        session.add(
            Message(
                user_id=user_id,
                message_type="BIRTHDAY",
                status=status.value,
                occasion_date=when.date(),
                scheduled_send_time=when,
                idempotency_key=f"{user_id}:BIRTHDAY:{when.date()}",
                provider_status=200 if status == Status.SENT else 400,
                provider_response=f'{{"to": "{ERASED_EMAIL}", "status": "queued"}}',
                last_error=f"HTTP 400: bad recipient {ERASED_EMAIL.upper()}",
            )
        )


@time_machine.travel(BEFORE_NINE, tick=False)
def test_an_erased_users_email_and_name_appear_in_no_text_column_and_counts_hold(
    monkeypatch, capsys
):
    user_id = users.create_user(**{**ADA, "email": ERASED_EMAIL, "first_name": "Augusta"})
    _answered(user_id, Status.SENT, datetime(2026, 3, 5, 0, 0, tzinfo=UTC))
    _answered(user_id, Status.FAILED, datetime(2025, 3, 5, 0, 0, tzinfo=UTC))
    users.create_user(**{**ADA, "email": "bob@example.com", "first_name": "Bob"})
    with engine().begin() as connection:
        connection.execute(
            text("INSERT INTO circuit_breakers (name, last_error) VALUES ('x', :e)"),
            {"e": f"HTTP 500: cannot deliver to {ERASED_EMAIL}"},
        )
    assert "users.email" in _tables_holding(ERASED_EMAIL)  # the scan finds it before
    assert len(_tables_holding(ERASED_EMAIL)) == 4
    before = read_database()
    code, out, _ = bday(monkeypatch, capsys, "users", "erase", ERASED_EMAIL, "--yes")
    assert code == 0 and out == f"erased {user_id}\n"
    assert _tables_holding(ERASED_EMAIL) == [] and _tables_holding("Augusta") == []
    after = read_database()
    assert after.by_status[Status.SENT] == before.by_status[Status.SENT] == 1
    assert after.by_status[Status.FAILED] == before.by_status[Status.FAILED] == 1
    assert sum(after.by_status.values()) == sum(before.by_status.values())
    # the pending greeting of the erased user was cancelled; Bob's is untouched
    assert after.by_status[Status.PENDING] == before.by_status[Status.PENDING] - 1 == 1
    with pytest.raises(UserNotFound):
        users.get_user(user_id)
    code, out, _ = bday(monkeypatch, capsys, "messages", "list", "--user", str(user_id))
    assert out.startswith("3 message(s)")  # history stays, anonymous
    with transaction() as session:
        erased = session.get(User, user_id)
        assert erased.erased_at is not None and erased.email.endswith("@erased.invalid")


@time_machine.travel(BEFORE_NINE, tick=False)
def test_erase_frees_the_address_for_a_new_user_and_is_idempotent():
    first = users.create_user(**ADA)
    assert users.erase_user(ADA["email"]) == first
    second = users.create_user(**ADA)
    assert users.erase_user(first) == first  # again: nothing more to do
    assert users.get_user(second).email == ADA["email"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["users", "erase", "nobody@example.com", "--yes"],
            "bday: user nobody@example.com not found",
        ),
        (["users", "erase", "123", "--yes"], "bday: user 123 not found"),
        (
            ["users", "erase", "ada@example.com"],
            "bday: erase cannot be undone: confirm on a terminal, or pass --yes",
        ),
    ],
)
def test_erase_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, args, expected):
    users.create_user(**ADA)
    code, out, err = bday(monkeypatch, capsys, *args)
    assert (code, out, err) == (2, "", expected + "\n")
    assert users.find_user("ada@example.com").erased_at is None


@time_machine.travel(BEFORE_NINE, tick=False)
def test_erasing_by_address_erases_the_user_it_names_and_reports_an_earlier_record():
    """Issue 20: erasure touches the named user only; another row holding the same address
    (here an earlier, deleted record) is reported by id, and erased when it is named."""
    old = users.create_user(**{**ADA, "first_name": "Former"})
    users.delete_user(old)
    current = users.create_user(**ADA)
    erasure = users.erase(ADA["email"].upper())
    assert (erasure.user_id, erasure.others) == (current, [old])
    assert _tables_holding("Former") == ["users.first_name"]  # the earlier record, untouched
    assert users.erase_user(old) == old
    assert _tables_holding(ADA["email"]) == [] and _tables_holding("Former") == []


@time_machine.travel(BEFORE_NINE, tick=False)
def test_an_answer_stored_after_erasure_by_a_send_in_flight_is_cleared_by_recovery():
    """The send was with the service when its user was erased: its answer comes back after
    the erasure. The next recovery run clears it, and leaves other users' answers alone."""
    from bday.store import messages as store

    erased = users.create_user(**{**ADA, "email": ERASED_EMAIL})
    kept = users.create_user(**{**ADA, "email": "bob@example.com", "first_name": "Bob"})
    in_flight, bobs = (messages(u)[0].id for u in (erased, kept))
    now = datetime.now(UTC)
    with engine().begin() as connection:
        connection.execute(
            text("UPDATE messages SET status = 'SENDING', lease_expires_at = :until"),
            {"until": now + timedelta(seconds=60)},
        )
    users.erase_user(erased)
    answer = f'{{"to": "{ERASED_EMAIL}"}}'
    sent = [
        (in_flight, 200, answer, "Hi", f"Hey {ERASED_EMAIL}"),
        (bobs, 200, '{"to": "bob"}', "Hi", "Hey Bob"),
    ]
    assert store.record_sent(sent, now) == 2
    assert sorted(_tables_holding(ERASED_EMAIL)) == ["messages.body", "messages.provider_response"]
    result = jobs.recover_job(now, service_answering=True)
    assert result["forgot_late_answers"] == 1
    assert _tables_holding(ERASED_EMAIL) == []
    by_id = {m.id: m for m in messages()}
    assert by_id[in_flight].status == by_id[bobs].status == Status.SENT  # counts hold
    assert by_id[bobs].provider_response == '{"to": "bob"}' and by_id[bobs].body == "Hey Bob"
