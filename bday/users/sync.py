"""`bday users import FILE --update / --sync / --dry-run`: follow a source of truth.

Rows are matched to live users by email. A new email creates a user, a known one is updated
with the columns the file has (the same validation, owed rule and hooks as `bday users update`,
so a zone change on the day cancels the planned greeting and plans the right one), and an
identical one is left alone: importing the same file twice changes nothing the second time.

`--sync` also deletes (softly, like `bday users delete`) the live users whose email the file
does not hold. It first reads the file once for its emails alone and refuses, writing
nothing, when that would delete more than `max_delete` percent of the live users, or when a
line's email could not be read (that user cannot be told from an absent one); `force`
overrides both.
A refused row whose email is readable protects its user from deletion.

`--dry-run` runs the same reading and matching in read-only transactions and lists what it
would create, update and delete, every refusal the real run would meet (both reasons above and
each refused row), and the CLI exits with the real run's code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, func, or_, select, update

from bday.store.db import transaction
from bday.store.models import User
from bday.users import cells, hooks
from bday.users.errors import UserInputError
from bday.users.fields import (
    FIELDS,
    apply_changes,
    clean_email,
    clean_user_fields,
    current_fields,
    new_user,
    opt_out_word,
)
from bday.users.importer import MAX_LISTED, clean_batches


@dataclass
class SyncResult:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    refused: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # what changed (listed by --dry-run)
    created_ids: list[uuid.UUID] = field(default_factory=list)
    updated_ids: list[uuid.UUID] = field(default_factory=list)

    def refuse(self, line: int, problem: str) -> None:
        self.refused += 1
        if len(self.errors) < MAX_LISTED:
            self.errors.append((line, problem))

    def note(self, change: str) -> None:
        if len(self.changes) < MAX_LISTED:
            self.changes.append(change)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


@dataclass
class Absent:
    """Live users whose email the file does not hold (found by `find_absent`), and why a real
    run would refuse to delete them (every reason, so a dry run can list them all)."""

    users: list[tuple[uuid.UUID, str]]
    live: int
    refusals: list[str] = field(default_factory=list)


def find_absent(rows: Iterable[tuple[int, dict | str]], max_delete: int, force: bool) -> Absent:
    """The first pass of --sync: the file's emails only. A real run must write nothing when
    the answer has `refusals`."""
    emails, unreadable = set(), 0
    for _, row in rows:
        email = _email_of(row)
        if email is None:
            unreadable += 1
        else:
            emails.add(email)
    absent, live = [], 0
    with transaction() as session:
        query = select(User.id, User.email).where(User.deleted_at.is_(None))
        for user_id, email in session.execute(query.execution_options(yield_per=10_000)):
            live += 1
            if email.lower() not in emails:
                absent.append((user_id, email))
    return Absent(absent, live, _refusals(len(absent), live, unreadable, max_delete, force))


def _refusals(absent: int, live: int, unreadable: int, max_delete: int, force: bool) -> list[str]:
    if force or not absent:
        return []
    refusals = []
    if unreadable:
        refusals.append(
            f"--sync: {unreadable} line(s) have no readable email, so their users cannot be "
            "told from absent ones; nothing written (fix the file, or --force)"
        )
    if absent * 100 > max_delete * live:  # in integers: 0.29 * 100 is 28.999999999999996
        refusals.append(
            f"--sync would delete {absent} of {live} live user(s) ({absent / live:.0%}), more "
            f"than {max_delete}%; nothing written (check the file, or --force)"
        )
    return refusals


def _email_of(row: dict | str) -> str | None:
    if isinstance(row, str) or not isinstance(row.get("email"), str):
        return None
    try:
        return clean_email(row["email"])
    except UserInputError:
        return row["email"].strip().lower() or None


def sync_rows(
    rows: Iterable[tuple[int, dict | str]],
    columns: list[str],
    *,
    absent: Absent | None = None,
    update: bool = True,
    dry_run: bool = False,
    progress: Callable[[int], None] = lambda n: None,
) -> SyncResult:
    """Create and (with `update`) update from `rows`, then delete `absent` users; with
    `dry_run` write nothing. Without `update` a known email is refused, as a plain import."""
    result = SyncResult()
    for batch, handled in clean_batches(rows, result.refuse):
        result.rows += handled
        _apply_batch(batch, columns, result, dry_run, update)
        progress(handled)
    if absent is not None:
        _delete(absent, result, dry_run)
    if not dry_run:
        hooks.on_users_imported(result.created_ids)
        hooks.on_users_updated(result.updated_ids)
    return result


def _apply_batch(
    batch: list[tuple[int, dict]],
    columns: list[str],
    result: SyncResult,
    dry_run: bool,
    update: bool,
) -> None:
    if not batch:
        return
    now = datetime.now(UTC)
    emails = [values["email"] for _, values in batch]
    with transaction() as session:
        query = select(User).where(User.deleted_at.is_(None), func.lower(User.email).in_(emails))
        if not dry_run:
            query = query.with_for_update()
        existing = {user.email.lower(): user for user in session.scalars(query)}
        created = []
        for line, values in batch:
            user = existing.get(values["email"])
            if user is None:
                created.append(new_user(values, now))
                result.created += 1
                result.note(f"create line {line}: {values['email']}")
            elif not update:
                result.refuse(line, "email: is already used by another user")
            else:
                _update(user, line, values, columns, result, dry_run, now)
        if dry_run:
            return  # nothing was added or changed: the transaction only read
        session.add_all(created)
    result.created_ids.extend(user.id for user in created)


def _update(user, line, values, columns, result, dry_run, now) -> None:
    """Apply the file's columns to a live user, re-validated with the fields it keeps."""
    current = current_fields(user)
    given = {name: value for name, value in values.items() if name in columns}
    try:
        merged = clean_user_fields({**current, **given})
    except UserInputError as exc:  # e.g. a new birthday after the anniversary the file omits
        result.refuse(line, str(exc))
        return
    changed = [name for name in FIELDS if name in merged and merged[name] != current[name]]
    if not changed:
        result.unchanged += 1
        return
    result.updated += 1
    result.note(f"update line {line}: {values['email']} ({', '.join(changed)})")
    if not dry_run:
        apply_changes(user, merged, now)
        result.updated_ids.append(user.id)


