"""How a job's delay is handed to Celery: one countdown, measured once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kombu.transport.native_delayed_delivery import calculate_routing_key

from bday.scheduling.dispatch import _timing

NOW = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("ahead_s", [-30.0, 0.0, 0.5, 0.999])
def test_a_job_due_within_a_second_goes_out_at_once(ahead_s):
    assert _timing(NOW + timedelta(seconds=ahead_s), NOW) == {}


@pytest.mark.parametrize("ahead_s", [1.0, 1.0001, 3.0, 69.5])
def test_a_later_job_gets_its_countdown_which_the_broker_can_always_route(ahead_s):
    timing = _timing(NOW + timedelta(seconds=ahead_s), NOW)
    assert timing == {"countdown": pytest.approx(ahead_s)}
    # Celery routes on whole seconds and refuses 0: measured once, it can never shrink below 1.
    assert calculate_routing_key(int(timing["countdown"]), "birthday.send")
