"""`bday demo`: the whole system delivering greetings live, in a sandbox of its own.

It creates its own database and vhost (never touching real data), migrates, starts the fake
email service (with random failures; with `smtp`, `bday fake-smtp-service` and an smtp://
EMAIL_SERVICE_URL instead), a worker and beat, and seeds users so that:

* one user in every zone that shares a UTC offset gets a greeting at the next SEND_TIME, a
  minute or two from now (SEND_TIME is chosen for that offset);
* users in Tokyo, Sydney, Auckland, Kathmandu, Chatham ... are owed late greetings (as after
  an outage) and get them at once: each gets a birthday on the latest local date whose
  SEND_TIME already passed, within CATCH_UP_HOURS (today there, or yesterday where today's is
  still ahead), decided by the planner's own instant arithmetic (`placement`);
* users whose SEND_TIME is later today wait (PENDING);
* one user created just now, after their SEND_TIME, is owed nothing.

A table refreshes while sends happen (retries included); when every due greeting is sent it
prints a summary, stops everything and drops the sandbox: it ends by itself (or after
`timeout_s`, exit 1). Ctrl-C does the same sooner.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

from sqlalchemy import text

from bday.core.occasions import is_known_zone, send_instant, zone
from bday.devtools import factories, sandbox
from bday.store.models import FINISHED, Status

CATCH_UP_ZONES = [
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "Pacific/Kiritimati",
    "Australia/Lord_Howe",
]
LATER_ZONES = [
    "America/New_York",
    "America/St_Johns",
    "America/Los_Angeles",
    "Pacific/Honolulu",
    "Etc/GMT+12",
    "America/Argentina/Buenos_Aires",
]
FIRST_NAMES = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Radia",
    "Linus",
    "Frances",
    "Tim",
    "Hedy",
    "Dennis",
    "Katherine",
    "John",
    "Anita",
    "Guido",
]


@dataclass
class Plan:
    instant: datetime
    send_time: str
    offset: timedelta
    wave: list[str] = field(default_factory=list)


def choose_plan(now: datetime, min_lead_s: int = 45) -> Plan:
    """The next whole minute at least `min_lead_s` away, and the largest group of zones that
    share one UTC offset at that instant; SEND_TIME is that minute on their wall clock."""
    instant = (now + timedelta(seconds=min_lead_s + 59)).replace(second=0, microsecond=0)
    groups: dict[timedelta, list[str]] = {}
    for name in sorted(available_timezones()):
        if is_known_zone(name) and "/" in name and not name.startswith(("Etc/", "SystemV/", "US/")):
            groups.setdefault(_offset(instant, name), []).append(name)
    offset, names = max(groups.items(), key=lambda item: len(item[1]))
    local = instant.astimezone(zone(names[0]))
    return Plan(instant, local.strftime("%H:%M"), offset, names)


MISSED, LATER = "late (missed)", "later today"


def seed(
    plan: Plan, database_url: str, now: datetime | None = None, catch_up_hours: int = 48
) -> dict[str, list[str]]:
    """Insert the demo's users (existing "for years", so their greetings are owed).

    Which group a zone falls in is decided by the instant the planner computes (SEND_TIME on the
    user's local date, `bday.core.occasions.send_instant`), not by comparing UTC offsets: east
    of the wave the local date may already have rolled over, so "today" there can still be ahead.
    """
    import psycopg

    now = now or datetime.now(UTC)
    groups: dict[str, list[str]] = {"due now": plan.wave, MISSED: [], LATER: []}
    long_ago = datetime(2015, 1, 1, tzinfo=UTC)
    rows = []
    for index, name in enumerate(plan.wave):
        rows.append(_user(index, name, _local_today(plan.instant, name), long_ago))
    for index, name in enumerate(CATCH_UP_ZONES + LATER_ZONES, start=len(rows)):
        if not is_known_zone(name):
            continue
        key, day = placement(name, plan, now, catch_up_hours, name in CATCH_UP_ZONES)
        groups[key].append(name)
        rows.append(_user(index, name, day, long_ago))
    with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as connection:
        connection.cursor().executemany(factories.insert_sql("users", rows[0]), rows)
    return groups


def placement(
    name: str, plan: Plan, now: datetime, catch_up_hours: int, want_missed: bool
) -> tuple[str, date]:
    """(group, local date for the user's birthday) of one zone at `now`.

    Missed: SEND_TIME on that local date already passed, at most CATCH_UP_HOURS ago, so the
    planner owes it at once. A zone that should show a catch-up tries its local today, then its
    local yesterday (today may still be ahead where the date already rolled over). Otherwise
    the zone waits for its next SEND_TIME, later today (or tomorrow, when today's went by too
    long ago to be owed).
    """
    tz, send_time = zone(name), datetime.strptime(plan.send_time, "%H:%M").time()
    today = now.astimezone(tz).date()
    for day in (today, today - timedelta(days=1)) if want_missed else (today,):
        instant = send_instant(day, tz, send_time)
        if now - timedelta(hours=catch_up_hours) <= instant < now:
            return MISSED, day
    ahead = send_instant(today, tz, send_time) >= now
    return LATER, today if ahead else today + timedelta(days=1)


def _user(index: int, zone_name: str, local_day: date, since: datetime) -> dict[str, Any]:
    first = FIRST_NAMES[index % len(FIRST_NAMES)]
    return factories.user_row(
        first,
        zone_name.rsplit("/", 1)[-1].replace("_", " "),
        email=f"{first.lower()}.{index}@example.com",
        birthday=factories.born_on(local_day),
        timezone=zone_name,
        owed_from=since,
    )


def _local_today(instant: datetime, zone_name: str) -> date:
    return instant.astimezone(zone(zone_name)).date()


class Demo:
    def __init__(
        self,
        failure_rate: float,
        latency_ms: float,
        timeout_s: float,
        keep: bool,
        smtp: bool = False,
    ):
        self.failure_rate, self.latency_ms, self.timeout_s, self.keep = (
            failure_rate,
            latency_ms,
            timeout_s,
            keep,
        )
        self.smtp = smtp
        self.processes: list[sandbox.Process] = []
        self.box: sandbox.Sandbox | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="bday-demo-"))

    def start(self) -> tuple[Plan, dict[str, list[str]]]:
        self.box = sandbox.Sandbox.create("bday_demo")
        now = datetime.now(UTC)
        plan = choose_plan(now)
        port = sandbox.free_port()
        self.fake_url = f"http://127.0.0.1:{port}"
        self.record = self.workdir / "smtp-calls.jsonl"
        env = {
            **self.box.env,
            "SEND_TIME": plan.send_time,
            "EMAIL_SERVICE_URL": self.fake_url,
            "QUEUE_RETRY_DELAY": "1000",
            "WORKER_METRICS_PORT": "0",
        }
        if self.smtp:
            env["EMAIL_SERVICE_URL"] = f"smtp://127.0.0.1:{port}?starttls=off"
            env["EMAIL_FROM"] = "bday demo <demo@example.com>"
        os.environ.update(env)
        _reload_settings()
        from bday.config import get_settings

        groups = seed(plan, self.box.database_url, now, get_settings().catch_up_hours)
        self._new_user_after_instant(plan, now)
        self._start_fake(port, env)
        self.processes.append(sandbox.spawn_worker("worker", env, self.workdir, concurrency=8))
        self.processes.append(sandbox.spawn_beat(env, self.workdir))
        sandbox.wait_ready(self.processes[1], " ready.")
        from bday.scheduling import jobs

        jobs.plan_job()
        jobs.enqueue_job()  # what beat does at the next minute, done now so late ones go at once
        return plan, groups

    def _start_fake(self, port: int, env: dict) -> None:
        """The fake email service, or with `smtp` the fake SMTP service recording each
        message's outcome to `self.record`, with the same random failures and latency."""
        command, extra, ready = "fake-email-service", ["--quiet"], "fake email service on"
        if self.smtp:
            command, extra = "fake-smtp-service", ["--record", str(self.record)]
            ready = "fake SMTP service on"
        behaviour = ["--failure-rate", str(self.failure_rate), "--latency-ms", str(self.latency_ms)]
        fake = sandbox.spawn(
            "fake-email",
            sandbox.bday_command(command, "--port", str(port), *extra, *behaviour),
            env,
            self.workdir,
        )
        self.processes.append(fake)
        sandbox.wait_ready(fake, ready)

    def _new_user_after_instant(self, plan: Plan, now: datetime) -> None:
        """A user created now, with a birthday whose SEND_TIME already passed: owed nothing."""
        from bday.config import get_settings
        from bday.users.api import create_user

        name = CATCH_UP_ZONES[0]
        _, day = placement(name, plan, now, get_settings().catch_up_hours, want_missed=True)
        create_user(
            first_name="Newcomer",
            last_name="Tokyo",
            email="newcomer@example.com",
            birthday=factories.born_on(day),
            timezone=name,
        )

    def requests(self) -> list[dict]:
        """Each call the email service saw: {at, key, outcome, ...}."""
        if self.smtp:
            if not self.record.exists():
                return []
            return [json.loads(line) for line in self.record.read_text().splitlines() if line]
        with urllib.request.urlopen(f"{self.fake_url}/requests", timeout=5) as response:
            return json.load(response)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=20)
        if self.box is not None and not self.keep:
            from bday.store import db

            db.reset_engines()
            self.box.destroy()


def _reload_settings() -> None:
    from bday.config import get_settings
    from bday.store import db

    get_settings.cache_clear()
    db.reset_engines()


_ROWS = text(
    """SELECT m.id::text, m.status, m.scheduled_send_time, m.sent_at, m.retry_count, u.timezone,
              u.first_name, u.last_name
         FROM messages m JOIN users u ON u.id = m.user_id"""
)


def _offset(instant: datetime, name: str) -> timedelta:
    offset = instant.astimezone(zone(name)).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def snapshot() -> list[Any]:
    from bday.store.db import engine

    with engine().connect() as connection:
        return list(connection.execute(_ROWS).all())


def render(
    plan: Plan, groups: dict[str, list[str]], rows: list, requests: list[dict], started: float
):
    from rich.console import Group
    from rich.table import Table

    now = datetime.now(UTC)
    header = Table.grid(padding=(0, 2))
    header.add_row(
        f"[b]bday demo[/b]  now {now:%H:%M:%S} UTC",
        f"SEND_TIME {plan.send_time} local -> due {plan.instant:%H:%M:%S} UTC "
        f"in {len(plan.wave)} zones (UTC{_fmt_offset(plan.offset)})",
        f"elapsed {time.monotonic() - started:.0f} s",
    )
    by_status = Counter(row.status for row in rows)
    counts = Table(title="messages", show_edge=False)
    for status in Status:
        counts.add_column(status.value, justify="right")
    counts.add_row(*[str(by_status.get(status, 0)) for status in Status])
    recent = Table(title="email service calls (latest)", show_edge=False)
    for column in ("time (UTC)", "result", "zone", "to", "late by"):
        recent.add_column(column)
    by_id = {row.id: row for row in rows}
    for request in requests[-14:]:
        row = by_id.get(request["key"])
        if row is None:
            continue
        at = datetime.fromtimestamp(request["at"], UTC)
        late = (at - row.scheduled_send_time).total_seconds()
        outcome = (
            "[green]sent[/green]"
            if request["outcome"] == "sent"
            else f"[red]{request['outcome']}[/red] -> retry"
        )
        recent.add_row(
            f"{at:%H:%M:%S.%f}"[:-3],
            outcome,
            row.timezone,
            f"{row.first_name} {row.last_name}",
            _fmt_late(late),
        )
    legend = "  ".join(f"{name}: {len(zones)} zone(s)" for name, zones in groups.items())
    return Group(header, counts, recent, legend)


def _fmt_offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _fmt_late(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:+.2f} s"
    return f"{seconds / 3600:.1f} h (caught up)"


def finished(plan: Plan, rows: list) -> bool:
    now = datetime.now(UTC)
    if now < plan.instant + timedelta(seconds=2):
        return False
    due = [row for row in rows if row.scheduled_send_time <= now]
    return bool(due) and all(row.status in FINISHED for row in due)


def summary(plan: Plan, rows: list, requests: list[dict]) -> list[str]:
    sent = [row for row in rows if row.status == Status.SENT]
    wave = [row for row in sent if row.scheduled_send_time == plan.instant]
    lateness = sorted((row.sent_at - row.scheduled_send_time).total_seconds() for row in wave)
    outcomes = Counter(request["outcome"] for request in requests)
    per_key = Counter(request["key"] for request in requests if request["outcome"] == "sent")
    lines = [
        (
            f"sent {len(sent)} greeting(s): {len(wave)} on time at {plan.instant:%H:%M:%S} UTC, "
            f"{len(sent) - len(wave)} late ones caught up"
        ),
        (
            f"email service calls: {sum(outcomes.values())} ({outcomes.get('sent', 0)} ok, "
            f"{outcomes.get('failed', 0)} random failures retried)"
        ),
        f"keys sent more than once: {sum(1 for c in per_key.values() if c > 1)}",
        f"still waiting for later today: {sum(1 for row in rows if row.status == Status.PENDING)}",
    ]
    if lateness:
        lines.append(
            f"on-time wave lateness: median {lateness[len(lateness) // 2]:.2f} s, "
            f"max {lateness[-1]:.2f} s (never early: min {lateness[0]:+.2f} s)"
        )
    return lines


def run(
    failure_rate: float = 0.2,
    latency_ms: float = 60,
    timeout_s: float = 300,
    keep: bool = False,
    *,
    smtp: bool = False,
) -> int:
    from rich.console import Console
    from rich.live import Live

    sandbox.exit_cleanly_on_sigterm()
    console = Console()
    demo = Demo(failure_rate, latency_ms, timeout_s, keep, smtp)
    rows: list = []
    requests: list[dict] = []
    try:
        console.print(
            "[b]bday demo[/b]: creating a sandbox database and vhost, starting the fake "
            f"{'SMTP' if smtp else 'email'} service, a worker and beat ... It ends by itself "
            f"once every greeting due is sent (a minute or two, at most {timeout_s:.0f} s); "
            "Ctrl-C ends it sooner."
        )
        plan, groups = demo.start()
        started = time.monotonic()
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < timeout_s:
                rows, requests = snapshot(), demo.requests()
                live.update(render(plan, groups, rows, requests, started))
                if finished(plan, rows):
                    break
                time.sleep(0.25)
        for line in summary(plan, rows, requests):
            console.print(line)
        return 0 if finished(plan, rows) else 1
    except KeyboardInterrupt:
        console.print("interrupted: stopping ...")
        for line in summary(plan, rows, requests) if rows else []:
            console.print(line)
        return 130
    finally:
        demo.stop()
        console.print(
            f"stopped worker, beat and fake {'SMTP' if smtp else 'email'} service"
            + ("" if keep else "; sandbox database and vhost removed")
        )
