"""Hostile and careless input, generated: `bday users add`, `bday users import` and
`create_user` never answer with a traceback, exit only with a documented code (0 done, 1 an
import that refused some rows, 2 refused), write nothing when they refuse, and an import keeps
or names every row.

The examples are bounded (MAX_EXAMPLES each, 60 unless BDAY_PROPERTY_EXAMPLES says otherwise)
so the suite stays fast in CI; run with `--hypothesis-seed=N` to replay a failure.
"""

from __future__ import annotations

import itertools
import os
import re
import unicodedata
import uuid
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from bday.store.db import transaction
from bday.users import api as users
from bday.users import fields as field_rules
from bday.users.api import UserInputError
from tests.harness.cli import bday

pytestmark = pytest.mark.usefixtures("database")

MAX_EXAMPLES = int(os.environ.get("BDAY_PROPERTY_EXAMPLES", "60"))
PROPERTY = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FIELDS = ("first_name", "last_name", "email", "birthday", "timezone", "anniversary")
ZONES = ["Asia/Tokyo", "UTC", "Etc/GMT+12", "America/St_Johns", "Pacific/Chatham"]
_serial = itertools.count()

# Values a careless operator or a hostile user has been seen to type, plus their cousins.
NASTY = [
    "",
    " ",
    "\u200b",
    "\u200f",
    "\u3164",
    "\u0301",
    "Ada\u2028Lovelace",
    "Ada\u2029",
    "\u202egnp.exe",
    "\u2066Ada\u2069",
    "Ad\udcffa",
    "\ud800",
    "Ada\x00",
    "Ada\x1c",
    "Ada\x85",
    "Ada\r\n",
    "\ufeff",
    "'; DROP TABLE users; --",
    "{first_name}",
    "%s%s%n",
    '"',
    '","',
    "\\",
    "x" * 101,
    "x" * 2_000,
    "a" * 65 + "@example.com",
    "ada@example.com\n",
    "ada@@example.com",
    "²",
    "19900305",
    "\uff11\uff19\uff19\uff10-03-05",  # full-width digits
    "1990-03-05T00:00",
    "0001-01-01",
    "1899-12-31",
    "2100-01-01",
    "9999-12-31",
    "99999999999999999999",
    "-1",
    "NaN",
    "inf",
    "Asia/Tokyo\x00",
    "asia/tokyo",
    "../../etc/passwd",
    "UTC ",
    "localtime",
]


def fingerprint() -> str:
    """A digest of every users row, to prove that a refusal wrote nothing."""
    with transaction() as session:
        return session.execute(
            text("SELECT coalesce(md5(string_agg(u::text, ',' ORDER BY id)), '') FROM users u")
        ).scalar_one()


def live_count() -> int:
    return users.count_users()


# --- strategies ---------------------------------------------------------------------------------


def valid_value(field: str, serial: int) -> st.SearchStrategy[str]:
    visible = st.characters(categories=["L"], exclude_characters="\u115f\u1160\u3164\uffa0")
    letters = st.text(visible, min_size=1, max_size=20)
    birthday = st.dates(date(1900, 1, 1), date(2000, 12, 31)).map(date.isoformat)
    return {
        "first_name": letters,
        "last_name": letters,
        "email": st.just(f"user.{serial}.{uuid.uuid4().hex[:8]}@example.com"),
        "birthday": birthday,
        "timezone": st.sampled_from(ZONES),
        "anniversary": st.sampled_from(["", "2001-01-01", "2020-02-29"]),
    }[field]


# One character that must never reach a stored name, between visible letters.
DANGEROUS = "\u2028\u2029\u202e\u2066\x85\x1c\x0b\x0c\r\x00\udcff\ud800"
sandwich = st.builds(
    "{}{}{}".format,
    st.text("Ada", min_size=1, max_size=3),
    st.sampled_from(DANGEROUS) | st.characters(categories=["Cc", "Cf", "Zl", "Zp"]),
    st.text("Lovelace", max_size=3),
)

hostile_text = st.one_of(
    st.sampled_from(NASTY),
    sandwich,
    st.text(max_size=60),
    st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs", "Mn", "Co"]), max_size=8),
    st.builds("".join, st.lists(st.sampled_from(NASTY), min_size=2, max_size=3)),
)


@st.composite
def valid_user(draw) -> dict:
    serial = next(_serial)
    return {field: draw(valid_value(field, serial)) for field in FIELDS}


@st.composite
def user_fields(draw, hostile: st.SearchStrategy) -> dict:
    """All six fields valid but up to two, which are drawn from `hostile`."""
    values = draw(valid_user())
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=0, max_size=2, unique=True)):
        values[field] = draw(hostile)
    return values


python_values = st.one_of(
    hostile_text,
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=12),
    st.decimals(),
    st.dates(),
    st.datetimes(),
    st.lists(st.text(max_size=5), max_size=2),
)


