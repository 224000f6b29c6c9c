"""A user's fields: the validation every way in shares (the API, the CLI, the import and the
sync), and the builders that turn cleaned values into a `User` row or a change of one. Pure of
I/O: nothing here reads or writes the database.

Bad input raises `UserInputError(field, problem)`; its message is one line naming the field.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email

from bday.core.locales import canonical_locale
from bday.core.occasions import Kind, is_known_zone, zone
from bday.store.models import User
from bday.users.errors import UserInputError

NAME_MAX = 100
EMAIL_MAX = 320
LOCAL_PART_MAX = 64
EMAIL_BYTES_MAX = 254  # RFC 5321's path, as email-validator counts it
EARLIEST_YEAR = 1900
FIELDS = (
    "first_name",
    "last_name",
    "email",
    "birthday",
    "timezone",
    "anniversary",
    "opt_out",
    "locale",
)
# The opt-out column of the CSV and the --opt-out option: a word for each set of types.
OPT_OUT_WORDS = {
    "": frozenset(),
    "none": frozenset(),
    "birthday": frozenset({Kind.BIRTHDAY}),
    "anniversary": frozenset({Kind.ANNIVERSARY}),
    "all": frozenset(Kind),
}


# --- validation -----------------------------------------------------------------------------


def clean_user_fields(values: dict[str, Any], today: date | None = None) -> dict[str, Any]:
    """Validated, normalised copies of all user fields. Raises `UserInputError`.

    The one validation of a user: `create_user`, `update_user`, the CLI and the CSV import all
    come through here, so a value refused by one is refused by all. `opt_out` and `locale` are
    in the result only when they are in `values` (an import file without the column leaves
    them as they are).
    """
    tz = clean_timezone(values.get("timezone"))
    today = today or datetime.now(zone(tz)).date()
    names = {name: clean_name(name, values.get(name)) for name in ("first_name", "last_name")}
    email = clean_email(values.get("email"))
    birthday = clean_date("birthday", values.get("birthday"), latest=today)
    cleaned: dict[str, Any] = {
        **names,
        "email": email,
        "timezone": tz,
        "birthday": birthday,
        "anniversary": clean_anniversary(values.get("anniversary"), birthday, today),
    }
    if "opt_out" in values:
        cleaned["opt_out"] = clean_opt_out(values["opt_out"])
    if "locale" in values:
        cleaned["locale"] = clean_locale(values["locale"])
    return cleaned


def clean_locale(value: Any) -> str | None:
    """None (the default templates) for None or blank; else a BCP 47 tag in canonical case."""
    if value is None:
        return None
    tag = text_of("locale", value, "a language tag such as de-AT").strip()
    if not tag:
        return None
    try:
        return canonical_locale(tag)
    except ValueError as exc:
        raise UserInputError("locale", str(exc)) from None


def clean_opt_out(value: Any) -> frozenset[Kind]:
    """None, a word of OPT_OUT_WORDS (any case), or an iterable of `Kind` / type names."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        found = OPT_OUT_WORDS.get(value.strip().lower())
        if found is None:
            words = ", ".join(repr(word) for word in OPT_OUT_WORDS if word)
            raise UserInputError("opt_out", f"{_shown(value)} is not one of {words} or empty")
        return found
    try:
        return frozenset(Kind(str(kind).upper()) for kind in value)
    except (TypeError, ValueError):
        raise UserInputError(
            "opt_out", f"expected 'all', 'birthday' or 'anniversary', got {_kind(value)}"
        ) from None


def opt_out_word(kinds: frozenset[Kind]) -> str:
    """The CSV word for a set of opted-out types ('' when greetings are on)."""
    if not kinds:
        return ""
    return "all" if kinds == frozenset(Kind) else next(iter(kinds)).value.lower()


