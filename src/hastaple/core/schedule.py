"""
When a staple is due: pure arithmetic on times, no clock of its own.

Theory of operation. A staple is refreshed once half of its validity
(thisUpdate -> nextUpdate) has passed (the README's contract): early enough to survive a
long responder outage with the old staple still valid, late enough that a CA
is asked about twice per validity window and never for a staple that is still
fresh. On top of that point:

- jitter: a random share (``Policy.jitter``) of the window is added *after*
  the half-life point, so thousands of certificates issued in the same second
  drift apart instead of hitting a responder together, and no refresh ever
  lands on a staple the pipeline still calls fresh;
- a ceiling: never later than ``nextUpdate - retry_room`` (at most half the
  window), so several retries fit before the staple expires;
- RFC 5019 §6.2: a ``Cache-Control: max-age`` shorter than that makes the
  refresh earlier, but never sooner than ``min_interval`` (one hour) after the
  fetch: the floor keeps hastaple polite whatever a responder sends. A CDN in
  front of a responder often sends a few minutes; at ``max-age=300`` a floor
  of 5 minutes meant 288 requests per certificate per day, one hour means 24,
  as often as HAProxy 2.8's updater asks at its default maximum delay. A
  staple whose validity is short is still refreshed at its half-life: the
  floor holds back only the hint;
- no nextUpdate: a fixed ``interval``;
- after failures: exponential backoff with jitter, its exponent clamped (huge
  failure counts must not overflow, stamina issue #104), capped, and tightened
  as expiry nears so the last hours still see several attempts.

Everything takes ``now`` and an ``rng`` (``random.Random``) from the caller:
the daemon passes the real clock, tests a simulated one and a seeded rng.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

REFRESH_FRACTION = 0.5
# A batch of missing staples is spread over this much per certificate (at most
# ``Policy.spread``): one new certificate is fetched at once, 1,000 over 10 s.
SPREAD_PER_CERT = dt.timedelta(milliseconds=10)
_MAX_EXPONENT = 32  # 2**32 s is far beyond any cap; avoids float overflow at huge counts


@dataclass(frozen=True, slots=True)
class Policy:
    """The refresh policy (the ``[refresh]`` section of the configuration)."""

    # Share of the validity window added after the half-life point, at random.
    jitter: float = 0.1
    # The latest refresh leaves this much before nextUpdate (at most half the window).
    retry_room: dt.timedelta = dt.timedelta(days=1)
    # Refresh period for a staple without nextUpdate, and re-check period for
    # certificates without an OCSP URL.
    interval: dt.timedelta = dt.timedelta(hours=12)
    # A max-age hint never brings the next fetch closer than this to the last one
    # (HAProxy's updater, tune.ssl.ocsp-update.maxdelay, asks at least hourly too).
    min_interval: dt.timedelta = dt.timedelta(hours=1)
    backoff_base: dt.timedelta = dt.timedelta(seconds=30)
    backoff_cap: dt.timedelta = dt.timedelta(hours=1)
    # Warn (and fail /healthz) once a staple expires within this (at most a quarter window).
    alert_before: dt.timedelta = dt.timedelta(days=2)
    # The same for a must-staple certificate, earlier: without a staple it
    # does not work at all (at most 3/8 of the window).
    must_staple_alert_before: dt.timedelta = dt.timedelta(days=4)
    # Overdue or missing staples are fetched within this much of now, spread out
    # (missing ones found together: 10 ms per certificate, at most this).
    spread: dt.timedelta = dt.timedelta(seconds=10)


DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class Window:
    """
    What the scheduler needs to know about the staple currently held.

    ``fetched_at`` and ``max_age`` (seconds) come from the HTTP exchange that
    brought it, when known.
    """

    this_update: dt.datetime
    next_update: dt.datetime | None
    fetched_at: dt.datetime | None = None
    max_age: int | None = None


def startup_spread(count: int, policy: Policy = DEFAULT_POLICY) -> dt.timedelta:
    """
    How widely ``count`` certificates that need a staple now are spread.

    The spread is there to keep thousands of requests from reaching a
    responder in the same second; a few missing staples gain nothing from
    waiting, so it grows with ``count`` up to ``policy.spread``.
    """
    return min(policy.spread, SPREAD_PER_CERT * max(count, 0))


def refresh_point(this_update: dt.datetime, next_update: dt.datetime) -> dt.datetime:
    """The moment a staple valid from ``this_update`` to ``next_update`` becomes due."""
    return this_update + (next_update - this_update) * REFRESH_FRACTION


def is_fresh(this_update: dt.datetime, next_update: dt.datetime, now: dt.datetime) -> bool:
    """Whether a staple needs no refresh yet at ``now``."""
    return now < refresh_point(this_update, next_update)


def next_refresh(
    staple: Window | None,
    now: dt.datetime,
    failures: int,
    rng: random.Random,
    policy: Policy = DEFAULT_POLICY,
) -> dt.datetime:
    """
    When to ask the responder next.

    Args:
        staple: the valid staple held now, or None when there is none.
        now: the current time.
        failures: consecutive failed attempts since the last success.
        rng: the source of jitter.
        policy: the refresh policy.

    Returns:
        A time at or after ``now``.
    """
    if failures > 0:
        remaining = None
        if staple is not None and staple.next_update is not None:
            remaining = staple.next_update - now
        return now + backoff(failures, rng, remaining=remaining, policy=policy)
    if staple is None:
        return now + policy.spread * rng.random()
    if staple.next_update is None:
        start = staple.fetched_at or staple.this_update
        at = start + policy.interval * rng.uniform(1 - policy.jitter, 1)
    else:
        at = _planned(staple.this_update, staple.next_update, rng, policy)
        if staple.max_age is not None and staple.fetched_at is not None:
            age = max(dt.timedelta(seconds=staple.max_age), policy.min_interval)
            at = min(at, staple.fetched_at + age)
    if at <= now:
        return now + policy.spread * rng.random()
    return at


def _planned(
    this_update: dt.datetime, next_update: dt.datetime, rng: random.Random, policy: Policy
) -> dt.datetime:
    window = next_update - this_update
    at = refresh_point(this_update, next_update) + window * (policy.jitter * rng.random())
    room = min(policy.retry_room, window * (1 - REFRESH_FRACTION))
    return min(at, next_update - room)


def backoff(
    failures: int,
    rng: random.Random,
    *,
    remaining: dt.timedelta | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> dt.timedelta:
    """
    The wait after ``failures`` consecutive failures ("equal jitter": half fixed, half random).

    ``remaining`` is the life left in the staple held: the wait never exceeds
    an eighth of it (but never drops below ``backoff_base``), so a staple
    close to expiry is retried more often, not less.
    """
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    base = policy.backoff_base.total_seconds()
    ceiling = min(policy.backoff_cap.total_seconds(), base * 2.0**exponent)
    if remaining is not None and remaining > dt.timedelta(0):
        ceiling = min(ceiling, max(base, remaining.total_seconds() / 8))
    return dt.timedelta(seconds=ceiling * rng.uniform(0.5, 1.0))


def alert_window(
    this_update: dt.datetime,
    next_update: dt.datetime,
    policy: Policy,
    *,
    must_staple: bool = False,
) -> dt.timedelta:
    """
    How long before expiry a staple that was not renewed is worth a warning.

    The latest planned refresh leaves about 0.4 of the window (half-life plus
    the jitter), so an alert must fire later than that or it would fire in
    normal operation. A certificate's alert comes at a quarter of the window
    at the latest (a 7-day staple: 1.75 days left, about a day of failed
    refreshes); a must-staple one at 3/8 (2.6 days left), about twice as
    early in the failing time.
    """
    window = next_update - this_update
    if must_staple:
        return min(policy.must_staple_alert_before, window * 3 / 8)
    return min(policy.alert_before, window / 4)


def in_alert_window(
    this_update: dt.datetime,
    next_update: dt.datetime,
    now: dt.datetime,
    policy: Policy = DEFAULT_POLICY,
    *,
    must_staple: bool = False,
) -> bool:
    """Whether a staple held at ``now`` is close enough to expiry (or past it) to alert."""
    window = alert_window(this_update, next_update, policy, must_staple=must_staple)
    return next_update - now <= window
