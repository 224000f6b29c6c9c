"""Imports are cheap and inert: the pure core loads no Celery or SQLAlchemy, and importing every
bday module (with an environment no setting would accept) neither exits nor connects."""

from __future__ import annotations

import os
import subprocess
import sys

BOGUS_ENV = {
    "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none",
    "RABBITMQ_URL": "amqp://USER:PASSWORD@127.0.0.1:9/none",
    "EMAIL_SERVICE_URL": "not a url",
    "SEND_TIME": "25:99",
    "CATCH_UP_HOURS": "-1",
}

# Run in a fresh interpreter: refuse every socket connection and every exit, import all of bday.
IMPORT_ALL = """
import pkgutil, socket, sys
def refuse(*args, **kwargs):
    raise AssertionError(f"connect at import: {args[1:]}")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
import bday
SKIP = {"bday.migrations.env"}  # Alembic's script: only `alembic` runs it
names = sorted(
    info.name for info in pkgutil.walk_packages(bday.__path__, "bday.") if info.name not in SKIP
)
for name in names:
    try:
        __import__(name)
    except SystemExit as exc:
        raise AssertionError(f"{name} exits at import ({exc.code})") from None
print(len(names), "modules")
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level package names from `-X importtime` lines: `import time: self | cumul | name`."""
    lines = [line for line in importtime_stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines[1:]}


def test_the_pure_core_loads_neither_celery_nor_sqlalchemy():
    result = run("-X", "importtime", "-c", "import bday.core.occasions, bday.core.retries")
    assert result.returncode == 0, result.stderr
    loaded = imported_modules(result.stderr)
    assert "bday" in loaded and "zoneinfo" in loaded  # the parse reads real module names
    assert not loaded & {"celery", "kombu", "sqlalchemy", "psycopg", "httpx"}


def test_importing_every_module_with_a_bogus_environment_neither_exits_nor_connects():
    result = run("-c", IMPORT_ALL, env={**os.environ, **BOGUS_ENV})
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[0]) > 50  # every sub-package was walked
