"""The shared send rate: bucket arithmetic, slots, AIMD, on the real row with an injected clock.

Each `Pacer` stands for one worker process; they share only the database row.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from bday.config import load_settings
from bday.delivery import pacing
from bday.delivery.pacing import Pacer, Slot, State, adaptive_rate, effective_rate
from bday.store.db import engine

T0 = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


def pacer(limit: float = 50, burst: int = 5) -> Pacer:
    return Pacer(load_settings(EMAIL_SERVICE_RATE_LIMIT=limit, EMAIL_SERVICE_BURST=burst))


def shared_row() -> dict:
    with engine().connect() as connection:
        return dict(connection.execute(text("SELECT * FROM send_rates")).mappings().one())


def state(rate: float | None, decreased_at: datetime | None = T0) -> State:
    return State(0.0, T0, 1, rate, decreased_at if rate else None, 1)


def send_times(pacers: list[Pacer], count: int, now: datetime) -> list[float]:
    """When each of `count` sends asking at `now` may go (seconds after T0), round robin."""
    times = []
    for index in range(count):
        slot = pacers[index % len(pacers)].acquire(now)
        times.append((slot.at if slot else now.timestamp()) - T0.timestamp())
    return times


# --- pure arithmetic -------------------------------------------------------------------------


def test_no_limit_and_no_429_means_unlimited():
    assert effective_rate(0, None, T0) is None
    assert effective_rate(0, state(None), T0) is None


def test_the_configured_limit_applies_until_a_429_lowers_it():
    assert effective_rate(50, None, T0) == 50
    assert effective_rate(50, state(35), T0) == 35


def test_the_rate_climbs_additively_after_a_quiet_hold_and_never_past_the_limit():
    lowered = state(20)
    hold = pacing.DECREASE_HOLD_S
    assert adaptive_rate(lowered, T0 + timedelta(seconds=hold)) == 20
    step = max(pacing.MIN_INCREASE_PER_S, pacing.INCREASE_PER_S * 20)
    assert adaptive_rate(lowered, T0 + timedelta(seconds=hold + 10)) == pytest.approx(
        20 + 10 * step
    )
    assert effective_rate(25, lowered, T0 + timedelta(seconds=hold + 100)) == 25


def test_without_a_limit_the_adaptive_rate_is_forgotten_after_a_long_quiet_period():
    later = T0 + timedelta(seconds=pacing.FORGET_S + 1)
    assert effective_rate(0, state(20), later) is None


def test_a_slot_survives_the_round_trip_through_a_task_and_junk_is_ignored():
    slot = Slot(1234.5, 3)
    assert Slot.from_json(slot.to_json()) == slot
    assert Slot.from_json(None) is None and Slot.from_json({"at": "x"}) is None


# --- the shared row --------------------------------------------------------------------------

needs_database = pytest.mark.usefixtures("database")


@needs_database
def test_the_burst_goes_at_once_then_slots_follow_at_exactly_the_rate():
    workers = [pacer(), pacer()]
    times = send_times(workers, 200, T0)
    per_second = Counter(int(at) for at in times)
    assert sum(1 for at in times if at == 0) == 5  # the burst, shared by both processes
    assert per_second[0] <= 50 + 5
    assert per_second[1] == per_second[2] == 50
    assert times == sorted(times)  # slots are promised in the order sends ask: oldest first


@needs_database
def test_a_held_slot_waits_without_taking_anything_and_goes_at_its_time():
    worker = pacer()
    send_times([worker], 10, T0)  # empties the bucket
    slot = worker.acquire(T0)
    assert slot is not None
    before = shared_row()["tokens"]
    assert worker.acquire(T0, held=slot) is slot
    assert worker.acquire(datetime.fromtimestamp(slot.at, UTC), held=slot) is None
    assert shared_row()["tokens"] == before


@needs_database
def test_sends_back_late_go_at_the_actual_pace_not_all_at_once():
    slept: list[float] = []
    worker = Pacer(
        load_settings(EMAIL_SERVICE_RATE_LIMIT=50, EMAIL_SERVICE_BURST=5), sleep=slept.append
    )
    slots = [worker.acquire(T0) for _ in range(100)]
    held = [slot for slot in slots if slot is not None]
    late = T0 + timedelta(seconds=5)  # every holder comes back at once, long after its slot
    answers = [worker.acquire(late, held=slot) for slot in held]
    went = [answer for answer in answers if answer is None]
    assert len(went) - len(slept) == 1 + pacing.ACTUAL_SLACK  # one turn now, plus the slack
    assert len(went) <= 50 * pacing.MAX_WAIT_S + pacing.ACTUAL_SLACK + 1  # the rest wait ...
    deferred = [answer for answer in answers if answer is not None]
    assert deferred and all(slot.at > late.timestamp() for slot in deferred)  # ... or go later
    assert max(slept) <= pacing.MAX_WAIT_S


@needs_database
def test_a_429_lowers_the_rate_for_every_process_once_per_hold_and_voids_promised_slots():
    first, second = pacer(), pacer()
    send_times([first], 100, T0)  # two seconds of slots promised at 50/s
    slot = first.acquire(T0)
    assert first.throttled(T0, None)
    assert not second.throttled(T0 + timedelta(seconds=1), None)  # in-flight 429s: one signal
    row = shared_row()
    assert row["adaptive_rate"] == pytest.approx(35) and row["throttled"] == 1
    assert second.rate(T0) == pytest.approx(35)
    assert second.acquire(T0, held=slot) not in (None, slot)  # its slot was at 50/s: void
    later = T0 + timedelta(seconds=pacing.DECREASE_HOLD_S)
    assert second.throttled(later, None)
    assert shared_row()["adaptive_rate"] == pytest.approx(35 * 0.7)


@needs_database
def test_retry_after_holds_every_process_off_for_that_long():
    worker = pacer()
    worker.throttled(T0, 3)
    slot = pacer().acquire(T0)
    assert slot is not None and slot.at - T0.timestamp() >= 3


@needs_database
def test_unlimited_sends_never_wait_until_a_429_starts_from_what_was_accepted():
    worker = pacer(limit=0)
    assert all(worker.acquire(T0) is None for _ in range(100))
    for index in range(30):
        worker.note_sent(T0 + timedelta(milliseconds=10 * index))
    assert worker.throttled(T0 + timedelta(seconds=0.5), None)
    assert shared_row()["adaptive_rate"] == 30
    assert worker.acquire(T0 + timedelta(seconds=0.5)) is not None


@needs_database
def test_concurrent_processes_never_take_more_than_the_bucket_holds():
    workers = [pacer(limit=50, burst=20) for _ in range(8)]
    went = []

    def take(worker: Pacer) -> None:
        went.extend(1 for _ in range(10) if worker.acquire(T0) is None)

    threads = [threading.Thread(target=take, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(went) == 20
    assert shared_row()["tokens"] == pytest.approx(-(80 - 20))


@needs_database
def test_unlimited_processes_start_the_rate_from_what_the_provider_accepted_from_all_of_them():
    first, second = pacer(limit=0), pacer(limit=0)
    for worker in (first, second):
        worker.snapshot()  # both were sending unlimited
        for index in range(15):
            worker.note_sent(T0 + timedelta(milliseconds=10 * index))
    moment = T0 + timedelta(seconds=0.5)
    assert first.throttled(moment, None)
    assert not second.throttled(moment, None)
    assert not second.throttled(moment, None)  # once per process and epoch
    assert shared_row()["adaptive_rate"] == 30
