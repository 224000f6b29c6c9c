"""`bday bench`: capacity figures for this machine, each next to a baseline from the same run.

Everything runs in a sandbox database and vhost with real worker processes and the fake email
service. Figures:

* ceiling: a no-op Celery task on the same broker, pool and concurrency (the baseline);
* delivery: due messages through enqueue -> worker -> fake service -> SENT, at 0 ms and at
  150 ms service latency, as messages/s and as a ratio to the ceiling;
* burst: N messages due at one instant: drain time and lateness percentiles;
* planning: users loaded with COPY at two sizes, time to plan the window, and the ratio;
* enqueue: N due rows claimed and published;
* memory: worker resident memory after a first and a tenfold larger batch.

Figures on a shared machine are noisy: read ratios and medians, not single numbers.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bday.devtools import factories, sandbox
from bday.store.models import FINISHED, Status

ZONES_SAMPLE = [
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",
    "America/Sao_Paulo",
    "Africa/Lagos",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "Asia/Shanghai",
    "Europe/Moscow",
]


@dataclass
class Sizes:
    delivery: int
    burst: int
    burst_small: int
    planning: tuple[int, int]
    enqueue: int
    memory: tuple[int, int]
    retention: int = 1_000_000  # finished rows a year and more old, deleted during a delivery run

    @classmethod
    def full(cls) -> Sizes:
        return cls(20_000, 10_000, 1_000, (100_000, 1_000_000), 10_000, (10_000, 100_000))

    @classmethod
    def quick(cls) -> Sizes:
        return cls(2_000, 1_000, 300, (10_000, 100_000), 2_000, (1_000, 10_000), 100_000)


@dataclass
class Row:
    name: str
    value: str
    baseline: str = ""
    note: str = ""


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
        _reload_settings()
        self.servers = servers()
        self.fake = sandbox.spawn(
            "fake-email",
            sandbox.bday_command("fake-email-service", "--port", str(port), "--quiet"),
            self.env,
            self.workdir,
        )
        sandbox.wait_ready(self.fake, "fake email service on")

    def teardown(self) -> None:
        for process in [*self.spawned, self.fake]:
            process.stop()
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

    def worker(self, name: str) -> Workers:
        """`processes` worker processes, each with the pool and concurrency under test."""
        started = [
            sandbox.spawn_worker(
                f"{name}{index}",
                self.env,
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
    ) -> tuple[float, float]:
        """(messages/s, enqueue seconds) for `count` due messages at `latency_ms`.

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
        worker = self.worker("delivery")
        t0 = time.time()
        thread = threading.Thread(target=alongside, daemon=True) if alongside else None
        if thread:
            thread.start()
        cpu_before, sent_before = after_startup_plan(worker, spawned)
        servers_before = servers_cpu_s(self.servers)
        wait_settled(count, 1800)
        share = 0.99 if failure_rate else 1.0
        elapsed = sent_by_share(share) - t0
        sent = max(1, int(_scalar(SENT_RECENTLY)) - sent_before)
        key = f"delivery {latency_ms:g} {failure_rate:g}"
        self.cpu_ms.setdefault(key, []).append((worker.cpu_s() - cpu_before) / sent * 1000)
        for name, used in servers_cpu_s(self.servers).items():
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
        for process in self.processes:
            process.stop()

    def rss_mib(self) -> float:
        return sum(rss_mib(process.popen.pid) for process in self.processes)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the worker processes and their children have used."""
        return sum(cpu_s(process.popen.pid) for process in self.processes)


# --- data ---------------------------------------------------------------------------------------


def insert_due(count: int, at: datetime) -> None:
    """`count` users with one PENDING birthday message each, scheduled at `at` (COPY)."""
    from bday.store.db import engine

    # The occasion is `at`'s own date (a leap year holds every month-day). A birthday on
    # another day would be a second occasion: on the 29th-31st the old `min(day, 28)` made the
    # worker's start-up plan owe (and send) 2,000 catch-up greetings inside the measurement.
    birthday = date(1992, at.month, at.day)
    users = [factories.user_row(f"User{i}", "Bench", birthday=birthday) for i in range(count)]
    messages = [factories.message_row(user["id"], at) for user in users]
    raw = engine().raw_connection()
    try:
        cursor = raw.cursor()
        _copy(cursor, "users", factories.USER_COLUMNS, users)
        _copy(cursor, "messages", factories.MESSAGE_COLUMNS, messages)
        raw.commit()
    finally:
        raw.close()


def _copy(
    cursor: Any, table: str, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]
) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(factories.as_tuple(row, columns))


def copy_users(count: int, seed: int = 42, due_share: float | None = None) -> None:
    """`count` users across all sampled zones, birthdays spread over the year, a third with an
    anniversary, loaded with COPY. With `due_share`, only that share of them may have an
    occasion in today's planning window (the rest get dates outside it)."""
    from bday.store.db import engine

    rng = random.Random(seed)
    near = _month_days_in_window() if due_share is not None else set()

    def users() -> Iterator[dict[str, Any]]:  # streamed: a million rows never sit in memory
        for index in range(count):
            avoid = near if due_share is not None and rng.random() >= due_share else set()
            birthday = _random_date(rng, date(1950, 1, 1), 55, avoid)
            anniversary = _random_date(rng, date(2000, 1, 1), 25, avoid) if index % 3 == 0 else None
            zone_name = rng.choice(ZONES_SAMPLE)
            yield factories.user_row(
                f"U{index}", "Plan", birthday=birthday, anniversary=anniversary, timezone=zone_name
            )

    raw = engine().raw_connection()
    try:
        _copy(raw.cursor(), "users", factories.USER_COLUMNS, users())
        raw.commit()
        raw.cursor().execute("ANALYZE users")
        raw.commit()
    finally:
        raw.close()


