"""Issue 20, "an operator's slip loses nothing": each slip as the issue reproduced it.

Every test here failed on the code before its fix (98b71bb); each names the slip it covers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import time_machine

from bday.users import api as users
from bday.users import sync as syncing
from tests.harness.cli import bday

pytestmark = pytest.mark.usefixtures("database")

HEADER = ["first_name", "last_name", "email", "birthday", "timezone"]


def _write(path: Path, count: int, start: int = 0) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for i in range(start, start + count):
            writer.writerow(["U", f"N{i}", f"u{i}@example.com", "1990-01-01", "UTC"])
    return path


# --- 5. --max-delete compares in integers ------------------------------------------------------


def test_max_delete_allows_exactly_its_percentage_and_refuses_one_more():
    for percent in range(100):
        assert syncing._refusals(percent, 100, 0, percent, force=False) == []  # exactly it
        (refusal,) = syncing._refusals(percent + 1, 100, 0, percent, force=False)
        assert f"more than {percent}%" in refusal


@pytest.mark.parametrize("percent", [29, 57])
def test_sync_deletes_exactly_max_delete_percent_of_100(tmp_path, monkeypatch, capsys, percent):
    bday(monkeypatch, capsys, "users", "import", str(_write(tmp_path / "all.csv", 100)))
    kept = _write(tmp_path / "kept.csv", 100 - percent)
    args = ["users", "import", str(kept), "--sync", "--max-delete", str(percent)]
    code, out, err = bday(monkeypatch, capsys, *args)
    assert code == 0 and "bday:" not in err, err
    kept_count = 100 - percent
    assert out == (
        f"created 0, updated 0, deleted {percent}, unchanged {kept_count} ({kept_count} row(s))\n"
    )
    assert users.count_users() == 100 - percent


# --- 8. an empty filter is refused, never "no filter" ----------------------------------------


def _ada() -> str:
    return str(
        users.create_user(
            first_name="Ada",
            last_name="Lovelace",
            email="ada@example.com",
            birthday="1990-03-05",
            timezone="Asia/Tokyo",
        )
    )


@pytest.mark.parametrize(
    "args",
    [
        ["messages", "list", "--user", ""],
        ["messages", "list", "--user", "  "],
        ["messages", "list", "--status", ""],
        ["messages", "list", "--since", ""],
        ["preview", "--zone", ""],
        ["replay", "--since", "", "--dry-run"],
        ["replay", "--type", "", "--dry-run"],
        ["users", "update", "", "--timezone", "UTC"],
        ["users", "delete", ""],
        ["users", "erase", "", "--yes"],
    ],
)
def test_an_empty_filter_or_reference_is_one_line_exit_2(monkeypatch, capsys, args):
    _ada()
    code, out, err = bday(monkeypatch, capsys, *args)
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert users.find_user("ada@example.com").timezone == "Asia/Tokyo"


def test_messages_list_user_empty_says_so(monkeypatch, capsys):
    _ada()
    code, _, err = bday(monkeypatch, capsys, "messages", "list", "--user", "")
    assert (code, err) == (2, "bday: user: must not be empty (give an id or an email)\n")


# --- 10. a lookup PostgreSQL cannot hold is the API's own error ------------------------------


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("a\x00@example.com", "must not contain a NUL character (U+0000)"),
        ("\x00", "must not contain a NUL character (U+0000)"),
        ("a\udcff@example.com", "is not valid UTF-8 (the byte 0xff)"),
        ("a\ud800@example.com", "is not valid Unicode (a lone surrogate U+D800)"),
        ("", "must not be empty (give an id or an email)"),
        (19900305, "expected an id or an email, got int 19900305"),
    ],
)
def test_every_lookup_by_text_refuses_what_no_user_can_have_with_a_user_input_error(
    reference, problem
):
    from bday.ops import history

    _ada()
    lookups = [
        users.erase_user,
        users.find_user,
        lambda ref: users.find_user(ref, include_deleted=True),
        lambda ref: history.list_messages(user=ref),
    ]
    for lookup in lookups:
        with pytest.raises(users.UserInputError) as refused:
            lookup(reference)
        assert str(refused.value) == f"user: {problem}"
    assert users.find_user("ada@example.com").erased_at is None


@pytest.mark.parametrize("reference", ["a\x00b", "\udcff", "x" * 10_000])
def test_lookups_by_id_refuse_what_is_no_id_without_reaching_postgresql(reference):
    from bday.ops import history

    for lookup in (users.get_user, users.delete_user, users.update_user):
        with pytest.raises(users.UserNotFound):
            lookup(reference)
    with pytest.raises(history.MessageNotFound):
        history.show_message(reference)


# --- 3. an email is lowercased first, then its lengths checked ---------------------------------


def _add(monkeypatch, capsys, email: str, first_name: str = "Ada") -> tuple[int, str, str]:
    return bday(
        monkeypatch,
        capsys,
        *("users", "add", "--first-name", first_name, "--last-name", "Lovelace"),
        *("--email", email, "--birthday", "1990-03-05", "--timezone", "Asia/Tokyo"),
    )


def test_an_email_64_bytes_as_typed_but_96_lowercased_is_refused(monkeypatch, capsys):
    code, out, err = _add(monkeypatch, capsys, "İ" * 32 + "@example.com")
    assert (code, out) == (2, "")
    assert err == (
        "bday: email: the part before @ must be at most 64 bytes once lowercased "
        "(RFC 5321; got 96)\n"
    )
    assert users.count_users() == 0


def test_an_email_that_fits_lowercased_can_be_updated_and_exported_then_synced(
    monkeypatch, capsys, tmp_path
):
    typed = "İ" * 21 + "@Example.com"  # 42 bytes typed, 63 stored
    code, out, _ = _add(monkeypatch, capsys, typed)
    assert code == 0
    code, _, err = bday(monkeypatch, capsys, "users", "update", typed, "--timezone", "UTC")
    assert code == 0, err
    exported = tmp_path / "out.csv"
    assert bday(monkeypatch, capsys, "users", "export", str(exported))[0] == 0
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(exported), "--sync")
    assert (code, out) == (0, "nothing changed: 1 of 1 row(s) already match\n")


# --- 2. erasing an old record by id erases that record only -----------------------------------


# Tokyo's 09:00 on Mar 5 (Ada's birthday) is 00:00 UTC: at 15:00 UTC the day before it is planned
@time_machine.travel(datetime(2027, 3, 4, 15, 0, tzinfo=UTC), tick=False)
def test_erasing_a_deleted_record_by_id_leaves_the_live_user_with_its_address(monkeypatch, capsys):
    from bday.store.db import transaction
    from bday.store.models import Message, Status

    old = _ada()
    assert bday(monkeypatch, capsys, "users", "delete", old)[0] == 0
    live = _ada()  # the same address, a new live user with a pending greeting
    with transaction() as session:
        pending = [m.status for m in session.query(Message).filter_by(user_id=live)]
    code, out, err = bday(monkeypatch, capsys, "users", "erase", old, "--yes")
    assert (code, out) == (0, f"erased {old}\n")
    assert err == f"note: 1 other user(s) hold this address; not erased: {live}\n"
    kept = users.find_user("ada@example.com")
    assert (str(kept.id), kept.first_name, kept.erased_at) == (live, "Ada", None)
    with transaction() as session:
        statuses = [m.status for m in session.query(Message).filter_by(user_id=live)]
    assert pending == statuses == [Status.PENDING]
    assert users.find_user(old, include_deleted=True).email.endswith("@erased.invalid")


# --- 1. a failed export leaves the file it was writing to as it was ----------------------------


def _exported(monkeypatch, capsys, tmp_path) -> tuple[Path, bytes]:
    _ada()
    keep = tmp_path / "keep.csv"
    assert bday(monkeypatch, capsys, "users", "export", str(keep))[0] == 0
    keep.chmod(0o640)
    return keep, keep.read_bytes()


def _reload() -> None:
    from bday.config import get_settings
    from bday.store import db

    get_settings.cache_clear()
    db.reset_engines()


@contextmanager
def _fault(kind: str, settings_env, monkeypatch) -> Iterator[None]:
    """The export's database, setting or stream failing as the issue found them."""
    from sqlalchemy.exc import OperationalError

    from bday.devtools import sandbox
    from tests.conftest import ADMIN_URL, NAME

    empty = f"{NAME}_slip1"
    if kind == "missing":
        settings_env.setenv("DATABASE_URL", sandbox.database_url(ADMIN_URL, "bday_no_such_db"))
    elif kind == "unmigrated":
        settings_env.setenv("DATABASE_URL", sandbox.create_database(ADMIN_URL, empty))
    elif kind == "setting":
        settings_env.setenv("SEND_TIME", "25:00")
    else:

        def rows():
            yield list(syncing.EXPORT_COLUMNS)
            yield ["Half", "Written"]
            raise OperationalError("SELECT", {}, OSError("server closed the connection"))

        monkeypatch.setattr(syncing, "export_rows", rows)
    _reload()
    try:
        yield
    finally:
        settings_env.undo()
        _reload()
        if kind == "unmigrated":
            sandbox.drop_database(ADMIN_URL, empty)


