"""User hooks, at the path the contract names (`from bday.hooks import on_birthday_hook`)."""

from bday.users.hooks import (
    next_owed_occasion,
    on_anniversary_hook,
    on_birthday_hook,
    on_user_created,
    on_user_deleted,
    on_user_updated,
    on_users_imported,
)

__all__ = [
    "next_owed_occasion",
    "on_anniversary_hook",
    "on_birthday_hook",
    "on_user_created",
    "on_user_deleted",
    "on_user_updated",
    "on_users_imported",
]
