"""
A clock a test (or a simulation) moves by hand, for the daemon's injected ``Clock``.

``SimClock(start).t += timedelta(...)`` moves it; ``now()`` reads it, from
any thread. Must not read the real time.
"""

from __future__ import annotations

import datetime as dt


class SimClock:
    """The simulated time: ``t``, moved by whoever runs the simulation."""

    def __init__(self, start: dt.datetime) -> None:
        self.t = start

    def now(self) -> dt.datetime:
        """The simulated time now."""
        return self.t
