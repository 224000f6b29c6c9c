"""A private PgBouncer in transaction pooling mode on a free loopback port, in front of this
machine's PostgreSQL (127.0.0.1:5432). Used by the chaos suite to run many worker processes
against a bounded number of server connections, as an operator would beyond one machine.

PgBouncer refuses to run as root, so it runs as `postgres` (`-u`) with its files in a temporary
directory that user owns. Its admin console (`SHOW POOLS`, `SHOW SERVERS`) is reachable as the
`postgres` user on the `pgbouncer` database.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from bday.devtools import sandbox

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
RUN_AS = "postgres"

CONFIG = """\
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits,options
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


def available() -> bool:
    return Path(BINARY).exists()


@dataclass
class PgBouncer:
    port: int
    workdir: Path
    popen: subprocess.Popen

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by this PgBouncer's."""
        parts = urlsplit(database_url)
        user = parts.username or "postgres"
        return urlunsplit((parts.scheme, f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))

    def admin(self, command: str) -> list[dict]:
        """One admin-console command (`SHOW POOLS`, ...), rows as dicts."""
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=pgbouncer"
        # The console speaks only the simple query protocol: a client-side-binding cursor.
        with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.ClientCursor) as c:
            cursor = c.execute(command)
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def server_connections(self, database: str) -> int:
        """Server connections PgBouncer holds to `database` right now."""
        return sum(1 for row in self.admin("SHOW SERVERS") if row["database"] == database)

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(pool_size: int = 20) -> PgBouncer:
    """Start PgBouncer (transaction mode, `pool_size` server connections per database/user)."""
    workdir = Path(tempfile.mkdtemp(prefix="bday-pgbouncer-"))
    port = sandbox.free_port()
    (workdir / "users.txt").write_text('"postgres" ""\n')
    config = workdir / "pgbouncer.ini"
    config.write_text(CONFIG.format(port=port, dir=workdir, pool_size=pool_size))
    account = pwd.getpwnam(RUN_AS)
    for path in (workdir, *workdir.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)
    args = [BINARY, str(config)] + (["-u", RUN_AS] if os.geteuid() == 0 else [])
    popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    bouncer = PgBouncer(port, workdir, popen)
    _wait_listening(bouncer)
    return bouncer


def _wait_listening(bouncer: PgBouncer, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bouncer.popen.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {bouncer.log()[-2000:]}")
        try:
            bouncer.admin("SHOW VERSION")
            return
        except psycopg.OperationalError:
            time.sleep(0.1)
    bouncer.stop()
    raise RuntimeError("pgbouncer did not start listening")
