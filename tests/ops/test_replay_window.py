"""`replay_failed(since=...)` from Python: a zero or negative window is refused, never "all"."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bday.ops.replay import replay_failed


@pytest.mark.parametrize("since", [timedelta(0), timedelta(seconds=-1)])
def test_a_zero_or_negative_window_is_refused_before_anything_is_read(since):
    with pytest.raises(ValueError, match="since must be a positive window"):
        replay_failed(since=since, dry_run=True)
