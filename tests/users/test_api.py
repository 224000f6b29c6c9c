"""Users through the Python API: validation, and the greetings each change plans or cancels."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import func, select

from bday.store.db import transaction
from bday.store.models import Message, Status, User
from bday.users import api as users
from bday.users.api import UserInputError, UserNotFound

pytestmark = pytest.mark.usefixtures("database")

ADA = dict(
    first_name="Ada",
    last_name="Lovelace",
    email="ada@example.com",
    birthday="1990-03-05",
    timezone="Asia/Tokyo",
)


def messages(user_id=None) -> list[Message]:
    query = select(Message).order_by(Message.scheduled_send_time, Message.created_at)
    if user_id is not None:
        query = query.where(Message.user_id == user_id)
    with transaction() as session:
        return list(session.scalars(query))


def user_count() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(User))


# --- validation ---------------------------------------------------------------------------------

INVALID = [
    ("first_name", ""),
    ("first_name", "   "),
    ("first_name", "x" * 101),
    ("first_name", "x" * 10_000),
    ("first_name", "Ada\x00"),
    ("first_name", "Ada\nLovelace"),
    ("first_name", None),
    ("last_name", ""),
    ("last_name", "\t"),
    ("email", "not-an-email"),
    ("email", "ada@"),
    ("email", "@example.com"),
    ("email", "ada@example..com"),
    ("email", "ada lovelace@example.com"),
    ("email", "'; DROP TABLE users; --@x.com"),
    ("email", ""),
    ("birthday", "1990-02-30"),
    ("birthday", "1990-13-01"),
    ("birthday", "2999-01-01"),
    ("birthday", "05/03/1990"),
    ("birthday", "1990-3-5"),
    ("birthday", "1850-01-01"),
    ("birthday", ""),
    ("birthday", "'; DROP TABLE users; --"),
    ("timezone", "Mars/Olympus"),
    ("timezone", ""),
    ("timezone", "asia/tokyo"),
    ("timezone", "GMT+25"),
    ("timezone", "localtime"),
    ("anniversary", "2021-02-29"),
    ("anniversary", "yesterday"),
    # invisible or layout-breaking names (issue 16, class 4)
    ("first_name", "\u200b"),  # only a zero-width space
    ("first_name", "\u200f"),  # only a right-to-left mark
    ("first_name", "\u200b\u200c\u200d\u2060\ufeff"),
    ("first_name", "\u0301\u0301"),  # combining marks with nothing to sit on
    ("first_name", "\u3164"),  # Hangul filler: a "letter" that renders as nothing
    ("last_name", "Love\u2028lace"),  # a line separator splits `bday users list` output
    ("last_name", "Love\u2029lace"),
    ("last_name", "Ada\u202egnp.exe"),  # a right-to-left override
    ("last_name", "\u2066Ada\u2069"),  # an isolate
    ("first_name", "Ad\udcffa"),  # an undecodable byte, as Python decodes it from argv
    ("first_name", "Ad\ud800a"),  # a lone surrogate PostgreSQL cannot store
    ("email", "a" * 65 + "@example.com"),  # RFC 5321: 64 octets before the @
    ("email", "é" * 33 + "@example.com"),  # 33 characters, 66 octets
    ("email", "ada\udcff@example.com"),
    ("timezone", "Asia/Tokyo\udcff"),
    # the anniversary decision (class 7)
    ("anniversary", "2100-01-01"),
    ("anniversary", "1980-01-01"),  # before the birthday
]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_create_user_refuses_a_bad_field_by_name_and_writes_nothing(field, value):
    with pytest.raises(UserInputError) as caught:
        users.create_user(**{**ADA, field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert "\n" not in str(caught.value)
    assert user_count() == 0 and messages() == []


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("first_name", "  Ada  ", "Ada"),
        ("first_name", "Анна-Мария", "Анна-Мария"),
        ("first_name", "李", "李"),
        ("last_name", "🎂 O'Brien", "🎂 O'Brien"),
        ("first_name", "x" * 100, "x" * 100),
        ("email", "Ada.Lovelace@Example.COM", "ada.lovelace@example.com"),
        ("timezone", "Etc/GMT+12", "Etc/GMT+12"),
        ("timezone", "America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
        ("timezone", "UTC", "UTC"),
        ("birthday", date(2000, 2, 29), date(2000, 2, 29)),
        (
            "first_name",
            "\u200f\u062f\u0627\u0648\u062f",
            "\u200f\u062f\u0627\u0648\u062f",
        ),  # a mark beside visible letters stays
        ("last_name", "👩\u200d💻", "👩\u200d💻"),  # a zero-width joiner inside an emoji
        ("email", "a" * 64 + "@example.com", "a" * 64 + "@example.com"),
        ("anniversary", "1990-03-05", date(1990, 3, 5)),  # the birthday itself is not before it
        ("anniversary", "  ", None),  # blank means none, as '' does
    ],
)
def test_create_user_accepts_and_normalises_valid_fields(field, value, stored):
    user_id = users.create_user(**{**ADA, field: value})
    assert getattr(users.get_user(user_id), field) == stored


def test_an_email_used_by_a_live_user_is_refused_whatever_its_case():
    users.create_user(**ADA)
    with pytest.raises(UserInputError, match="email: is already used"):
        users.create_user(**{**ADA, "email": "ADA@EXAMPLE.COM"})
    assert user_count() == 1


def test_a_deleted_users_email_can_be_reused():
    users.delete_user(users.create_user(**ADA))
    users.create_user(**ADA)
    assert len(users.list_users()) == 1


def test_update_refuses_an_unknown_field_and_keeps_the_user():
    user_id = users.create_user(**ADA)
    with pytest.raises(UserInputError, match=r"^shoe_size: "):
        users.update_user(user_id, shoe_size=42)
    with pytest.raises(UserInputError, match=r"^timezone: "):
        users.update_user(user_id, timezone="Mars/Olympus", first_name="Eve")
    assert users.get_user(user_id).first_name == "Ada"


def test_unknown_and_deleted_users_are_not_found():
    user_id = users.create_user(**ADA)
    users.delete_user(user_id)
    for missing in (user_id, uuid.uuid4(), "not-a-uuid"):
        with pytest.raises(UserNotFound):
            users.get_user(missing)
        with pytest.raises(UserNotFound):
            users.update_user(missing, first_name="Eve")
        with pytest.raises(UserNotFound):
            users.delete_user(missing)


def test_valid_neighbours_are_unaffected_by_a_refused_user():
    users.create_user(**ADA)
    with pytest.raises(UserInputError):
        users.create_user(**{**ADA, "email": "bob@example.com", "timezone": "Nowhere/Land"})
    users.create_user(**{**ADA, "email": "bob@example.com"})
    assert [u.email for u in users.list_users()] == ["ada@example.com", "bob@example.com"]


# --- planning through the hooks -----------------------------------------------------------------


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_creating_a_user_plans_their_greeting_at_nine_local():
    user_id = users.create_user(**ADA)  # Tokyo: 09:00 JST on Mar 5 is 00:00 UTC
    [row] = messages(user_id)
    assert (row.message_type, row.status) == ("BIRTHDAY", Status.PENDING)
    assert row.scheduled_send_time == datetime(2027, 3, 5, 0, 0, tzinfo=UTC)
    assert row.idempotency_key == f"{user_id}:BIRTHDAY:2027-03-05"


@time_machine.travel(datetime(2027, 3, 5, 0, 0, 1, tzinfo=UTC), tick=False)
def test_a_user_created_after_nine_on_their_birthday_gets_nothing():
    user_id = users.create_user(**ADA)  # one second after 09:00 JST
    assert messages(user_id) == []


@pytest.mark.broker  # due within the enqueue lead: the hook publishes its job
@time_machine.travel(datetime(2027, 3, 4, 23, 59, 59, tzinfo=UTC), tick=False)
def test_a_user_created_a_second_before_nine_is_owed():
    user_id = users.create_user(**ADA)
    assert len(messages(user_id)) == 1


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_a_user_whose_birthday_is_tomorrow_everywhere_is_not_planned_yet():
    user_id = users.create_user(**{**ADA, "birthday": "1990-03-07"})
    assert messages(user_id) == []


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_an_anniversary_is_planned_beside_the_birthday():
    user_id = users.create_user(**{**ADA, "anniversary": "2015-03-05"})
    assert sorted(m.message_type for m in messages(user_id)) == ["ANNIVERSARY", "BIRTHDAY"]


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_changing_the_zone_cancels_the_old_row_and_plans_the_new_instant():
    user_id = users.create_user(**ADA)
    users.update_user(user_id, timezone="America/New_York")
    old, new = messages(user_id)
    assert old.status == Status.CANCELLED and old.cancelled_at is not None
    assert new.status == Status.PENDING
    assert new.scheduled_send_time == datetime(2027, 3, 5, 14, 0, tzinfo=UTC)
    assert new.idempotency_key == old.idempotency_key  # same local date, same occasion


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_changing_the_birthday_cancels_the_old_row():
    user_id = users.create_user(**ADA)
    users.update_user(user_id, birthday="1990-06-01")
    assert [m.status for m in messages(user_id)] == [Status.CANCELLED]


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_changing_only_the_name_keeps_the_planned_row():
    user_id = users.create_user(**ADA)
    users.update_user(user_id, first_name="Augusta")
    assert [m.status for m in messages(user_id)] == [Status.PENDING]


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_removing_the_anniversary_cancels_its_row_only():
    user_id = users.create_user(**{**ADA, "anniversary": "2015-03-05"})
    users.update_user(user_id, anniversary=None)
    statuses = {m.message_type: m.status for m in messages(user_id)}
    assert statuses == {"ANNIVERSARY": Status.CANCELLED, "BIRTHDAY": Status.PENDING}


@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_deleting_a_user_cancels_their_unsent_greetings_and_keeps_sent_ones():
    user_id = users.create_user(**{**ADA, "anniversary": "2015-03-05"})
    with transaction() as session:
        session.execute(
            Message.__table__.update()
            .where(Message.user_id == user_id, Message.message_type == "ANNIVERSARY")
            .values(status=Status.SENT)
        )
    users.delete_user(user_id)
    statuses = {m.message_type: m.status for m in messages(user_id)}
    assert statuses == {"ANNIVERSARY": Status.SENT, "BIRTHDAY": Status.CANCELLED}


def test_a_zone_change_on_the_same_date_after_sending_does_not_plan_a_second_greeting():
    with time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False):
        user_id = users.create_user(**ADA)
    with transaction() as session:
        session.execute(Message.__table__.update().values(status=Status.SENT))
    with time_machine.travel(datetime(2027, 3, 5, 1, 0, tzinfo=UTC), tick=False):
        users.update_user(user_id, timezone="America/New_York")  # 09:00 in NY is still ahead
    assert [m.status for m in messages(user_id)] == [Status.SENT]


# --- wrong types: say what was given and what is expected (class 5) ----------------------------

WRONG_TYPES = [
    ("birthday", 19900305, "expected a date or 'YYYY-MM-DD' string, got int 19900305"),
    ("birthday", 19900305.0, "expected a date or 'YYYY-MM-DD' string, got float 19900305.0"),
    ("birthday", b"1990-03-05", "expected a date or 'YYYY-MM-DD' string, got bytes b'1990-03-05'"),
    ("birthday", True, "expected a date or 'YYYY-MM-DD' string, got bool True"),
    ("birthday", Decimal("1990"), "expected a date or 'YYYY-MM-DD' string, got Decimal('1990')"),
    ("anniversary", 0, "expected a date or 'YYYY-MM-DD' string, got int 0"),
    ("anniversary", False, "expected a date or 'YYYY-MM-DD' string, got bool False"),
    ("timezone", 9, "expected an IANA name such as Europe/London, got int 9"),
    ("first_name", 5, "expected a string, got int 5"),
    ("last_name", ["Lovelace"], "expected a string, got list ['Lovelace']"),
    ("email", ["ada@example.com"], "expected a string, got list ['ada@example.com']"),
    ("first_name", None, "is required (a string)"),
    ("birthday", datetime(1990, 3, 5), "must be a date, not a date and time"),
]


@pytest.mark.parametrize(("field", "value", "problem"), WRONG_TYPES)
def test_a_value_of_the_wrong_type_is_named_with_what_was_expected(field, value, problem):
    with pytest.raises(UserInputError) as caught:
        users.create_user(**{**ADA, field: value})
    assert str(caught.value) == f"{field}: {problem}"
    assert user_count() == 0


def test_a_zoneinfo_is_accepted_by_its_iana_key():
    user_id = users.create_user(**{**ADA, "timezone": ZoneInfo("Europe/Paris")})
    assert users.get_user(user_id).timezone == "Europe/Paris"


def test_an_undecodable_byte_is_reported_as_not_utf8_not_as_a_control_character():
    with pytest.raises(UserInputError) as caught:
        users.create_user(**{**ADA, "first_name": "Ad\udcffa"})
    assert str(caught.value) == "first_name: is not valid UTF-8 (the byte 0xff)"


def test_an_anniversary_in_the_future_or_before_the_birthday_is_refused_by_name():
    with pytest.raises(UserInputError, match=r"^anniversary: 2100-01-01 is in the future$"):
        users.create_user(**{**ADA, "anniversary": "2100-01-01"})
    with pytest.raises(
        UserInputError, match=r"^anniversary: 1980-01-01 is before the birthday 1990-03-05$"
    ):
        users.create_user(**{**ADA, "anniversary": "1980-01-01"})
    assert user_count() == 0


# --- update_user keeps its promise (class 6) ---------------------------------------------------


@pytest.mark.parametrize("missing", ["garbage", uuid.uuid4()], ids=["garbage", "unknown-uuid"])
def test_update_user_with_no_changes_still_raises_user_not_found(missing):
    with pytest.raises(UserNotFound):
        users.update_user(missing)


def test_update_user_with_no_changes_on_a_live_user_changes_nothing():
    user_id = users.create_user(**ADA)
    users.update_user(user_id)
    assert users.get_user(user_id).first_name == "Ada"
