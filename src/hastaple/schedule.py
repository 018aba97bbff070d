"""
When a staple is due: pure arithmetic on times, no clock of its own.

A staple is refreshed once half of its validity (thisUpdate -> nextUpdate)
has passed (DESIGN.md): early enough to survive a long responder outage with
the old staple still valid, late enough that a CA is asked about twice per
validity window and never for a staple that is still fresh.
"""

from __future__ import annotations

import datetime as dt

REFRESH_FRACTION = 0.5


def refresh_point(this_update: dt.datetime, next_update: dt.datetime) -> dt.datetime:
    """The moment a staple valid from ``this_update`` to ``next_update`` becomes due."""
    return this_update + (next_update - this_update) * REFRESH_FRACTION


def is_fresh(this_update: dt.datetime, next_update: dt.datetime, now: dt.datetime) -> bool:
    """Whether a staple needs no refresh yet at ``now``."""
    return now < refresh_point(this_update, next_update)
