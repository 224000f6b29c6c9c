"""The end-to-end tests' fixture: a stack of real processes (tests/harness/stack.py). Helpers
are imported from tests/harness, never from a conftest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.stack import Stack, running_stack


@pytest.fixture
def stack(database_url, tmp_path, monkeypatch) -> Iterator[Stack]:
    yield from running_stack(database_url, tmp_path, monkeypatch)
