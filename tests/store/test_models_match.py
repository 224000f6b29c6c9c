"""The models and the migrations describe one schema: a change to either needs the other."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bday.store.db import engine
from bday.store.models import Base
from bday.store.partitions import include_in_autogenerate

pytestmark = pytest.mark.usefixtures("database")


def test_the_models_match_the_database_the_migrations_build():
    """Alembic's autogenerate comparison of the run's database (migrated to head) with
    `bday.store.models`: no table, column, nullability, type or index differs. The monthly
    partitions of `messages` are the daily job's, not the models' (`include_in_autogenerate`)."""
    with engine().connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": include_in_autogenerate}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
