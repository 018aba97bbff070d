"""The scheduler is arithmetic on a fixed ``now`` and a seeded ``rng``."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hastaple.core.schedule import (
    DEFAULT_POLICY,
    Policy,
    Window,
    backoff,
    in_alert_window,
    is_fresh,
    next_refresh,
    refresh_point,
    startup_spread,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)
HOUR = dt.timedelta(hours=1)


def _rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - jitter, not secrets


def _week(start=T0, **kwargs) -> Window:
    return Window(start, start + WEEK, **kwargs)


def test_existing_functions_still_work():
    """refresh_point/is_fresh keep their meaning: half the window."""
    assert refresh_point(T0, T0 + WEEK) == T0 + dt.timedelta(days=3.5)
    assert is_fresh(T0, T0 + WEEK, T0 + dt.timedelta(days=3))
    assert not is_fresh(T0, T0 + WEEK, T0 + dt.timedelta(days=3.5))


@pytest.mark.parametrize("seed", range(50))
def test_refresh_after_half_life_within_jitter(seed):
    """A good staple is refreshed between 50% and 60% of its window: never while still fresh."""
    at = next_refresh(_week(), T0, 0, _rng(seed))
    assert T0 + WEEK * 0.5 <= at <= T0 + WEEK * 0.6
    assert not is_fresh(T0, T0 + WEEK, at)


def test_jitter_varies_with_rng():
    """Different random draws give different times (the spread is real)."""
    times = {next_refresh(_week(), T0, 0, _rng(s)) for s in range(20)}
    assert len(times) == 20


def test_short_window_leaves_room_for_retries():
    """The latest refresh leaves retry_room (at most half the window) before nextUpdate."""
    policy = Policy(jitter=0.5, retry_room=dt.timedelta(hours=2))
    staple = Window(T0, T0 + 8 * HOUR)
    for seed in range(50):
        at = next_refresh(staple, T0, 0, _rng(seed), policy)
        assert T0 + 4 * HOUR <= at <= T0 + 6 * HOUR


def test_max_age_makes_refresh_earlier():
    """RFC 5019: a max-age shorter than the half-life point brings the refresh forward."""
    staple = _week(fetched_at=T0, max_age=3600)
    assert next_refresh(staple, T0, 0, _rng(1)) == T0 + HOUR


def test_max_age_longer_than_plan_is_ignored():
    """A max-age past the planned point never delays the refresh."""
    staple = _week(fetched_at=T0, max_age=int(WEEK.total_seconds()))
    assert next_refresh(staple, T0, 0, _rng(1)) <= T0 + WEEK * 0.6


def test_max_age_zero_is_floored():
    """max-age=0 does not turn into a fetch loop: min_interval is the floor."""
    staple = _week(fetched_at=T0, max_age=0)
    assert next_refresh(staple, T0, 0, _rng(1)) == T0 + DEFAULT_POLICY.min_interval


def test_a_short_max_age_asks_at_most_hourly():
    """
    max-age=300 (a CDN's few minutes): one request an hour, not one every 5 minutes.

    A day of refreshes driven by the hint alone: 24 requests per certificate
    (fails before: the floor was 5 minutes, 288 a day).
    """
    at, fetches = T0, 0
    while at < T0 + 24 * HOUR:
        fetches += 1
        at = next_refresh(_week(fetched_at=at, max_age=300), at, 0, _rng(fetches))
    assert fetches == 24
    assert DEFAULT_POLICY.min_interval == HOUR


def test_the_floor_holds_back_only_the_hint():
    """A 1-hour staple is still refreshed at its half-life, a short max-age or not."""
    staple = Window(T0, T0 + HOUR, fetched_at=T0, max_age=300)
    assert next_refresh(staple, T0, 0, _rng(1)) == T0 + HOUR / 2


def test_no_next_update_uses_fixed_interval():
    """Without nextUpdate the staple is refreshed after about ``interval``."""
    at = next_refresh(Window(T0, None, fetched_at=T0), T0, 0, _rng(3))
    assert T0 + DEFAULT_POLICY.interval * 0.9 <= at <= T0 + DEFAULT_POLICY.interval


def test_missing_staple_is_due_now_spread():
    """No staple: fetch now, spread over a few seconds."""
    at = next_refresh(None, T0, 0, _rng(3))
    assert T0 <= at <= T0 + DEFAULT_POLICY.spread


def test_overdue_staple_is_due_now():
    """After a long pause (daemon restart), an overdue staple is fetched at once."""
    now = T0 + dt.timedelta(days=5)
    at = next_refresh(_week(), now, 0, _rng(3))
    assert now <= at <= now + DEFAULT_POLICY.spread


def test_backoff_grows_and_is_capped():
    """Exponential growth with jitter between half and all of the ceiling, then the cap."""
    rng = _rng(0)
    base = DEFAULT_POLICY.backoff_base
    for failures in range(1, 6):
        wait = backoff(failures, rng)
        assert base * 2 ** (failures - 1) * 0.5 <= wait <= base * 2 ** (failures - 1)
    assert backoff(50, rng) <= DEFAULT_POLICY.backoff_cap


@given(st.integers(min_value=1, max_value=10**9), st.integers(0, 2**32))
def test_backoff_never_overflows(failures, seed):
    """Huge failure counts clamp instead of overflowing (stamina issue #104)."""
    wait = backoff(failures, _rng(seed))
    assert dt.timedelta(0) < wait <= DEFAULT_POLICY.backoff_cap


def test_backoff_tightens_near_expiry():
    """With an hour left, retries come at most every 7.5 minutes, never below the base."""
    wait = backoff(20, _rng(0), remaining=HOUR)
    assert wait <= HOUR / 8
    assert backoff(20, _rng(0), remaining=dt.timedelta(seconds=1)) >= (
        DEFAULT_POLICY.backoff_base * 0.5
    )


def test_failures_use_backoff_from_now():
    """After a failure the next attempt is now + backoff, whatever the staple says."""
    now = T0 + dt.timedelta(days=4)
    at = next_refresh(_week(), now, 3, _rng(0))
    assert now < at <= now + DEFAULT_POLICY.backoff_base * 4


def test_alert_window():
    """A week-long staple alerts in its last quarter day-and-three-quarters, not before."""
    assert not in_alert_window(T0, T0 + WEEK, T0 + dt.timedelta(days=5))
    assert in_alert_window(T0, T0 + WEEK, T0 + dt.timedelta(days=5, hours=7))
    assert in_alert_window(T0, T0 + WEEK, T0 + WEEK + HOUR)


def _simulate(n: int, days: int, seed: int) -> dict[int, list[dt.datetime]]:
    """Fetch-on-due for ``n`` certificates of 7-day responses; return fetch times."""
    rng = _rng(seed)
    fetches: dict[int, list[dt.datetime]] = collections.defaultdict(list)
    due = dict.fromkeys(range(n), T0)
    end = T0 + dt.timedelta(days=days)
    while True:
        cert, at = min(due.items(), key=lambda kv: kv[1])
        if at >= end:
            return fetches
        fetches[cert].append(at)
        staple = Window(at - dt.timedelta(minutes=1), at + WEEK, fetched_at=at)
        due[cert] = next_refresh(staple, at, 0, rng)


def test_thirty_days_at_most_ten_fetches_and_spread():
    """
    1,000 certificates, 30 days of 7-day responses: <= 10 fetches each, spread out.

    No staple expires between fetches, and no second holds more than 3 refreshes.
    """
    fetches = _simulate(1000, 30, seed=7)
    per_second: collections.Counter[dt.datetime] = collections.Counter()
    for times in fetches.values():
        assert len(times) <= 10
        for before, after in itertools.pairwise(times):
            assert after - before < WEEK - DEFAULT_POLICY.retry_room / 2
        for at in times[1:]:
            per_second[at.replace(microsecond=0)] += 1
    assert max(per_second.values()) <= 3
    second_round = sorted(times[1] for times in fetches.values())
    assert second_round[-1] - second_round[0] > dt.timedelta(hours=12)


def test_startup_spread_grows_with_the_number_of_missing_staples():
    """One missing staple is fetched at once; only thousands get the whole spread."""
    assert startup_spread(0) == dt.timedelta(0)
    assert startup_spread(1) == dt.timedelta(milliseconds=10)
    assert startup_spread(100) == dt.timedelta(seconds=1)
    assert startup_spread(10_000) == DEFAULT_POLICY.spread
    assert startup_spread(10_000, Policy(spread=dt.timedelta(0))) == dt.timedelta(0)
    spreads = [startup_spread(n) for n in range(0, 3000, 7)]
    assert spreads == sorted(spreads)