def clean_name(field: str, value: Any) -> str:
    """1-100 characters of any script, at least one of them visible, on one line."""
    name = unicodedata.normalize("NFC", text_of(field, value, "a string").strip())
    if not name:
        raise UserInputError(field, "must not be empty")
    if len(name) > NAME_MAX:
        raise UserInputError(field, f"must be at most {NAME_MAX} characters (got {len(name)})")
    for char in name:
        problem = _NAME_REFUSES.get(unicodedata.category(char)) or _BIDI.get(char)
        if problem:
            raise UserInputError(field, f"must not contain {problem} (U+{ord(char):04X})")
    if not any(_visible(char) for char in name):
        raise UserInputError(field, "needs at least one visible character")
    return name


# Categories and characters a name must not hold, with the words an error uses for them.
_NAME_REFUSES = {
    "Cc": "control characters",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
# Bidi embeddings, overrides and isolates reorder the text around them (in `bday users list`
# and in the greeting), the "Trojan Source" trick; the marks LRM/RLM/ALM do not, and stay.
_BIDI = {chr(c): "a bidi override" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
# Letters by category that render as nothing (Hangul fillers, the braille blank).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _visible(char: str) -> bool:
    return unicodedata.category(char)[0] in "LNPS" and char not in _BLANK_LETTERS


def clean_email(value: Any) -> str:
    """The address as stored: lowercased and NFC, its lengths checked on that form (the one
    every later lookup, update and import compares with), not on what was typed: `İ` is
    two bytes typed and three lowercased."""
    text = text_of("email", value, "a string").strip()
    if not text:
        raise UserInputError("email", "is required")
    if len(text) > EMAIL_MAX:  # a cheap bound before the validator reads it
        raise UserInputError("email", f"must be at most {EMAIL_MAX} characters")
    try:
        checked = validate_email(
            unicodedata.normalize("NFC", text.lower()), check_deliverability=False
        )
    except EmailNotValidError as exc:
        raise UserInputError("email", f"is not a valid address ({_one_line(exc)})") from None
    stored = checked.normalized.lower()
    _check_email_lengths(stored)
    return stored


def _check_email_lengths(stored: str) -> None:
    # RFC 5321's 64-octet local part (email-validator checks it only with strict=True) and
    # 254-octet path, on the stored form
    local = len(stored.rpartition("@")[0].encode())
    if local > LOCAL_PART_MAX:
        raise UserInputError(
            "email",
            f"the part before @ must be at most {LOCAL_PART_MAX} bytes once lowercased "
            f"(RFC 5321; got {local})",
        )
    if len(stored.encode()) > EMAIL_BYTES_MAX:
        raise UserInputError(
            "email", f"must be at most {EMAIL_BYTES_MAX} bytes once lowercased (RFC 5321)"
        )


def clean_timezone(value: Any) -> str:
    """An IANA name, or a `ZoneInfo` built from one (its key is what is stored)."""
    if isinstance(value, ZoneInfo):
        if value.key is None or not is_known_zone(value.key):
            raise UserInputError("timezone", "a ZoneInfo without an IANA key is not supported")
        return value.key
    name = text_of("timezone", value, "an IANA name such as Europe/London").strip()
    if not name:
        raise UserInputError("timezone", "is required (an IANA name such as Europe/London)")
    if not is_known_zone(name):
        raise UserInputError("timezone", f"unknown IANA time zone {_shown(name)}")
    return name


def clean_anniversary(value: Any, birthday: date, today: date) -> date | None:
    """None (no anniversary) for None or a blank string; otherwise a date between the
    birthday and today: a future start date is refused, like a future birthday, because
    a typo (2100 for 2010) is far likelier than a planned hire (add it once they start)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    anniversary = clean_date("anniversary", value, latest=today)
    if anniversary < birthday:
        raise UserInputError(
            "anniversary",
            f"{anniversary.isoformat()} is before the birthday {birthday.isoformat()}",
        )
    return anniversary


def clean_date(field: str, value: Any, latest: date | None = None) -> date:
    parsed = _parse_date(field, value)
    if parsed.year < EARLIEST_YEAR:
        raise UserInputError(field, f"must not be before {EARLIEST_YEAR}")
    if latest is not None and parsed > latest:
        raise UserInputError(field, f"{parsed.isoformat()} is in the future")
    return parsed


def _parse_date(field: str, value: Any) -> date:
    if isinstance(value, datetime):
        raise UserInputError(field, "must be a date, not a date and time")
    if isinstance(value, date):
        return value
    text = text_of(field, value, "a date or 'YYYY-MM-DD' string").strip()
    if not text:
        raise UserInputError(field, "is required (YYYY-MM-DD)")
    try:
        if _ISO_DATE.match(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise UserInputError(field, f"{_shown(text)} is not a real date (YYYY-MM-DD)")


_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def text_of(field: str, value: Any, expected: str) -> str:
    """`value` if it is a string PostgreSQL can store; otherwise a UserInputError saying
    what was given and what is expected."""
    if value is None:
        raise UserInputError(field, f"is required ({expected})")
    if not isinstance(value, str):
        raise UserInputError(field, f"expected {expected}, got {_kind(value)}")
    surrogate = next((char for char in value if "\ud800" <= char <= "\udfff"), None)
    if surrogate is None:
        return value
    if "\udc80" <= surrogate <= "\udcff":  # how Python decodes a byte that is not UTF-8
        byte = ord(surrogate) - 0xDC00
        raise UserInputError(field, f"is not valid UTF-8 (the byte 0x{byte:02x})")
    raise UserInputError(field, f"is not valid Unicode (a lone surrogate U+{ord(surrogate):04X})")


def _kind(value: Any) -> str:
    """`int 19900305`, `list ['a@x.com']`: the type and a short repr of a wrong value."""
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not hide the real error
        shown = "<unprintable>"
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    name = type(value).__name__
    return shown if shown.startswith(name) else f"{name} {shown}"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


# --- rows ------------------------------------------------------------------------------------


def new_user(values: dict[str, Any], now: datetime) -> User:
    """A User for cleaned `values`, owed greetings only for instants after `now`."""
    fields = {name: value for name, value in values.items() if name != "opt_out"}
    user = User(
        id=uuid.uuid4(),
        **fields,
        birthday_owed_from=now,
        anniversary_owed_from=now,
        created_at=now,
        updated_at=now,
    )
    _apply_opt_out(user, values.get("opt_out", frozenset()), now)
    return user


def current_fields(user: User) -> dict[str, Any]:
    """The user's values in the shape `clean_user_fields` returns."""
    values = {name: getattr(user, name) for name in FIELDS if name != "opt_out"}
    return {**values, "opt_out": user.opted_out()}


def apply_changes(user: User, values: dict[str, Any], now: datetime) -> None:
    """Set cleaned `values` on `user`. A new date or zone, or a type turned back on, owes
    only instants after `now` (docs/contract.md, behaviour 2)."""
    zone_changed = values["timezone"] != user.timezone
    if zone_changed or values["birthday"] != user.birthday:
        user.birthday_owed_from = now
    if zone_changed or values["anniversary"] != user.anniversary:
        user.anniversary_owed_from = now
    for name, value in values.items():
        if name != "opt_out":
            setattr(user, name, value)
    if "opt_out" in values:
        _apply_opt_out(user, values["opt_out"], now)
    user.updated_at = now


_OPT_OUT_COLUMNS = {
    Kind.BIRTHDAY: ("birthday_opted_out_at", "birthday_owed_from"),
    Kind.ANNIVERSARY: ("anniversary_opted_out_at", "anniversary_owed_from"),
}


def _apply_opt_out(user: User, kinds: frozenset[Kind], now: datetime) -> None:
    for kind, (stamp, owed_from) in _OPT_OUT_COLUMNS.items():
        if kind in kinds and getattr(user, stamp) is None:
            setattr(user, stamp, now)
        elif kind not in kinds and getattr(user, stamp) is not None:
            setattr(user, stamp, None)
            setattr(user, owed_from, now)  # nothing owed for an instant passed while out


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
