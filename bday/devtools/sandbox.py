"""Throw-away PostgreSQL databases and RabbitMQ vhosts, so tests, `bday demo` and `bday bench`
never touch real data or see each other's messages."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def create_database(admin_url: str, name: str) -> str:
    """Create database `name` (dropping a leftover of the same name); return its bday URL."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(admin_url, name)


def database_url(admin_url: str, name: str) -> str:
    """The bday DATABASE_URL of database `name` on the server of `admin_url`."""
    parts = urlsplit(admin_url)
    return urlunsplit(("postgresql+psycopg", parts.netloc, f"/{name}", "", ""))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_vhost(name: str, user: str = "guest") -> None:
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    _rabbitmqctl("delete_vhost", name, check=False)


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=60)


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Process:
    """A child process (worker, beat, fake email service) with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (Celery's warm shutdown), then SIGKILL after `timeout`."""
        self.signal(signal.SIGTERM)
        return self._wait_or_kill(time.monotonic() + timeout)

    def _wait_or_kill(self, deadline: float) -> int:
        try:
            return self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)


def stop_all(processes: list[Process], timeout: float = 30) -> None:
    """Stop several processes at once: each gets SIGTERM first, then all are waited for (a
    SIGKILL for any still running after `timeout`), so N warm shutdowns overlap."""
    running = [process for process in processes if process.alive()]
    for process in running:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        process._wait_or_kill(deadline)


def spawn(name: str, args: list[str], env: dict, workdir: Path) -> Process:
    log = workdir / f"{name}.log"
    popen = subprocess.Popen(
        args,
        env={**os.environ, **env},
        cwd=workdir,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Process(name, popen, log)


def celery_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("celery")), "-A", "bday", *args]


def bday_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("bday")), *args]


def spawn_worker(
    name: str, env: dict, workdir: Path, concurrency: int | None = None, extra: tuple[str, ...] = ()
) -> Process:
    args = celery_command(
        "worker", "-n", f"{name}@%h", "-l", "info", "--without-mingle", "--without-gossip", *extra
    )
    if concurrency:
        args += ["-c", str(concurrency)]
    return spawn(name, args, env, workdir)


def spawn_beat(env: dict, workdir: Path, name: str = "beat") -> Process:
    return spawn(name, celery_command("beat", "-l", "info"), env, workdir)


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str = "condition", interval: float = 0.1
):
    """Poll `predicate` until it is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_ready(process: Process, marker: str, timeout: float = 60) -> None:
    wait_for(
        lambda: marker in process.output() or not process.alive(),
        timeout,
        f"{process.name} to start",
    )
    if not process.alive():
        raise RuntimeError(f"{process.name} exited: {process.output()[-2000:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Sandbox:
    """A database and vhost of their own, migrated, with the environment that points at them."""

    name: str
    admin_url: str
    database_url: str = ""
    env: dict = field(default_factory=dict)

    @classmethod
    def create(cls, prefix: str, admin_url: str | None = None) -> Sandbox:
        from bday.ops import migrate

        admin_url = admin_url or admin_url_for(os.environ.get("DATABASE_URL"))
        box = cls(f"{prefix}_{uuid.uuid4().hex[:8]}", admin_url)
        box.database_url = create_database(admin_url, box.name)
        create_vhost(box.name)
        migrate.upgrade("head", box.database_url)
        host = urlsplit(os.environ.get("RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672//")
        box.env = {
            "DATABASE_URL": box.database_url,
            "RABBITMQ_URL": urlunsplit((host.scheme, host.netloc, f"/{box.name}", "", "")),
        }
        return box

    def destroy(self) -> None:
        drop_database(self.admin_url, self.name)
        delete_vhost(self.name)


def admin_url_for(database_url: str | None) -> str:
    """The maintenance database (`postgres`) on the server of `database_url`."""
    parts = urlsplit(database_url or "postgresql://postgres@127.0.0.1:5432/bday")
    return urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) runs the `finally` that drops a sandbox, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
