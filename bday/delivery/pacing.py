"""Pacing: one send rate for every worker on every host, adaptive to the provider's 429s.

The state is one row, `send_rates['email-service']`, a token bucket (docs/pacing.md):

* `tokens` refill at the effective rate up to EMAIL_SERVICE_BURST. A send takes one; a process
  takes a small lease of them at a time (at most LEASE_MAX, at most LEASE_SPAN_S of the rate)
  with one conditional UPDATE ... RETURNING, so a send costs a fraction of a statement.
* When no token is left the send *reserves* the next slot: `tokens` goes below zero, and
  -tokens / rate is how far ahead the slots are promised. The send is deferred to its slot
  (through the broker, no retry spent). Slots are handed out in the order sends ask, which is
  their scheduled order (the broker delivers jobs in eta order), so a backlog drains oldest
  first at the rate.
* Slots say when to come back; `sent_tat` says when a send may actually go (GCRA over the
  sends that go, tolerance ACTUAL_SLACK / rate; leases move it too). A send back with
  its slot takes its turn there with one statement, waiting at most MAX_WAIT_S in its thread;
  later than that it is deferred again, keeping its slot. So sends that come back late
  (workers stalled for a moment) drain at the rate instead of bunching into one second.
* A 429 lowers the rate for everyone (x DECREASE, at most once per DECREASE_HOLD_S, because
  the 429s of the sends already in flight are one signal, not many). Each decrease bumps
  `epoch`: slots promised at the old rate are void and their sends reserve again. The rate
  climbs back additively in quiet periods: + INCREASE_PER_S of the decreased rate per second.
  With no EMAIL_SERVICE_RATE_LIMIT the adaptive rate only exists after a 429: it starts from
  what the provider accepted in the last second (each process that met a 429 in that second
  adds its own share), and is forgotten after FORGET_S without one.

Clocks: times come from the worker's clock (as the breaker's do); hosts are expected to run
NTP. A clock behind the row's `refilled_at` refills nothing rather than going back in time.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from bday.config import Settings, get_settings
from bday.store.db import autocommit, fast_autocommit

NAME = "email-service"
CACHE_TTL_S = 0.5
LEASE_MAX = 16
LEASE_SPAN_S = 0.05
LEASE_TTL_S = 0.2  # leased tokens not used by then are dropped, never saved up for a burst
MAX_WAIT_S = 0.5  # a send whose turn is this close waits for it in its thread
# The actual pace's tolerance, in sends: at most rate + 1 + this in any second at the pacer.
# Small, because threads and the network add jitter on the way to the provider; the burst
# itself comes from the bucket's leases, which move the actual pace too.
ACTUAL_SLACK = 1.0
DECREASE = 0.7
DECREASE_HOLD_S = 2.0
INCREASE_PER_S = 0.05
MIN_RATE = 0.5
MIN_INCREASE_PER_S = 0.5
FORGET_S = 600.0


@dataclass(frozen=True, slots=True)
class Slot:
    """A promised send time (Unix seconds) under the rate of `epoch`."""

    at: float
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "epoch": self.epoch}

    @classmethod
    def from_json(cls, value: Any) -> Slot | None:
        """The slot a task carried back, or None for anything else (never an error)."""
        try:
            return cls(float(value["at"]), int(value["epoch"]))
        except (TypeError, KeyError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class State:
    tokens: float
    refilled_at: datetime | None
    epoch: int
    adaptive_rate: float | None
    decreased_at: datetime | None
    throttled: int


def adaptive_rate(state: State | None, now: datetime) -> float | None:
    """The adaptive rate at `now`: the last decrease plus the additive climb since."""
    if state is None or state.adaptive_rate is None or state.decreased_at is None:
        return None
    quiet_s = (now - state.decreased_at).total_seconds()
    if quiet_s > FORGET_S:
        return None
    step = max(MIN_INCREASE_PER_S, INCREASE_PER_S * state.adaptive_rate)
    return state.adaptive_rate + step * max(0.0, quiet_s - DECREASE_HOLD_S)


def effective_rate(limit: float, state: State | None, now: datetime) -> float | None:
    """Messages per second for the whole cluster now; None = unlimited."""
    rates = [rate for rate in (limit or None, adaptive_rate(state, now)) if rate]
    return min(rates) if rates else None


_SELECT = text(
    """SELECT tokens, refilled_at, epoch, adaptive_rate, decreased_at, throttled
         FROM send_rates WHERE name = :name"""
)
_ENSURE = text(
    """INSERT INTO send_rates (name, tokens, refilled_at) VALUES (:name, :capacity, :now)
       ON CONFLICT (name) DO NOTHING"""
)


def read(connection: Connection, name: str = NAME) -> State | None:
    """The shared row as it is (None before any worker created it)."""
    row = connection.execute(_SELECT, {"name": name}).first()
    return State(*row) if row else None


# Refill from the time elapsed, then take up to `want` whole tokens (recording them as sent
# for the actual pace below), or reserve one slot.
_TAKE = """
    WITH current AS (
        SELECT name, least(%(capacity)s, tokens + %(rate)s * greatest(0.0, CAST(extract(
                   epoch FROM (%(now)s - coalesce(refilled_at, %(now)s))) AS float8))) AS level
          FROM send_rates WHERE name = %(name)s FOR UPDATE
    ), bucket AS (
        SELECT name, level,
               CASE WHEN level >= 1 THEN least(%(want)s, floor(level)) ELSE 1 END AS n
          FROM current
    )
    UPDATE send_rates s
       SET tokens = bucket.level - bucket.n,
           sent_tat = CASE WHEN bucket.level >= 1
                           THEN greatest(coalesce(s.sent_tat, %(now)s), %(now)s)
                                + make_interval(secs => bucket.n / %(rate)s)
                           ELSE s.sent_tat END,
           refilled_at = greatest(coalesce(s.refilled_at, %(now)s), %(now)s), updated_at = %(now)s
      FROM bucket WHERE s.name = bucket.name
    RETURNING bucket.level, s.tokens, s.epoch
    """
# The actual pace (GCRA over the sends that go): a send whose slot has come goes when
# `sent_tat - tau` has passed, and moves `sent_tat` on by 1 / rate. It takes its turn only if
# that is at most `max_wait_s` away; the answer is how long until its turn.
_REDEEM = """
    WITH current AS (
        SELECT name, coalesce(sent_tat, %(now)s) AS tat
          FROM send_rates WHERE name = %(name)s FOR UPDATE
    ), took AS (
        UPDATE send_rates s
           SET sent_tat = greatest(current.tat, %(now)s) + make_interval(secs => %(step)s)
          FROM current
         WHERE s.name = current.name
           AND current.tat <= %(now)s + make_interval(secs => %(tau)s + %(max_wait_s)s)
        RETURNING 1
    )
    SELECT CAST(extract(epoch FROM (current.tat - %(now)s)) AS float8) - %(tau)s,
           EXISTS (SELECT 1 FROM took)
      FROM current
    """
# A 429: lower the rate (once per hold), void promised slots, hold off for Retry-After.
_DECREASE = text(
    """UPDATE send_rates
          SET adaptive_rate = CAST(:rate AS float8), decreased_at = :now, epoch = epoch + 1,
              throttled = throttled + 1, refilled_at = :now,
              tokens = -CAST(:hold_s AS float8) * CAST(:rate AS float8),
              updated_at = :now
        WHERE name = :name AND (decreased_at IS NULL OR decreased_at <= :hold_before)
    RETURNING epoch"""
)

_CONTRIBUTE = text(
    """UPDATE send_rates
          SET adaptive_rate = adaptive_rate + CAST(:sent AS float8)
        WHERE name = :name AND epoch = :epoch AND decreased_at >= :since"""
)
CONTRIBUTE_WITHIN_S = 1.0


class Pacer:
    """One per worker process; every process shares the rate through the row."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = NAME,
        sleep: Callable[[float], object] = time.sleep,
    ):
        self.limit = settings.email_service_rate_limit
        self.capacity = settings.email_service_burst
        self.name = name
        self._sleep = sleep
        self._lock = threading.Lock()
        self._state: State | None = None
        self._read_at = -1e9
        self._leased = 0
        self._leased_until = 0.0
        self._sent = (0, 0, 0)  # (whole second, sends in it, sends in the one before)
        self._contributed = -1  # the epoch this process last added its sends to

    def snapshot(self, *, fresh: bool = False) -> State:
        """The shared row, re-read when older than CACHE_TTL_S."""
        cached, read_at = self._state, self._read_at
        if not fresh and cached is not None and time.monotonic() - read_at <= CACHE_TTL_S:
            return cached
        with autocommit() as connection:
            if cached is None:
                now = datetime.now(UTC)
                connection.execute(
                    _ENSURE, {"name": self.name, "capacity": self.capacity, "now": now}
                )
            state = read(connection, self.name)
        assert state is not None  # created just above, never deleted
        with self._lock:
            self._state, self._read_at = state, time.monotonic()
        return state

    def rate(self, now: datetime) -> float | None:
        return effective_rate(self.limit, self.snapshot(), now)

    def acquire(self, now: datetime, held: Slot | None = None) -> Slot | None:
        """None: send now. Otherwise the slot to wait for: `held` itself while it is still
        ahead (nothing taken), or a newly reserved one."""
        state = self.snapshot()
        rate = effective_rate(self.limit, state, now)
        if rate is None:
            return None
        if held is not None and held.epoch == state.epoch:
            return self._redeem(now, rate, held)
        if self._take_leased():
            return None
        return self._take_shared(now, rate)

    def _redeem(self, now: datetime, rate: float, held: Slot) -> Slot | None:
        """A send back with its slot: wait while the slot is ahead; once it has come, go at
        the actual pace, so sends that come back late cannot bunch above the rate."""
        if held.at > now.timestamp():
            return held
        params = {
            "name": self.name,
            "now": now,
            "step": 1 / rate,
            "tau": ACTUAL_SLACK / rate,
            "max_wait_s": MAX_WAIT_S,
        }
        with fast_autocommit() as connection:
            row = connection.execute(_REDEEM, params, prepare=True).fetchone()
        assert row is not None  # a held slot came from the row, which is never deleted
        wait_s, took = row
        if not took:
            return Slot(now.timestamp() + wait_s, held.epoch)
        if wait_s > 0:
            self._sleep(wait_s)
        return None

    def _take_leased(self) -> bool:
        with self._lock:
            if self._leased > 0 and time.monotonic() < self._leased_until:
                self._leased -= 1
                return True
            self._leased = 0
            return False

    def _take_shared(self, now: datetime, rate: float) -> Slot | None:
        want = max(1, min(LEASE_MAX, int(rate * LEASE_SPAN_S)))
        params = {
            "name": self.name,
            "capacity": float(self.capacity),
            "rate": rate,
            "now": now,
            "want": want,
        }
        with fast_autocommit() as connection:
            row = connection.execute(_TAKE, params, prepare=True).fetchone()
        if row is None:  # the row is not there yet: create it, then take
            self.snapshot(fresh=True)
            return self._take_shared(now, rate)
        level, tokens, epoch = row
        if tokens >= 0:
            with self._lock:
                self._leased = round(level - tokens) - 1
                self._leased_until = time.monotonic() + LEASE_TTL_S
            return None
        return Slot(now.timestamp() + -tokens / rate, epoch)

    def note_sent(self, now: datetime) -> None:
        """Count a successful send (what a first 429 starts the adaptive rate from)."""
        second = int(now.timestamp())
        with self._lock:
            at, count, before = self._sent
            if second == at:
                self._sent = (at, count + 1, before)
            else:
                self._sent = (second, 1, count if second == at + 1 else 0)

    def throttled(self, now: datetime, retry_after_s: float | None) -> bool:
        """A 429: lower the cluster's rate unless another worker just did; True if this did."""
        was_unlimited = effective_rate(self.limit, self._state, now) is None
        state = self.snapshot(fresh=True)
        current = effective_rate(self.limit, state, now)
        if current is None:  # unlimited until now: start from what the provider accepted
            new_rate = max(MIN_RATE, float(self._sent_per_s(now)))
        else:
            new_rate = max(MIN_RATE, current * DECREASE)
        with autocommit() as connection:
            won = connection.execute(
                _DECREASE,
                {
                    "name": self.name,
                    "rate": new_rate,
                    "now": now,
                    "hold_s": retry_after_s or 0.0,
                    "hold_before": now - timedelta(seconds=DECREASE_HOLD_S),
                },
            ).first()
        after = self.snapshot(fresh=True)
        if won is None and was_unlimited:
            self._contribute(now, after)
        with self._lock:
            self._leased = 0
        return won is not None

    def _contribute(self, now: datetime, state: State) -> None:
        """Another worker just started the rate from what the provider accepted from *it*;
        add what it accepted from this one (once per epoch), so the rate starts from what
        the provider accepted from the whole cluster, not from one process's share."""
        if self._contributed == state.epoch:
            return
        self._contributed = state.epoch
        with autocommit() as connection:
            connection.execute(
                _CONTRIBUTE,
                {
                    "name": self.name,
                    "epoch": state.epoch,
                    "sent": float(self._sent_per_s(now)),
                    "since": now - timedelta(seconds=CONTRIBUTE_WITHIN_S),
                },
            )
        self.snapshot(fresh=True)

    def _sent_per_s(self, now: datetime) -> int:
        second = int(now.timestamp())
        at, count, before = self._sent
        if second == at:
            return max(count, before)
        return count if second == at + 1 else 0


@functools.cache
def get_pacer() -> Pacer:
    """This process's view of the shared send rate."""
    return Pacer(get_settings())
