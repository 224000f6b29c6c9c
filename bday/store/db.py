"""Database access: one engine per process and database URL, short transactions.

Writes happen in `transaction()`, a session that commits on success and rolls back on any
exception, with two deliberate exceptions that write in autocommit, one statement being its own
transaction: the hot path of a send (`bday.store.messages.claim_many`, `record_sent`, `finish`,
through `fast_autocommit()`) and the shared breaker and pacing rows (`bday.delivery.breaker`,
`bday.delivery.pacing`, through `autocommit()` and `fast_autocommit()`). Bench and sandbox
loaders in bday.devtools use COPY on a raw connection. The engine is created lazily, so
importing bday never connects, and it is rebuilt after `fork()` (Celery's prefork pool)
because a pooled connection must never be shared by two processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine
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
                # Statements on the hot path last well under a millisecond, so a few connections
                # serve many threads; sizing the pool to the concurrency would exhaust
                # PostgreSQL's max_connections (100 by default) with two busy workers.
                pool_size=min(settings.queue_concurrency + 2, settings.db_pool_size),
                max_overflow=settings.db_pool_size,
                pool_timeout=30,
                # No pre-ping (a round trip per checkout on the hot path): after a PostgreSQL
                # restart the first statement fails, SQLAlchemy invalidates the pool, and the
                # task that hit it is retried through the broker.
                pool_recycle=1800,
                connect_args=connect_args(settings.database_pooler),
            )
        return _engines[key]


def connect_args(pooler: str) -> dict[str, Any]:
    """psycopg options for the server behind DATABASE_URL.

    Behind a transaction pooler (PgBouncer `pool_mode=transaction`) consecutive statements of
    one client connection may run on different server connections, so a statement prepared on
    one is unknown on the next ("prepared statement _pg3_0 does not exist"). psycopg prepares
    on its own after five executions of a query, and the hot path asks for it (`prepare=True`);
    `prepare_threshold=None` turns both off for the whole connection.
    """
    return {"prepare_threshold": None} if pooler == "transaction" else {}


def reset_engines() -> None:
    """Close every pooled connection (tests switch databases; processes shutting down)."""
    with _lock:
        for cached in _engines.values():
            cached.dispose()
        _engines.clear()


def autocommit() -> Connection:
    """A connection in autocommit mode, for one statement that is its own transaction.

    One round trip per statement instead of BEGIN, statement, COMMIT: the hot path (claim a
    message, record its outcome) is made of such single conditional UPDATEs.
    """
    return engine().connect().execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def fast_autocommit() -> Iterator[psycopg.Connection]:
    """The pooled psycopg connection itself, in autocommit, for the per-message hot path.

    Skips SQLAlchemy's execution layer (about 170 us of CPU per statement, measured), which is
    a large share of a worker's time per message. Statements use psycopg's %(name)s style.
    """
    pooled = engine().raw_connection()
    try:
        connection = pooled.driver_connection
        assert isinstance(connection, psycopg.Connection)  # the psycopg dialect's connection
        connection.autocommit = True
        try:
            yield connection
        except psycopg.OperationalError:
            # The server went away (restart, network): drop this connection, and the pool's
            # other ones, which are as stale, instead of handing them to the next task.
            pooled.invalidate()
            engine().dispose()
            raise
        finally:
            if not connection.closed:
                connection.autocommit = False  # the pool's other users expect transactions
    finally:
        pooled.close()


@contextmanager
def transaction() -> Iterator[Session]:
    """A session whose work commits when the block ends and rolls back if it raises."""
    with Session(engine(), expire_on_commit=False) as session, session.begin():
        yield session
