"""The `bday` console script run in-process, for every test that types a command.

Shared here (not in a test module) so tests in any folder can use it without importing another
test module; tests/cli/test_users.py still re-exports the names for older imports.
"""

from __future__ import annotations

import sys

from bday.cli.main import run

ADD = [
    "users",
    "add",
    "--first-name",
    "Ada",
    "--last-name",
    "Lovelace",
    "--email",
    "ada@example.com",
    "--birthday",
    "1990-03-05",
    "--timezone",
    "Asia/Tokyo",
]


def bday(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console script in-process; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["bday", *args])
    code = 0
    try:
        run()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def replace_option(args: list[str], option: str, value: str) -> list[str]:
    """`args` with `option` set to `value` (appended when absent, e.g. --anniversary)."""
    if option not in args:
        return [*args, option, value]
    args = list(args)
    args[args.index(option) + 1] = value
    return args
