"""`bday db` and `bday users` as a user types them: one line on stderr and exit 2 for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bday.users import api as users
from tests.harness.cli import ADD, bday, replace_option

pytestmark = pytest.mark.usefixtures("database")

_replace = replace_option  # the older name, for imports that still use it


def test_users_add_prints_the_new_id_and_list_shows_the_user(monkeypatch, capsys):
    code, out, _ = bday(monkeypatch, capsys, *ADD, "--anniversary", "2015-06-01")
    assert code == 0
    user_id = out.strip()
    code, out, _ = bday(monkeypatch, capsys, "users", "list")
    header, line = out.splitlines()
    assert header.split("\t") == ["id", "name", "email", "birthday", "anniversary", "timezone"]
    assert line.split("\t") == [
        user_id,
        "Ada Lovelace",
        "ada@example.com",
        "1990-03-05",
        "2015-06-01",
        "Asia/Tokyo",
    ]
    assert bday(monkeypatch, capsys, "users", "list", "--no-header")[1] == f"{line}\n"


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--timezone", "Mars/Olympus", "timezone"),
        ("--timezone", "", "timezone"),
        ("--birthday", "1990-02-30", "birthday"),
        ("--birthday", "2999-01-01", "birthday"),
        ("--birthday", "tomorrow", "birthday"),
        ("--first-name", "", "first_name"),
        ("--first-name", "x" * 10_000, "first_name"),
        ("--last-name", "Love\x07lace", "last_name"),
        ("--email", "nobody", "email"),
        ("--email", "a@b@c.com", "email"),
        ("--email", "a" * 65 + "@example.com", "email"),
        ("--first-name", "\u200b", "first_name"),
        ("--first-name", "\u200f", "first_name"),
        ("--last-name", "Love\u2028lace", "last_name"),
        ("--last-name", "\u202eecalevol", "last_name"),
        ("--first-name", "Ad\udcffa", "first_name"),  # argv byte 0xff, as Python decodes it
        ("--anniversary", "2100-01-01", "anniversary"),
        ("--anniversary", "1980-01-01", "anniversary"),
    ],
)
def test_users_add_with_a_bad_field_is_one_line_exit_2_and_writes_nothing(
    monkeypatch, capsys, option, value, field
):
    code, out, err = bday(monkeypatch, capsys, *replace_option(ADD, option, value))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"bday: {field}: ")
    assert out == ""
    assert users.count_users() == 0


def test_a_missing_option_is_one_line_exit_2(monkeypatch, capsys):
    code, _, err = bday(monkeypatch, capsys, "users", "add", "--first-name", "Ada")
    assert code == 2
    assert err.count("\n") == 1 and "Missing option" in err


def test_a_bad_setting_is_one_line_exit_2(monkeypatch, capsys, settings_env):
    settings_env.setenv("SEND_TIME", "25:00")
    code, _, err = bday(monkeypatch, capsys, "users", "list")
    assert code == 2
    assert (
        err == "bday: invalid setting SEND_TIME='25:00': expected HH:MM between 00:00 and 23:59\n"
    )


def _ada():
    return users.create_user(
        first_name="Ada",
        last_name="Lovelace",
        email="ada@example.com",
        birthday="1990-03-05",
        timezone="Asia/Tokyo",
    )


def test_users_update_changes_fields_and_refuses_bad_ones(monkeypatch, capsys):
    user_id = _ada()
    code, _, _ = bday(
        monkeypatch, capsys, "users", "update", str(user_id), "--timezone", "Europe/Paris"
    )
    assert code == 0 and users.get_user(user_id).timezone == "Europe/Paris"
    code, _, err = bday(
        monkeypatch, capsys, "users", "update", str(user_id), "--birthday", "1990-02-31"
    )
    assert code == 2 and err.startswith("bday: birthday: ")
    assert users.get_user(user_id).birthday.isoformat() == "1990-03-05"
    code, _, err = bday(monkeypatch, capsys, "users", "update", str(user_id))
    assert code == 2 and "nothing to change" in err


def test_users_delete_removes_the_user_and_an_unknown_id_is_exit_2(monkeypatch, capsys):
    user_id = _ada()
    assert bday(monkeypatch, capsys, "users", "delete", str(user_id))[0] == 0
    assert users.count_users() == 0
    code, _, err = bday(monkeypatch, capsys, "users", "delete", str(user_id))
    assert code == 2 and err == f"bday: user {user_id} not found\n"


def test_users_update_and_delete_take_an_email_as_erase_does(monkeypatch, capsys):
    user_id = _ada()
    code, out, _ = bday(
        monkeypatch, capsys, "users", "update", "ADA@example.com", "--timezone", "Europe/Paris"
    )
    assert (code, out) == (0, f"updated {user_id}\n")
    assert users.get_user(user_id).timezone == "Europe/Paris"
    code, _, err = bday(
        monkeypatch, capsys, "users", "update", "bob@example.com", "--timezone", "UTC"
    )
    assert (code, err) == (2, "bday: user bob@example.com not found\n")
    code, out, _ = bday(monkeypatch, capsys, "users", "delete", "ada@example.com")
    assert (code, out) == (0, f"deleted {user_id}\n")
    assert users.count_users() == 0
    code, _, err = bday(monkeypatch, capsys, "users", "delete", "ada@example.com")
    assert (code, err) == (2, "bday: user ada@example.com not found\n")  # deleted: not live


def test_the_installed_console_script_runs_db_upgrade_and_users_add(database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    bin_dir = os.path.dirname(sys.executable)
    upgrade = subprocess.run(
        [f"{bin_dir}/bday", "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "database at revision" in upgrade.stdout
    bad = subprocess.run(
        [f"{bin_dir}/bday", *replace_option(ADD, "--timezone", "Mars/Olympus")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (bad.returncode, bad.stderr) == (
        2,
        "bday: timezone: unknown IANA time zone 'Mars/Olympus'\n",
    )


def test_an_undecodable_byte_in_argv_is_named_as_not_utf8(database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    args = [os.fsencode(a) for a in replace_option(ADD, "--first-name", "X")]
    args[args.index(b"X")] = b"Ad\xffa"
    bad = subprocess.run(
        [f"{os.path.dirname(sys.executable)}/bday".encode(), *args], env=env, capture_output=True
    )
    assert (bad.returncode, bad.stderr) == (
        2,
        b"bday: first_name: is not valid UTF-8 (the byte 0xff)\n",
    )