def _random_date(rng: random.Random, start: date, years: int, avoid: set[int]) -> date:
    while True:
        day = start + timedelta(days=rng.randrange(years * 365))
        if day.month * 100 + day.day not in avoid:
            return day


def _month_days_in_window() -> set[int]:
    from bday.config import get_settings
    from bday.core.occasions import month_days_near
    from bday.scheduling.planner import Window

    settings = get_settings()
    window = Window.around(datetime.now(UTC), settings)
    return month_days_near(window.start, window.end, settings.send_time, settings.feb29_policy)


def _scalar(sql: str):
    from sqlalchemy import text

    from bday.store.db import engine

    with engine().connect() as connection:
        return connection.execute(text(sql)).scalar()


# The figure's own messages (due now), not the old finished rows retention's figure loads.
RECENT = "scheduled_send_time > now() - interval '1 day'"
SENT_RECENTLY = f"SELECT count(*) FROM messages WHERE status = '{Status.SENT}' AND {RECENT}"


def wait_settled(count: int, timeout: float) -> None:
    """Until `count` messages are settled: SENT, or FAILED after exhausting their retries (with
    random failures that happens now and then; in production the recover job re-sends them)."""
    settled = (
        f"SELECT count(*) FROM messages WHERE status IN ('{Status.SENT}', '{Status.FAILED}') "
        f"AND {RECENT}"
    )
    sandbox.wait_for(
        lambda: _scalar(settled) >= count, timeout, f"{count} messages settled", interval=0.2
    )


def sent_by_share(share: float) -> float:
    """Epoch seconds by which `share` of the sent messages had been sent (1.0: the last one)."""
    return float(
        _scalar(
            f"SELECT extract(epoch FROM percentile_disc({float(share)}) WITHIN GROUP"
            f" (ORDER BY sent_at)) FROM messages WHERE status = '{Status.SENT}' AND {RECENT}"
        )
    )


def lateness_s() -> list[float]:
    from sqlalchemy import text

    from bday.store.db import engine

    with engine().connect() as connection:
        return [
            row[0]
            for row in connection.execute(
                text(
                    "SELECT extract(epoch FROM sent_at - scheduled_send_time)::float FROM messages"
                )
            )
        ]


def pct(values: list[float], percentile: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(percentile / 100 * (len(values) - 1)))]


