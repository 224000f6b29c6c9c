"""Beat's scheduler: Celery's in-memory scheduler that also records a heartbeat.

Crontab entries need no persisted state, so there is no `celerybeat-schedule` file to manage.
Each time beat sends a job it writes `heartbeats['beat']`; `bday health` calls beat stale when
that is older than two enqueue intervals.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import beat

log = logging.getLogger(__name__)


class Scheduler(beat.Scheduler):
    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        result = super().apply_async(entry, producer, advance, **kwargs)
        record_tick(entry.task)
        return result


def record_tick(what: str) -> None:
    """heartbeats['beat'] = now; never raises (the database may be down; beat keeps ticking)."""
    try:
        from bday.scheduling.jobs import heartbeat

        heartbeat("beat", datetime.now(UTC), {"sent": what})
    except Exception as exc:  # noqa: BLE001
        log.warning("beat heartbeat not recorded: %s", exc)
