"""The benchmark's baseline task. Only `bday bench` loads it (`celery worker --include`), so
production workers carry no task they never run."""

from __future__ import annotations

from pathlib import Path

from bday.broker.app import app


@app.task(name="bday.tasks.noop", acks_on_failure=True)
def noop(marker: str | None = None) -> None:
    """Does nothing: `bday bench` measures Celery's own ceiling with it. With `marker` (a file
    path) it touches the file, so the benchmark knows when the last job of a batch ran."""
    if marker:
        Path(marker).touch()
