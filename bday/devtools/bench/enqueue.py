"""The enqueue figure: one instant's due rows claimed and published three ways, in alternation
(the machine's noise is shared), each as rows/s:

* one publisher waiting for RabbitMQ's confirm of each message (as bday did before grouped
  confirms; `publish_confirming_each` keeps that code here): the baseline;
* one publisher with one confirm wait per batch (`dispatch.publish`, what bday does);
* the run fanned out over the bench's worker processes (`--processes`), each publishing a
  slice with grouped confirms: from the run's start until every row is QUEUED.

The rows are due ENQUEUE_LEAD_SECONDS ahead (600 s for this figure), so no send starts while a
run is measured; the delayed jobs are purged after each run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta

from bday.devtools import sandbox
from bday.devtools.bench.probes import scalar
from bday.devtools.bench.report import Row, fmt
from bday.devtools.bench.seeding import insert_due
from bday.store.messages import QueuedJob

LEAD_S = 600
AHEAD_S = 500  # the rows' instant, from the start of a run: within the lead, after the run
VARIANTS = ("each", "grouped", "fanout")


def enqueue_rows(bench, repeat: int) -> None:
    """Rows of the enqueue figure for `bench.sizes.delivery` due rows."""
    count = bench.sizes.delivery
    bench.env["ENQUEUE_LEAD_SECONDS"] = str(LEAD_S)
    os.environ["ENQUEUE_LEAD_SECONDS"] = str(LEAD_S)
    workers = bench.worker("enqueue")
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    try:
        for _ in range(repeat):
            for variant in VARIANTS:
                seconds[variant].append(_run(bench, count, variant))
    finally:
        workers.stop()
        bench.env.pop("ENQUEUE_LEAD_SECONDS")
        os.environ.pop("ENQUEUE_LEAD_SECONDS")
        os.environ.pop("ENQUEUE_FANOUT_ROWS", None)
    rates = {variant: [count / s for s in runs] for variant, runs in seconds.items()}
    each, grouped, fanned = (statistics.median(rates[variant]) for variant in VARIANTS)
    bench.rows += [
        Row(
            f"enqueue: {count:,} due rows, a confirm per message",
            f"{each:.0f} rows/s",
            "baseline",
            f"one publisher; runs {fmt(rates['each'])}",
        ),
        Row(
            f"enqueue: {count:,} due rows, grouped confirms",
            f"{grouped:.0f} rows/s",
            f"x{grouped / each:.2f}",
            f"one publisher, one confirm wait per ENQUEUE_BATCH; runs {fmt(rates['grouped'])}",
        ),
        Row(
            f"enqueue: {count:,} due rows, fanned out",
            f"{fanned:.0f} rows/s",
            f"x{fanned / grouped:.2f} of grouped",
            f"{bench.processes} worker process(es) publish slices; runs {fmt(rates['fanout'])}",
        ),
    ]


def _run(bench, count: int, variant: str) -> float:
    """Seconds from the start of one enqueue run until all `count` rows are QUEUED."""
    from bday.devtools.bench.harness import reload_settings
    from bday.scheduling import dispatch, jobs

    bench.reset()
    _purge()
    # ENQUEUE_FANOUT_ROWS: fan out above one batch, or never.
    os.environ["ENQUEUE_FANOUT_ROWS"] = "1000" if variant == "fanout" else "100000000"
    reload_settings()
    insert_due(count, datetime.now(UTC) + timedelta(seconds=AHEAD_S))
    grouped = dispatch.publish
    if variant == "each":
        dispatch.publish = publish_confirming_each
    try:
        started = time.perf_counter()
        result = jobs.enqueue_job()
        if variant != "fanout" and result["published"] != count:
            raise RuntimeError(f"the enqueue published {result['published']} of {count} rows")
        queued = "SELECT count(*) FROM messages WHERE status = 'QUEUED'"
        sandbox.wait_for(lambda: scalar(queued) == count, 600, "every row QUEUED", 0.05)
        elapsed = time.perf_counter() - started
    finally:
        dispatch.publish = grouped
    if variant == "fanout" and not result.get("slices"):
        raise RuntimeError(f"the enqueue did not fan out: {result}")
    _purge()
    return elapsed


def publish_confirming_each(jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    """`dispatch.publish` as it was before grouped confirms: py-amqp's `confirm_publish`
    makes each publish wait for its own confirm."""
    from bday.broker import topology
    from bday.broker.app import app
    from bday.scheduling.dispatch import SEND_TASK, _timing

    connection = app.connection_for_write(transport_options={"confirm_publish": True})
    connection.ensure_connection(max_retries=1)
    topology.ensure_declared(connection)
    send_message = app.signature(SEND_TASK)
    with connection, app.amqp.Producer(connection) as producer:
        for job in jobs:
            send_message.apply_async(
                args=[str(job.message_id)],
                kwargs={"token": str(job.token)},
                producer=producer,
                retry=False,
                **_timing(job.eta),
            )
    return []


def _purge() -> None:
    """Empty the send, scheduler and delayed-delivery queues of the bench's vhost."""
    from kombu.transport.native_delayed_delivery import level_name

    from bday.broker.app import app
    from bday.broker.topology import topology

    parts = topology()
    names = [parts.send_queue.name, parts.scheduler_queue.name]
    names += [level_name(level) for level in range(28)]
    with app.connection_for_write() as connection:
        for name in names:
            channel = connection.channel()
            with suppress(Exception):  # not declared in this vhost: nothing there
                channel.queue_purge(name)
