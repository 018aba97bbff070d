"""
One run at a time per state directory.

A run reads the index when it starts and writes it when it ends, and HAProxy
has a single transaction slot for certificate updates. Two runs over the same
state directory (the daemon's batch and certbot's ``fetch --force``) would
overwrite each other's index, so that a ``revoked`` mark is lost and an older
staple counted fresh again, and they would abort each other's transactions.
So every run holds an exclusive ``flock`` on ``<state dir>/lock`` from reading
the index to its last push. The daemon takes it per batch, not for ever, so a
``fetch`` waits at most one batch.

The kernel releases the lock when its holder exits, even after ``kill -9``, so
no stale lock is left behind. While held, the file says who holds it (pid,
command, since), for the message of a run that gave up waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from hastaple.config import LOCK_WAIT
from hastaple.errors import StateBusy

logger = logging.getLogger(__name__)

LOCK_NAME = "lock"
_POLL_SECONDS = (0.02, 0.5)  # first and longest pause between two attempts
_COMMAND_CHARS = 200  # of the holder's command line kept in the file


@contextlib.asynccontextmanager
async def hold(state_dir: Path | None, *, wait: float = LOCK_WAIT) -> AsyncIterator[None]:
    """
    Hold ``state_dir``'s lock for the body; wait up to ``wait`` seconds for it.

    With no state directory there is nothing to share and nothing is locked.
    A directory that cannot hold the lock file (read-only, not ours) holds no
    index either: the run goes on unlocked, with a warning.

    Raises:
        StateBusy: another process held the lock for all of ``wait`` seconds.
    """
    if state_dir is None:
        yield
        return
    path = state_dir / LOCK_NAME
    try:
        fd = _open(path)
    except OSError as exc:
        logger.warning("%s: cannot lock (%s); running without the lock", path, exc.strerror)
        yield
        return
    try:
        await _acquire(fd, path, wait)
        _write_holder(fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # nobody holds it: say nothing stale
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


async def _acquire(fd: int, path: Path, wait: float) -> None:
    """Poll for the lock (no thread stuck in a blocking flock; cancellable)."""
    deadline = time.monotonic() + wait
    pause, told = _POLL_SECONDS[0], False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}:
                raise
        else:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise StateBusy(path, holder(path), wait)
        if not told:
            told = True
            logger.warning(
                "%s is held by %s; waiting up to %.0f s", path.parent, holder(path), wait
            )
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, _POLL_SECONDS[1])


def _write_holder(fd: int) -> None:
    # "hastaple", not argv[0]: that is __main__.py under ``python -m hastaple``.
    command = shlex.join(["hastaple", *sys.argv[1:]])[:_COMMAND_CHARS]
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    doc = {"pid": os.getpid(), "command": command, "since": since}
    with contextlib.suppress(OSError):  # only the message of a waiting run needs it
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(doc).encode() + b"\n", 0)


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as a person reads it: ``pid 12 (hastaple run) since ...``."""
    try:
        doc = json.loads(path.read_bytes())
        return f"pid {int(doc['pid'])} ({doc['command']}) since {doc['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
