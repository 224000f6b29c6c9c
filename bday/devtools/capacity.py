"""The capacity model (`bday bench --model`) and its check at size (`bday bench --plan-users N`).

The model turns figures measured by `bday bench` on this machine into what 1, 10 and 100 million
users need: greetings per day, the largest number due at one instant, worker processes and cores
to send that peak within a lateness budget (with and without a provider rate limit), PostgreSQL
connections (with and without PgBouncer), rows and bytes per year, and which component runs out
first. Every input is a named constant below with where it was measured; docs/capacity.md has
the time-zone table's source and the reasoning.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from bday.devtools import sandbox

# --- measured inputs (docs/performance.md, docs/capacity.md; this machine: 2 cores, shared) -------
# Delivery figures: full `bday bench --only delivery`, batched delivery, 2026-11-29 (a slower day
# than the rest: that run's no-op ceiling was 2,595 tasks/s against 4,822 below).
WORKER_RATE_0MS = 598.0  # greetings/s, one worker process, 64 threads, service answering at once
WORKER_RATE_150MS = 464.0  # same, service answering in 150 ms
WORKER_CORES = 0.51  # cores one worker process uses at that rate (1.10 ms CPU x 464/s, 150 ms)
# PostgreSQL CPU per greeting: `scripts/bench-compare` at 150 ms, 2026-12-05, medians of 5 + 2
# + 2 runs: 0.33 / 0.385 / 0.415 ms (0.12-0.15 ms before monthly partitions: docs/performance.md)
POSTGRES_CPU_MS = 0.38
# Added per greeting without prepares: ~200 us per statement (measured through PgBouncer), and
# a batch at peak costs 1/32 claim + 1/8 SENT statement per greeting.
POSTGRES_CPU_MS_UNPREPARED = 0.03
RABBITMQ_CPU_MS = 0.47  # RabbitMQ CPU per greeting (bench, 150 ms; 0.36 ms at 0 ms)
# One enqueue publisher with grouped confirms, every job a countdown held by RabbitMQ (as in
# production): `bday bench --quick --only enqueue --processes 2 --repeat 3`, 2,000 rows, medians
# of 3 alternating runs on a quiet machine, 2026-12-05 (a confirm per message: 349 rows/s, x1.57;
# fanned out over 2 processes: 771 rows/s, x1.40): docs/capacity.md, "The minute enqueue".
# (The 1,400 rows/s this model used before timed jobs without a countdown: 2,650 rows/s now.)
ENQUEUE_RATE = 549.0  # rows/s claimed and published by one process
ENQUEUE_SPEEDUP_2 = 1.40  # an enqueue fanned out over 2 processes / 1 (same run, 2 shared cores)
# RabbitMQ's CPU per job published with a countdown (native delayed delivery: 28 exchanges to
# route through, a quorum queue per level it waits in): 20,000 jobs 60 s ahead cost the broker
# 49.6-50.1 s of CPU (500 s ahead: 37-40 s; without a countdown: 4.8-5.3 s), 2026-12-05. It is
# what one publisher waits on here, and the broker's cores it takes within the enqueue window.
RABBITMQ_DELAYED_CPU_MS = 2.5
BROKER_CEILING = 4_822.0  # no-op tasks/s through one queue and one worker (a floor for RabbitMQ)
# The first plan of the 26 h window for 1,000,000 users in ranges on one worker process (the
# way a plan past PLAN_RANGE_USERS runs), and over 2 processes: 4.1 s and 2.7 s (x1.52),
# `python -m bday.devtools.bench.plan_workers 1000000 --ranges 16 --rounds 2`, medians, a quiet
# machine, 2026-12-05 (migration 0010's indexes). The plan in one query took 5.4 s beside them.
PLAN_S_PER_MILLION = 4.1
# Planning 10M users took x12.6 the time of 1M under the same load (189 s vs 14.9 s, rows
# x10.0; `bday bench --plan-users`, 2026-11-28): time grows as users ** 1.10.
PLAN_EXPONENT = 1.10
PLAN_SPEEDUP_2 = 1.52
PLANNED_PER_USER = 11_085 / 1_000_000  # rows the first plan writes per user
BYTES_PER_USER = 310  # users table incl. indexes, per row (--plan-users 10000000)
BYTES_PER_MESSAGE = 394  # messages table incl. indexes, per row (same run, 113,120 rows)
CONNECTIONS_PER_WORKER = 20  # DB_POOL_SIZE 10 + overflow 10 (bday.store.db)
PGBOUNCER_SERVER_POOL = 20  # served 8 workers x 8 threads at 2,000 greetings (chaos scenario)

# --- stated assumptions ---------------------------------------------------------------------------
GREETINGS_PER_USER_YEAR = 1 + 1 / 3  # a birthday each, an anniversary for a third (as the bench)
PEAK_DAY_FACTOR = 1.25  # Feb 28 in a common year also carries Feb 29's birthdays (feb28 policy)
LATENESS_BUDGET_S = 60.0
PROVIDER_LIMIT = 500.0  # requests/s an email provider might allow one sender (assumption)
HEADROOM = 0.80  # the recommended deployment keeps every limit it can relieve under 80% of it
ENQUEUE_WINDOW_S = 70 - 10  # ENQUEUE_LEAD_SECONDS less the minute's run spacing
PLAN_BUDGET_S = 900.0  # a quarter of the hour for the hourly plan
MAX_WORKERS = 64  # past this, the model says no deployment of this shape is enough

# Approximate world population by standard-time UTC offset, millions (docs/capacity.md: country
# populations, UN World Population Prospects 2022, each country or region at its main offset).
POPULATION_BY_OFFSET = {
    "-10:00": 2, "-09:00": 1, "-08:00": 54, "-07:00": 35, "-06:00": 280, "-05:00": 320,
    "-04:00": 85, "-03:00": 255, "-01:00": 1, "+00:00": 250, "+01:00": 900, "+02:00": 540,
    "+03:00": 700, "+03:30": 89, "+04:00": 40, "+04:30": 41, "+05:00": 325, "+05:30": 1_450,
    "+05:45": 31, "+06:00": 180, "+06:30": 54, "+07:00": 420, "+08:00": 1_660, "+09:00": 215,
    "+09:30": 2, "+10:00": 32, "+11:00": 2, "+12:00": 6, "+13:00": 0.3,
}  # fmt: skip


def peak_offset_share() -> tuple[str, float]:
    """The UTC offset holding the largest share of people, and that share."""
    total = sum(POPULATION_BY_OFFSET.values())
    offset = max(POPULATION_BY_OFFSET, key=POPULATION_BY_OFFSET.__getitem__)
    return offset, POPULATION_BY_OFFSET[offset] / total


@dataclass(frozen=True)
class Capacity:
    users: int
    per_day: float
    peak: float
    processes: int
    processes_150ms: int
    cores: float
    rabbitmq_cores: int  # RabbitMQ cores the busiest instant's countdowns need, with headroom
    limited_processes: int
    limited_lateness_s: float
    enqueue_s: float
    connections_direct: int
    connections_pooled: int
    rows_per_year: float
    gib_per_year: float
    plan_s: float
    workers: int  # the deployment it recommends: worker processes (delivery, enqueue, plan)
    enqueue_fanned_s: float  # the busiest instant's enqueue fanned out over `workers`
    plan_fanned_s: float  # the first plan fanned out over `workers`
    loads: dict[str, float]  # each limit's share used, with `workers` and PgBouncer
    first_limit: str


def model(users: int, provider_limit: float = PROVIDER_LIMIT) -> Capacity:
    per_day = users * GREETINGS_PER_USER_YEAR / 365.25
    peak = per_day * PEAK_DAY_FACTOR * peak_offset_share()[1]
    rate_needed = peak / LATENESS_BUDGET_S
    processes = max(1, math.ceil(rate_needed / WORKER_RATE_0MS))
    processes_150 = max(1, math.ceil(rate_needed / WORKER_RATE_150MS))
    server_cores = rate_needed * (POSTGRES_CPU_MS + POSTGRES_CPU_MS_UNPREPARED + RABBITMQ_CPU_MS)
    server_cores += delayed_cores(peak) * 1000
    rows = users * GREETINGS_PER_USER_YEAR
    stored = users * BYTES_PER_USER + rows * BYTES_PER_MESSAGE
    workers = recommend_workers(users, peak, processes_150)
    loads = limits(users, peak, workers)
    return Capacity(
        users=users,
        per_day=per_day,
        peak=peak,
        processes=processes,
        processes_150ms=processes_150,
        cores=workers * WORKER_CORES + server_cores / 1000,
        rabbitmq_cores=rabbitmq_cores(peak),
        limited_processes=max(1, math.ceil(min(rate_needed, provider_limit) / WORKER_RATE_150MS)),
        limited_lateness_s=peak / provider_limit,
        enqueue_s=peak / ENQUEUE_RATE,
        connections_direct=processes_150 * CONNECTIONS_PER_WORKER + 5,
        connections_pooled=PGBOUNCER_SERVER_POOL,
        rows_per_year=rows,
        gib_per_year=stored / 2**30,
        plan_s=plan_s(users),
        workers=workers,
        enqueue_fanned_s=peak / (ENQUEUE_RATE * speedup(workers, ENQUEUE_SPEEDUP_2)),
        plan_fanned_s=plan_s(users) / speedup(workers, PLAN_SPEEDUP_2),
        loads=loads,
        first_limit=_first_limit(loads),
    )


def plan_s(users: int) -> float:
    """Seconds for the first plan of the window on one process (measured at 1M, scaled as
    measured to 10M)."""
    return PLAN_S_PER_MILLION * (users / 1e6) ** PLAN_EXPONENT


def delayed_cores(peak: float) -> float:
    """RabbitMQ cores busy routing and holding the busiest instant's countdowns while the
    enqueue publishes them (within ENQUEUE_WINDOW_S)."""
    return peak * RABBITMQ_DELAYED_CPU_MS / 1000 / ENQUEUE_WINDOW_S


def rabbitmq_cores(peak: float) -> int:
    """The RabbitMQ cores the recommended deployment gives the broker: the countdowns' share
    of them under HEADROOM (at least 1). Measured on 2 cores shared with everything else; that
    delayed delivery spreads over more cores (a channel per publisher, a queue per level) is
    the model's assumption: docs/capacity.md."""
    return max(1, math.ceil(delayed_cores(peak) / HEADROOM))


