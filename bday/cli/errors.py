"""The one place where a failure the operator can cause becomes one line and an exit code.

`Failure` is the one-line error a command raises. `explain(exc)` answers `(message, exit code)`
for every error that means "fix your input or your setup" (exit 2; a local file that cannot be
read or written is one), or "a service is down" (exit 1); anything else is a bug and keeps its
traceback. Each message names the problem and, where there is one, the fix.
"""

from __future__ import annotations

import socket

import click
import psycopg
from psycopg import errors as pg
from sqlalchemy.exc import DBAPIError, OperationalError

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1


class Failure(click.ClickException):
    """A one-line error: printed as `bday: <message>` on stderr, exit code 2. The commands
    raise it; `bday.cli.main.run` prints it."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        super().__init__(message)

    def show(self, file=None) -> None:
        click.echo(f"bday: {self.format_message()}", err=True, file=file)


NOT_MIGRATED = "the database at DATABASE_URL has no bday tables: run `bday db upgrade`"
BEHIND = "the database at DATABASE_URL is behind this version of bday: run `bday db upgrade`"


class LocalFileError(Exception):
    """A file of this machine cannot be read or written: `PATH: cannot write (reason)`."""

    def __init__(self, path: str, action: str, exc: OSError):
        super().__init__(f"{path}: {action} ({exc.strerror or exc})")


def explain(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an error the operator can fix; None for a bug."""
    for check in (_user_error, _database_error, _number_error, _local_file_error, _service_error):
        answer = check(exc)
        if answer is not None:
            return answer
    return None


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _user_error(exc: BaseException) -> tuple[str, int] | None:
    from alembic.util import CommandError

    from bday.config import SettingsError
    from bday.users.errors import UserInputError, UserNotFound

    if isinstance(exc, SettingsError | UserInputError | UserNotFound | LocalFileError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, CommandError):  # an unknown revision for `bday db upgrade/downgrade`
        return f"{first_line(exc)} (`bday db current` shows the known revisions)", EXIT_USAGE
    return None


def _database_error(exc: BaseException) -> tuple[str, int] | None:
    orig: BaseException = (exc.orig or exc) if isinstance(exc, DBAPIError) else exc
    if isinstance(exc, DBAPIError) and exc.statement is None:  # it failed while connecting
        if isinstance(orig, psycopg.ProgrammingError):  # libpq refused the URL's options
            return f"invalid setting DATABASE_URL: {first_line(orig)}", EXIT_USAGE
        return f"cannot connect to PostgreSQL at DATABASE_URL: {first_line(orig)}", EXIT_UNAVAILABLE
    if isinstance(orig, pg.UndefinedTable):
        return NOT_MIGRATED, EXIT_USAGE
    if isinstance(orig, pg.UndefinedColumn | pg.UndefinedObject):
        return BEHIND, EXIT_USAGE
    if isinstance(orig, pg.NumericValueOutOfRange):
        return f"a number is out of range: {first_line(orig)}", EXIT_USAGE
    return None


def _number_error(exc: BaseException) -> tuple[str, int] | None:
    if isinstance(exc, OverflowError):
        return f"a number is out of range ({first_line(exc)})", EXIT_USAGE
    return None


def _local_file_error(exc: BaseException) -> tuple[str, int] | None:
    # An OSError naming a file is about this machine (a missing file, a permission, a full
    # disk), which no service being down explains: exit 2, like every local problem.
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or first_line(exc)}", EXIT_USAGE
    return None


def _service_error(exc: BaseException) -> tuple[str, int] | None:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve a service's host name: {first_line(exc)}", EXIT_UNAVAILABLE
    if isinstance(exc, OSError | OperationalError):  # connection refused and friends
        return f"cannot reach a service: {first_line(exc)}", EXIT_UNAVAILABLE
    return None
