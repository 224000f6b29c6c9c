"""Issue 20, "an operator's slip loses nothing": the command line's options (no services)."""

from __future__ import annotations

import pytest

from tests.harness.cli import bday

WHOLE = "expected a whole count of users such as 1M, 250k or 5000000 (see --help)"
FINITE = "is not a finite number. (see --help)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "0.5"], f"bench: Invalid value for --model: '0.5': {WHOLE}"),
        (["--model", "1M,1.5"], f"bench: Invalid value for --model: '1.5': {WHOLE}"),
        (["--model", "nan"], f"bench: Invalid value for --model: 'nan': {WHOLE}"),
        (
            ["--model", "0"],
            "--model: '0': expected between 1 and 10,000,000,000 users (see --help)",
        ),
        (["--model", "1M", "--provider-limit", "nan"], f"--provider-limit': 'nan' {FINITE}"),
        (["--model", "1M", "--provider-limit", "-nan"], f"--provider-limit': '-nan' {FINITE}"),
    ],
)
def test_bench_model_refuses_a_fraction_of_a_user_and_a_nan_limit_in_one_line(
    monkeypatch, capsys, args, expected
):
    code, out, err = bday(monkeypatch, capsys, "bench", *args)
    assert (code, out) == (2, "") and err.endswith(expected + "\n") and err.count("\n") == 1


@pytest.mark.parametrize(("text", "users"), [("1.1M", 1_100_000), ("2.5k", 2500), ("1e3", 1000)])
def test_bench_model_takes_a_decimal_count_that_is_a_whole_number_of_users(text, users):
    from bday.devtools.capacity import parse_users

    assert parse_users(text) == users


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            PermissionError(13, "Permission denied", "/srv/people.csv"),
            "/srv/people.csv: Permission denied",
        ),
        (
            FileNotFoundError(2, "No such file or directory", "x.csv"),
            "x.csv: No such file or directory",
        ),
    ],
)
def test_an_os_error_naming_a_file_is_a_local_problem_exit_2_not_a_service(error, line):
    from bday.cli.errors import explain

    assert explain(error) == (line, 2)
    assert explain(ConnectionRefusedError(111, "Connection refused"))[1] == 1  # a service


def test_a_user_not_found_message_is_one_printable_line():
    from bday.users.errors import UserNotFound

    assert str(UserNotFound("a\x00b")) == "user 'a\\x00b' not found"
    assert len(str(UserNotFound("x" * 10_000))) < 100
