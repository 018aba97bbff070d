"""
The daemon's asyncio wiring: the refresh loop, the HAProxy poll and the watcher, until stopped.

``serve`` runs ``Daemon.refresh_due`` whenever the next refresh comes (or the
daemon is woken), ``Daemon.check_haproxy`` every ``haproxy_poll``, and the
file watcher (``watcher``), and gives freed memory back after each batch.
Owns: tasks, sleeping and cancellation. Must not decide what is due or what a
result means (``Daemon`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from hastaple.daemon import watcher

if TYPE_CHECKING:
    from hastaple.daemon.scheduler import Daemon

logger = logging.getLogger(__name__)
_ERROR_PAUSE_SECONDS = 5.0


async def serve(daemon: Daemon, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
    """
    Run ``daemon`` until ``stop`` is set: refresh on schedule, watch files, watch HAProxy.

    A batch in progress is finished before returning (no partial file, no
    half-written row), so SIGTERM exits cleanly.
    """
    daemon.rediscover()
    tasks = [
        asyncio.create_task(
            watcher.watch(stop, daemon.rewatch, lambda: daemon.watch_roots, daemon.on_change),
            name="watch",
        ),
        asyncio.create_task(_poll(daemon, stop), name="poll"),
    ]
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            daemon.wake.clear()
            try:
                if await daemon.refresh_due():
                    trim_heap()
            except Exception:
                # A bug must not stop the daemon nor spin it: log, pause, go on.
                logger.exception("internal error in the refresh loop")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _ERROR_PAUSE_SECONDS)
            await _sleep(daemon, stop)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _sleep(daemon: Daemon, stop: asyncio.Event) -> None:
    wakeup = daemon.next_wakeup()
    delay = 3600.0 if wakeup is None else (wakeup - daemon.clock.now()).total_seconds()
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(daemon.wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=max(delay, 0.0), return_when="FIRST_COMPLETED")
    finally:
        for w in waiters:
            w.cancel()


async def _poll(daemon: Daemon, stop: asyncio.Event) -> None:
    interval = daemon.config.haproxy_poll.total_seconds()
    while not stop.is_set():
        try:
            await daemon.check_haproxy()
        except Exception:
            logger.exception("internal error while checking HAProxy")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None elsewhere (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> None:
    """
    Give the heap a batch freed back to the system (glibc keeps it otherwise).

    At 10,000 certificates about 10 MB stays resident after the first batch
    for nothing; ``malloc_trim`` takes a few milliseconds once per batch.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