def speedup(workers: int, measured_at_2: float) -> float:
    """How many times one process's rate `workers` processes reach, from the speed-up measured
    with 2 against 1 on this machine, each further process adding what the second did (the
    database's cores being the bound this machine cannot show: docs/capacity.md)."""
    return 1 + (workers - 1) * (measured_at_2 - 1)


def limits(users: int, peak: float, workers: int) -> dict[str, float]:
    """Each limit's share used at this size with `workers` worker processes behind PgBouncer."""
    rate_needed = peak / LATENESS_BUDGET_S
    return {
        "delivery (worker processes send the busiest instant within a minute)": (
            rate_needed / (workers * WORKER_RATE_150MS)
        ),
        "enqueue (the busiest instant published within ENQUEUE_LEAD_SECONDS, fanned out)": (
            peak / (ENQUEUE_RATE * speedup(workers, ENQUEUE_SPEEDUP_2)) / ENQUEUE_WINDOW_S
        ),
        "planning (hourly, fanned out; given a quarter of the hour)": (
            plan_s(users) / speedup(workers, PLAN_SPEEDUP_2) / PLAN_BUDGET_S
        ),
        "RabbitMQ (one send queue)": rate_needed / BROKER_CEILING,
        "RabbitMQ countdowns (CPU of the cores it is given)": (
            delayed_cores(peak) / rabbitmq_cores(peak)
        ),
        "PostgreSQL connections (max_connections=100, through PgBouncer)": (
            (PGBOUNCER_SERVER_POOL + 5) / 100
        ),
    }