def attempt(fields: dict) -> tuple[uuid.UUID | None, UserInputError | None]:
    """create_user's id, or its refusal; any other exception fails the test."""
    try:
        return users.create_user(**fields), None
    except UserInputError as exc:
        return None, exc


# --- create_user --------------------------------------------------------------------------------


def issue_16(**changes) -> dict:
    """A valid user with the issue's reported values in place: always run, never left to luck."""
    return {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": f"issue16.{next(_serial)}@example.com",
        "birthday": "1990-03-05",
        "timezone": "Asia/Tokyo",
        "anniversary": "",
        **changes,
    }


ISSUE_16 = [
    issue_16(first_name="\u200b"),
    issue_16(first_name="\u200f"),
    issue_16(last_name="Love\u2028lace"),
    issue_16(last_name="Ada\u202egnp.exe"),
    issue_16(first_name="Ad\udcffa"),
    issue_16(email="a" * 65 + "@example.com"),
    issue_16(anniversary="2100-01-01"),
    issue_16(anniversary="1980-01-01"),
]


def with_issue_examples(test):
    for fields in ISSUE_16:
        test = example(fields=fields)(test)
    return test


@PROPERTY
@given(fields=user_fields(python_values))
@with_issue_examples
def test_create_user_stores_a_valid_user_or_refuses_by_field_writing_nothing(fields):
    before = fingerprint()
    user_id, refusal = attempt(fields)
    event("refused" if refusal else "stored")
    if refusal is not None:
        assert refusal.field in FIELDS and str(refusal).startswith(f"{refusal.field}: ")
        assert "\n" not in str(refusal) and len(str(refusal)) < 300
        assert fingerprint() == before
        return
    stored = users.get_user(user_id)
    values = {field: getattr(stored, field) for field in FIELDS}
    assert field_rules.clean_user_fields(values) == values  # what is stored passes the same rules


# --- bday users add -----------------------------------------------------------------------------


@PROPERTY
@given(fields=user_fields(hostile_text))
@with_issue_examples
def test_users_add_exits_0_with_an_id_or_2_with_one_line_and_nothing_written(
    monkeypatch, capsys, fields
):
    before, count = fingerprint(), live_count()
    args = ["users", "add"]
    for field, value in fields.items():
        args += [f"--{field.replace('_', '-')}", value]
    code, out, err = bday(monkeypatch, capsys, *args)
    event(f"exit {code}")
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and out == ""
        assert fingerprint() == before
        return
    assert uuid.UUID(out.strip()) and live_count() == count + 1
    listing = bday(monkeypatch, capsys, "users", "list", "--no-header")[1]
    assert len(listing.splitlines()) == count + 1  # one user, one line: no separator got in


# --- bday users import --------------------------------------------------------------------------

HEADER = ",".join(FIELDS)
REPORT_LINE = re.compile(r"^  line (\d+): ")


def csv_line(values: dict) -> str:
    return ",".join(values[field] for field in FIELDS)


hostile_line = st.one_of(
    st.text(max_size=80),
    st.sampled_from(NASTY),
    st.builds(csv_line, user_fields(hostile_text)),
    st.builds(lambda values: csv_line(values).replace(",", ',"', 1), valid_user()),
    st.builds(lambda values: csv_line(values) + ",surplus", valid_user()),
    st.builds(lambda values: csv_line(values).rsplit(",", 1)[0], valid_user()),
).map(lambda line: line.replace("\n", " ").encode("utf-8", "surrogatepass"))

import_lines = st.lists(
    st.one_of(
        valid_user().map(lambda values: ("valid", values)),
        hostile_line.map(lambda raw: ("hostile", raw)),
        st.binary(max_size=40).map(lambda raw: ("hostile", raw.replace(b"\n", b" "))),
    ),
    min_size=1,
    max_size=12,
)


def is_row(raw: bytes) -> bool:
    """Whether the importer counts this line as a row (blank lines are not rows)."""
    try:
        return bool(raw.decode("utf-8").strip())
    except UnicodeDecodeError:
        return True


def write_import(path: Path, lines: list[tuple[str, dict | bytes]]) -> list[bytes]:
    raws = [csv_line(item).encode() if kind == "valid" else item for kind, item in lines]
    path.write_bytes(b"\n".join([HEADER.encode(), *raws]) + b"\n")
    return raws


