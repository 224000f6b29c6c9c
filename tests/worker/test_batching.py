"""The batcher's clock: calls at their instants, in order, cancellable, one per process."""

from __future__ import annotations

import threading
import time

from bday.worker.batching import _Batcher, _clock


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


class _Channel:
    is_open = True


class _Request:
    name = "bday.tasks.send_message"

    def __init__(self, channel: _Channel, id: str = "job"):
        self.message = type("Message", (), {"channel": channel})()
        self.id = id

    def revoked(self) -> bool:
        return False


class _QoS:
    value = 8

    def decrement_eventually(self) -> None:
        self.value -= 1


def _batcher() -> _Batcher:
    batcher = object.__new__(_Batcher)  # the consumer side alone, without a worker
    batcher.consumer = type("Consumer", (), {"qos": _QoS()})()
    batcher.added = []
    batcher._add = batcher.added.append  # type: ignore[method-assign]
    return batcher


def test_a_job_held_on_a_channel_that_closed_meanwhile_is_dropped_not_run():
    """A reconnect closes the channel a held job came on: it cannot be acked there and the
    broker delivers it again. Running it would do the work twice, and counting it off the
    new connection's prefetch would shrink that for good."""
    batcher, old, current = _batcher(), _Channel(), _Channel()
    held_old, held_current = _Request(old, "old"), _Request(current, "current")
    old.is_open = False
    batcher._due(held_old)
    batcher._due(held_current)
    assert batcher.added == [held_current]
    assert batcher.consumer.qos.value == 7  # only the live job gave its prefetch slot back


def test_a_batch_starts_without_its_jobs_whose_channel_closed():
    batcher, old, current = _batcher(), _Channel(), _Channel()
    batcher.events = False
    started: list[list[str]] = []
    batcher.task = None
    batcher.pool = type(
        "Pool", (), {"apply_async": lambda _s, _f, args, callback: started.append(args[1])}
    )()
    stale, live = _Request(old), _Request(current)
    for name, request in (("stale", stale), ("live", live)):
        request.id, request.args, request.kwargs, request.request_dict = name, ("m",), {}, {}
    old.is_open = False
    batcher._start([stale, live])
    batcher._start([stale])
    assert [[job.id for job in jobs] for jobs in started] == [["live"]]