# Limits more worker processes do not relieve: past HEADROOM they need another design.
_FIXED = ("RabbitMQ", "PostgreSQL connections")


def recommend_workers(users: int, peak: float, at_least: int) -> int:
    """The fewest worker processes (from `at_least`, what delivery needs) that keep every limit
    they relieve under HEADROOM of it."""
    workers = at_least
    while workers < MAX_WORKERS and any(
        load > HEADROOM
        for name, load in limits(users, peak, workers).items()
        if not name.startswith(_FIXED)
    ):
        workers += 1
    return workers


def overloaded(capacity: Capacity) -> list[str]:
    """The limits past 100% with the deployment the model recommends (their short names)."""
    return [name.split(" (")[0] for name, load in capacity.loads.items() if load > 1]


def _first_limit(loads: dict[str, float]) -> str:
    """The component closest to its measured limit."""
    name = max(loads, key=loads.__getitem__)
    return f"{name}: {loads[name]:.0%} of its limit"


# --- the check at size: plan N users once -----------------------------------------------------


@dataclass(frozen=True)
class PlanningRun:
    users: int
    load_s: float
    plan_s: float
    planned: int
    bytes_per_user: float
    bytes_per_message: float


def planning_run(users: int, now: datetime | None = None) -> PlanningRun:
    """Load `users` users by COPY into a sandbox database, plan once (the window around `now`,
    default the present), measure rows and bytes. Bytes per row are pages over rows: a few
    thousand users plan a few dozen rows, where empty index pages dominate the figure."""
    from bday.devtools.bench.harness import reload_settings
    from bday.devtools.bench.probes import scalar
    from bday.devtools.bench.seeding import copy_users
    from bday.scheduling import jobs

    sandbox.exit_cleanly_on_sigterm()
    box = sandbox.Sandbox.create("bday_plan")
    saved = {name: os.environ.get(name) for name in box.env}
    try:
        os.environ.update(box.env)
        reload_settings()
        started = time.perf_counter()
        copy_users(users)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        planned = jobs.plan_job(now)["planned"]
        plan_s = time.perf_counter() - started
        # A partitioned table's own size is 0: the partitions holding rows make up its size
        # (an empty one's index root pages are not a cost per row).
        size = (
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"
            " FROM pg_partition_tree('{0}') WHERE pg_relation_size(relid) > 0),"
            " pg_total_relation_size('{0}'))::float / greatest(count(*), 1) FROM {0}"
        )
        return PlanningRun(
            users,
            load_s,
            plan_s,
            planned,
            scalar(size.format("users")),
            scalar(size.format("messages")),
        )
    finally:
        box.destroy()
        for name, value in saved.items():  # the caller's database and vhost again
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload_settings()


