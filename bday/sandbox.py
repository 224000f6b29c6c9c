"""Throw-away PostgreSQL databases and RabbitMQ vhosts, so tests, `bday demo` and `bday bench`
never touch real data or see each other's messages."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def create_database(admin_url: str, name: str) -> str:
    """Create database `name` (dropping a leftover of the same name); return its bday URL."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(admin_url, name)


def database_url(admin_url: str, name: str) -> str:
    """The bday DATABASE_URL of database `name` on the server of `admin_url`."""
    parts = urlsplit(admin_url)
    return urlunsplit(("postgresql+psycopg", parts.netloc, f"/{name}", "", ""))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_vhost(name: str, user: str = "guest") -> None:
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    _rabbitmqctl("delete_vhost", name, check=False)


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=60)
