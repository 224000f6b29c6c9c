"""Schema migrations from code: Alembic, pointed at the migrations shipped with bday."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from bday.config import get_settings
from bday.store.db import sqlalchemy_url


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config for `database_url` (default: DATABASE_URL)."""
    import bday.migrations

    config = Config()
    config.set_main_option("script_location", str(Path(bday.migrations.__file__).parent))
    config.attributes["database_url"] = sqlalchemy_url(database_url or get_settings().database_url)
    config.attributes["configure_logging"] = False
    return config


def upgrade(revision: str = "head", database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(revision: str = "base", database_url: str | None = None) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # bday ships its revisions
    return head


def current_revision(database_url: str | None = None) -> str | None:
    """The revision the database is at, or None for an empty database."""
    url = sqlalchemy_url(database_url or get_settings().database_url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