def _delete(absent: Absent, result: SyncResult, dry_run: bool) -> None:
    now = datetime.now(UTC)
    for user_id, email in absent.users:
        result.note(f"delete {user_id}: {email}")
    ids = [user_id for user_id, _ in absent.users]
    if dry_run:
        result.deleted = len(ids)
        return
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        with transaction() as session:
            statement = (
                update(User)
                .where(User.id.in_(chunk), User.deleted_at.is_(None))
                .values(deleted_at=now, updated_at=now)
            )
            result.deleted += session.execute(statement).rowcount  # type: ignore[attr-defined]
    hooks.on_users_deleted(ids)


# --- export -----------------------------------------------------------------------------------

EXPORT_COLUMNS = tuple(name for name in FIELDS if name != "opt_out")  # opt_out goes last
LISTED_UNWRITABLE = 5  # users an export refusal names; the rest are counted


class ExportRefused(ValueError):
    """Some live users hold a value no import can read back: one line naming them."""


def export_rows() -> Iterator[list[str]]:
    """The header, then one row per live user, oldest first, in the import's format, each
    cell neutralised against spreadsheet formulas (`bday.users.cells`). Raises
    `ExportRefused` before the header when a user holds a line break (written by older code
    or SQL: no import reads it back, and a --sync of the file would delete that user)."""
    _refuse_line_breaks()
    yield [*EXPORT_COLUMNS, "opt_out"]
    query = (
        select(User)
        .where(User.deleted_at.is_(None))
        .order_by(User.created_at, User.id)
        .execution_options(yield_per=5000)
    )
    with transaction() as session:
        for user in session.scalars(query):
            values = [*(_cell(getattr(user, name)) for name in EXPORT_COLUMNS), _opt_out(user)]
            yield [cells.neutralise(value) for value in values]


def _text_columns() -> list[Any]:
    table = User.__table__
    return [table.c[name] for name in EXPORT_COLUMNS if isinstance(table.c[name].type, String)]


def _refuse_line_breaks() -> None:
    columns = _text_columns()
    breaks = {column.name: column.regexp_match("[\r\n]") for column in columns}
    query = (
        select(User.id, *(match.label(name) for name, match in breaks.items()))
        .where(User.deleted_at.is_(None), or_(*breaks.values()))
        .order_by(User.created_at, User.id)
    )
    with transaction() as session:
        found = session.execute(query).all()
    if not found:
        return
    named = [
        f"{row.id} ({', '.join(name for name in breaks if getattr(row, name))})"
        for row in found[:LISTED_UNWRITABLE]
    ]
    more = f" and {len(found) - LISTED_UNWRITABLE} more" if len(found) > LISTED_UNWRITABLE else ""
    raise ExportRefused(
        f"cannot export: {len(found)} user(s) hold a line break, which no import reads back: "
        f"{'; '.join(named)}{more}; correct them (bday users update ID --first-name ...), "
        "then export again; nothing written"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _opt_out(user: User) -> str:
    return opt_out_word(user.opted_out())
