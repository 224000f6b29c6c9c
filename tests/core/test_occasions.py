"""Occasion arithmetic: hand-checked tables for the hard zones, and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bday.core.occasions import (
    Kind,
    is_known_zone,
    message_text,
    month_days_near,
    occasion_date,
    occasions_between,
    send_instant,
    zone,
)

NINE = time(9, 0)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# (zone, local date, SEND_TIME, expected UTC instant) - worked out by hand from the zone's rules.
TABLE = [
    # UTC+14: 09:00 on Jan 1 is still Dec 31 in UTC.
    ("Pacific/Kiritimati", date(2026, 1, 1), NINE, utc(2025, 12, 31, 19, 0)),
    # UTC-12: 09:00 on Dec 31 is 21:00 UTC the same day.
    ("Etc/GMT+12", date(2026, 12, 31), NINE, utc(2026, 12, 31, 21, 0)),
    ("Asia/Kathmandu", date(2026, 6, 15), NINE, utc(2026, 6, 15, 3, 15)),
    # Chatham: +12:45 in winter, +13:45 in summer; DST starts 2026-09-27 at 02:45 -> 03:45.
    ("Pacific/Chatham", date(2026, 7, 1), NINE, utc(2026, 6, 30, 20, 15)),
    ("Pacific/Chatham", date(2026, 1, 15), NINE, utc(2026, 1, 14, 19, 15)),
    ("Pacific/Chatham", date(2026, 9, 27), time(3, 0), utc(2026, 9, 26, 14, 0)),
    # Lord Howe: a 30-minute DST. Starts 2026-10-04 02:00 -> 02:30; ends 2026-04-05 02:00 -> 01:30.
    ("Australia/Lord_Howe", date(2026, 10, 4), time(2, 15), utc(2026, 10, 3, 15, 30)),
    ("Australia/Lord_Howe", date(2026, 4, 5), time(1, 45), utc(2026, 4, 4, 14, 45)),
    ("Australia/Lord_Howe", date(2026, 10, 4), NINE, utc(2026, 10, 3, 22, 0)),
    # St John's: -3:30, DST (-2:30) from 2026-03-08.
    ("America/St_Johns", date(2026, 1, 15), NINE, utc(2026, 1, 15, 12, 30)),
    ("America/St_Johns", date(2026, 3, 8), NINE, utc(2026, 3, 8, 11, 30)),
    # New York: gap 02:00 -> 03:00 on 2026-03-08, overlap 01:00-02:00 on 2026-11-01.
    ("America/New_York", date(2026, 3, 8), time(2, 30), utc(2026, 3, 8, 7, 0)),
    ("America/New_York", date(2026, 3, 8), NINE, utc(2026, 3, 8, 13, 0)),
    ("America/New_York", date(2026, 11, 1), time(1, 30), utc(2026, 11, 1, 5, 30)),
    ("America/New_York", date(2026, 11, 1), NINE, utc(2026, 11, 1, 14, 0)),
    # London: gap 01:00 -> 02:00 on 2026-03-29, overlap 01:00-02:00 on 2026-10-25.
    ("Europe/London", date(2026, 3, 29), time(1, 30), utc(2026, 3, 29, 1, 0)),
    ("Europe/London", date(2026, 10, 25), time(1, 30), utc(2026, 10, 25, 0, 30)),
    ("Europe/London", date(2026, 7, 1), NINE, utc(2026, 7, 1, 8, 0)),
    # Sydney: gap 02:00 -> 03:00 on 2026-10-04, overlap 02:00-03:00 on 2026-04-05.
    ("Australia/Sydney", date(2026, 10, 4), time(2, 30), utc(2026, 10, 3, 16, 0)),
    ("Australia/Sydney", date(2026, 4, 5), time(2, 30), utc(2026, 4, 4, 15, 30)),
    ("Australia/Sydney", date(2026, 10, 4), NINE, utc(2026, 10, 3, 22, 0)),
    # Samoa skipped 2011-12-30 entirely: the first instant after the gap is Dec 31 00:00 local.
    ("Pacific/Apia", date(2011, 12, 30), NINE, utc(2011, 12, 30, 10, 0)),
]


@pytest.mark.parametrize(("zone_name", "local", "at", "expected"), TABLE)
def test_send_instant_matches_the_hand_worked_table(zone_name, local, at, expected):
    assert send_instant(local, zone(zone_name), at) == expected


@pytest.mark.parametrize(
    ("year", "policy", "expected"),
    [
        (2028, "feb28", date(2028, 2, 29)),
        (2028, "mar1", date(2028, 2, 29)),
        (2027, "feb28", date(2027, 2, 28)),
        (2027, "mar1", date(2027, 3, 1)),
        (2100, "feb28", date(2100, 2, 28)),  # divisible by 100, not by 400: not leap
        (2000, "mar1", date(2000, 2, 29)),  # divisible by 400: leap
    ],
)
def test_feb29_is_celebrated_per_policy_in_non_leap_years(year, policy, expected):
    assert occasion_date(date(1996, 2, 29), year, policy) == expected


def test_feb29_under_mar1_policy_is_sent_on_march_first_local():
    found = occasions_between(
        Kind.BIRTHDAY,
        date(1996, 2, 29),
        zone("Asia/Tokyo"),
        utc(2027, 2, 1),
        utc(2027, 4, 1),
        send_time=NINE,
        feb29_policy="mar1",
    )
    assert [(o.local_date, o.send_at) for o in found] == [(date(2027, 3, 1), utc(2027, 3, 1, 0, 0))]


def test_dec31_and_jan1_around_the_date_line_fall_in_the_same_utc_hours():
    window = (utc(2026, 12, 31, 18, 0), utc(2026, 12, 31, 22, 0))
    kiritimati = occasions_between(
        Kind.BIRTHDAY, date(1990, 1, 1), zone("Pacific/Kiritimati"), *window, send_time=NINE
    )
    pago_pago = occasions_between(
        Kind.BIRTHDAY, date(1990, 12, 31), zone("Pacific/Pago_Pago"), *window, send_time=NINE
    )
    assert [o.local_date for o in kiritimati] == [date(2027, 1, 1)]
    assert [o.local_date for o in pago_pago] == [date(2026, 12, 31)]
    assert kiritimati[0].send_at == utc(2026, 12, 31, 19, 0)
    assert pago_pago[0].send_at == utc(2026, 12, 31, 20, 0)


def test_no_occasion_in_the_year_of_the_date_itself():
    found = occasions_between(
        Kind.ANNIVERSARY,
        date(2026, 3, 10),
        zone("UTC"),
        utc(2026, 1, 1),
        utc(2028, 1, 1),
        send_time=NINE,
    )
    assert [o.local_date for o in found] == [date(2027, 3, 10)]


def test_message_texts_are_the_contract_texts():
    assert message_text(Kind.BIRTHDAY, "Ada", "Lovelace") == "Hey, Ada Lovelace it's your birthday"
    assert (
        message_text("ANNIVERSARY", "Ada", "Lovelace")
        == "Hey, Ada Lovelace it's your work anniversary"
    )


@pytest.mark.parametrize(
    "name", ["UTC", "Etc/GMT+12", "America/Argentina/Buenos_Aires", "Asia/Kathmandu"]
)
def test_real_zone_names_are_known(name):
    assert is_known_zone(name)


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "", "utc ", "localtime", "Factory", "America/new_york"]
)
def test_names_that_are_not_places_are_unknown(name):
    assert not is_known_zone(name)


# --- properties -------------------------------------------------------------------------------

ZONES = sorted(name for name in __import__("zoneinfo").available_timezones() if is_known_zone(name))
zones = st.sampled_from(ZONES)
originals = st.dates(min_value=date(1900, 1, 1), max_value=date(2025, 12, 31))
years = st.integers(min_value=1970, max_value=2100)
send_times = st.times().map(lambda t: t.replace(second=0, microsecond=0))
policies = st.sampled_from(["feb28", "mar1"])


def _wall_exists(local: date, at: time, zone_name: str) -> bool:
    tz = zone(zone_name)
    wall = datetime.combine(local, at)
    return any(
        wall.replace(tzinfo=tz, fold=fold).astimezone(UTC).astimezone(tz).replace(tzinfo=None)
        == wall
        for fold in (0, 1)
    )


@settings(max_examples=400, deadline=None)
@given(zones, originals, years, send_times, policies)
def test_send_instant_reads_back_as_send_time_on_the_occasion_date(
    zone_name, original, year, at, policy
):
    tz = zone(zone_name)
    local = occasion_date(original, year, policy)
    instant = send_instant(local, tz, at)
    back = instant.astimezone(tz)
    if _wall_exists(local, at, zone_name):
        assert (back.date(), back.time()) == (local, at)
        # ... and it is the first occurrence: an hour earlier does not read the same.
        assert all(
            (instant - timedelta(minutes=m)).astimezone(tz).replace(tzinfo=None)
            != datetime.combine(local, at)
            for m in (30, 60, 120)
        )
    else:
        # In a DST gap: the instant is the transition (offset changes right there) and the wall
        # clock has jumped past SEND_TIME.
        assert (instant - timedelta(seconds=1)).astimezone(tz).utcoffset() != back.utcoffset()
        assert back.replace(tzinfo=None) > datetime.combine(local, at)


@settings(max_examples=300, deadline=None)
@given(zones, originals, years, send_times, policies)
def test_send_instant_never_falls_on_another_local_date(zone_name, original, year, at, policy):
    tz = zone(zone_name)
    local = occasion_date(original, year, policy)
    back = send_instant(local, tz, at).astimezone(tz)
    # Only a day that the zone skipped entirely (Samoa, 2011-12-30) may move to the next date.
    assume(_wall_exists(local, time(0, 0), zone_name) or back.date() == local)
    assert back.date() == local


@settings(max_examples=300, deadline=None)
@given(zones, originals, st.integers(min_value=1980, max_value=2090), send_times, policies)
def test_every_year_yields_exactly_one_occasion(zone_name, original, first_year, at, policy):
    assume(original.year < first_year)
    # Window edges in mid-June: far from every occasion date's neighbourhood problems at New Year.
    found = occasions_between(
        Kind.BIRTHDAY,
        original,
        zone(zone_name),
        utc(first_year, 6, 15),
        utc(first_year + 5, 6, 15),
        send_time=at,
        feb29_policy=policy,
    )
    dates = [o.local_date for o in found]
    expected = [
        occasion_date(original, y, policy)
        for y in range(first_year, first_year + 6)
        if utc(first_year, 6, 15)
        <= send_instant(occasion_date(original, y, policy), zone(zone_name), at)
        < utc(first_year + 5, 6, 15)
    ]
    assert dates == expected
    assert len(found) == 5
    assert len({d.year for d in dates}) == 5


@settings(max_examples=400, deadline=None)
@given(
    zones,
    originals,
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)),
    st.integers(min_value=1, max_value=24 * 80),
    send_times,
    policies,
)
def test_the_month_day_prefilter_never_drops_an_occasion(
    zone_name, original, start, hours, at, policy
):
    start = start.replace(tzinfo=UTC)
    end = start + timedelta(hours=hours)
    found = occasions_between(
        Kind.BIRTHDAY, original, zone(zone_name), start, end, send_time=at, feb29_policy=policy
    )
    keys = month_days_near(start, end, at, policy)
    for _ in found:
        assert original.month * 100 + original.day in keys


DST_ZONES = [
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
    "America/Santiago",
    "Europe/Berlin",
    "Asia/Tehran",
    "America/Havana",
    "Pacific/Auckland",
]


def _transitions(zone_name: str, year: int) -> list[tuple[datetime, timedelta, timedelta]]:
    """(instant, offset before, offset after) of each offset change in `year`, to the second."""
    tz = zone(zone_name)
    found = []
    instant = utc(year, 1, 1)
    while instant.year == year:
        later = instant + timedelta(hours=1)
        if instant.astimezone(tz).utcoffset() != later.astimezone(tz).utcoffset():
            low, high = 0, 3600  # seconds after `instant`; the change lies in (low, high]
            while high - low > 1:
                middle = (low + high) // 2
                moment = instant + timedelta(seconds=middle)
                if moment.astimezone(tz).utcoffset() == later.astimezone(tz).utcoffset():
                    high = middle
                else:
                    low = middle
            high = instant + timedelta(seconds=high)
            found.append(
                (high, instant.astimezone(tz).utcoffset(), later.astimezone(tz).utcoffset())
            )
        instant = later
    return found


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DST_ZONES), st.integers(min_value=2000, max_value=2030), st.data())
def test_send_time_inside_a_gap_or_overlap_resolves_to_transition_or_first_occurrence(
    zone_name, year, data
):
    transitions = _transitions(zone_name, year)
    assume(transitions)
    moment, before, after = data.draw(st.sampled_from(transitions))
    tz = zone(zone_name)
    jump = abs(after - before)
    into = timedelta(
        minutes=data.draw(st.integers(min_value=0, max_value=int(jump.total_seconds() // 60) - 1))
    )
    if after > before:  # spring forward: wall times [moment+before, moment+after) never happen
        wall = (moment + before + into).replace(tzinfo=None)
        assert send_instant(wall.date(), tz, wall.time()) == moment
    else:  # fall back: wall times [moment+after, moment+before) happen twice
        wall = (moment + after + into).replace(tzinfo=None)
        assert send_instant(wall.date(), tz, wall.time()) == moment - jump + into
