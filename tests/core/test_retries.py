"""The retry policy: how long before attempt N+1, as properties over any configuration.

Jitter only ever adds up to 25%, so every bound below is [computed, 1.25 x computed].
"""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bday.config import Settings, load_settings
from bday.core.retries import JITTER_FRACTION, backoff_s

MAX_RETRIES = 100  # QUEUE_MAX_RETRIES is validated to at most 100
HIGH = 1 + JITTER_FRACTION
EPS = 1e-9


@functools.cache
def policy(delay_ms: int, backoff: str = "exponential", max_delay_ms: int = 600_000) -> Settings:
    """Settings built the way an operator sets them: by their environment names."""
    return load_settings(
        QUEUE_RETRY_DELAY=delay_ms, QUEUE_RETRY_BACKOFF=backoff, QUEUE_RETRY_MAX_DELAY=max_delay_ms
    )


delays_ms = st.integers(min_value=1, max_value=86_400_000)
retries = st.integers(min_value=1, max_value=MAX_RETRIES)
rngs = st.randoms(use_true_random=False)


def within(value: float, low: float, high: float) -> bool:
    return low * (1 - EPS) <= value <= high * (1 + EPS)


def test_settings_take_the_retry_knobs_by_their_environment_names():
    settings = policy(1500, "fixed", 9000)
    assert (
        settings.queue_retry_delay_ms,
        settings.queue_retry_backoff,
        settings.queue_retry_max_delay_ms,
    ) == (1500, "fixed", 9000)


def test_the_defaults_wait_two_then_four_then_eight_seconds_before_jitter():
    settings = load_settings()
    waits = [backoff_s(n, settings, rng=random.Random(0)) for n in (1, 2, 3)]
    assert [within(w, base, base * HIGH) for w, base in zip(waits, (2, 4, 8), strict=True)] == [
        True
    ] * 3


@given(delay_ms=delays_ms, backoff=st.sampled_from(["exponential", "fixed"]), rng=rngs)
def test_the_first_retry_never_comes_sooner_than_the_configured_delay(delay_ms, backoff, rng):
    settings = policy(delay_ms, backoff, max_delay_ms=86_400_000)
    wait = backoff_s(1, settings, rng=rng)
    assert within(wait, delay_ms / 1000, delay_ms / 1000 * HIGH)


@given(
    delay_ms=st.integers(min_value=1, max_value=60_000),
    retry=st.integers(min_value=1, max_value=20),
    rng=rngs,
)
def test_exponential_backoff_doubles_per_retry_until_the_cap(delay_ms, retry, rng):
    max_delay_ms = 86_400_000  # the largest cap the settings accept (a day)
    base = delay_ms / 1000 * 2 ** (retry - 1)
    assume(base * HIGH <= max_delay_ms / 1000)  # below the cap, so it never bites
    wait = backoff_s(retry, policy(delay_ms, "exponential", max_delay_ms), rng=rng)
    assert within(wait, base, base * HIGH)


@given(
    delay_ms=delays_ms,
    max_delay_ms=st.integers(min_value=0, max_value=86_400_000),
    retry=retries,
    rng=rngs,
)
def test_exponential_backoff_is_capped_by_the_max_delay(delay_ms, max_delay_ms, retry, rng):
    assume(max_delay_ms >= delay_ms)  # a lower cap is refused by the settings themselves
    wait = backoff_s(retry, policy(delay_ms, "exponential", max_delay_ms), rng=rng)
    uncapped = delay_ms / 1000 * 2 ** (retry - 1)
    base = min(uncapped, max_delay_ms / 1000)
    assert wait <= max_delay_ms / 1000 * HIGH * (1 + EPS)
    assert within(wait, base, base * HIGH)


@given(delay_ms=delays_ms, retry=retries, rng=rngs)
def test_fixed_backoff_waits_the_same_delay_for_every_retry(delay_ms, retry, rng):
    wait = backoff_s(retry, policy(delay_ms, "fixed", max_delay_ms=86_400_000), rng=rng)
    assert within(wait, delay_ms / 1000, delay_ms / 1000 * HIGH)


@given(
    delay_ms=st.integers(min_value=1, max_value=600_000),
    retry=st.integers(min_value=1, max_value=10),
    extra_s=st.floats(min_value=0.001, max_value=1e6),
    rng=rngs,
)
def test_a_retry_after_longer_than_the_computed_wait_wins(delay_ms, retry, extra_s, rng):
    settings = policy(delay_ms)
    longest_computed = (
        min(delay_ms / 1000 * 2 ** (retry - 1), settings.queue_retry_max_delay_ms / 1000) * HIGH
    )
    retry_after = longest_computed + extra_s
    assert backoff_s(retry, settings, retry_after_s=retry_after, rng=rng) == retry_after


@given(
    delay_ms=st.integers(min_value=1000, max_value=600_000),
    retry=st.integers(min_value=1, max_value=10),
    rng=rngs,
)
def test_a_retry_after_shorter_than_the_computed_wait_does_not_shorten_it(delay_ms, retry, rng):
    settings = policy(delay_ms)
    seed = rng.random()
    without = backoff_s(retry, settings, rng=random.Random(seed))
    with_hint = backoff_s(retry, settings, retry_after_s=0.5, rng=random.Random(seed))
    assert with_hint == without


@pytest.mark.parametrize("backoff", ["exponential", "fixed"])
def test_jitter_spreads_a_crowd_of_retries(backoff):
    settings = policy(2000, backoff)
    waits = [backoff_s(3, settings) for _ in range(200)]
    assert len(set(waits)) > 150
    assert max(waits) - min(waits) > 0.1 * min(waits)


def test_the_same_random_source_gives_the_same_wait():
    settings = policy(2000)
    assert backoff_s(4, settings, rng=random.Random(42)) == backoff_s(
        4, settings, rng=random.Random(42)
    )


def test_a_zero_delay_retries_at_once():
    assert backoff_s(5, policy(0)) == 0
