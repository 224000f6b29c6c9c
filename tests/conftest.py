"""Shared fixtures: a fresh PostgreSQL database (migrated by Alembic) and RabbitMQ vhost per run.

Nothing here mocks PostgreSQL or RabbitMQ. Each pytest run creates `bday_test_<random>` (database
and vhost) and removes both at the end, so parallel runs, demos and real data never meet.

Markers select by the services a test needs (see `pytest_collection_modifyitems`):
* `broker`: publishes to or reads from RabbitMQ; only these get the run's vhost. Every `e2e`
  test is a broker test.
* `db`: uses the run's database (set on every test that asks for `database_url`, directly or
  through `database`).
So `pytest -m "not broker"` needs PostgreSQL only, and `pytest -m "not broker and not db"` runs
the pure tests with no services at all.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import time_machine
from hypothesis import settings as hypothesis_settings
from sqlalchemy import text

from bday.config import get_settings
from bday.devtools import sandbox as services
from bday.ops import migrate
from bday.store import db

# Property tests assert what a function returns, never how fast: hypothesis' 200 ms deadline
# per example only measured how busy the machine was (it failed test_retries under load).
hypothesis_settings.register_profile("bday", deadline=None)
hypothesis_settings.load_profile("bday")

ADMIN_URL = os.environ.get("BDAY_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The broker the run's vhost lives on (the vhost is appended); a closed port here shows that the
# tests not marked `broker` never need RabbitMQ.
AMQP_URL = os.environ.get("BDAY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RUN_ID = uuid.uuid4().hex[:10]


NAME = f"bday_test_{RUN_ID}"


def pytest_addoption(parser):
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="chaos suite at full size (2,000 messages, 10 kills, 5-minute outage...)",
    )
    parser.addoption(
        "--clock",
        metavar="ISO",
        default=None,
        help=(
            "run with this process's clock starting at a UTC instant (e.g. 2028-02-29T23:55), "
            "ticking from there; PostgreSQL's now() and other processes keep the real time "
            "(docs/testing.md, 'Any date')"
        ),
    )


def pytest_configure(config):
    _travel_to(config.getoption("--clock"))
    # Decided before anything imports the Celery configuration (pytest's plugin scan can load
    # it early): every connection this run makes goes to its own database and vhost, and no
    # test can reach the real email service.
    os.environ["DATABASE_URL"] = services.database_url(ADMIN_URL, NAME)
    os.environ["RABBITMQ_URL"] = f"{AMQP_URL.rstrip('/')}/{NAME}"
    os.environ["EMAIL_SERVICE_URL"] = "http://127.0.0.1:9"
    get_settings.cache_clear()


def _travel_to(clock: str | None) -> None:
    """Start the whole run at `clock` (UTC), so date-dependent expectations meet that date."""
    if not clock:
        return
    try:
        instant = datetime.fromisoformat(clock)
    except ValueError:
        raise pytest.UsageError(f"--clock: not an ISO date-time: {clock!r}") from None
    instant = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    time_machine.travel(instant, tick=True).start()  # stopped when the process ends


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the markers set here must count
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", [])
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.broker)
        if item.get_closest_marker("broker") and "rabbitmq_vhost" not in names:
            names.insert(0, "rabbitmq_vhost")
        if "database_url" in names:
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost for this run (every publish in the run goes there), deleted afterwards.

    Not autouse: only tests marked `broker` get it (added by the hook above)."""
    services.create_vhost(NAME)
    yield NAME
    services.delete_vhost(NAME)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new database for this run, migrated to head, dropped afterwards."""
    url = services.create_database(ADMIN_URL, NAME)
    db.reset_engines()
    migrate.upgrade("head", url)
    yield url
    db.reset_engines()
    services.drop_database(ADMIN_URL, NAME)


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    """The run's database, emptied after the test (tables truncated, schema kept)."""
    yield database_url
    with db.engine().begin() as connection:
        connection.execute(text(TRUNCATE))


TRUNCATE = (
    "TRUNCATE users, messages, heartbeats, circuit_breakers, send_rates RESTART IDENTITY CASCADE"
)


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
