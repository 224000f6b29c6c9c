"""Operator commands: status, health, replay, dlq, metrics."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from bday.cli.errors import EXIT_UNAVAILABLE
from bday.cli.options import LIMIT, FiniteFloatRange
from bday.config import get_settings
from bday.core.occasions import Kind


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Counts by status and type, queue and DLQ depth, consumers, oldest overdue, last runs,
    the send rate and the forecast lateness of the coming peaks.

    Exit 0 when every part was read; 1 when PostgreSQL or RabbitMQ could not be reached (the
    parts that could be read are still printed, the others say why); 2 for a setup mistake."""
    from bday.ops import status as state
    from bday.ops.forecast import read_forecast

    unreadable: dict[str, str] = {}
    database = _read_part("database", state.read_database, unreadable)
    ahead = _read_part("pacing", read_forecast, unreadable) if database else None
    try:
        broker = state.read_broker()
        broker_view: dict[str, Any] = {
            "queue_depth": broker.queue_depth,
            "dlq_depth": broker.dlq_depth,
            "consumers": broker.consumers,
            "scheduler_depth": broker.scheduler_depth,
        }
    except Exception as exc:  # noqa: BLE001 - status must still show the database side
        unreadable["broker"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        broker_view = {"error": unreadable["broker"]}
    report: dict[str, Any] = {
        **(
            _database_view(database)
            if database
            else {"database": {"error": unreadable["database"]}}
        ),
        "broker": broker_view,
        "pacing": _pacing_view(ahead) if ahead else None,
        "unreadable": unreadable,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_status(report)
    if unreadable:
        parts = " and ".join(_PART_NAMES[part] for part in unreadable)
        click.echo(f"bday: status incomplete: could not read {parts}", err=True)
        sys.exit(EXIT_UNAVAILABLE)


_PART_NAMES = {
    "database": "PostgreSQL",
    "pacing": "the forecast",
    "broker": "RabbitMQ",
}


def _read_part(part: str, read: Any, unreadable: dict[str, str]) -> Any:
    """`read()`, or None with the reason in `unreadable[part]` when its service is down. Any
    other error (a setting, an unmigrated database) is the operator's to fix: it propagates."""
    from bday.cli.errors import explain

    try:
        return read()
    except Exception as exc:
        answer = explain(exc)
        if answer is None or answer[1] != EXIT_UNAVAILABLE:
            raise
        unreadable[part] = answer[0]
        return None


def _database_view(database: Any) -> dict[str, Any]:
    return {
        "messages": dict(sorted(database.by_status.items())),
        "by_type": {f"{kind}/{st}": n for (kind, st), n in sorted(database.by_type_status.items())},
        "oldest_overdue": (
            {"id": database.oldest_overdue_id, "seconds": round(database.oldest_overdue_s, 1)}
            if database.oldest_overdue_id and database.oldest_overdue_s is not None
            else None
        ),
        "storage": {
            "messages_bytes": database.table_bytes,
            "oldest_kept": database.oldest_kept.isoformat() if database.oldest_kept else None,
            "retention_days": get_settings().message_retention_days,
        },
        "last_runs": {name: at.isoformat() for name, at in sorted(database.heartbeats.items())},
        "breaker": {
            "state": database.breaker_state,
            "open_seconds": round(database.breaker_open_s, 1),
            "trips": database.breaker_trips,
        },
    }


def _print_status(report: dict) -> None:
    if "messages" in report:
        click.echo(
            "messages:  " + ("  ".join(f"{k} {v}" for k, v in report["messages"].items()) or "none")
        )
        for key, count in report["by_type"].items():
            click.echo(f"  {key:<22} {count}")
    else:
        click.echo(f"database:  unreachable ({report['database']['error']})")
    broker = report["broker"]
    if "error" in broker:
        click.echo(f"broker:    unreachable ({broker['error']})")
    else:
        click.echo(
            f"queue:     {broker['queue_depth']} ready, {broker['consumers']} consumer(s); "
            f"DLQ {broker['dlq_depth']}"
        )
    if "messages" in report:
        _print_database_side(report)
    if report["pacing"]:
        _print_pacing(report["pacing"])
    elif "pacing" in report["unreadable"]:
        click.echo(f"pacing:    unreadable ({report['unreadable']['pacing']})")


def _print_database_side(report: dict) -> None:
    now = datetime.now(UTC)
    overdue = report["oldest_overdue"]
    click.echo(
        "overdue:   "
        + (
            f"oldest {overdue['seconds']:.0f} s past its instant ({overdue['id']})"
            if overdue
            else "none"
        )
    )
    storage = report["storage"]
    click.echo(
        f"storage:   messages table {storage['messages_bytes'] / 2**20:.1f} MiB, oldest row "
        f"{storage['oldest_kept'] or '-'} (MESSAGE_RETENTION_DAYS={storage['retention_days']})"
    )
    for name, at in report["last_runs"].items():
        age = (now - datetime.fromisoformat(at)).total_seconds()
        click.echo(f"last {name + ':':<9}{age:.0f} s ago")
    breaker = report["breaker"]
    click.echo(
        f"breaker:   {breaker['state']}"
        + (f" for {breaker['open_seconds']:.0f} s" if breaker["state"] != "closed" else "")
    )


def _pacing_view(ahead: Any) -> dict:
    from bday.ops.forecast import PEAKS_SHOWN

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "rate_per_s": rounded(ahead.rate),
        "limit_per_s": ahead.limit or None,
        "adaptive_per_s": rounded(ahead.adaptive),
        "backlog": ahead.backlog,
        "drain_s": rounded(ahead.drain_s),
        "lateness_budget_s": ahead.budget_s,
        "over_budget": ahead.over_budget,
        "peaks": [
            {"at": p.at.isoformat(), "count": p.count, "last_late_s": rounded(p.last_late_s)}
            for p in ahead.peaks[:PEAKS_SHOWN]
        ],
    }


def _print_pacing(pacing: dict) -> None:
    rate = pacing["rate_per_s"]
    learned = (
        f", learned from 429s {pacing['adaptive_per_s']}/s" if pacing["adaptive_per_s"] else ""
    )
    limit = f"limit {pacing['limit_per_s']}/s" if pacing["limit_per_s"] else "no limit set"
    click.echo(f"pacing:    {f'{rate}/s' if rate else 'unlimited'} ({limit}{learned})")
    drain = f", drains in {_duration(pacing['drain_s'])}" if pacing["drain_s"] is not None else ""
    click.echo(f"backlog:   {pacing['backlog']} due now{drain}")
    budget = pacing["lateness_budget_s"]
    for peak in pacing["peaks"]:
        late = peak["last_late_s"]
        verdict = (
            "no forecast (unlimited)"
            if late is None
            else f"last ~{_duration(late)} late" + (" OVER BUDGET" if late > budget else "")
        )
        click.echo(f"peak:      {peak['at']}  {peak['count']} due, {verdict}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@click.command("health")
@click.option(
    "--check",
    "checks",
    multiple=True,
    type=click.Choice(["rabbitmq", "postgresql", "workers", "beat", "email-service"]),
    help="Run only these checks (repeatable). Default: all.",
)
def health(checks: tuple[str, ...]) -> None:
    """One line per check; exit 0 only if all pass (an open breaker is only a warning)."""
    from bday.ops import health as probes

    results = probes.run(list(checks) or None)
    for result in results:
        click.echo(result.line())
    if not all(result.ok for result in results):
        sys.exit(1)


@click.command("replay")
@click.option(
    "--since", "since", default=None, help="Only messages that failed within, e.g. 24h, 90m, 2d."
)
@click.option(
    "--type", "message_type", type=click.Choice([k.value for k in Kind], case_sensitive=False)
)
@click.option("--limit", type=LIMIT, default=None)
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--force", is_flag=True, help="Also replay messages older than CATCH_UP_HOURS.")
def replay(since, message_type, limit, dry_run, force) -> None:
    """Re-queue FAILED messages (the seed's Step 9), resetting their retry counts."""
    from bday.ops.replay import parse_age, replay_failed

    try:
        age = None if since is None else parse_age(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    result = replay_failed(
        since=age,
        message_type=message_type.upper() if message_type else None,
        limit=limit,
        dry_run=dry_run,
        force=force,
    )
    verb = "would re-queue" if dry_run else "re-queued"
    click.echo(f"{verb} {len(result.selected) if dry_run else result.published} message(s)")
    for message_id in result.selected if dry_run else []:
        click.echo(f"  {message_id}")
    if result.too_old:
        click.echo(f"refused {len(result.too_old)} older than CATCH_UP_HOURS (use --force)")


@click.group("dlq")
def dlq() -> None:
    """Inspect, replay or purge the dead-letter queue."""


@dlq.command("list")
@click.option("--limit", type=LIMIT, default=None)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(limit, as_json) -> None:
    """Dead-lettered jobs: why they died and what their message row says now."""
    from bday.ops import dlq as dead

    jobs = dead.list_jobs(limit)
    rows = [
        {
            "task": j.task,
            "message_id": j.message_id,
            "death": j.death_reason,
            "died_at": _iso(j.died_at),
            "status": j.row_status,
            "sent_at": _iso(j.row_sent_at),
            "reason": j.row_reason,
            "error": j.row_error,
            "earlier_failure": _iso_values(j.row_earlier_failure),
        }
        for j in jobs
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{len(rows)} job(s) in the DLQ")
    for row in rows:
        click.echo(
            f"  {row['message_id'] or '<malformed>'}  {row['task'] or '<no task>'}  "
            f"died: {row['death']}  row: {_dead_row(row)}"
        )


def _dead_row(row: dict) -> str:
    """What the dead job's message row says now: its current state first, then history."""
    from bday.ops.history import describe_earlier

    if not row["status"]:
        return "no such message"
    if row["status"] == "FAILED":
        return f"FAILED ({row['reason'] or '-'}: {row['error'] or '-'})"
    now = f"SENT at {row['sent_at']}" if row["status"] == "SENT" else row["status"]
    earlier = row["earlier_failure"]
    return now + (f" (earlier failure: {describe_earlier(earlier)})" if earlier else "")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _iso_values(values: dict | None) -> dict | None:
    if values is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


@dlq.command("replay")
@click.option("--limit", type=LIMIT, default=None)
def dlq_replay(limit) -> None:
    """Re-publish dead jobs whose message is still owed (FAILED retries reset)."""
    from bday.ops import dlq as dead

    replayed, kept = dead.replay(limit)
    click.echo(f"replayed {replayed}; {kept} left in the DLQ")


@dlq.command("purge")
@click.option(
    "--all", "everything", is_flag=True, help="Drop every dead job, whatever its row says."
)
def dlq_purge(everything) -> None:
    """Drop dead jobs whose message is already SENT or CANCELLED (all with --all)."""
    from bday.ops import dlq as dead

    purged, kept = dead.purge(everything)
    click.echo(f"purged {purged}; {kept} left in the DLQ")


@click.command("metrics")
@click.option("--port", type=click.IntRange(1, 65535), default=9750, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True)
def metrics(port, address) -> None:
    """Serve bday's state metrics (queues, rows by status, overdue, beat, breaker) to Prometheus."""
    import time

    from prometheus_client import CollectorRegistry, start_http_server

    from bday.cli.errors import Failure
    from bday.ops.exporter import StateCollector

    registry = CollectorRegistry()
    registry.register(StateCollector())
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:  # ours to fix, not a remote service's: say so
        raise Failure(
            f"cannot listen on {address}:{port} (a local bind problem: {exc.strerror or exc}); "
            "choose another --port or an --address of this machine"
        ) from None
    click.echo(f"bday metrics on http://{address}:{port}/metrics")
    while True:
        time.sleep(3600)


@click.command("bench")
@click.option(
    "--quick", is_flag=True, help="Small counts (a minute or two): for CI and smoke checks."
)
@click.option("--concurrency", type=click.IntRange(1, 1000), default=64, show_default=True)
@click.option(
    "--pool",
    type=click.Choice(["threads", "prefork", "solo"]),
    default="threads",
    show_default=True,
)
@click.option(
    "--processes",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Worker processes (each with the pool and concurrency above).",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Run ceiling and delivery this many times and report medians.",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(
        ["delivery", "burst", "planning", "memory", "breaker", "retention", "enqueue"]
    ),
    help="Run only these figures (the ceiling always runs).",
)
@click.option(
    "--model",
    "model_sizes",
    is_flag=False,
    flag_value="1M,10M,100M",
    default=None,
    metavar="USERS",
    help="Print the capacity model for these user counts (e.g. 1M,10M,100M; the default "
    "with a bare --model) from this machine's measured figures; starts nothing.",
)
@click.option(
    "--provider-limit",
    type=FiniteFloatRange(min=1, max=1e6),
    default=500,
    show_default=True,
    help="With --model: requests/s the email provider accepts.",
)
@click.option(
    "--plan-users",
    type=click.IntRange(1, 1_000_000_000),
    default=None,
    help="Load this many users by COPY into a sandbox database, plan once, print time, rows "
    "and bytes per row (the model's check at size); starts no workers.",
)
def bench(
    quick, concurrency, pool, processes, repeat, only, model_sizes, provider_limit, plan_users
) -> None:
    """Measure capacity on this machine, each figure beside a baseline from the same run."""
    from bday.devtools import capacity
    from bday.devtools.bench import figures, report

    if model_sizes is not None:
        try:
            sizes = [capacity.parse_users(part) for part in model_sizes.split(",")]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
        click.echo(capacity.report(sizes, provider_limit))
        return
    if plan_users is not None:
        click.echo(capacity.planning_report(capacity.planning_run(plan_users)))
        return

    rows = figures.run(
        quick=quick,
        concurrency=concurrency,
        pool=pool,
        repeat=repeat,
        only=only,
        processes=processes,
    )
    click.echo(report.table(rows))
