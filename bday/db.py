"""Database access: one engine per process and database URL, short transactions.

Every write in bday happens in `transaction()`, a session that commits on success and rolls
back on any exception. The engine is created lazily, so importing bday never connects, and it
is rebuilt after `fork()` (Celery's prefork pool) because a pooled connection must never be
shared by two processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from bday.config import get_settings

_engines: dict[tuple[str, int], Engine] = {}
_lock = threading.Lock()


def sqlalchemy_url(url: str) -> str:
    """Accept plain `postgresql://` URLs too; bday always talks psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def engine() -> Engine:
    """The engine for DATABASE_URL, its pool sized for QUEUE_CONCURRENCY concurrent tasks."""
    settings = get_settings()
    # The pid is part of the key: a forked child builds its own pool instead of reusing the
    # parent's sockets.
    key = (settings.database_url, os.getpid())
    with _lock:
        if key not in _engines:
            _engines[key] = create_engine(
                sqlalchemy_url(settings.database_url),
                pool_size=settings.queue_concurrency + 2,
                max_overflow=settings.queue_concurrency,
                pool_pre_ping=True,  # a PostgreSQL restart must not fail the next task
                pool_recycle=1800,
            )
        return _engines[key]


def reset_engines() -> None:
    """Close every pooled connection (tests switch databases; processes shutting down)."""
    with _lock:
        for cached in _engines.values():
            cached.dispose()
        _engines.clear()


@contextmanager
def transaction() -> Iterator[Session]:
    """A session whose work commits when the block ends and rolls back if it raises."""
    with Session(engine(), expire_on_commit=False) as session, session.begin():
        yield session
