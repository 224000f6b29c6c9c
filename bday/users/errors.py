"""The two ways a user operation refuses: bad input, and no such user."""

from __future__ import annotations

import uuid
from typing import Any


class UserInputError(ValueError):
    """One field of a user is invalid. `field` names it; `str()` is a one-line explanation."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class UserNotFound(LookupError):
    """No live user has this id."""

    def __init__(self, user_id: Any):
        shown = str(user_id)
        if not shown.isprintable() or len(shown) > 80:  # a NUL or 10,000 bytes: one short line
            shown = repr(shown[:60] + ("..." if len(shown) > 60 else ""))
        super().__init__(f"user {shown} not found")


def parse_user_id(value: Any) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise UserNotFound(value) from None
