"""`bday users import FILE.csv`: many users at once, every row validated, bad rows reported.

Columns: first_name,last_name,email,birthday,timezone[,anniversary] (header required, any
order). Valid rows are inserted in batches; an invalid row, or an email already used (in the
database or earlier in the file), is reported with its line number and skipped. Greetings for
all imported users are then planned in one set-based pass.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from bday.store.db import transaction
from bday.store.models import User
from bday.users import hooks
from bday.users.api import UserInputError, clean_user_fields

REQUIRED = ("first_name", "last_name", "email", "birthday", "timezone")
OPTIONAL = ("anniversary",)
BATCH = 1000


class ImportFileError(ValueError):
    """The file itself is unusable (missing, not CSV, wrong header): one line, nothing written."""


@dataclass
class ImportResult:
    imported: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, problem)
    user_ids: list[uuid.UUID] = field(default_factory=list)


def read_rows(path: Path) -> tuple[list[tuple[int, dict]], int]:
    """(line number, row) for every data row, and the count. Raises ImportFileError."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            missing = [name for name in REQUIRED if name not in header]
            unknown = [name for name in header if name not in REQUIRED + OPTIONAL]
            if missing or unknown:
                raise ImportFileError(
                    f"{path}: header must name {', '.join(REQUIRED)} [and anniversary]; "
                    + (
                        f"missing {', '.join(missing)}"
                        if missing
                        else f"unknown {', '.join(unknown)}"
                    )
                )
            reader.fieldnames = header
            rows = []
            while True:
                first_line = reader.line_num + 1  # a quoted field may span lines: report the first
                row = next(reader, None)
                if row is None:
                    break
                rows.append((first_line, row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportFileError(f"{path}: cannot read ({exc})") from None
    return rows, len(rows)


def import_rows(
    rows: Iterable[tuple[int, dict]], progress: Callable[[int], None] = lambda n: None
) -> ImportResult:
    """Validate and insert `rows`; returns what was imported and what was refused."""
    result = ImportResult()
    seen: set[str] = set()
    batch: list[tuple[int, dict]] = []
    for line, row in rows:
        try:
            values = _clean(row)
            if values["email"] in seen:
                raise UserInputError("email", "appears earlier in this file")
            seen.add(values["email"])
            batch.append((line, values))
        except UserInputError as exc:
            result.errors.append((line, str(exc)))
        if len(batch) == BATCH:
            _insert(batch, result)
            progress(BATCH)
            batch = []
    if batch:
        _insert(batch, result)
        progress(len(batch))
    hooks.on_users_imported(result.user_ids)
    return result


def _clean(row: dict) -> dict:
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
                result.errors.append((line, "email: is already used by another user"))
                continue
            users.append(
                User(
                    id=uuid.uuid4(),
                    **values,
                    birthday_owed_from=now,
                    anniversary_owed_from=now,
                    created_at=now,
                    updated_at=now,
                )
            )
        session.add_all(users)
    result.imported += len(users)
    result.user_ids.extend(user.id for user in users)
