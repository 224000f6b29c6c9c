"""Alembic migrations, installed as `bday.migrations` so `bday db upgrade` works anywhere."""
