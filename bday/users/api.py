"""Users: create, update, soft-delete and read, validating every field.

Bad input raises `UserInputError(field, problem)` before anything is written; its message is
one line naming the field. Each write commits, then calls the matching hook in `bday.users.hooks`
(hooks publish jobs only for rows already committed: a job never names a row not there yet).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from bday.delivery import breaker
from bday.store import messages
from bday.store.db import transaction
from bday.store.models import User
from bday.users import hooks
from bday.users.errors import UserInputError, UserNotFound, parse_user_id
from bday.users.fields import (
    FIELDS,
    apply_changes,
    clean_email,
    clean_user_fields,
    current_fields,
    new_user,
    text_of,
)

log = logging.getLogger(__name__)


def create_user(
    *,
    first_name: str,
    last_name: str,
    email: str,
    birthday: date | str,
    timezone: str,
    anniversary: date | str | None = None,
    opt_out: Any = None,
    locale: str | None = None,
) -> uuid.UUID:
    """Validate and store a new user, plan their greetings, and return the new id.

    `opt_out`: greeting types the user does not want ("birthday", "anniversary", "all", or a
    set of `Kind`). `locale`: a BCP 47 tag (`de-AT`) choosing the greeting's language (None:
    the default templates). Raises `UserInputError` for any invalid field, including an
    email already used by a live user. Nothing is written when it raises.
    """
    values = clean_user_fields(
        dict(
            first_name=first_name,
            last_name=last_name,
            email=email,
            birthday=birthday,
            timezone=timezone,
            anniversary=anniversary,
            opt_out=opt_out,
            locale=locale,
        ),
    )
    user = new_user(values, _now())
    with _unique_email(), transaction() as session:
        session.add(user)
    hooks.on_user_created(user.id)
    return user.id


def update_user(user_id: uuid.UUID | str, **changes: Any) -> None:
    """Change some fields of a live user; re-plan their greetings if a date or zone changed.

    Raises `UserNotFound` for an unknown or deleted id and `UserInputError` for an invalid
    or unknown field; nothing is written when it raises.
    """
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise UserInputError(unknown[0], "not a user field")
    user_id = parse_user_id(user_id)
    if not changes:
        get_user(user_id)  # nothing to change, but an unknown id is still UserNotFound
        return
    now = _now()
    with _unique_email(), transaction() as session:
        user = _live(session, user_id)
        apply_changes(user, clean_user_fields({**current_fields(user), **changes}), now)
    hooks.on_user_updated(user_id)


def set_opt_out(user_id: uuid.UUID | str, opt_out: Any) -> None:
    """Greetings off for `opt_out` ("all", "birthday", "anniversary", a set of `Kind`; "none"
    turns them all back on). Unsent greetings of those types are cancelled at once; turning
    a type back on owes only instants after that moment."""
    update_user(user_id, opt_out=opt_out)


def erase_user(reference: uuid.UUID | str) -> uuid.UUID:
    """Forget a person: name and email replaced by anonymous values, stored service answers
    on their messages cleared, unsent greetings cancelled, the user deleted. Only the user
    `reference` names is erased: other user rows holding the same address (a deleted record,
    or a live user who took the address again) are left alone and logged by id (`erase`
    returns them). Message rows stay (anonymous) so counts hold. Cannot be undone. Raises
    `UserNotFound`."""
    return erase(reference).user_id


@dataclass(frozen=True, slots=True)
class Erasure:
    user_id: uuid.UUID
    others: list[uuid.UUID]  # other users holding the erased address, not erased


def erase(reference: uuid.UUID | str) -> Erasure:
    """`erase_user`, also answering which other users hold the same address."""
    found = find_user(reference, include_deleted=True)
    now = _now()
    with transaction() as session:
        user = session.get(User, found.id, with_for_update=True)
        if user is None or user.erased_at is not None:
            return Erasure(found.id, [])
        address = user.email
        others = list(
            session.scalars(
                select(User.id).where(func.lower(User.email) == address.lower(), User.id != user.id)
            )
        )
        _anonymise(user, now)
        messages.forget_answers(session, user.id, now)
        breaker.forget_text(session, address)  # an error text may quote the address
    hooks.on_user_deleted(user.id)
    log.info("user %s erased", user.id)
    if others:
        log.warning(
            "user %s erased; %d other user(s) hold the same address and were not erased: %s",
            user.id,
            len(others),
            " ".join(map(str, others)),
        )
    return Erasure(user.id, others)


def _anonymise(user: User, now: datetime) -> None:
    user.first_name = user.last_name = "erased"
    user.email = f"erased-{secrets.token_hex(12)}@erased.invalid"  # unique, so the index holds
    user.deleted_at = user.deleted_at or now
    user.erased_at = user.updated_at = now


def delete_user(user_id: uuid.UUID | str) -> None:
    """Soft-delete a live user and cancel their unsent greetings. Raises `UserNotFound`."""
    user_id = parse_user_id(user_id)
    with transaction() as session:
        _live(session, user_id).deleted_at = _now()
    hooks.on_user_deleted(user_id)


def get_user(user_id: uuid.UUID | str) -> User:
    """The live user with this id. Raises `UserNotFound`."""
    user_id = parse_user_id(user_id)
    with transaction() as session:
        return _live(session, user_id)


def find_user(reference: uuid.UUID | str, *, include_deleted: bool = False) -> User:
    """The user named by an id or an email (a live one first; with `include_deleted`, else
    the most recently deleted one). Raises `UserNotFound`, or `UserInputError` for a
    reference no user can have (empty, a NUL, bytes that are not UTF-8)."""
    text_ref = _reference(reference)
    if "@" not in text_ref:
        user_id = parse_user_id(text_ref)
        with transaction() as session:
            user = session.get(User, user_id)
        if user is None or (user.deleted_at is not None and not include_deleted):
            raise UserNotFound(user_id)
        return user
    query = select(User).where(func.lower(User.email) == _email_key(text_ref))
    if not include_deleted:
        query = query.where(User.deleted_at.is_(None))
    query = query.order_by(User.deleted_at.desc().nulls_first()).limit(1)
    with transaction() as session:
        user = session.scalars(query).first()
    if user is None:
        raise UserNotFound(text_ref)
    return user


def _reference(reference: Any) -> str:
    """An id or email to look up, checked before it reaches PostgreSQL (which refuses a NUL
    with its own DataError, and cannot encode a lone surrogate)."""
    if isinstance(reference, uuid.UUID):
        return str(reference)
    text_ref = text_of("user", reference, "an id or an email").strip()
    if not text_ref:
        raise UserInputError("user", "must not be empty (give an id or an email)")
    if "\x00" in text_ref:
        raise UserInputError("user", "must not contain a NUL character (U+0000)")
    return text_ref


def _email_key(text_ref: str) -> str:
    """The address as `clean_email` stores it (NFC, lowercased), so a lookup finds the user
    whichever form was typed; an address it refuses is looked up lowercased as it is."""
    try:
        return clean_email(text_ref)
    except UserInputError:
        return text_ref.lower()


def list_users(*, limit: int | None = None, offset: int = 0) -> list[User]:
    """Live users, oldest first."""
    query = (
        select(User)
        .where(User.deleted_at.is_(None))
        .order_by(User.created_at, User.id)
        .offset(offset)
        .limit(limit)
    )
    with transaction() as session:
        return list(session.scalars(query))


def count_users() -> int:
    with transaction() as session:
        live = select(func.count()).select_from(User).where(User.deleted_at.is_(None))
        return session.scalar(live) or 0


# --- internals --------------------------------------------------------------------------------


def _live(session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise UserNotFound(user_id)
    return user


@contextmanager
def _unique_email():
    """Turn the live-email unique index's refusal into a field error."""
    try:
        yield
    except IntegrityError as exc:
        if "uq_users_email_live" in str(exc):
            raise UserInputError("email", "is already used by another user") from None
        raise


def _now() -> datetime:
    return datetime.now(UTC)
