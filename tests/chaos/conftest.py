"""The chaos suite: real processes broken on purpose. `--long` runs the full sizes.

Every scenario runs on this run's database and vhost with real workers, beat, RabbitMQ,
PostgreSQL and the fake email service, and checks two things at the end: the final state of
every row, and how often the email service saw each Idempotency-Key succeed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.stack import Stack, running_stack

RESULTS = Path(__file__).resolve().parents[2] / ".chaos-results.json"


@pytest.fixture
def stack(database_url, tmp_path, monkeypatch) -> Iterator[Stack]:
    """The same stack of real processes as the end-to-end tests' (tests/harness/stack.py)."""
    yield from running_stack(database_url, tmp_path, monkeypatch)


@dataclass(frozen=True)
class Scale:
    long: bool

    def pick(self, ci, full):
        return full if self.long else ci


@pytest.fixture
def scale(request) -> Scale:
    return Scale(request.config.getoption("--long"))


@pytest.fixture
def report(request):
    """Record a scenario's figures (printed at the end; written to .chaos-results.json)."""
    figures: dict = {}
    yield figures
    if figures:
        _store(request.node.name, figures)


def _store(name: str, figures: dict) -> None:
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing[name] = figures
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True))