@pytest.mark.parametrize(
    ("fault", "code"),
    [("missing", 1), ("unmigrated", 2), ("setting", 2), ("midway", 1)],
)
def test_a_failed_export_leaves_the_target_byte_identical_and_no_temporary_file(
    monkeypatch, capsys, tmp_path, settings_env, fault, code
):
    keep, before = _exported(monkeypatch, capsys, tmp_path)
    with _fault(fault, settings_env, monkeypatch):
        got, out, err = bday(monkeypatch, capsys, "users", "export", str(keep))
    assert (got, out) == (code, "") and err.startswith("bday: ") and err.count("\n") == 1
    assert keep.read_bytes() == before and oct(keep.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


def test_a_successful_export_replaces_the_file_keeping_its_mode(monkeypatch, capsys, tmp_path):
    keep, before = _exported(monkeypatch, capsys, tmp_path)
    users.create_user(
        first_name="Bob",
        last_name="Builder",
        email="bob@example.com",
        birthday="1980-01-01",
        timezone="UTC",
    )
    code, _, err = bday(monkeypatch, capsys, "users", "export", str(keep))
    assert (code, err) == (0, f"exported 2 user(s) to {keep}\n")
    assert keep.read_bytes().startswith(before) and b"bob@example.com" in keep.read_bytes()
    assert oct(keep.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


# --- 4. local files: a pipe imports, and every local error is one line naming the path ---------


def _console(*args: str, shell: str | None = None, stdin: bytes | None = None):
    import os
    import subprocess
    import sys

    script = f"{os.path.dirname(sys.executable)}/bday"
    command = ["bash", "-c", f"{script} {shell}"] if shell else [script, *args]
    return subprocess.run(command, input=stdin, capture_output=True, env=dict(os.environ))


def test_export_to_a_full_disk_is_one_line_naming_the_device_exit_2(monkeypatch, capsys):
    _ada()
    code, out, err = bday(monkeypatch, capsys, "users", "export", "/dev/full")
    assert (code, out, err) == (2, "", "bday: /dev/full: cannot write (No space left on device)\n")


def test_export_with_stdout_closed_is_one_line_exit_2():
    _ada()
    done = _console(shell="users export >&-")
    assert (done.returncode, done.stderr) == (2, b"bday: stdout: cannot write (it is closed)\n")


def test_export_into_a_missing_directory_names_it(monkeypatch, capsys, tmp_path):
    target = tmp_path / "no" / "x.csv"
    code, out, err = bday(monkeypatch, capsys, "users", "export", str(target))
    assert (code, out, err) == (
        2,
        "",
        f"bday: {target}: cannot write (No such file or directory)\n",
    )


def test_import_reads_a_pipe_on_dev_stdin(tmp_path):
    data = _write(tmp_path / "seed.csv", 3).read_bytes()
    done = _console("users", "import", "/dev/stdin", stdin=data)
    assert (done.returncode, done.stdout) == (0, b"imported 3 of 3 row(s); 0 refused\n")
    assert users.count_users() == 3


def _through_fifo(tmp_path: Path, source: Path) -> Path:
    """A FIFO fed `source` once by a thread, as `<(cat source)` or a mkfifo would be."""
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    threading.Thread(target=lambda: fifo.write_bytes(source.read_bytes()), daemon=True).start()
    return fifo


def test_sync_reads_a_fifo_once_and_deletes_exactly_the_absent(tmp_path, monkeypatch, capsys):
    bday(monkeypatch, capsys, "users", "import", str(_write(tmp_path / "all.csv", 10)))
    fifo = _through_fifo(tmp_path, _write(tmp_path / "kept.csv", 8))
    args = ["users", "import", str(fifo), "--sync", "--max-delete", "20"]
    code, out, err = bday(monkeypatch, capsys, *args)
    assert (code, out) == (0, "created 0, updated 0, deleted 2, unchanged 8 (8 row(s))\n"), err
    assert users.count_users() == 8


def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope.csv"
    for extra in ([], ["--sync"], ["--sync", "--dry-run"]):
        code, out, err = bday(monkeypatch, capsys, "users", "import", str(missing), *extra)
        assert (code, out) == (2, "")
        assert err == f"bday: {missing}: cannot read (No such file or directory)\n"


# --- section 3: a dry run reports every refusal and exits with the real run's code -------------

SHARE = (
    "bday: --sync would delete 6 of 10 live user(s) (60%), more than 10%; nothing written "
    "(check the file, or --force)\n"
)
UNREADABLE = (
    "bday: --sync: 1 line(s) have no readable email, so their users cannot be told from absent "
    "ones; nothing written (fix the file, or --force)\n"
)


def test_a_sync_dry_run_lists_every_refusal_and_exits_2_as_the_real_run(
    tmp_path, monkeypatch, capsys
):
    from tests.users.test_bad_input_properties import fingerprint

    bday(monkeypatch, capsys, "users", "import", str(_write(tmp_path / "all.csv", 10)))
    path = _write(tmp_path / "some.csv", 4)
    with path.open("a") as handle:
        handle.write('X,"Y,broken,1990-01-01,UTC\n')  # an unmatched quote: no readable email
    before = fingerprint()
    real = bday(monkeypatch, capsys, "users", "import", str(path), "--sync")
    assert real == (2, "", UNREADABLE + SHARE)
    code, out, err = bday(monkeypatch, capsys, "users", "import", str(path), "--sync", "--dry-run")
    assert (code, err.removeprefix(f"importing {path.name}\n")) == (2, UNREADABLE + SHARE)
    assert "line 6: row: not valid CSV (an unmatched quote)" in out
    assert "would create 0, update 0, delete 6, unchanged 4 (5 row(s)); 1 refused" in out
    assert fingerprint() == before


def test_a_dry_run_with_refused_rows_exits_1_as_the_real_run(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path / "some.csv", 2)
    with path.open("a") as handle:
        handle.write("X,Y,not-an-email,1990-01-01,UTC\n")
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path), "--sync", "--dry-run")
    assert code == 1 and "line 4: email: is not a valid address" in out
    assert users.count_users() == 0
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path), "--sync")
    assert code == 1 and users.count_users() == 2


