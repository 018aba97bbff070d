"""
HAProxy process tracking: which runtime socket restarted, which must be retried, which is failing.

``Tracker`` is a plain state machine fed with what ``show info`` said (or
that it failed) and with each push's result; it answers whether the staples
must be pushed to a socket again and what /healthz should say about it. A new
Pid, a smaller Uptime, or a socket that comes back means a restart or reload.
A socket that is down or refuses a staple is retried with backoff and, once
that has lasted ``haproxy_grace``, is late. ``show_info`` is the one I/O here.
Owns: per-socket HAProxy state. Must not push staples or touch the state
database (the daemon does both).
"""

from __future__ import annotations

import datetime as dt
import random

from hastaple.core import schedule
from hastaple.core.model import rfc3339
from hastaple.haproxy import client, protocol


class Tracker:
    """What the daemon knows about each HAProxy runtime socket."""

    def __init__(self) -> None:
        self._info: dict[str, protocol.Info | None] = {}
        # Sockets whose last push failed: retried with backoff, not every poll
        # (a renewed certificate HAProxy has not reloaded yet fails until it does).
        self._push_again: dict[str, tuple[int, dt.datetime]] = {}
        # Sockets down or refusing staples: since when, and why (for /healthz).
        self._failing: dict[str, tuple[dt.datetime, str]] = {}

    def down(self, socket: str, error: str, now: dt.datetime) -> bool:
        """``show info`` failed on ``socket``; True the first time (to log it once)."""
        first = self._info.get(socket, "unknown") is not None
        self._info[socket] = None
        self._failing.setdefault(socket, (now, error))
        return first

    def answered(self, socket: str, info: protocol.Info) -> bool:
        """``socket`` answered ``show info``; True when it restarted (or came back)."""
        before = self._info.get(socket)
        self._info[socket] = info
        return before is None or info.pid != before.pid or info.uptime_sec < before.uptime_sec

    def retry_due(self, socket: str, now: dt.datetime) -> bool:
        """Whether a failed push to ``socket`` is due to be tried again."""
        retry = self._push_again.get(socket)
        return retry is not None and retry[1] <= now

    def retry(self, socket: str) -> tuple[int, dt.datetime] | None:
        """Failed pushes in a row to ``socket`` and when the next try is due, or None."""
        return self._push_again.get(socket)

    def push_failed(
        self,
        socket: str,
        now: dt.datetime,
        error: str | None,
        rng: random.Random,
        policy: schedule.Policy,
    ) -> None:
        """A push to ``socket`` failed: retry with backoff; unhealthy if it lasts."""
        failures = self._push_again.get(socket, (0, now))[0] + 1
        wait = schedule.backoff(failures, rng, policy=policy)
        self._push_again[socket] = (failures, now + wait)
        self._failing.setdefault(socket, (now, error or "push failed"))

    def push_ok(self, socket: str) -> None:
        """``socket`` took every staple: no retry, not failing."""
        self._push_again.pop(socket, None)
        self._failing.pop(socket, None)

    def forget(self, socket: str) -> None:
        """``socket`` is no longer configured: nothing about it is kept."""
        self._info.pop(socket, None)
        self.push_ok(socket)

    def asked(self) -> set[str]:
        """The sockets ``show info`` was sent to."""
        return set(self._info)

    def ok(self, socket: str) -> bool:
        """Whether ``socket`` answers and took every staple last time."""
        return socket not in self._failing

    def late(self, now: dt.datetime, grace: dt.timedelta) -> list[str]:
        """One reason per socket failing for at least ``grace``, for /healthz."""
        return [
            f"haproxy {socket}: {_about(socket, error)} (failing since {rfc3339(since)})"
            for socket, (since, error) in sorted(self._failing.items())
            if now - since >= grace
        ]


async def show_info(socket: str) -> protocol.Info:
    """Ask ``socket`` for ``show info``."""
    async with client.connect(socket, timeout=5.0) as conn:
        reply = await conn.run_one(protocol.SHOW_INFO)
        return protocol.parse_info(conn.address.text, protocol.SHOW_INFO, reply)


def _about(socket: str, error: str) -> str:
    """
    The part of ``error`` about ``socket``, without the socket's name in front.

    A row's error joins every socket's with "; ", each "haproxy <socket>: ...".
    """
    prefix = f"haproxy {socket}: "
    parts = [p for p in error.split("; ") if p.startswith(prefix)] or [error]
    text = "; ".join(parts)
    while text.startswith(prefix):
        text = text.removeprefix(prefix)
    return text
