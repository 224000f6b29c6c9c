"""The seed's event API, at its documented path (`from bday.events import emit`)."""

from bday.users.events import (
    USER_ANNIVERSARY,
    USER_BIRTHDAY,
    emit,
    off,
    on,
)

__all__ = [
    "USER_ANNIVERSARY",
    "USER_BIRTHDAY",
    "emit",
    "off",
    "on",
]
