"""The fanned-out plan's rate with 1 and 2 worker processes, beside the plan in one process.

    python -m bday.devtools.bench.plan_workers USERS [--rounds N] [--ranges N]

Loads USERS users by COPY into a sandbox (as `bday bench --plan-users`: birthdays spread over
the year, a third with an anniversary), then for each configuration in turn, `--rounds` times:
start its worker processes, let their start-up plan end, empty `messages`, publish the hourly
plan's job and time it from the plan's own heartbeat (`ended_at - started_at`). Every
configuration plans the same first plan of the same users:

* `one process`: PLAN_RANGE_USERS=0, the plan runs in the worker that takes its job (today's);
* `ranges, N workers`: PLAN_RANGE_USERS = USERS / --ranges, fanned out over N processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bday.devtools import sandbox


@dataclass(frozen=True)
class Timing:
    config: str
    workers: int
    seconds: float
    planned: int


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bday.devtools.bench.plan_workers")
    parser.add_argument("users", type=int)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ranges", type=int, default=16)
    args = parser.parse_args(argv)
    print(report(args.users, run(args.users, args.rounds, args.ranges)))


def run(users: int, rounds: int, ranges: int) -> list[Timing]:
    from bday.devtools.bench.harness import reload_settings
    from bday.devtools.bench.seeding import copy_users

    sandbox.exit_cleanly_on_sigterm()
    box = sandbox.Sandbox.create("bday_planw")
    workdir = Path(tempfile.mkdtemp(prefix="bday-plan-workers-"))
    try:
        os.environ.update(box.env)
        reload_settings()
        started = time.perf_counter()
        copy_users(users)
        print(f"loaded {users:,} users in {time.perf_counter() - started:.0f} s", flush=True)
        configs = [
            ("one process", 1, 0),
            *((f"ranges of {users // ranges:,}", n, users // ranges) for n in (1, 2)),
        ]
        timings = []
        for _ in range(rounds):
            for name, workers, range_users in configs:
                timing = _measure(box.env, workdir, name, workers, range_users)
                print(timing, flush=True)
                timings.append(timing)
        return timings
    finally:
        from bday.store import db

        db.reset_engines()
        box.destroy()


def _measure(env: dict, workdir: Path, name: str, workers: int, range_users: int) -> Timing:
    from bday.broker.app import app

    env = {**env, "PLAN_RANGE_USERS": str(range_users), "WORKER_METRICS_PORT": "0"}
    spawned = datetime.now(UTC)
    processes = [
        sandbox.spawn_worker(f"plan{workers}-{index}-{time.time_ns()}", env, workdir, 4)
        for index in range(workers)
    ]
    try:
        for process in processes:
            sandbox.wait_ready(process, " ready.", timeout=120)
        # The workers' start-up catch-up (a plan, then an enqueue) must be over before the
        # measured plan: its plan, while it still runs, would share the workers with it.
        sandbox.wait_for(lambda: _catch_up_done(spawned), 3600, "the start-up plan")
        _sql("TRUNCATE messages")
        asked = datetime.now(UTC)
        app.send_task("bday.tasks.plan")
        detail = sandbox.wait_for(lambda: _ended_since(asked), 3600, "the plan", interval=0.5)
    finally:
        sandbox.stop_all(processes)
    seconds = (
        datetime.fromisoformat(detail["ended_at"]) - datetime.fromisoformat(detail["started_at"])
    ).total_seconds()
    return Timing(name, workers, seconds, int(detail["planned"]))


def _catch_up_done(spawned: datetime) -> bool:
    """Is the workers' start-up catch-up over? Each worker publishes one (a plan, then an
    enqueue); one plans and the others find its plan fresh and skip to their enqueue. So: an
    enqueue ran since the workers were spawned, and the plan's heartbeat shows no plan running
    (a starting plan removes the last plan's `ended_at`)."""
    from bday.devtools.bench.probes import scalar

    enqueued = scalar("SELECT beat_at FROM heartbeats WHERE name = 'enqueue'")
    return enqueued is not None and enqueued >= spawned and "ended_at" in _detail()


def _ended_since(asked: datetime) -> dict:
    detail = _detail()
    started = detail.get("started_at")
    ended = detail.get("ended_at")  # a plan in one process leaves the last end until its own
    fresh = started and ended and min(map(datetime.fromisoformat, (started, ended))) >= asked
    return detail if fresh else {}


def _detail() -> dict:
    from bday.devtools.bench.probes import scalar

    return scalar("SELECT detail FROM heartbeats WHERE name = 'plan'") or {}


def _sql(statement: str) -> None:
    from sqlalchemy import text

    from bday.store.db import engine

    with engine().begin() as connection:
        connection.execute(text(statement))


def report(users: int, timings: list[Timing]) -> str:
    lines = [f"planning {users:,} users (first plan of the window), medians over rounds"]
    base = None
    for config, workers in dict.fromkeys((t.config, t.workers) for t in timings):
        runs = [t for t in timings if (t.config, t.workers) == (config, workers)]
        seconds = statistics.median(t.seconds for t in runs)
        planned = runs[0].planned
        base = base or seconds
        lines.append(
            f"  {config}, {workers} worker(s): {seconds:.1f} s (x{base / seconds:.2f} of one "
            f"process), {users / seconds / workers:,.0f} users/s and "
            f"{planned / seconds / workers:,.0f} rows/s per worker process; {planned:,} rows; "
            f"runs {', '.join(f'{t.seconds:.1f}' for t in runs)} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
