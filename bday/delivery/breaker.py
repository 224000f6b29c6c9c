"""The email-service circuit breaker, shared by every worker on every host through one row.

States (row `circuit_breakers['email-service']`):

* closed: sends go through. A process that sees BREAKER_FAILURES transient failures within
  BREAKER_WINDOW seconds, making up at least half of its recent outcomes, opens it for everyone.
* open until `open_until`: no calls; tasks defer themselves (through the broker) and spend no
  retries. The cooldown starts at BREAKER_COOLDOWN and grows x1.5 per failed probe up to
  BREAKER_COOLDOWN_MAX. A 429 is not an outage: it never reaches the breaker (see pacing.py).
* half_open: exactly one probe is out (`probe_token`). Its success closes the breaker (and the
  deferred backlog is re-published at once, oldest first); its failure reopens it.
* "cold": closed, but nothing has succeeded for BREAKER_IDLE seconds (start-up, 09:00 after a
  quiet night). Sends go one at a time as probes while the others wait briefly, so a burst that
  meets a dead service costs BREAKER_FAILURES calls, not one per worker thread. A failed cold
  probe leaves it closed and cold (`cold_failures` + 1); BREAKER_FAILURES of them in a row open
  it, so one random failure at start-up does not stop everyone (a false trip).

Every transition is one conditional UPDATE on the row, so two workers can never both take the
probe or both reopen it. Each process reads the row at most every CACHE_TTL_S while closed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.orm import Session

from bday.config import Settings
from bday.delivery.provider import TransientSendError
from bday.store.db import autocommit
from bday.telemetry import metrics
from bday.telemetry.logs import mask_emails

NAME = "email-service"
CACHE_TTL_S = 0.5
PROBE_POLL_S = 0.05
SUCCESS_WRITE_EVERY_S = 5.0
MIN_FAILURE_RATIO = 0.5


@dataclass(frozen=True, slots=True)
class Permit:
    """May this send call the service? `state` is closed, probe, open or half_open."""

    allowed: bool
    state: str
    retry_in_s: float = 0.0
    probe_token: uuid.UUID | None = None

    @property
    def is_probe(self) -> bool:
        return self.probe_token is not None


@dataclass(frozen=True, slots=True)
class Snapshot:
    state: str
    open_until: datetime | None
    cooldown_s: float
    probe_expires_at: datetime | None
    last_success_at: datetime | None
    opened_at: datetime | None = None
    trips: int = 0
    last_error: str | None = None


_SELECT = text(
    """SELECT state, open_until, cooldown_s, probe_expires_at, last_success_at,
              opened_at, trips, last_error
         FROM circuit_breakers WHERE name = :name"""
)


def read(connection: Connection, name: str = NAME) -> Snapshot | None:
    """The shared row as it is now (None before any worker created it): the one read of
    `circuit_breakers`, used by the breaker itself, recovery and `bday status`."""
    row = connection.execute(_SELECT, {"name": name}).first()
    return Snapshot(*row) if row else None


_FORGET = text(
    """UPDATE circuit_breakers SET last_error = NULL
        WHERE strpos(lower(last_error), lower(:needle)) > 0"""
)


def forget_text(session: Session, needle: str) -> None:
    """Erasure: clear a stored error that quotes `needle` (an address being forgotten)."""
    session.execute(_FORGET, {"needle": needle})


_ENSURE = text("INSERT INTO circuit_breakers (name) VALUES (:name) ON CONFLICT (name) DO NOTHING")
_TAKE_PROBE = text(
    """UPDATE circuit_breakers
          SET state = 'half_open', probe_token = :token, probe_expires_at = :probe_until,
              updated_at = :now
        WHERE name = :name
          AND ((state = 'open' AND open_until <= :now)
            OR (state = 'half_open' AND probe_expires_at <= :now)
            OR (state = 'closed' AND :cold_gate
                AND (last_success_at IS NULL OR last_success_at < :cold_before)))
    RETURNING state"""
)
_CLOSE = text(
    """UPDATE circuit_breakers
          SET state = 'closed', probe_token = NULL, probe_expires_at = NULL, open_until = NULL,
              cooldown_s = 0, opened_at = NULL, last_success_at = :now, cold_failures = 0,
              updated_at = :now
        WHERE name = :name AND probe_token = :token"""
)
_REOPEN = text(
    """UPDATE circuit_breakers
          SET state = 'open', probe_token = NULL, probe_expires_at = NULL,
              cooldown_s = least(:max_s, greatest(:base_s, cooldown_s * 1.5)),
              open_until = :now + make_interval(
                  secs => least(:max_s, greatest(:base_s, cooldown_s * 1.5))),
              opened_at = coalesce(opened_at, :now), trips = trips + 1, cold_failures = 0,
              last_failure_at = :now, last_error = :error, updated_at = :now
        WHERE name = :name AND probe_token = :token
    RETURNING opened_at = :now"""  # true when the probe came from the cold gate: a new opening
)
# A failed cold probe below the threshold: give the gate back, still closed and cold, so the
# next waiting send probes at once. opened_at IS NULL marks a probe taken from the cold gate.
_COLD_MISS = text(
    """UPDATE circuit_breakers
          SET state = 'closed', probe_token = NULL, probe_expires_at = NULL,
              cold_failures = cold_failures + 1, last_failure_at = :now, last_error = :error,
              updated_at = :now
        WHERE name = :name AND probe_token = :token AND opened_at IS NULL
          AND cold_failures + 1 < :failures"""
)
_TRIP = text(
    """UPDATE circuit_breakers
          SET state = 'open', cooldown_s = :base_s,
              open_until = :now + make_interval(secs => :base_s),
              opened_at = :now, trips = trips + 1, cold_failures = 0, last_failure_at = :now,
              last_error = :error, updated_at = :now
        WHERE name = :name AND state = 'closed'"""
)
_SUCCESS = text(
    """UPDATE circuit_breakers SET last_success_at = :now, cold_failures = 0
        WHERE name = :name AND (last_success_at IS NULL OR last_success_at < :now)"""
)
_GIVE_BACK = text(
    "UPDATE circuit_breakers SET probe_expires_at = :now"
    " WHERE name = :name AND probe_token = :token"
)


class Breaker:
    """One per worker process; all instances coordinate through the database row."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = NAME,
        on_close: Callable[[datetime], object] | None = None,
        rng: random.Random | None = None,
    ):
        self.settings = settings
        self.name = name
        self.on_close = on_close
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._read_at = -1e9
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._success_written_at = -1e9

    # --- reading ----------------------------------------------------------------------------

    def snapshot(self, *, fresh: bool = False) -> Snapshot:
        """The shared row, re-read when older than CACHE_TTL_S (no lock held during I/O)."""
        cached, read_at = self._snapshot, self._read_at
        if not fresh and cached is not None and time.monotonic() - read_at <= CACHE_TTL_S:
            return cached
        with autocommit() as connection:
            if cached is None:
                connection.execute(_ENSURE, {"name": self.name})
            snapshot = read(connection, self.name)
        assert snapshot is not None  # created just above, and never deleted
        with self._lock:
            self._snapshot, self._read_at = snapshot, time.monotonic()
            return self._snapshot

    def _forget(self) -> None:
        with self._lock:
            self._read_at = -1e9

    # --- asking -------------------------------------------------------------------------------

    def permit(self, now: datetime) -> Permit:
        """May a send call the service now? Never blocks longer than BREAKER_PROBE_WAIT."""
        if not self.settings.breaker_enabled:
            return Permit(True, "closed")
        deadline = time.monotonic() + self.settings.breaker_probe_wait_s
        snapshot = self.snapshot()
        while True:
            if self._is_warm(snapshot, now):
                return Permit(True, "closed")
            if snapshot.state == "open" and snapshot.open_until and snapshot.open_until > now:
                return self._deny(snapshot, now)
            probe = self._take_probe(now)
            if probe is not None:
                return probe
            if time.monotonic() >= deadline:  # a probe is out and slow: come back later
                return Permit(False, "half_open", self._spread(self.settings.breaker_cooldown_s))
            time.sleep(PROBE_POLL_S)  # a probe is out: its answer decides for us, shortly
            now = now + timedelta(seconds=PROBE_POLL_S)
            snapshot = self.snapshot(fresh=True)

    def permits(self, now: datetime, count: int) -> list[Permit]:
        """Permits for the first sends of a batch of `count`, asking the breaker once while it
        is closed. While it probes, only the first send gets one (the probe): the others ask
        again once the probe has answered, which is what they would wait for anyway."""
        if count == 0:
            return []
        first = self.permit(now)
        if first.allowed and not first.is_probe:
            return [first] * count
        if first.is_probe:
            return [first]
        # Denied: each its own scattered return, from the row as it was read (asking again
        # could take a probe for one of them, then wait BREAKER_PROBE_WAIT for each of the rest).
        snapshot = self.snapshot()
        if first.state == "open" and snapshot.open_until and snapshot.open_until > now:
            return [first] + [self._deny(snapshot, now) for _ in range(count - 1)]
        cooldown = self.settings.breaker_cooldown_s
        return [first] + [
            Permit(False, first.state, self._spread(cooldown)) for _ in range(count - 1)
        ]

    def _is_warm(self, snapshot: Snapshot, now: datetime) -> bool:
        if snapshot.state == "closed" and not self.settings.breaker_idle_s:
            return True  # BREAKER_IDLE=0: no start-up probe
        cold_before = now - timedelta(seconds=self.settings.breaker_idle_s)
        return (
            snapshot.state == "closed"
            and snapshot.last_success_at is not None
            and snapshot.last_success_at >= cold_before
        )

    def _deny(self, snapshot: Snapshot, now: datetime) -> Permit:
        open_until = snapshot.open_until or now  # an open row always has open_until
        wait_s = (open_until - now).total_seconds()
        return Permit(False, "open", wait_s + self._spread(max(1.0, snapshot.cooldown_s)))

    def _spread(self, over_s: float) -> float:
        # Deferred jobs return scattered over a cooldown, not all at the instant it ends.
        return self._rng.uniform(0.1, max(0.2, over_s))

    def _take_probe(self, now: datetime) -> Permit | None:
        token = uuid.uuid4()
        with autocommit() as connection:
            won = connection.execute(
                _TAKE_PROBE,
                {
                    "name": self.name,
                    "token": token,
                    "now": now,
                    "probe_until": now + timedelta(seconds=self.settings.send_lease_s),
                    "cold_before": now - timedelta(seconds=self.settings.breaker_idle_s),
                    "cold_gate": self.settings.breaker_idle_s > 0,
                },
            ).first()
        if won is None:
            return None
        self._forget()
        return Permit(True, "probe", probe_token=token)

    # --- telling -----------------------------------------------------------------------------

    def release(self, permit: Permit, now: datetime) -> None:
        """The permit was not used to call the service; let someone else probe."""
        if permit.is_probe:
            with autocommit() as connection:
                connection.execute(
                    _GIVE_BACK, {"name": self.name, "token": permit.probe_token, "now": now}
                )
            self._forget()

    def record_success(self, permit: Permit, now: datetime) -> None:
        if not self.settings.breaker_enabled:
            return
        self._note(True)
        if permit.is_probe:
            if self._write(_CLOSE, now, token=permit.probe_token):
                metrics.record_breaker_transition("closed")
                if self.on_close is not None:
                    self.on_close(now)
            return
        if time.monotonic() - self._success_written_at > SUCCESS_WRITE_EVERY_S:
            self._success_written_at = time.monotonic()
            with autocommit() as connection:
                connection.execute(_SUCCESS, {"name": self.name, "now": now})
            with self._lock:
                if self._snapshot is not None:
                    self._snapshot = replace(self._snapshot, last_success_at=now)

    def record_failure(self, permit: Permit, now: datetime, exc: TransientSendError) -> None:
        if not self.settings.breaker_enabled:
            return
        self._note(False)
        # The row is shared and shown by `bday status`: an address the service quoted in its
        # error is masked, so no user's address outlives their erasure there.
        error = mask_emails(str(exc))[:500]
        if permit.is_probe:
            if self._write(
                _COLD_MISS,
                now,
                error=error,
                token=permit.probe_token,
                failures=self.settings.breaker_failures,
            ):
                return  # still cold: the next send probes at once
            newly_opened = self._write(
                _REOPEN,
                now,
                error=error,
                token=permit.probe_token,
                base_s=self.settings.breaker_cooldown_s,
                max_s=self.settings.breaker_cooldown_max_s,
            )
            if newly_opened:  # the cold gate's last allowed failure; a half-open one only reopens
                metrics.record_breaker_transition("open")
        elif self._tripped(time.monotonic()) and self._write(
            _TRIP, now, error=error, base_s=self.settings.breaker_cooldown_s
        ):
            metrics.record_breaker_transition("open")

    def _write(self, statement: TextClause, now: datetime, **params: Any) -> Any:
        """Run one transition: the rows it changed, or its RETURNING value if it has one."""
        with autocommit() as connection:
            result = connection.execute(statement, {"name": self.name, "now": now, **params})
            outcome = result.scalar() if result.returns_rows else result.rowcount
        self._forget()
        return outcome

    def _note(self, ok: bool) -> None:
        with self._lock:
            self._outcomes.append((time.monotonic(), ok))

    def _tripped(self, now_s: float) -> bool:
        with self._lock:
            while self._outcomes and self._outcomes[0][0] < now_s - self.settings.breaker_window_s:
                self._outcomes.popleft()
            failures = sum(1 for _, ok in self._outcomes if not ok)
            tripped = (
                failures >= self.settings.breaker_failures
                and failures >= MIN_FAILURE_RATIO * len(self._outcomes)
            )
            if tripped:
                self._outcomes.clear()
            return tripped
