"""`bday users import FILE.csv`: good rows kept, bad rows named by line and field, bad files refused

Runs against the run's real PostgreSQL: uniqueness against existing users and lower-cased
storage live in the database.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bday.store.db import transaction
from bday.store.models import User
from bday.users import api as users
from bday.users.importer import ImportFileError, import_rows, read_rows
from tests.harness.cli import bday  # the in-process CLI runner

pytestmark = pytest.mark.usefixtures("database")

HEADER = ["first_name", "last_name", "email", "birthday", "timezone", "anniversary"]
ZONES = [
    "Asia/Tokyo",
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "America/St_Johns",
    "UTC",
]
TAKEN = "Taken.User@Example.com"
REPORT_LINE = re.compile(r"^  line (\d+): (\w+): (.+)$")


def good_row(i: int) -> list[str]:
    """A valid row whose email has upper-case letters (stored lower-cased)."""
    return [
        f"First{i}",
        f"Last{i}",
        f"User.{i}@Example.COM",
        f"{1950 + i % 60}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        ZONES[i % len(ZONES)],
        f"{2000 + i % 20}-{1 + (i * 7) % 12:02d}-{1 + i % 28:02d}" if i % 3 else "",
    ]


def bad_rows() -> list[tuple[list[str], str]]:
    """Twenty rows, each wrong in its own way, with the field the report must name."""

    def row(**changes) -> list[str]:
        values = dict(zip(HEADER, good_row(10_000 + len(rows)), strict=True))
        values.update(changes)
        return [values[name] for name in HEADER]

    rows: list[tuple[list[str], str]] = []
    for changes, field in [
        (dict(timezone="Mars/Olympus"), "timezone"),
        (dict(birthday="1990-02-30"), "birthday"),
        (dict(birthday="2999-01-01"), "birthday"),
        (dict(first_name=""), "first_name"),
        (dict(first_name="x" * 10_000), "first_name"),
        (dict(last_name="Love\x07lace"), "last_name"),
        (dict(email="nobody"), "email"),
        (dict(email="USER.7@example.com"), "email"),  # row 7 earlier in the file has it
        (dict(email=TAKEN.upper()), "email"),  # an existing user has it
        (dict(timezone=""), "timezone"),
        (dict(timezone="asia/tokyo"), "timezone"),
        (dict(birthday="05/03/1990"), "birthday"),
        (dict(birthday="1850-01-01"), "birthday"),
        (dict(birthday=""), "birthday"),
        (dict(anniversary="2021-02-29"), "anniversary"),
        (dict(email="a@b@c.com"), "email"),
        (dict(last_name="   "), "last_name"),
        (dict(first_name="Ada\x00"), "first_name"),
    ]:
        rows.append((row(**changes), field))
    rows.append((row()[:4], "row"))  # the timezone column is missing
    rows.append(([*row(), "surplus"], "row"))  # one column too many
    return rows


def write_csv(
    path: Path, rows: list[list[str]], header: list[str] = HEADER, encoding: str = "utf-8"
) -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def stored_emails() -> set[str]:
    with transaction() as session:
        return set(session.scalars(select(User.email)))


def report(out: str) -> dict[int, tuple[str, str]]:
    """{line: (field, problem)} from the import's output."""
    found = {}
    for text in out.splitlines():
        match = REPORT_LINE.match(text)
        if match:
            found[int(match[1])] = (match[2], match[3])
    return found


# --- a big file with bad rows -------------------------------------------------------------------


def test_a_thousand_rows_with_twenty_bad_imports_the_good_and_reports_the_bad_by_line_and_field(
    monkeypatch, capsys, tmp_path
):
    users.create_user(
        first_name="Taken", last_name="User", email=TAKEN, birthday="1980-01-01", timezone="UTC"
    )
    bad = bad_rows()
    assert len(bad) == 20 and len({tuple(r) for r, _ in bad}) == 20
    slots = {25 + i * 48: entry for i, entry in enumerate(bad)}  # spread over the file, after row 7
    rows, expected, good_emails = [], {}, set()
    for index in range(1000):
        if index in slots:
            values, field = slots[index]
            expected[index + 2] = field  # the header is line 1
        else:
            values = good_row(index)
            good_emails.add(values[2].lower())
        rows.append(values)
    path = write_csv(tmp_path / "users.csv", rows)

    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))

    assert code == 1
    assert out.splitlines()[0] == "imported 980 of 1000 row(s); 20 refused"
    reported = report(out)
    assert {line: field for line, (field, _) in reported.items()} == expected
    assert all(len(problem) < 300 for _, problem in reported.values())  # no 10,000-char echo
    assert users.count_users() == 981
    assert stored_emails() == good_emails | {TAKEN.lower()}


