"""The minute enqueue, in one process or fanned out over the workers.

One process claims and publishes the due rows batch by batch (`publish_due`). When a run finds
more due rows than ENQUEUE_FANOUT_ROWS (one publisher would take too much of the minute they
have: docs/capacity.md) and more than one worker process consumes the scheduler queue, it
splits them instead (`fan_out`): it publishes one `enqueue_slice` job per worker process, up to
one per ENQUEUE_BATCH rows, and each slice runs `publish_due` for the run's instant in the
worker that receives it. The slices share nothing but the rows:

* two slices never claim the same row: each claim takes its rows `FOR UPDATE SKIP LOCKED` and
  commits them QUEUED, so a row another slice holds or has claimed is not due for this one;
* no slice owns a share: each claims batches until nothing due is left (or it has published
  as many rows as the run found), so a slow or dead slice's rows go to the others;
* a slice is safe to lose: a slice killed mid-batch rolls its claim back (the rows are PENDING
  again, any job it published finds its row without a token or with another one: see
  `dispatch.claim_and_publish`), and whatever it left PENDING is the next minute's run's; a
  slice job redelivered after its worker died just runs again, and one that arrives after the
  instants it was for (ENQUEUE_LEAD_SECONDS late) does nothing.

`heartbeats['enqueue']` says what the run did (rows due, slices fanned out); the slices add up
what they published under `heartbeats['enqueue-slices']` for the run they served.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text

from bday.config import Settings
from bday.scheduling import dispatch
from bday.store import messages
from bday.store.db import transaction

log = logging.getLogger(__name__)

SLICE_TASK = "bday.tasks.enqueue_slice"  # published by name: scheduling never imports the worker
SLICES_HEARTBEAT = "enqueue-slices"


def publish_due(now: datetime, settings: Settings, limit: int | None = None) -> int:
    """Claim and publish rows due within the lead of `now`, ENQUEUE_BATCH per transaction,
    until none is left (or `limit` rows were published); returns rows published. A batch that
    could not be published rolled back whole; this stops there, the next run tries again."""
    published = 0
    while limit is None or published < limit:
        left = settings.enqueue_batch if limit is None else limit - published
        batch = min(settings.enqueue_batch, left)
        claimed, unpublished = dispatch.claim_and_publish(now, settings, limit=batch)
        if unpublished:
            break
        published += claimed
        if claimed < batch:
            break
    return published


def slices_for(due: int, settings: Settings, consumers: int) -> int:
    """How many slices a run with `due` rows fans out to, 0 for none (it publishes them
    itself): one per worker process consuming the scheduler queue, none for a run one
    publisher clears well within the minute, never a slice smaller than one batch."""
    if due <= settings.enqueue_fanout_rows or consumers < 2:
        return 0
    return min(consumers, math.ceil(due / settings.enqueue_batch))


@dataclass(frozen=True)
class Fanout:
    due: int
    slices: int  # 0: not fanned out


def fan_out(now: datetime, settings: Settings) -> Fanout:
    """Count the rows due at `now`; if they call for slices, publish them. Fanout.slices is 0
    when the caller must publish the rows itself (few rows, one worker, or the slice jobs
    could not be published)."""
    with transaction() as session:
        due = messages.count_due(
            session, now, lead_s=settings.enqueue_lead_s, catch_up_hours=settings.catch_up_hours
        )
    if due <= settings.enqueue_fanout_rows:
        return Fanout(due, 0)
    slices = slices_for(due, settings, _scheduler_consumers())
    if slices and not _publish_slices(now, due, slices):
        slices = 0
    return Fanout(due, slices)


def run_slice(now: datetime, limit: int, settings: Settings) -> dict:
    """One slice of a fanned-out run at `now`: publish what is due (at most `limit` rows, the
    rows the run found). A slice that arrives after the run's instants are past its lead
    leaves them to the next minute's run."""
    late_s = (datetime.now(UTC) - now).total_seconds()
    if late_s > settings.enqueue_lead_s:
        log.info("enqueue slice of %s: %.0f s late, left to the next run", now.isoformat(), late_s)
        return {"published": 0, "stale": True}
    published = publish_due(now, settings, limit)
    _record_slice(now, published)
    if published:
        log.info("enqueue slice: %d published", published)
    return {"published": published}


def _scheduler_consumers() -> int:
    """Worker processes consuming the scheduler queue (each is one consumer), 0 if unknown."""
    from bday.broker.app import app
    from bday.broker.topology import topology

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.default_channel
            declared = topology().scheduler_queue.bind(channel).queue_declare(passive=True)
    except Exception as exc:  # noqa: BLE001 - no count: publish here, as without fan-out
        log.warning("enqueue: scheduler queue consumers unknown (%s), not fanning out", exc)
        return 0
    return int(declared.consumer_count)


def _publish_slices(now: datetime, due: int, slices: int) -> bool:
    """Publish `slices` slice jobs for the run at `now`, each confirmed by RabbitMQ."""
    from bday.broker.app import app

    signature = app.signature(SLICE_TASK)
    try:
        connection = app.connection_for_write(transport_options={"confirm_publish": True})
        connection.ensure_connection(max_retries=1)
        with connection, app.amqp.Producer(connection) as producer:
            for _ in range(slices):
                signature.apply_async(
                    kwargs={"now": now.isoformat(), "limit": due},
                    producer=producer,
                    retry=False,
                )
    except Exception as exc:  # noqa: BLE001 - publish here instead; a slice sent is harmless
        log.warning("enqueue: slices not published (%s), publishing in one process", exc)
        return False
    return True


# The slices of one run add up what they published; a slice of a newer run starts afresh.
_RECORD_SLICE = text(
    f"""
    INSERT INTO heartbeats AS h (name, beat_at, detail)
    VALUES ('{SLICES_HEARTBEAT}', :beat_at, CAST(:detail AS jsonb))
    ON CONFLICT (name) DO UPDATE SET
        beat_at = greatest(h.beat_at, excluded.beat_at),
        detail = CASE WHEN h.detail ->> 'run' = excluded.detail ->> 'run'
            THEN jsonb_build_object(
                'run', h.detail ->> 'run',
                'slices_done', CAST(h.detail ->> 'slices_done' AS integer) + 1,
                'published', CAST(h.detail ->> 'published' AS integer)
                             + CAST(excluded.detail ->> 'published' AS integer))
            ELSE excluded.detail END
    """
)


def _record_slice(now: datetime, published: int) -> None:
    detail = {"run": now.isoformat(), "slices_done": 1, "published": published}
    with transaction() as session:
        session.execute(_RECORD_SLICE, {"beat_at": datetime.now(UTC), "detail": json.dumps(detail)})
