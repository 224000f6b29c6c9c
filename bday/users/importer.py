"""`bday users import FILE.csv`: many users at once, every row validated, bad rows reported.

Columns: first_name,last_name,email,birthday,timezone[,anniversary][,opt_out][,locale] (header
required, any order, each named once). Valid rows are inserted in batches; an invalid row, or
an email already used (in the database or earlier in the file), is reported with its line
number and skipped. `bday.users.sync` builds --update, --sync and --dry-run on this reader.
Greetings for all imported users are then planned in one set-based pass.

The file is read as a stream of lines, each at most MAX_LINE bytes, so memory stays bounded
whatever the file holds (`/dev/zero` included). A record is one line: no user field may
contain a line break, so a quoted line break can only be a mistake (usually an unmatched
quote), and reading line by line means such a mistake costs its own line, never the rows after
it.
"""

from __future__ import annotations

import csv
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from sqlalchemy import func, select

from bday.store.db import transaction
from bday.store.models import User
from bday.users import cells, hooks
from bday.users.errors import UserInputError
from bday.users.fields import clean_user_fields, new_user

REQUIRED = ("first_name", "last_name", "email", "birthday", "timezone")
OPTIONAL = ("anniversary", "opt_out", "locale")
BATCH = 1000
MAX_LINE = 64 * 1024  # bytes; a valid row is under 2 KB, whitespace and quotes included
MAX_SKIP = 16 * 1024 * 1024  # an over-long line running this far without a line end ends the read
MAX_LISTED = 10_000  # refusals kept for the report; more are counted, not listed


class ImportFileError(ValueError):
    """The file itself is unusable (missing, not CSV, wrong header): one line, nothing written."""


@dataclass
class ImportResult:
    imported: int = 0
    refused: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, problem), MAX_LISTED
    user_ids: list[uuid.UUID] = field(default_factory=list)

    def refuse(self, line: int, problem: str) -> None:
        self.refused += 1
        if len(self.errors) < MAX_LISTED:
            self.errors.append((line, problem))


class Rows:
    """The data rows of an open CSV file: yields (line number, row dict) or (line, problem).

    Read forward only, so a pipe, a FIFO or `/dev/stdin` is read as a file is. With `copy`,
    every byte read is also written there (for a second pass over a pipe, see `read_twice`)."""

    def __init__(self, handle: BinaryIO, header: list[str], line: int, position: int, name: str):
        self.handle, self.header, self.line, self.name = handle, header, line, name
        self.first_line = line  # the header's: rows are numbered after it
        self.count = 0  # data rows met so far (blank lines are not rows)
        self.position = position  # bytes read so far
        stat = os.fstat(handle.fileno())
        self.size = stat.st_size if S_ISREG(stat.st_mode) else None
        self.copy: BinaryIO | None = None

    def _readline(self, limit: int) -> bytes:
        try:
            raw = self.handle.readline(limit)
        except OSError as exc:  # the disk, or the process feeding the pipe
            raise ImportFileError(
                f"{self.name}: cannot read after line {self.line} ({exc.strerror or exc})"
            ) from None
        self.position += len(raw)
        if self.copy is not None:
            self.copy.write(raw)
        return raw

    def __iter__(self) -> Iterator[tuple[int, dict | str]]:
        with self.handle:
            while True:
                raw, self.line = self._readline(MAX_LINE + 1), self.line + 1
                if not raw:
                    return
                item = _parse_line(raw, self.header) if _ends(raw) else self._overlong()
                if item is None:
                    continue
                self.count += 1
                yield self.line, item
                if item == _UNENDING:
                    return

    def _overlong(self) -> str:
        skipped = MAX_LINE
        while skipped < MAX_SKIP:
            chunk = self._readline(MAX_LINE)
            if not chunk or chunk.endswith(b"\n"):
                return f"row: longer than {MAX_LINE} bytes (a field too long, or not a CSV line)"
            skipped += len(chunk)
        return _UNENDING


_UNENDING = f"row: no line end within {MAX_SKIP // 2**20} MiB; the rest of the file was not read"


