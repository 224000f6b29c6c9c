"""What a batch of deliveries asks of the circuit breaker and of the shared send rate.

The batch pipeline (`attempt.py`) and the rules of each answer (`outcomes.py`) are written
against these two protocols, as warehouse keeps its services behind interfaces: a worker passes
the implementations that share their state through a database row (`breaker.Breaker`,
`pacing.Pacer`), tests pass in-memory ones (tests/delivery/test_rules.py), so the rules run
without a database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from bday.delivery.breaker import Permit, Snapshot
from bday.delivery.pacing import Slot
from bday.delivery.provider import TransientSendError


class BreakerService(Protocol):
    """May sends call the provider, and what their answers say about it."""

    def permits(self, now: datetime, count: int) -> list[Permit]:
        """Permits for the first sends of a batch of `count` (fewer while one probes)."""
        ...

    def release(self, permit: Permit, now: datetime) -> None:
        """`permit` was not used to call the provider."""
        ...

    def record_success(self, permit: Permit, now: datetime) -> None:
        """The provider answered (accepted, refused for good, or throttled): it is up."""
        ...

    def record_failure(self, permit: Permit, now: datetime, exc: TransientSendError) -> None:
        """The provider failed (timeout, connection error, 5xx)."""
        ...

    def snapshot(self, *, fresh: bool = False) -> Snapshot:
        """The breaker's state (`open_until` after a failed probe)."""
        ...


class PacerService(Protocol):
    """One send rate for every worker together (None: no rate in force)."""

    def rate(self, now: datetime) -> float | None:
        """The sends per second in force now, or None."""
        ...

    def acquire(self, now: datetime, held: Slot | None = None) -> Slot | None:
        """None: send now; else the slot to come back at (`held`, if it is still good)."""
        ...

    def note_sent(self, now: datetime) -> None:
        """One send went out (the actual pace)."""
        ...

    def throttled(self, now: datetime, retry_after_s: float | None) -> bool:
        """The provider said 429: slow everyone down; True if this lowered the rate."""
        ...
