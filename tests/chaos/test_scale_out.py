"""Beyond one machine's connection budget: many worker processes through PgBouncer in
transaction pooling mode, with a fixed number of PostgreSQL server connections."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import psycopg
import pytest

from bday.scheduling import jobs
from tests.harness import pgbouncer
from tests.harness.chaos import sends_summary
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages
from tests.harness.stack import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not pgbouncer.available(), reason="pgbouncer is not installed"),
]

SERVER_POOL = 20
# Anything a pooler breaks shows up as one of these in a worker's log.
CONNECTION_ERRORS = re.compile(
    r"OperationalError|prepared statement .* (does not )?exist|server closed the connection|"
    r"connection (refused|failed)|no more connections allowed|query_wait_timeout",
    re.I,
)


@pytest.fixture
def bouncer():
    running = pgbouncer.start(pool_size=SERVER_POOL)
    yield running
    running.stop()


class PeakServers:
    """Samples PgBouncer's server connections to one database every 0.2 s while it runs, and
    once more at the end (idle server connections stay open, so a drain shorter than one
    interval is still seen). A sample the loaded admin console does not answer is skipped."""

    def __init__(self, bouncer, database: str):
        self.bouncer, self.database, self.peak = bouncer, database, 0
        self.peak_waiting = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        try:
            servers = self.bouncer.server_connections(self.database)
            pools = [p for p in self.bouncer.admin("SHOW POOLS") if p["database"] == self.database]
        except psycopg.Error:
            return
        self.peak, self.samples = max(self.peak, servers), self.samples + 1
        self.peak_waiting = max([self.peak_waiting] + [p["cl_waiting"] for p in pools])

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        return self.peak


def test_eight_workers_through_pgbouncer_deliver_everything_once(stack, scale, report, bouncer):
    count, workers, threads = scale.pick(400, 2000), 8, 8
    database = urlsplit(stack.env["DATABASE_URL"]).path.lstrip("/")
    env = {"DATABASE_URL": bouncer.url(stack.env["DATABASE_URL"]), "DATABASE_POOLER": "transaction"}
    stack.fake.set(latency_ms=20)
    add_due_messages(count, datetime.now(UTC))
    started = [
        stack.start_worker(f"pgb{i}", concurrency=threads, extra_env=env, wait=False)
        for i in range(workers)
    ]
    for worker in started:
        wait_until(lambda w=worker: " ready." in w.output(), 120, f"{worker.name} ready")
    sampler = PeakServers(bouncer, database)
    began = time.monotonic()
    jobs.enqueue_job()
    try:
        wait_until(lambda: statuses()["SENT"] == count, 300, "every greeting sent")
    finally:
        peak = sampler.stop()
    errors = [
        line for w in started for line in w.output().splitlines() if CONNECTION_ERRORS.search(line)
    ]
    report.update(
        sends_summary(stack.fake.sent_per_key(), count),
        workers=workers,
        threads_each=threads,
        drain_s=round(time.monotonic() - began, 1),
        server_connections_peak=peak,
        server_pool=SERVER_POOL,
        clients_waiting_peak=sampler.peak_waiting,
        samples=sampler.samples,
        connection_errors=len(errors),
    )
    assert errors == []
    assert statuses() == {"SENT": count}
    assert report["lost"] == 0 and report["second_sends"] == 0
    assert 0 < peak <= SERVER_POOL
    assert all(w.alive() for w in started)