def test_the_duplicate_and_the_taken_email_are_reported_as_such(monkeypatch, capsys, tmp_path):
    users.create_user(
        first_name="Taken", last_name="User", email=TAKEN, birthday="1980-01-01", timezone="UTC"
    )
    rows = [good_row(1), good_row(2), good_row(3)]
    rows[2][2] = rows[0][2].upper()
    rows.append([*good_row(4)[:2], TAKEN.lower(), *good_row(4)[3:]])
    code, out, _ = bday(
        monkeypatch, capsys, "users", "import", str(write_csv(tmp_path / "u.csv", rows))
    )
    assert code == 1
    assert report(out) == {
        4: ("email", "appears earlier in this file"),
        5: ("email", "is already used by another user"),
    }


def test_a_file_with_no_bad_rows_imports_all_and_exits_0(monkeypatch, capsys, tmp_path):
    path = write_csv(tmp_path / "users.csv", [good_row(i) for i in range(50)])
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))
    assert code == 0
    assert out == "imported 50 of 50 row(s); 0 refused\n"
    assert users.count_users() == 50


def test_imported_emails_are_stored_lower_cased(monkeypatch, capsys, tmp_path):
    rows = [good_row(i) for i in range(5)]
    rows[0][2] = "Ada.LOVELACE@Example.COM"
    bday(monkeypatch, capsys, "users", "import", str(write_csv(tmp_path / "users.csv", rows)))
    assert stored_emails() == {"ada.lovelace@example.com"} | {
        f"user.{i}@example.com" for i in range(1, 5)
    }


def test_a_utf8_file_with_a_byte_order_mark_imports(monkeypatch, capsys, tmp_path):
    rows = [good_row(i) for i in range(3)]
    rows[0][0] = "Zoë"
    path = write_csv(tmp_path / "excel.csv", rows, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))
    assert (code, out) == (0, "imported 3 of 3 row(s); 0 refused\n")
    assert "Zoë" in {user.first_name for user in users.list_users()}


def test_columns_may_come_in_any_order_and_anniversary_may_be_left_out(
    monkeypatch, capsys, tmp_path
):
    header = ["timezone", "email", "birthday", "last_name", "first_name"]
    rows = [["Asia/Tokyo", "ada@example.com", "1990-03-05", "Lovelace", "Ada"]]
    code, _, _ = bday(
        monkeypatch,
        capsys,
        "users",
        "import",
        str(write_csv(tmp_path / "users.csv", rows, header=header)),
    )
    assert code == 0
    (user,) = users.list_users()
    assert (user.first_name, user.timezone, user.anniversary) == ("Ada", "Asia/Tokyo", None)


# --- files that are refused whole ---------------------------------------------------------------


def written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


BAD_FILES = {
    "missing-timezone": lambda tmp: write_csv(
        tmp / "u.csv",
        [good_row(1)[:4] + good_row(1)[5:]],
        header=[h for h in HEADER if h != "timezone"],
    ),
    "unknown-column": lambda tmp: write_csv(
        tmp / "u.csv", [[*good_row(1), "+81 3 1234"]], header=[*HEADER, "phone"]
    ),
    "no-header": lambda tmp: write_csv(tmp / "u.csv", [good_row(2)], header=good_row(1)),
    "empty-file": lambda tmp: written(tmp / "u.csv", b""),
    "missing-file": lambda tmp: tmp / "does-not-exist.csv",
    "header-not-utf8": lambda tmp: written(tmp / "u.csv", b"\xff\xfe" + ",".join(HEADER).encode()),
    "duplicate-column": lambda tmp: write_csv(
        tmp / "u.csv", [[*good_row(1), "other@example.com"]], header=[*HEADER, "email"]
    ),
    "no-line-end": lambda tmp: written(tmp / "u.csv", b"x" * 200_000),
}


