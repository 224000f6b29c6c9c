"""The models and the migrations describe one schema: a change to either needs the other."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bday.store.db import engine
from bday.store.models import Base

pytestmark = pytest.mark.usefixtures("database")


def test_the_models_match_the_database_the_migrations_build():
    """Alembic's autogenerate comparison of the run's database (migrated to head) with
    `bday.store.models`: no table, column, nullability, type or index differs."""
    with engine().connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
