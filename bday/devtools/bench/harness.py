"""The bench's harness: a sandbox database and vhost, the fake email service, worker processes,
and each measurement (`Bench.ceiling`, `delivery`, `burst`, `planning`, `memory`) as numbers;
`figures` turns them into rows."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bday.devtools import sandbox
from bday.devtools.bench import procfs
from bday.devtools.bench.probes import (
    SENT_RECENTLY,
    lateness_s,
    scalar,
    sent_by_share,
    wait_settled,
)
from bday.devtools.bench.report import Row, pct
from bday.devtools.bench.seeding import copy_users, insert_due


@dataclass
class Sizes:
    delivery: int
    burst: int
    burst_small: int
    planning: tuple[int, int]
    memory: tuple[int, int]
    retention: int = 1_000_000  # finished rows a year and more old, deleted during a delivery run

    @classmethod
    def full(cls) -> Sizes:
        return cls(20_000, 10_000, 1_000, (100_000, 1_000_000), (10_000, 100_000))

    @classmethod
    def quick(cls) -> Sizes:
        return cls(2_000, 1_000, 300, (10_000, 100_000), (1_000, 10_000), 100_000)


@dataclass
class Bench:
    sizes: Sizes
    concurrency: int
    pool: str
    processes: int = 1
    rows: list[Row] = field(default_factory=list)
    spawned: list[sandbox.Process] = field(default_factory=list)  # stopped by teardown, always
    # Worker CPU (user + system, all worker processes) per task or greeting, in ms, per run.
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bday-bench-")))
    servers: dict[str, int] = field(default_factory=dict)  # PostgreSQL/RabbitMQ pids, if local

    def setup(self) -> None:
        self.box = sandbox.Sandbox.create("bday_bench")
        port = sandbox.free_port()
        self.fake_url = f"http://127.0.0.1:{port}"
        self.env = {
            **self.box.env,
            "EMAIL_SERVICE_URL": self.fake_url,
            "WORKER_METRICS_PORT": "0",
            "QUEUE_CONCURRENCY": str(self.concurrency),
            "BREAKER_IDLE": "0",
        }
        os.environ.update(self.env)
        reload_settings()
        self.servers = procfs.servers()
        self.fake = sandbox.spawn(
            "fake-email",
            sandbox.bday_command("fake-email-service", "--port", str(port), "--quiet"),
            self.env,
            self.workdir,
        )
        sandbox.wait_ready(self.fake, "fake email service on")
        smtp_port = sandbox.free_port()
        self.smtp_url = f"smtp://127.0.0.1:{smtp_port}?starttls=off"
        self.fake_smtp = sandbox.spawn(
            "fake-smtp",
            sandbox.bday_command("fake-smtp-service", "--port", str(smtp_port), "--quiet"),
            self.env,
            self.workdir,
        )
        sandbox.wait_ready(self.fake_smtp, "fake SMTP service on")

    def teardown(self) -> None:
        sandbox.stop_all([*self.spawned, self.fake, self.fake_smtp])
        from bday.store import db

        db.reset_engines()
        self.box.destroy()

    # --- helpers -------------------------------------------------------------------------------

    def control(self, **behaviour) -> None:
        request = urllib.request.Request(
            f"{self.fake_url}/control",
            data=json.dumps(behaviour).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5).read()
        urllib.request.urlopen(
            urllib.request.Request(f"{self.fake_url}/reset", method="POST"), timeout=5
        ).read()

    def _smtp_env(self) -> dict[str, str]:
        return {"EMAIL_SERVICE_URL": self.smtp_url, "EMAIL_FROM": "bench@example.com"}

    def worker(self, name: str, extra_env: dict[str, str] | None = None) -> Workers:
        """`processes` worker processes, each with the pool and concurrency under test."""
        started = [
            sandbox.spawn_worker(
                f"{name}{index}",
                {**self.env, **(extra_env or {})},
                self.workdir,
                self.concurrency,
                ("-P", self.pool, "--include", "bday.devtools.noop"),
            )
            for index in range(self.processes)
        ]
        self.spawned.extend(started)
        for process in started:
            sandbox.wait_ready(process, " ready.")
        return Workers(started)

    def reset(self) -> None:
        from sqlalchemy import text

        from bday.store.db import engine

        with engine().begin() as connection:
            connection.execute(
                text("TRUNCATE users, messages, heartbeats, circuit_breakers, send_rates CASCADE")
            )

    # --- figures ------------------------------------------------------------------------------

    def ceiling(self, count: int) -> float:
        """No-op tasks per second through the same broker, pool and concurrency."""
        from bday.broker.app import app
        from bday.devtools.noop import noop

        marker = self.workdir / f"noop-{uuid.uuid4().hex}"
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                noop.apply_async(producer=producer)
            noop.apply_async(args=[str(marker)], producer=producer)
        worker = self.worker("ceiling")
        cpu_before, started = worker.cpu_s(), time.time()
        sandbox.wait_for(marker.exists, 600, "no-op batch")
        elapsed = marker.stat().st_mtime - started
        self.cpu_ms.setdefault("ceiling", []).append(
            (worker.cpu_s() - cpu_before) / (count + 1) * 1000
        )
        worker.stop()
        return count / elapsed

    def delivery(
        self,
        count: int,
        latency_ms: float,
        failure_rate: float = 0.0,
        beside: Callable[[], Any] | None = None,
        smtp: bool = False,
    ) -> tuple[float, float]:
        """(messages/s, enqueue seconds) for `count` due messages at `latency_ms` (with
        `smtp`, sent through `bday fake-smtp-service` instead: its latency is always 0).

        With failures, the rate is up to the 99th percentile send: the last 1% are the longest
        chains of retry backoff (2 + 4 + 8 ... s), which measure QUEUE_RETRY_DELAY, not speed.
        `beside`, if given, is called after the reset (to load its data) and returns a function
        run in a thread from the moment the worker starts (retention's delete, for one).
        """
        from bday.scheduling import jobs

        self.reset()
        self.control(latency_ms=latency_ms, failure_rate=failure_rate, down=False)
        alongside = beside() if beside else None
        insert_due(count, datetime.now(UTC) - timedelta(seconds=1))
        started = time.perf_counter()
        assert jobs.enqueue_job()["published"] == count
        enqueue_s = time.perf_counter() - started
        spawned = time.time()
        worker = self.worker("delivery", self._smtp_env() if smtp else {})
        t0 = time.time()
        thread = threading.Thread(target=alongside, daemon=True) if alongside else None
        if thread:
            thread.start()
        cpu_before, sent_before = after_startup_plan(worker, spawned)
        servers_before = procfs.servers_cpu_s(self.servers)
        wait_settled(count, 1800)
        share = 0.99 if failure_rate else 1.0
        elapsed = sent_by_share(share) - t0
        sent = max(1, int(scalar(SENT_RECENTLY)) - sent_before)
        key = f"delivery {latency_ms:g} {failure_rate:g}" + (" smtp" if smtp else "")
        self.cpu_ms.setdefault(key, []).append((worker.cpu_s() - cpu_before) / sent * 1000)
        for name, used in procfs.servers_cpu_s(self.servers).items():
            spent = (used - servers_before[name]) / sent * 1000
            self.cpu_ms.setdefault(f"{key} {name}", []).append(spent)
        worker.stop()
        if thread:
            thread.join()
        return share * count / elapsed, enqueue_s

    def burst(self, count: int) -> dict:
        """`count` messages due at one instant with a running worker."""
        from bday.scheduling import jobs

        self.reset()
        self.control(latency_ms=0, failure_rate=0, down=False)
        worker = self.worker("burst")
        instant = (datetime.now(UTC) + timedelta(seconds=20)).replace(microsecond=0)
        insert_due(count, instant)
        jobs.enqueue_job()
        wait_settled(count, 1800)
        worker.stop()
        lateness = sorted(lateness_s())
        return {
            "drain_s": max(lateness),
            "p50": pct(lateness, 50),
            "p95": pct(lateness, 95),
            "p99": pct(lateness, 99),
            "min": lateness[0],
        }

    def planning(self, users: int, due_share: float | None = None) -> tuple[float, int]:
        """(seconds to plan the window, rows planned) with `users` users loaded by COPY."""
        from bday.scheduling import jobs

        self.reset()
        copy_users(users, due_share=due_share)
        started = time.perf_counter()
        planned = jobs.plan_job()["planned"]
        return time.perf_counter() - started, planned

    def memory(self, first: int, second: int) -> tuple[float, float]:
        """Worker RSS (MiB) after `first` and after `first + second` messages."""
        from bday.scheduling import jobs

        self.reset()
        self.control(latency_ms=0, failure_rate=0, down=False)
        worker = self.worker("memory")
        readings = []
        total = 0
        for batch in (first, second):
            insert_due(batch, datetime.now(UTC) - timedelta(seconds=1))
            jobs.enqueue_job()
            total += batch
            wait_settled(total, 3600)
            time.sleep(1)
            readings.append(worker.rss_mib())
        worker.stop()
        return readings[0], readings[1]


@dataclass
class Workers:
    processes: list[sandbox.Process]

    def stop(self) -> None:
        sandbox.stop_all(self.processes)

    def rss_mib(self) -> float:
        return sum(procfs.rss_mib(process.popen.pid) for process in self.processes)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the worker processes and their children have used."""
        return sum(procfs.cpu_s(process.popen.pid) for process in self.processes)


def after_startup_plan(worker: Workers, started: float) -> tuple[float, int]:
    """(worker CPU s, messages SENT) once the worker's start-up plan has run.

    A starting worker plans (catch-up) while it already sends; the bench's users all have a
    birthday today, so that plan re-checks every one of them. CPU per greeting is counted from
    here on, so it measures sending, not start-up. The plan records its start in the same row
    (beat_at of a first plan included), so only its `ended_at` says it is over.
    """
    since = datetime.fromtimestamp(started, UTC)
    sandbox.wait_for(
        lambda: scalar(
            "SELECT count(*) FROM heartbeats WHERE name = 'plan' AND "
            f"CAST(detail ->> 'ended_at' AS timestamptz) >= '{since.isoformat()}'"
        ),
        120,
        "the worker's start-up plan",
    )
    return worker.cpu_s(), int(scalar(SENT_RECENTLY))


def reload_settings() -> None:
    """Settings and database engines read the environment again (now pointing at a sandbox,
    or back at the caller's database)."""
    from bday.config import get_settings
    from bday.store import db

    get_settings.cache_clear()
    db.reset_engines()