@pytest.mark.parametrize("make", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_an_unusable_file_is_refused_with_one_line_and_nothing_written(
    monkeypatch, capsys, tmp_path, make
):
    path = make(tmp_path)
    code, out, err = bday(monkeypatch, capsys, "users", "import", str(path))
    assert code != 0
    assert err.count("\n") == 1 and str(path) in err
    assert out == ""
    assert users.count_users() == 0


@pytest.mark.parametrize(
    "make",
    [BAD_FILES["missing-timezone"], BAD_FILES["unknown-column"], BAD_FILES["missing-file"]],
    ids=["missing-timezone", "unknown-column", "missing-file"],
)
def test_an_unusable_file_exits_2_like_every_other_input_error(monkeypatch, capsys, tmp_path, make):
    code, _, err = bday(monkeypatch, capsys, "users", "import", str(make(tmp_path)))
    assert code == 2
    assert err.startswith("bday: ")


def test_the_header_refusal_names_what_is_missing_or_unknown(tmp_path):
    with pytest.raises(ImportFileError, match="missing timezone"):
        read_rows(BAD_FILES["missing-timezone"](tmp_path))
    with pytest.raises(ImportFileError, match="unknown phone"):
        read_rows(BAD_FILES["unknown-column"](tmp_path))


# --- the Python API -----------------------------------------------------------------------------


def test_import_rows_returns_the_count_the_new_ids_and_each_refusal_with_its_line(tmp_path):
    rows = [good_row(1), [*good_row(2)[:3], "1990-02-30", *good_row(2)[4:]], good_row(3)]
    parsed = list(read_rows(write_csv(tmp_path / "u.csv", rows)))
    assert [line for line, _ in parsed] == [2, 3, 4]
    progress: list[int] = []
    result = import_rows(parsed, progress=progress.append)
    assert result.imported == 2 and len(result.user_ids) == 2
    assert result.errors == [(3, "birthday: '1990-02-30' is not a real date (YYYY-MM-DD)")]
    assert sum(progress) == 3
    assert {users.get_user(uid).email for uid in result.user_ids} == {
        "user.1@example.com",
        "user.3@example.com",
    }


def test_a_quoted_line_break_costs_only_its_own_lines(tmp_path):
    rows = [good_row(1), good_row(2), good_row(3)]
    rows[0][1] = "Love\nlace"  # a quoted newline: no field may hold one, so lines 2-3 are bad
    rows[1][3] = "1990-02-30"  # this record sits on line 4
    result = import_rows(read_rows(write_csv(tmp_path / "u.csv", rows)))
    assert [(line, text.split(":")[0]) for line, text in result.errors] == [
        (2, "row"),
        (3, "row"),
        (4, "birthday"),
    ]
    assert result.imported == 1  # line 5


def test_the_header_refusal_names_a_column_given_twice(tmp_path):
    with pytest.raises(ImportFileError, match="names email more than once"):
        read_rows(BAD_FILES["duplicate-column"](tmp_path))


# --- files that are broken in one place: every valid row kept or named --------------------------


def lines(path: Path, *texts: str | bytes) -> Path:
    body = [",".join(HEADER).encode()] + [t if isinstance(t, bytes) else t.encode() for t in texts]
    return written(path, b"\n".join(body) + b"\n")


def csv_line(row: list[str]) -> str:
    return ",".join(row)


def test_an_unmatched_quote_costs_its_own_line_only(monkeypatch, capsys, tmp_path):
    broken = good_row(3)
    broken[1] = '"Love' + broken[1]  # the quote never closes
    path = lines(
        tmp_path / "u.csv",
        *(csv_line(r) for r in [good_row(2), broken]),
        *(csv_line(good_row(i)) for i in (4, 5)),
    )
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))
    assert code == 1
    assert out.splitlines()[0] == "imported 3 of 4 row(s); 1 refused"
    assert report(out) == {3: ("row", "not valid CSV (an unmatched quote)")}
    assert stored_emails() == {f"user.{i}@example.com" for i in (2, 4, 5)}


def test_a_field_over_any_limit_names_its_line_and_the_rest_is_imported(
    monkeypatch, capsys, tmp_path
):
    huge = good_row(3)
    huge[1] = "x" * 131_073  # over the csv module's default field limit, and over MAX_LINE
    path = lines(tmp_path / "u.csv", *(csv_line(r) for r in [good_row(2), huge, good_row(4)]))
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))
    assert code == 1
    assert list(report(out)) == [3] and report(out)[3][0] == "row"
    assert stored_emails() == {"user.2@example.com", "user.4@example.com"}


def test_a_line_that_is_not_utf8_is_named_and_its_neighbours_kept(monkeypatch, capsys, tmp_path):
    path = lines(
        tmp_path / "u.csv",
        csv_line(good_row(2)),
        b"Zo\xeb," + ",".join(good_row(3)[1:]).encode(),  # Latin-1
        csv_line(good_row(4)),
    )
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))
    assert code == 1
    assert report(out) == {3: ("row", "not valid UTF-8 (save the file as UTF-8)")}
    assert users.count_users() == 2


def test_a_file_without_a_line_end_after_good_rows_stops_named_within_bounds(
    monkeypatch, capsys, tmp_path
):
    path = lines(tmp_path / "u.csv", csv_line(good_row(2)))
    with path.open("ab") as handle:
        handle.write(b"\0" * (20 * 2**20))
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))
    assert code == 1
    assert report(out) == {
        3: ("row", "no line end within 16 MiB; the rest of the file was not read")
    }
    assert stored_emails() == {"user.2@example.com"}


# The child's own peak RSS (VmHWM, reset at exec). ru_maxrss from wait4 is not: a child forked
# from a large pytest process starts with the parent's high-water mark (364 MB seen in a full
# suite run, for a command that needs a tenth of that).
PEAK_RSS_PROBE = """
import atexit, sys
probe = sys.argv.pop(1)
def peak():
    kib = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    open(probe, "w").write(kib)
atexit.register(peak)
sys.argv[0] = "bday"
from bday.cli.main import run
run()
"""


def test_importing_dev_zero_ends_in_seconds_with_one_line_and_bounded_memory(
    database_url, tmp_path
):
    env = {**os.environ, "DATABASE_URL": database_url}
    probe = tmp_path / "peak-kib"
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_PROBE, str(probe), "users", "import", "/dev/zero"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert time.monotonic() - started < 20
    assert child.returncode == 2
    assert child.stderr == b"bday: /dev/zero: line 1 is over 65536 bytes: not a CSV file\n"
    assert int(probe.read_text()) < 300 * 1024  # KiB: the interpreter and its imports, not the file
