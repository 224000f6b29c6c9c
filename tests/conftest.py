"""Shared fixtures: a fresh PostgreSQL database (migrated by Alembic) and RabbitMQ vhost per run.

Nothing here mocks PostgreSQL or RabbitMQ. Each pytest run creates `bday_test_<random>` (database
and vhost) and removes both at the end, so parallel runs, demos and real data never meet.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text

from bday import db, migrate
from bday.config import get_settings

from bday import sandbox as services

ADMIN_URL = os.environ.get("BDAY_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:10]


def pytest_configure(config):
    # Tests never read a developer's .env, and start from the contract's defaults.
    os.environ.setdefault("BDAY_TEST_RUN", RUN_ID)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new database for this run, migrated to head, dropped afterwards."""
    name = f"bday_test_{RUN_ID}"
    url = services.create_database(ADMIN_URL, name)
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    db.reset_engines()
    migrate.upgrade("head", url)
    yield url
    db.reset_engines()
    services.drop_database(ADMIN_URL, name)


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    """The run's database, emptied after the test (tables truncated, schema kept)."""
    yield database_url
    with db.engine().begin() as connection:
        connection.execute(text("TRUNCATE users, messages RESTART IDENTITY CASCADE"))


@pytest.fixture
def settings_env(monkeypatch) -> Iterator[pytest.MonkeyPatch]:
    """Set environment variables for one test; settings are re-read before and after."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def admin_connection() -> Iterator[psycopg.Connection]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        yield connection