@PROPERTY
@given(lines=import_lines)
@example(  # the issue's file: an unmatched quote on line 3 swallowed lines 4 and 5
    lines=[
        ("valid", issue_16()),
        ("hostile", b'Eve,"Doe,eve@example.com,1990-01-01,UTC,'),
        ("valid", issue_16()),
        ("valid", issue_16()),
    ]
)
@example(  # a field over the csv module's limit refused the whole file
    lines=[("hostile", csv_line(issue_16(last_name="x" * 131_073)).encode()), ("valid", issue_16())]
)
def test_users_import_keeps_or_names_every_row_and_exits_0_or_1(
    monkeypatch, capsys, tmp_path, lines
):
    path = tmp_path / "hostile.csv"
    raws = write_import(path, lines)
    before, count = fingerprint(), live_count()
    code, out, err = bday(monkeypatch, capsys, "users", "import", str(path))
    event(f"exit {code}")
    assert "Traceback" not in err
    summary = re.fullmatch(r"imported (\d+) of (\d+) row\(s\); (\d+) refused", out.splitlines()[0])
    imported, total, refused = (int(n) for n in summary.groups())
    named = [int(m[1]) for m in map(REPORT_LINE.match, out.splitlines()[1:]) if m]
    assert total == sum(map(is_row, raws)) and imported + refused == total
    assert len(named) == len(set(named)) == refused
    assert set(named) <= {number for number, raw in enumerate(raws, 2) if is_row(raw)}
    assert code == (1 if refused else 0)
    assert live_count() == count + imported and (fingerprint() == before) == (imported == 0)
    stored = {user.email for user in users.list_users()}
    for number, (kind, item) in enumerate(lines, 2):
        if kind == "valid":
            assert item["email"].lower() in stored or number in named, number


# --- emails: normalised first, then validated (issue 20) ----------------------------------------

# Letters whose lowercase is longer in UTF-8 than they are (İ: 2 bytes, then 3), or changes
# under NFC, beside plain ones: the lengths must hold for what is stored, not what was typed.
GROWING = "İȺȾⱯÅΩKẞǅ"
local_parts = st.text(
    st.sampled_from(GROWING) | st.characters(categories=["Ll", "Lu", "Nd"]) | st.just("."),
    min_size=1,
    max_size=70,
)
addresses = st.one_of(
    st.builds(
        "{}@{}".format,
        local_parts,
        st.sampled_from(["example.com", "EXAMPLE.COM", "bücher.example", "xn--bcher-kva.example"]),
    ),
    st.builds(  # near the 254-byte limit: under it as typed, maybe over it lowercased
        "{}@{}.example".format,
        st.text("aİ", min_size=1, max_size=40),
        st.integers(150, 200).map(lambda n: ".".join(["b" * 60] * (n // 61) + ["c" * (n % 61)])),
    ),
    hostile_text,
)


@PROPERTY
@given(email=addresses)
@example(email="İ" * 32 + "@example.com")  # the issue's: 64 bytes typed, 96 stored
@example(email="İ" * 21 + "@example.com")  # 63 bytes stored: accepted
def test_an_email_is_validated_as_it_is_stored(email):
    try:
        stored = field_rules.clean_email(email)
    except UserInputError as exc:
        refusal = exc
    else:
        refusal = None
    if refusal is not None:
        event("refused")
        assert refusal.field == "email" and "\n" not in str(refusal)
        return
    event("stored")
    assert stored == stored.lower() == unicodedata.normalize("NFC", stored)
    assert len(stored.rpartition("@")[0].encode()) <= 64 and len(stored.encode()) <= 254
    assert field_rules.clean_email(stored) == stored  # what is stored passes the same rules again


# --- export then import: every storable name comes back as it was (issue 20) ------------------

# Names as a spreadsheet or a hostile user might write them: formula starts, quotes, commas,
# apostrophes, any script; whatever clean_name stores must survive export -> import --sync.
name_text = st.text(
    st.sampled_from("=+-@'\",; \tAéß中😀") | st.characters(categories=["L", "N", "P", "S", "Zs"]),
    min_size=1,
    max_size=30,
)


def storable(field: str, value: str) -> str | None:
    try:
        return field_rules.clean_name(field, value)
    except UserInputError:
        return None


@PROPERTY
@given(names=st.lists(st.tuples(name_text, name_text), min_size=1, max_size=3))
@example(names=[("=1+1", "'@SUM(A1)"), ("''-2", "+x")])
def test_any_stored_name_survives_export_then_import_sync(
    monkeypatch, capsys, tmp_path_factory, names
):
    stored = [(storable("first_name", a), storable("last_name", b)) for a, b in names]
    stored = [(a, b) for a, b in stored if a and b]
    assume(stored)
    with transaction() as session:
        session.execute(text("TRUNCATE users CASCADE"))
    for first, last in stored:
        users.create_user(
            first_name=first,
            last_name=last,
            email=f"rt.{next(_serial)}@example.com",
            birthday="1990-01-01",
            timezone="UTC",
        )
    exported = tmp_path_factory.mktemp("rt") / "out.csv"
    code, _, err = bday(monkeypatch, capsys, "users", "export", str(exported))
    assert code == 0, err
    before = fingerprint()
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(exported), "--sync")
    count = len(stored)
    assert (code, out) == (0, f"nothing changed: {count} of {count} row(s) already match\n")
    assert fingerprint() == before