def planning_report(run: PlanningRun) -> str:
    predicted = model(run.users)
    return "\n".join(
        [
            f"planning {run.users:,} users (loaded by COPY in {run.load_s:,.0f} s)",
            f"  planned {run.planned:,} rows in {run.plan_s:.1f} s",
            f"  model: {run.users * PLANNED_PER_USER:,.0f} rows in {predicted.plan_s:.1f} s",
            (
                f"  bytes per user row {run.bytes_per_user:.0f}, per message row "
                f"{run.bytes_per_message:.0f} (tables with their indexes)"
            ),
        ]
    )


if __name__ == "__main__":
    import sys

    print(planning_run(int(sys.argv[1])))


# --- printing -------------------------------------------------------------------------------------


def parse_users(text: str) -> int:
    """`1M`, `10m`, `2.5k`, `1000000` -> a whole count of users from 1 to 10 billion
    (ValueError otherwise: `0.5` is no count of users, `nan` and `inf` none at all)."""
    cleaned = text.strip().lower().replace(",", "").replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(cleaned[-1:], 1)
    try:  # decimal, not float: 1.1M is exactly 1,100,000 users
        number = Decimal(cleaned[:-1] if scale > 1 else cleaned) * scale
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite() or number != number.to_integral_value():
        raise ValueError(f"{text!r}: expected a whole count of users such as 1M, 250k or 5000000")
    if not 1 <= number <= 10_000_000_000:
        raise ValueError(f"{text!r}: expected between 1 and 10,000,000,000 users")
    return int(number)