def after_startup_plan(worker: Workers, started: float) -> tuple[float, int]:
    """(worker CPU s, messages SENT) once the worker's start-up plan has run.

    A starting worker plans (catch-up) while it already sends; the bench's users all have a
    birthday today, so that plan re-checks every one of them. CPU per greeting is counted from
    here on, so it measures sending, not start-up.
    """
    since = datetime.fromtimestamp(started, UTC)
    sandbox.wait_for(
        lambda: _scalar(
            "SELECT count(*) FROM heartbeats WHERE name = 'plan' AND beat_at >= "
            f"'{since.isoformat()}'"
        ),
        120,
        "the worker's start-up plan",
    )
    return worker.cpu_s(), int(_scalar(SENT_RECENTLY))


def cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid` from /proc (a prefork pool's children count)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` (with its exited children) and of its live children: a server
    whose work runs in child processes (PostgreSQL's backends, RabbitMQ's port programs)."""
    total = cpu_s(pid)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                status = (proc / "status").read_text()
                if f"\nPPid:\t{pid}\n" in status:
                    total += cpu_s(int(proc.name))
            except (OSError, ValueError):
                continue  # gone meanwhile
    return total


def listening_pid(host: str, port: int) -> int | None:
    """The local process listening on TCP `port`, or None (a remote host, or its file
    descriptors are not ours to read): found through /proc/net/tcp and /proc/*/fd."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def servers() -> dict[str, int]:
    """PostgreSQL's and RabbitMQ's server processes, where this machine runs them."""
    from urllib.parse import urlsplit

    from bday.broker.urls import node_urls
    from bday.config import get_settings

    settings = get_settings()
    found = {}
    for name, url, default_port in (
        ("PostgreSQL", settings.database_url, 5432),
        ("RabbitMQ", node_urls(settings.rabbitmq_url)[0], 5672),
    ):
        parts = urlsplit(url)
        pid = listening_pid(parts.hostname or "", parts.port or default_port)
        if pid is not None:
            found[name] = pid
    return found


def servers_cpu_s(pids: dict[str, int]) -> dict[str, float]:
    return {name: tree_cpu_s(pid) for name, pid in pids.items()}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reload_settings() -> None:
    from bday.config import get_settings
    from bday.store import db

    get_settings.cache_clear()
    db.reset_engines()


# --- the run ------------------------------------------------------------------------------------


def run(
    quick: bool = False,
    concurrency: int = 64,
    pool: str = "threads",
    repeat: int = 1,
    only: tuple[str, ...] = (),
    processes: int = 1,
) -> list[Row]:
    sandbox.exit_cleanly_on_sigterm()
    sizes = Sizes.quick() if quick else Sizes.full()
    bench = Bench(sizes, concurrency, pool, processes)
    bench.setup()
    wanted = set(only) or {"delivery", "burst", "planning", "memory", "breaker", "retention"}
    try:
        ceilings = [bench.ceiling(sizes.delivery) for _ in range(repeat)]
        ceiling = statistics.median(ceilings)
        bench.rows.append(
            Row(
                "ceiling: no-op task",
                f"{ceiling:.0f} tasks/s",
                "baseline",
                f"{processes} x {pool} pool, concurrency {concurrency}; runs {_fmt(ceilings)}",
            )
        )
        bench.rows.append(
            Row(
                "worker CPU per no-op task",
                f"{statistics.median(bench.cpu_ms['ceiling']):.2f} ms",
                "baseline",
                "Celery's own receive, dispatch and ack (all worker processes, user + system)",
            )
        )
        if "delivery" in wanted:
            _delivery_rows(bench, ceiling, repeat)
        if "burst" in wanted:
            for count in (sizes.burst, sizes.burst_small):
                burst = bench.burst(count)
                bench.rows.append(
                    Row(
                        f"burst: {count} due at one instant",
                        f"drain {burst['drain_s']:.1f} s",
                        f"{count / ceiling:.1f} s at the ceiling",
                        f"lateness p50 {burst['p50']:.2f} s, p95 {burst['p95']:.2f} s, "
                        f"p99 {burst['p99']:.2f} s, min {burst['min']:+.2f} s",
                    )
                )
        if "planning" in wanted:
            small, large = sizes.planning
            small_s, small_rows = bench.planning(small)
            large_s, large_rows = bench.planning(large)
            bench.rows.append(
                Row(
                    f"planning: {small:,} users",
                    f"{small_s:.2f} s",
                    "baseline",
                    f"{small_rows} rows planned",
                )
            )
            bench.rows.append(
                Row(
                    f"planning: {large:,} users",
                    f"{large_s:.2f} s",
                    f"x{large_s / small_s:.2f} of {small:,}",
                    f"{large_rows} rows planned",
                )
            )
            same_s, same_rows = bench.planning(large, due_share=small / large)
            bench.rows.append(
                Row(
                    f"planning: {large:,} users, {small:,}'s occasions",
                    f"{same_s:.2f} s",
                    f"x{same_s / small_s:.2f} of {small:,}",
                    f"{same_rows} rows planned: cost follows occasions, not users",
                )
            )
        if "breaker" in wanted:
            _breaker_rows(bench, repeat)
        if "retention" in wanted:
            _retention_rows(bench, repeat)
        if "memory" in wanted:
            first, second = sizes.memory
            rss_first, rss_second = bench.memory(first, second)
            bench.rows.append(
                Row(f"memory: worker RSS after {first:,}", f"{rss_first:.0f} MiB", "baseline")
            )
            bench.rows.append(
                Row(
                    f"memory: worker RSS after {first + second:,}",
                    f"{rss_second:.0f} MiB",
                    f"x{rss_second / rss_first:.2f}",
                )
            )
    finally:
        bench.teardown()
    return bench.rows


def _delivery_rows(bench: Bench, ceiling: float, repeat: int) -> None:
    count = bench.sizes.delivery
    for latency in (0, 150):
        results = [bench.delivery(count, latency) for _ in range(repeat)]
        rate = statistics.median(r[0] for r in results)
        bench.rows.append(
            Row(
                f"delivery: {count:,} at {latency} ms",
                f"{rate:.0f} msg/s",
                f"x{rate / ceiling:.2f} of ceiling",
                f"runs {_fmt([r[0] for r in results])}",
            )
        )
        cpu = statistics.median(bench.cpu_ms[f"delivery {latency:g} 0"])
        noop_cpu = statistics.median(bench.cpu_ms["ceiling"])
        bench.rows.append(
            Row(
                f"worker CPU per greeting at {latency} ms",
                f"{cpu:.2f} ms",
                f"x{cpu / noop_cpu:.1f} of a no-op task",
                "process CPU time over greetings delivered",
            )
        )
        for name in bench.servers:
            spent = statistics.median(bench.cpu_ms[f"delivery {latency:g} 0 {name}"])
            bench.rows.append(
                Row(
                    f"{name} CPU per greeting at {latency} ms",
                    f"{spent:.2f} ms",
                    f"x{spent / cpu:.2f} of the worker's",
                    "the server's processes (capacity model input)",
                )
            )
        if latency == 0:
            enqueue_s = statistics.median(r[1] for r in results)
            bench.rows.append(
                Row(
                    f"enqueue: {count:,} due rows claimed + published",
                    f"{enqueue_s:.2f} s",
                    f"{count / enqueue_s:.0f} rows/s",
                )
            )


def old_finished(count: int, *, partitioned: bool = True) -> None:
    """`count` SENT/FAILED/CANCELLED rows of one user, 401 days to 9 years old (SQL), in the
    monthly partitions a deployment that ran all along would have (`partitioned=False`: in
    DEFAULT, where retention deletes them by row, as it did every row before partitioning)."""
    from bday.store.db import engine

    if partitioned:
        _old_months()
    user = factories.user_row("Old", "Rows")
    raw = engine().raw_connection()
    try:
        cursor = raw.cursor()
        _copy(cursor, "users", factories.USER_COLUMNS, [user])
        finished = ", ".join(f"'{status.value}'" for status in FINISHED)
        cursor.execute(
            f"""INSERT INTO messages (id, user_id, message_type, status, occasion_date,
                                     scheduled_send_time, idempotency_key)
               SELECT gen_random_uuid(), %(user)s, 'BIRTHDAY',
                      (ARRAY[{finished}])[1 + i %% 3],
                      (now() - make_interval(days => 401 + i %% 3000))::date,
                      now() - make_interval(days => 401 + i %% 3000),
                      'old:' || i
                 FROM generate_series(1, %(count)s) i""",
            {"user": user["id"], "count": count},
        )
        raw.commit()
        cursor.execute("ANALYZE messages")
        raw.commit()
    finally:
        raw.close()


def _old_months() -> None:
    """The partitions of the months `old_finished` writes to, but the youngest: a month goes
    whole only once all of it is past MESSAGE_RETENTION_DAYS (400), so that month's rows are
    left in DEFAULT, where retention deletes them by row (about 1% of them)."""
    from bday.store import partitions
    from bday.store.db import transaction

    today = datetime.now(UTC).date()
    month = partitions.month_start(today - timedelta(days=401 + 2999))
    while partitions.add_months(month, 1) <= today - timedelta(days=400):
        with transaction() as session:
            partitions.create_month(session, month)
        month = partitions.add_months(month, 1)


OLD_LEFT = "SELECT count(*) FROM messages WHERE idempotency_key LIKE 'old:%'"


def _retention_rows(bench: Bench, repeat: int) -> None:
    """Retention alone, then delivery with and without retention deleting beside it."""
    from bday.scheduling import jobs

    count, rows = bench.sizes.delivery, bench.sizes.retention
    bench.reset()
    old_finished(rows)
    started = time.perf_counter()
    result = jobs.retention_job()
    alone_s = time.perf_counter() - started
    assert _scalar(OLD_LEFT) == 0
    bench.rows.append(
        Row(
            f"retention: {rows:,} finished rows deleted, alone",
            f"{alone_s:.1f} s",
            f"{rows / alone_s:,.0f} rows/s",
            f"{len(result['dropped'])} partitions dropped, "
            f"{result['batches']} batches of RETENTION_BATCH",
        )
    )
    took: list[float] = []

    def beside() -> Callable[[], None]:
        old_finished(rows)

        def delete() -> None:
            started = time.perf_counter()
            jobs.retention_job()
            took.append(time.perf_counter() - started)
            assert _scalar(OLD_LEFT) == 0

        return delete

    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat):
        for with_retention in (False, True):
            rate = bench.delivery(count, 0, beside=beside if with_retention else None)[0]
            rates[with_retention].append(rate)
    kept = int(_scalar(SENT_RECENTLY))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    bench.rows.append(
        Row(
            f"delivery: {count:,} at 0 ms",
            f"{off:.0f} msg/s",
            "baseline",
            f"runs {_fmt(rates[False])}",
        )
    )
    bench.rows.append(
        Row(
            f"delivery: {count:,} while retention deletes {rows:,}",
            f"{on:.0f} msg/s",
            f"x{on / off:.2f}",
            f"runs {_fmt(rates[True])}; retention took {_fmt(took)} s; "
            f"this year's {kept:,} SENT rows kept",
        )
    )


def _breaker_rows(bench: Bench, repeat: int) -> None:
    """Delivery with 10% random failures, breaker on and off, in alternation (noise is shared)."""
    count = bench.sizes.delivery
    rates: dict[bool, list[float]] = {True: [], False: []}
    trips = 0
    for _ in range(repeat):
        for enabled in (True, False):
            bench.env["BREAKER_ENABLED"] = "true" if enabled else "false"
            rates[enabled].append(bench.delivery(count, 0, failure_rate=0.10)[0])
            if enabled:
                trips += int(_scalar("SELECT coalesce(sum(trips), 0) FROM circuit_breakers"))
    bench.env.pop("BREAKER_ENABLED")
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    label = "10% failures, breaker {} (rate to 99% sent)"
    bench.rows.append(
        Row(label.format("off"), f"{off:.0f} msg/s", "baseline", f"runs {_fmt(rates[False])}")
    )
    bench.rows.append(
        Row(
            label.format("on"),
            f"{on:.0f} msg/s",
            f"x{on / off:.2f}",
            f"runs {_fmt(rates[True])}; breaker trips: {trips}",
        )
    )


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def table(rows: list[Row]) -> str:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("name", "value", "baseline")]
    lines = [f"{'figure':<{widths[0]}}  {'value':>{widths[1]}}  {'vs baseline':<{widths[2]}}  note"]
    for r in rows:
        lines.append(
            f"{r.name:<{widths[0]}}  {r.value:>{widths[1]}}  {r.baseline:<{widths[2]}}  {r.note}"
        )
    return "\n".join(lines)
