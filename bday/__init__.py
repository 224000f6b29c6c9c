"""bday: birthday and work-anniversary greetings at SEND_TIME local time, exactly once.

`bday.app` is the Celery application (`celery -A bday worker|beat|flower`). It is loaded on
first access, so importing any part of bday (the calendar in `bday.core`, the store) loads
neither Celery nor a configuration. The package map is in docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from bday.worker import celery_app

        return celery_app()
    raise AttributeError(f"module 'bday' has no attribute {name!r}")
