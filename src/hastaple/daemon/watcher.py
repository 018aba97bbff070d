"""
Watching the certificate sources' directories for changes (watchfiles).

``watch`` runs until ``stop`` is set, calling ``on_change`` with the paths of
each burst of events, and starts again at once on the new directories when
``rewatch`` is set (a SIGHUP changed them). Owns: the watchfiles loop and
which file names are news. Must not read certificates or decide what a change
means (the daemon's discovery does).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

from hastaple.sources import discover

_WATCH_STEP_MS = 50  # a burst of events is handled 50 ms after it ends


async def watch(
    stop: asyncio.Event,
    rewatch: asyncio.Event,
    roots: Callable[[], frozenset[Path]],
    on_change: Callable[[Iterable[Path]], None],
) -> None:
    """
    Watch ``roots()``; start again at once when ``rewatch`` is set.

    A directory a SIGHUP adds is watched within one watcher step (50 ms),
    not after the next event from the old directories.
    """
    until = _Either(stop, rewatch)
    first = True
    while not stop.is_set():
        rewatch.clear()
        watched = roots()
        if not watched:
            await _first(stop, rewatch)
            first = False
            continue
        _quiet_watcher()
        if not first:
            # A file created while the watcher restarted has no event: look
            # once more, as soon as awatch has set up the new watches (its
            # first step runs them synchronously, then waits in a thread).
            asyncio.get_running_loop().call_soon(on_change, ())
        first = False
        async for changes in watchfiles.awatch(
            *watched, stop_event=until, watch_filter=relevant, step=_WATCH_STEP_MS,
            debounce=500, recursive=False,
        ):  # fmt: skip
            on_change({Path(p) for _, p in changes})


def relevant(change: watchfiles.Change, path: str) -> bool:  # noqa: ARG001 - watchfiles' signature
    """
    Our own ``.ocsp`` writes and temp files are not news; everything else may be.

    Called for every event, our own writes included (about three per staple
    written): ``os.path.basename``, not a ``Path`` (0.6 us against 4.8).
    """
    name = os.path.basename(path)  # noqa: PTH119 - see above
    return discover.is_certificate_file(name) or name.endswith(".issuer")


class _Either:
    """
    The stop event watchfiles polls: set when the daemon stops or must watch anew.

    watchfiles sets it itself when its task is cancelled; that only restarts
    the watch, it never stops the daemon.
    """

    def __init__(self, stop: asyncio.Event, rewatch: asyncio.Event) -> None:
        self.stop, self.rewatch = stop, rewatch

    def is_set(self) -> bool:
        return self.stop.is_set() or self.rewatch.is_set()

    def set(self) -> None:
        self.rewatch.set()


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when="FIRST_COMPLETED")
    finally:
        for w in waiters:
            w.cancel()


def _quiet_watcher() -> None:
    """
    Put watchfiles' own "N changes detected" line at DEBUG, not at INFO.

    It logs at INFO unless DEBUG is on (then at DEBUG, with the paths): a log
    file inside a watched directory would log one line per line, for ever.
    Our own events say what a change did.
    """
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    logging.getLogger("watchfiles").setLevel(logging.DEBUG if debug else logging.WARNING)
