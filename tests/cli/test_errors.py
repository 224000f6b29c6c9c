"""Operator mistakes end in one line naming the mistake and its fix, exit 2, never a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bday.devtools import sandbox as services
from bday.ops.replay import MAX_AGE, parse_age
from bday.store import db
from tests.conftest import ADMIN_URL, NAME
from tests.harness.cli import ADD, bday

NOT_MIGRATED = "bday: the database at DATABASE_URL has no bday tables: run `bday db upgrade`\n"


@pytest.fixture
def unmigrated(settings_env) -> Iterator[str]:
    """DATABASE_URL pointing at a new, empty database (never migrated), dropped afterwards."""
    name = f"{NAME}_empty"
    url = services.create_database(ADMIN_URL, name)
    settings_env.setenv("DATABASE_URL", url)
    yield url
    db.reset_engines()
    services.drop_database(ADMIN_URL, name)


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# --- class 1: a database that was never migrated ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["users", "list"],
        ["status"],
        ADD,
        ["replay", "--dry-run"],
    ],
    ids=["users-list", "status", "users-add", "replay"],
)
@pytest.mark.db  # `unmigrated` makes a database of its own
def test_a_command_against_an_unmigrated_database_says_run_db_upgrade(
    monkeypatch, capsys, unmigrated, args
):
    assert bday(monkeypatch, capsys, *args) == (2, "", NOT_MIGRATED)


@pytest.mark.db  # `unmigrated` makes a database of its own
def test_users_import_against_an_unmigrated_database_says_run_db_upgrade_before_any_progress(
    monkeypatch, capsys, unmigrated, tmp_path
):
    path = tmp_path / "f.csv"
    path.write_text("first_name,last_name,email,birthday,timezone\nA,B,a@x.com,1990-01-01,UTC\n")
    assert bday(monkeypatch, capsys, "users", "import", str(path)) == (2, "", NOT_MIGRATED)


@pytest.mark.db  # `unmigrated` makes a database of its own
def test_db_current_and_upgrade_still_work_on_an_unmigrated_database(
    monkeypatch, capsys, unmigrated
):
    code, out, _ = bday(monkeypatch, capsys, "db", "current")
    assert code == 0 and out.startswith("current base head ")
    code, _, _ = bday(monkeypatch, capsys, "db", "upgrade")
    assert code == 0
    assert bday(monkeypatch, capsys, "users", "list", "--no-header") == (0, "", "")


@pytest.mark.parametrize(
    "args", [["db", "upgrade", "nonexistent_rev"], ["db", "downgrade", "zzz"]], ids=str
)
@pytest.mark.db  # `unmigrated` makes a database of its own
def test_an_unknown_revision_is_one_line_exit_2(monkeypatch, capsys, unmigrated, args):
    code, _, err = bday(monkeypatch, capsys, *args)
    assert code == 2 and one_line(err)
    assert err == (
        f"bday: Can't locate revision identified by '{args[2]}' "
        "(`bday db current` shows the known revisions)\n"
    )


# --- class 1: bad settings and files ------------------------------------------------------------


def test_an_invalid_database_url_option_is_one_line_exit_2(monkeypatch, capsys, settings_env):
    settings_env.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/db?foo=bar")
    code, _, err = bday(monkeypatch, capsys, "users", "list")
    assert code == 2 and one_line(err)
    assert err.startswith("bday: invalid setting DATABASE_URL=") and '"foo"' in err


def test_a_bad_database_url_value_is_one_line_exit_2(
    monkeypatch, capsys, database_url, settings_env
):
    settings_env.setenv("DATABASE_URL", database_url + "?connect_timeout=abc")
    code, _, err = bday(monkeypatch, capsys, "users", "list")
    assert (code, err) == (
        2,
        "bday: invalid setting DATABASE_URL: bad value for connect_timeout: 'abc'\n",
    )


def test_a_database_that_does_not_answer_is_named_exit_1(monkeypatch, capsys, settings_env):
    with socket.socket() as closed:  # a port that was free a moment ago: nobody listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings_env.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/bday")
    code, _, err = bday(monkeypatch, capsys, "users", "list")
    assert code == 1 and one_line(err)
    assert err.startswith("bday: cannot connect to PostgreSQL at DATABASE_URL: ")


def test_a_dotenv_that_is_not_utf8_is_one_line_exit_2(monkeypatch, capsys, settings_env, tmp_path):
    settings_env.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"SEND_TIME=09:00\n\xff\xfe\n")
    code, _, err = bday(monkeypatch, capsys, "status")
    assert code == 2
    assert (
        err
        == "bday: cannot read .env: not valid UTF-8 (byte 0xff at offset 16); save it as UTF-8\n"
    )


def test_breaker_cooldown_inf_is_one_line_exit_2(monkeypatch, capsys, settings_env):
    settings_env.setenv("BREAKER_COOLDOWN", "inf")
    code, _, err = bday(monkeypatch, capsys, "status")
    assert code == 2
    assert err == "bday: invalid setting BREAKER_COOLDOWN='inf': Input should be a finite number\n"


# --- class 1: numbers out of range --------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["users", "list", "--limit", "99999999999999999999"],
        ["users", "list", "--limit", "0"],
        ["replay", "--dry-run", "--limit", "99999999999999999999"],
        ["dlq", "list", "--limit", "99999999999999999999"],
        ["dlq", "replay", "--limit", "-1"],
        ["replay", "--since", "99999999999d", "--dry-run"],
        ["metrics", "--port", "99999999999999999999"],
    ],
    ids=lambda args: " ".join(args),
)
def test_a_number_out_of_range_is_one_line_exit_2_naming_the_option(
    monkeypatch, capsys, database, args
):
    code, out, err = bday(monkeypatch, capsys, *args)
    assert (code, out) == (2, "") and one_line(err)
    assert f"Invalid value for {'--since' if '--since' in args else ''}" in err


# --- class 2: the replay window -----------------------------------------------------------------


@pytest.mark.parametrize("since", ["0h", "0s", "00d", "", " ", "²h", "1.5h", "-1h", "99999999999d"])
def test_replay_since_zero_empty_or_huge_is_refused_never_no_filter(
    monkeypatch, capsys, database, since
):
    code, out, err = bday(monkeypatch, capsys, "replay", "--since", since, "--dry-run")
    assert (code, out) == (2, "") and one_line(err)
    assert "replay: Invalid value for --since: " in err


def test_parse_age_accepts_ascii_digits_and_a_unit_up_to_a_century():
    assert parse_age("90m").total_seconds() == 5400
    assert parse_age(" 2D ").days == 2
    assert parse_age(f"{MAX_AGE.days}d") == MAX_AGE
    with pytest.raises(ValueError, match="empty window"):
        parse_age("0h")
    with pytest.raises(ValueError, match="digits 0-9"):
        parse_age("²h")
    with pytest.raises(ValueError, match="longer than 36500 days"):
        parse_age(f"{MAX_AGE.days + 1}d")
    with pytest.raises(ValueError, match="longer than"):
        parse_age("9" * 5000 + "s")


# --- class 5: a local bind failure is named as local --------------------------------------------


def test_metrics_on_a_port_in_use_says_it_is_a_local_bind_problem(monkeypatch, capsys, database):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = bday(
            monkeypatch, capsys, "metrics", "--address", "127.0.0.1", "--port", str(port)
        )
    assert code == 2 and one_line(err)
    assert err.startswith(f"bday: cannot listen on 127.0.0.1:{port} (a local bind problem: ")
    assert "cannot reach a service" not in err


def test_metrics_on_an_address_that_is_not_ours_says_so(monkeypatch, capsys, database):
    code, _, err = bday(monkeypatch, capsys, "metrics", "--address", "999.1.1.1")
    assert code == 2 and one_line(err)
    assert err.startswith("bday: cannot listen on 999.1.1.1:9750 (a local bind problem: ")