def report(sizes: list[int], provider_limit: float = PROVIDER_LIMIT) -> str:
    models = [model(users, provider_limit) for users in sizes]
    offset, share = peak_offset_share()
    rows = [
        ("users", [_count(m.users) for m in models]),
        ("greetings per day (average)", [_count(m.per_day) for m in models]),
        (f"due at the busiest instant (UTC{offset}, busiest day)", [
            _count(m.peak) for m in models
        ]),
        (
            f"worker processes to send it in {LATENESS_BUDGET_S:.0f} s (service 0 / 150 ms)",
            [f"{m.processes} / {m.processes_150ms}" for m in models],
        ),
        ("cores: workers + PostgreSQL + RabbitMQ (150 ms)", [f"{m.cores:.1f}" for m in models]),
        (
            f"provider limit {provider_limit:,.0f}/s: processes, last greeting late",
            [f"{m.limited_processes}, {m.limited_lateness_s:,.0f} s" for m in models],
        ),
        ("recommended worker processes, behind PgBouncer", [f"{m.workers}" for m in models]),
        ("RabbitMQ cores for the busiest instant's countdowns", [
            f"{m.rabbitmq_cores}" for m in models
        ]),
        ("enqueue of the busiest instant: one process / fanned out", [
            f"{m.enqueue_s:,.1f} s / {m.enqueue_fanned_s:,.1f} s" for m in models
        ]),
        ("PostgreSQL connections: direct / PgBouncer", [
            f"{m.connections_direct} / {m.connections_pooled}" for m in models
        ]),
        ("message rows per year", [_count(m.rows_per_year) for m in models]),
        ("storage after a year (users + messages)", [f"{m.gib_per_year:,.1f} GiB" for m in models]),
        ("first plan of the 26 h window: one process / fanned out", [
            f"{m.plan_s:,.0f} s / {m.plan_fanned_s:,.0f} s" for m in models
        ]),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    cells = [max(len(v) for _, values in rows for v in [values[i]]) for i in range(len(models))]
    lines = [
        f"{name:<{width}}  " + "  ".join(f"{v:>{cells[i]}}" for i, v in enumerate(values))
        for name, values in rows
    ]
    lines.append("")
    for m in models:
        lines.append(
            f"{_count(m.users)} users with {m.workers} worker process(es), closest to its limit: "
            f"{m.first_limit}"
        )
        if over := overloaded(m):
            lines.append(f"  no deployment of this shape is enough: {', '.join(over)} over 100%")
    lines.append("")
    lines.append(
        f"Assumptions: {GREETINGS_PER_USER_YEAR:.2f} greetings per user per year; busiest day "
        f"x{PEAK_DAY_FACTOR}; {share:.1%} of users at UTC{offset} (world population by offset, "
        "docs/capacity.md); measured inputs in bday/devtools/capacity.py."
    )
    return "\n".join(lines)


def _count(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.1f}M".replace(".0M", "M")
    if value >= 1e4:
        return f"{value / 1e3:,.0f}k"
    return f"{value:,.0f}"