# --- 7. a line break no import reads back: export names the user, writes nothing --------------


def test_an_export_names_each_user_holding_a_line_break_and_writes_nothing(
    monkeypatch, capsys, tmp_path
):
    from sqlalchemy import text

    from bday.store.db import engine

    keep, before = _exported(monkeypatch, capsys, tmp_path)
    bob = users.create_user(
        first_name="Bob",
        last_name="B",
        email="bob@example.com",
        birthday="1980-01-01",
        timezone="UTC",
    )
    with engine().begin() as connection:  # as older code or SQL left them
        connection.execute(text("UPDATE users SET first_name = E'Line\"\\nTwo'"))
        connection.execute(text("UPDATE users SET last_name = E'B\\r' WHERE id = :id"), {"id": bob})
    ada = users.find_user("ada@example.com").id
    for target in (str(keep), "-"):
        code, out, err = bday(monkeypatch, capsys, "users", "export", target)
        assert (code, out) == (2, "")
        assert err == (
            f"bday: cannot export: 2 user(s) hold a line break, which no import reads back: "
            f"{ada} (first_name); {bob} (first_name, last_name); correct them (bday users "
            "update ID --first-name ...), then export again; nothing written\n"
        )
    assert keep.read_bytes() == before
    code, _, _ = bday(monkeypatch, capsys, "users", "update", str(ada), "--first-name", "Line")
    assert code == 0  # the named fix works


