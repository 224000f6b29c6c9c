"""The shared circuit breaker: transitions, one probe under concurrency, no false trips.

Each `Breaker` instance stands for one worker process; they share only the database row.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from bday.config import load_settings
from bday.delivery.breaker import Breaker
from bday.delivery.provider import TransientSendError
from bday.store.db import engine

pytestmark = pytest.mark.usefixtures("database")

T0 = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)
DOWN = TransientSendError("HTTP 503", status=503)


def settings(**overrides):
    base = {
        "BREAKER_FAILURES": 5,
        "BREAKER_WINDOW": 30,
        "BREAKER_COOLDOWN": 5,
        "BREAKER_COOLDOWN_MAX": 15,
        "BREAKER_IDLE": 30,
        "BREAKER_PROBE_WAIT": 0.2,
    }
    return load_settings(**{**base, **overrides})


def row() -> dict:
    with engine().connect() as connection:
        return dict(connection.execute(text("SELECT * FROM circuit_breakers")).mappings().one())


def opened_total() -> float:
    return REGISTRY.get_sample_value("bday_breaker_transitions_total", {"to": "open"}) or 0.0


def warm(breaker: Breaker, now: datetime = T0) -> None:
    """A closed breaker that has just seen a success (not cold)."""
    permit = breaker.permit(now)
    breaker.record_success(permit, now)


def test_the_error_it_stores_masks_an_address_the_service_quoted():
    """The row is shared and outlives any user: a send failing while its user is erased
    must not leave the address there (erasure can no longer find it by then)."""
    breaker = Breaker(settings())
    probe = breaker.permit(T0)
    quoted = TransientSendError("HTTP 503: cannot reach ada.lovelace@example.com", status=503)
    breaker.record_failure(probe, T0, quoted)
    assert row()["last_error"] == "HTTP 503: cannot reach a***@example.com"


def test_a_cold_breaker_lets_one_probe_through_and_holds_the_rest():
    first, second = Breaker(settings()), Breaker(settings())
    probe = first.permit(T0)
    held = second.permit(T0)
    assert probe.allowed and probe.is_probe
    assert not held.allowed and held.retry_in_s > 0


def test_a_successful_probe_closes_it_for_every_process():
    first, second = Breaker(settings()), Breaker(settings())
    probe = first.permit(T0)
    first.record_success(probe, T0)
    assert second.permit(T0 + timedelta(seconds=1)).allowed
    assert row()["state"] == "closed"


def test_one_failed_cold_probe_leaves_it_closed_and_the_next_send_probes_at_once():
    """A random failure on the first send after a quiet spell is not an outage (no false trip)."""
    first, second = Breaker(settings()), Breaker(settings())
    probe = first.permit(T0)
    first.record_failure(probe, T0, DOWN)
    assert (row()["state"], row()["trips"], row()["cold_failures"]) == ("closed", 0, 1)
    again = second.permit(T0)
    assert again.allowed and again.is_probe, "still cold: sends go one at a time"
    second.record_success(again, T0)
    assert (row()["state"], row()["cold_failures"]) == ("closed", 0)
    assert first.permit(T0 + timedelta(seconds=1)).allowed


def test_breaker_failures_failed_cold_probes_in_a_row_open_it_once():
    workers = [Breaker(settings()) for _ in range(3)]
    opened_before = opened_total()
    for attempt in range(5):
        probe = workers[attempt % 3].permit(T0)
        assert probe.allowed and probe.is_probe, attempt
        workers[attempt % 3].record_failure(probe, T0, DOWN)
    state = row()
    assert (state["state"], state["trips"], state["cold_failures"]) == ("open", 1, 0)
    assert state["open_until"] == T0 + timedelta(seconds=5)
    assert opened_total() == opened_before + 1
    assert not workers[0].permit(T0 + timedelta(seconds=1)).allowed


def test_failures_open_it_after_the_threshold_and_sends_are_deferred():
    breaker = Breaker(settings())
    warm(breaker)
    for _ in range(4):
        breaker.record_failure(breaker.permit(T0), T0, DOWN)
    assert row()["state"] == "closed"
    breaker.record_failure(breaker.permit(T0), T0, DOWN)
    state = row()
    assert state["state"] == "open" and state["open_until"] == T0 + timedelta(seconds=5)
    other = Breaker(settings()).permit(T0 + timedelta(seconds=1))
    assert not other.allowed and other.state == "open"
    assert other.retry_in_s >= 4.0


def test_ten_percent_random_failures_never_trip_it():
    breaker = Breaker(settings())
    warm(breaker)
    rng = random.Random(7)
    for _ in range(2000):
        permit = breaker.permit(T0)
        assert permit.allowed
        if rng.random() < 0.10:
            breaker.record_failure(permit, T0, DOWN)
        else:
            breaker.record_success(permit, T0)
    assert row()["trips"] == 0


def test_after_the_cooldown_exactly_one_of_many_concurrent_workers_gets_the_probe():
    opener = Breaker(settings())
    warm(opener)
    for _ in range(5):
        opener.record_failure(opener.permit(T0), T0, DOWN)
    later = T0 + timedelta(seconds=6)
    workers = [Breaker(settings(BREAKER_PROBE_WAIT=0)) for _ in range(12)]
    permits, barrier = [], threading.Barrier(len(workers))

    def ask(breaker):
        barrier.wait()
        permits.append(breaker.permit(later))

    threads = [threading.Thread(target=ask, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(p.allowed for p in permits) == 1
    assert sum(p.is_probe for p in permits) == 1
    assert row()["state"] == "half_open"


def test_a_failed_probe_reopens_it_with_a_longer_cooldown_up_to_the_cap():
    breaker = Breaker(settings())
    warm(breaker)
    for _ in range(5):
        breaker.record_failure(breaker.permit(T0), T0, DOWN)
    cooldowns, now = [], T0
    for _ in range(6):
        now = row()["open_until"] + timedelta(milliseconds=1)
        probe = breaker.permit(now)
        assert probe.is_probe
        breaker.record_failure(probe, now, DOWN)
        cooldowns.append(row()["cooldown_s"])
    assert cooldowns == [7.5, 11.25, 15.0, 15.0, 15.0, 15.0]
    assert row()["trips"] == 7


def test_closing_after_an_outage_calls_on_close_once():
    closed_at = []
    breaker = Breaker(settings(), on_close=closed_at.append)
    warm(breaker)
    closed_at.clear()
    for _ in range(5):
        breaker.record_failure(breaker.permit(T0), T0, DOWN)
    now = T0 + timedelta(seconds=6)
    probe = breaker.permit(now)
    breaker.record_success(probe, now)
    assert closed_at == [now]
    assert row()["state"] == "closed" and row()["cooldown_s"] == 0


def test_a_probe_that_did_not_call_the_service_can_be_taken_by_another_worker():
    first, second = Breaker(settings()), Breaker(settings(BREAKER_PROBE_WAIT=0))
    probe = first.permit(T0)
    first.release(probe, T0)
    assert second.permit(T0 + timedelta(milliseconds=10)).is_probe


def test_a_probe_whose_worker_died_is_taken_over_after_its_lease():
    first, second = Breaker(settings()), Breaker(settings(BREAKER_PROBE_WAIT=0))
    assert first.permit(T0).is_probe  # ...and that worker is never heard from again
    lease = first.settings.send_lease_s
    assert not second.permit(T0 + timedelta(seconds=1)).allowed
    assert second.permit(T0 + timedelta(seconds=lease + 1)).is_probe


def test_a_disabled_breaker_always_allows_and_writes_nothing():
    breaker = Breaker(settings(BREAKER_ENABLED=False))
    for _ in range(20):
        breaker.record_failure(breaker.permit(T0), T0, DOWN)
    assert breaker.permit(T0).allowed
    with engine().connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM circuit_breakers")).scalar() == 0
