"""Retry policy: how long to wait before attempt N+1. One small function, no loop.

The wait is QUEUE_RETRY_DELAY for the first retry and, with `exponential`, doubles for each
further one, capped at QUEUE_RETRY_MAX_DELAY. Jitter only ever adds (up to 25%), so no retry
comes sooner than configured and a crowd of failures does not retry in lockstep. A server's
Retry-After wins when it asks for longer.
"""

from __future__ import annotations

import random
from typing import Protocol

JITTER_FRACTION = 0.25


class RetryPolicy(Protocol):
    """The three settings the policy reads (bday.config.Settings has them)."""

    @property
    def queue_retry_delay_ms(self) -> int: ...
    @property
    def queue_retry_backoff(self) -> str: ...
    @property
    def queue_retry_max_delay_ms(self) -> int: ...


def backoff_s(
    retry_number: int,
    settings: RetryPolicy,
    *,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `retry_number` (1 for the first retry)."""
    base_s = settings.queue_retry_delay_ms / 1000
    if settings.queue_retry_backoff == "exponential":
        base_s *= 2 ** max(0, retry_number - 1)
    base_s = min(base_s, settings.queue_retry_max_delay_ms / 1000)
    wait_s = base_s * (1 + (rng or random).uniform(0, JITTER_FRACTION))
    if retry_after_s is not None:
        wait_s = max(wait_s, retry_after_s)
    return wait_s