# --- spreadsheet formulas: neutralised on export, restored on import ---------------------------

FORMULAS = ["=1+1", "+41", "-2", "@SUM(A1)", "'=1+1", "''@x", "'Neill", "O'Neill", "-", "'"]


def test_formula_cells_are_written_as_text_and_read_back_as_they_were(
    monkeypatch, capsys, tmp_path
):
    for index, name in enumerate(FORMULAS):
        users.create_user(
            first_name=name,
            last_name=f"L{index}",
            email=f"=f{index}@example.com" if index % 2 else f"f{index}@example.com",
            birthday="1990-01-01",
            timezone="UTC",
        )
    exported = tmp_path / "out.csv"
    assert bday(monkeypatch, capsys, "users", "export", str(exported))[0] == 0
    written = list(csv.reader(exported.open(encoding="utf-8")))[1:]
    for row in written:
        assert not any(cell[:1] in set("=+-@\t\r") for cell in row), row  # nothing a sheet runs
    firsts = [row[0] for row in written]
    assert firsts[:4] == ["'=1+1", "'+41", "'-2", "'@SUM(A1)"]
    assert firsts[4:] == ["''=1+1", "'''@x", "'Neill", "O'Neill", "'-", "'"]
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(exported), "--sync")
    assert (code, out) == (
        0,
        f"nothing changed: {len(FORMULAS)} of {len(FORMULAS)} row(s) already match\n",
    )
    stored = sorted(user.first_name for user in users.list_users())
    bday(
        monkeypatch,
        capsys,
        "users",
        "import",
        str(_write(tmp_path / "none.csv", 0)),
        "--sync",
        "--force",
    )
    assert users.count_users() == 0
    assert bday(monkeypatch, capsys, "users", "import", str(exported))[0] == 0
    assert sorted(user.first_name for user in users.list_users()) == stored == sorted(FORMULAS)
