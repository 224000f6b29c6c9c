"""The batcher's clock: calls at their instants, in order, cancellable, one per process."""

from __future__ import annotations

import threading
import time

from bday.worker.batching import _clock


def test_calls_run_at_their_instants_in_order_and_a_cancelled_one_never_runs():
    clock = _clock()
    ran: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()
    clock.call_at(start + 0.20, lambda: (ran.append(("late", time.monotonic())), done.set()))
    clock.call_at(start + 0.05, lambda: ran.append(("early", time.monotonic())))
    cancelled = clock.call_at(start + 0.10, lambda: ran.append(("cancelled", time.monotonic())))
    cancelled.cancelled = True
    assert done.wait(2)
    assert [name for name, _ in ran] == ["early", "late"]
    early_at, late_at = (at - start for _, at in ran)
    assert 0.05 <= early_at < 1 and 0.20 <= late_at < 1.2  # never before its instant


def test_a_failing_call_does_not_stop_the_clock():
    clock = _clock()
    done = threading.Event()
    clock.call_at(time.monotonic(), lambda: 1 / 0)
    clock.call_at(time.monotonic() + 0.01, done.set)
    assert done.wait(2)


def test_the_process_has_one_clock():
    assert _clock() is _clock()