def read_rows(path: Path) -> Rows:
    """The file's rows, after checking its header. Raises ImportFileError (nothing read yet)."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header, line, position = _read_header(handle, path)
    except OSError as exc:  # a directory given as /dev/fd/N, a device that refuses reading
        handle.close()
        raise ImportFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except BaseException:
        handle.close()
        raise
    return Rows(handle, header, line, position, str(path))


def read_twice(path: Path) -> tuple[Rows, Callable[[], Rows]]:
    """For --sync, which reads a file twice (its emails, then its rows): the first pass, and
    how to start the second. A regular file is opened again; a pipe, a FIFO or /dev/stdin can
    be read once only, so the first pass copies what it reads to a temporary file, which the
    second pass reads (the same bytes, so the same lines and the same verdicts)."""
    first = read_rows(path)
    if first.size is not None:
        return first, lambda: read_rows(path)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the second pass closes (and deletes) it
    first.copy = spool

    def again() -> Rows:
        spool.flush()
        spool.seek(0)
        return Rows(spool, first.header, first.first_line, 0, str(path))

    return first, again


def _read_header(handle: BinaryIO, path: Path) -> tuple[list[str], int, int]:
    line = position = 0
    while True:
        raw, line = handle.readline(MAX_LINE + 1), line + 1
        position += len(raw)
        if not raw:
            raise ImportFileError(f"{path}: empty file; expected a header line naming the columns")
        if not _ends(raw):
            raise ImportFileError(f"{path}: line {line} is over {MAX_LINE} bytes: not a CSV file")
        text = _decode(raw.removeprefix(b"\xef\xbb\xbf") if line == 1 else raw)
        if text is None:
            raise ImportFileError(f"{path}: the header is not valid UTF-8; save the file as UTF-8")
        if text.strip():
            return _check_header(text, path), line, position


def _check_header(text: str, path: Path) -> list[str]:
    try:
        header = [name.strip() for name in next(csv.reader([text], strict=True))]
    except csv.Error as exc:
        raise ImportFileError(f"{path}: the header is not valid CSV ({exc})") from None
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise ImportFileError(f"{path}: the header names {', '.join(twice)} more than once")
    missing = [name for name in REQUIRED if name not in header]
    unknown = [name[:40] for name in header if name not in REQUIRED + OPTIONAL]
    if missing or unknown:
        raise ImportFileError(
            f"{path}: header must name {', '.join(REQUIRED)} [, {', '.join(OPTIONAL)}]; "
            + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
        )
    return header


def _parse_line(raw: bytes, header: list[str]) -> dict | str | None:
    """The row on one line, a "row: ..." problem, or None for a blank line."""
    text = _decode(raw)
    if text is None:
        return "row: not valid UTF-8 (save the file as UTF-8)"
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        return None
    try:
        fields = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        problem = "an unmatched quote" if "end of data" in str(exc) else str(exc)
        return f"row: not valid CSV ({problem})"
    if len(fields) != len(header):
        return f"row: expected {len(header)} columns, got {len(fields)}"
    return dict(zip(header, map(cells.restore, fields), strict=True))


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _ends(raw: bytes) -> bool:
    """Whether `raw` is a whole line: it ends with a line end, or is the file's short last line."""
    return raw.endswith(b"\n") or len(raw) <= MAX_LINE


def check_database() -> None:
    """Fail early (before any progress is shown) if the users table cannot be read."""
    with transaction() as session:
        session.execute(select(User.id).limit(1))


def import_rows(
    rows: Iterable[tuple[int, dict | str]], progress: Callable[[int], None] = lambda n: None
) -> ImportResult:
    """Validate and insert `rows`; returns what was imported and what was refused.

    `progress(n)` is called with the number of rows handled since its last call.
    """
    result = ImportResult()
    for batch, handled in clean_batches(rows, result.refuse):
        if batch:
            _insert(batch, result)
        progress(handled)
    hooks.on_users_imported(result.user_ids)
    return result


def clean_batches(
    rows: Iterable[tuple[int, dict | str]], refuse: Callable[[int, str], None]
) -> Iterator[tuple[list[tuple[int, dict]], int]]:
    """Valid rows in batches of BATCH, each with how many lines it took (the last batch may be
    short or empty). A refused line (bad field, email seen earlier in the file) goes to
    `refuse(line, why)` instead."""
    seen: set[str] = set()
    batch: list[tuple[int, dict]] = []
    handled = 0
    for line, row in rows:
        handled += 1
        try:
            values = _clean(row)
            if values["email"] in seen:
                raise UserInputError("email", "appears earlier in this file")
            seen.add(values["email"])
            batch.append((line, values))
        except UserInputError as exc:
            refuse(line, str(exc))
        if len(batch) == BATCH:
            yield batch, handled
            batch, handled = [], 0
    yield batch, handled


def _clean(row: dict | str) -> dict:
    if isinstance(row, str):  # the reader's own verdict on the line: "row: ..."
        raise UserInputError("row", row.removeprefix("row: "))
    if None in row or any(value is None for key, value in row.items() if key in REQUIRED):
        raise UserInputError("row", "wrong number of columns")
    return clean_user_fields({key: (value or "").strip() for key, value in row.items()})


def _insert(batch: list[tuple[int, dict]], result: ImportResult) -> None:
    now = datetime.now(UTC)
    emails = [values["email"] for _, values in batch]
    with transaction() as session:
        taken = set(
            session.scalars(
                select(func.lower(User.email)).where(
                    User.deleted_at.is_(None), func.lower(User.email).in_(emails)
                )
            )
        )
        users = []
        for line, values in batch:
            if values["email"] in taken:
                result.refuse(line, "email: is already used by another user")
                continue
            users.append(new_user(values, now))
        session.add_all(users)
    result.imported += len(users)
    result.user_ids.extend(user.id for user in users)
