"""
A batch of certificates end to end: the one pipeline every fetching command uses.

    sources (CertEntry) -> refresh.prepare: fetch, validate, store (StapleStore)
                        -> sink: deploy to every HAProxy in rounds (Sink)

``run`` holds the state directory's lock, handles the certificates in a
bounded pool (a stalled responder's certificates set aside until the rest
are done) and hands each stored staple to the sink at once. One
certificate's failure is its own row (``refresh.prepare``), a dead socket
that certificate's row (the sink), never the batch. ``fetch``, the daemon,
``demo`` and the benchmark all go through ``run``. Owns: the
batch. Must not decide about one certificate (``refresh``) nor speak to
HAProxy itself (``sinks``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hastaple.core.model import CertEntry, ResultRow
from hastaple.engine.fetch import Fetcher, HostStalled, deferring
from hastaple.engine.refresh import Context, Options, Staple, noted, prepare
from hastaple.sinks.base import Sink
from hastaple.sinks.pusher import Pusher
from hastaple.stores import index, lock
from hastaple.stores.base import StapleStore
from hastaple.stores.files import FileStore

if TYPE_CHECKING:  # the fleet (and redis-py) is imported only when configured
    from hastaple.stores.coordinator import Coordinator

logger = logging.getLogger(__name__)

__all__ = ["MAX_IN_FLIGHT", "Options", "Outcome", "Staple", "run", "run_outcomes"]


# Certificates handled at once; far above any per-responder connection limit.
MAX_IN_FLIGHT = 256


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    A row plus what the daemon's scheduler and metrics need from the exchange.

    ``max_age`` (Cache-Control, seconds) and ``elapsed`` (seconds) are set
    only when a responder was asked.
    """

    row: ResultRow
    max_age: int | None = None
    elapsed: float | None = None


async def run(
    entries: Sequence[CertEntry],
    options: Options,
    *,
    fetcher: Fetcher,
    now: dt.datetime,
    progress: Callable[[], None] | None = None,
    staples: StapleStore | None = None,
    fleet: Coordinator | None = None,
) -> list[ResultRow]:
    """
    Fetch, validate, store and deploy staples for ``entries``; one row each.

    Certificates are handled concurrently (the fetcher bounds each responder);
    each stored staple goes to every HAProxy socket in rounds of a few hundred
    on one connection per socket, while the rest are still being fetched
    (``pusher``). ``progress`` is
    called once per certificate when its staple is ready (a progress bar).
    ``staples`` is where staples are kept: ``<crt>.ocsp`` files by default.
    ``fleet``: staples shared with other nodes (``stores.coordinator``),
    asked where the CA would be.
    """
    outcomes = await run_outcomes(
        entries, options, fetcher=fetcher, now=now, progress=progress, staples=staples,
        fleet=fleet, hints=False,
    )  # fmt: skip
    return [o.row for o in outcomes]


async def run_outcomes(
    entries: Sequence[CertEntry],
    options: Options,
    *,
    fetcher: Fetcher,
    now: dt.datetime,
    progress: Callable[[], None] | None = None,
    held: index.Index | None = None,
    staples: StapleStore | None = None,
    fleet: Coordinator | None = None,
    hints: bool = True,
) -> list[Outcome]:
    """
    ``run``, with the responder's max-age and latency per certificate (the daemon).

    ``hints=False``: the outcomes carry the rows only (``run``: nothing asks).

    The whole run, from reading the index to the last push, holds the state
    directory's lock (``lock``): another run on it waits, or this one does.
    ``held`` is an index the caller keeps between runs (the daemon): it is
    brought up to date under the lock, not read whole again.

    Raises:
        StateBusy: another run held the state directory for ``options.lock_wait``.
    """
    state_dir = None if options.dry_run else options.state_dir  # dry-run writes nothing
    async with lock.hold(state_dir, wait=options.lock_wait):
        keep = held is not None and held.state_dir == state_dir
        idx = held if held is not None and keep else index.Index.open(state_dir)
        idx.sync()
        shared = None if options.dry_run else fleet  # dry-run writes nothing, Redis included
        ctx = Context(FileStore() if staples is None else staples, idx, shared)
        outcomes = await _run_locked(
            entries, options, fetcher=fetcher, now=now, progress=progress, ctx=ctx, hints=hints
        )
        idx.save()
    return outcomes


async def _run_locked(
    entries: Sequence[CertEntry],
    options: Options,
    *,
    fetcher: Fetcher,
    now: dt.datetime,
    progress: Callable[[], None] | None,
    ctx: Context,
    hints: bool,
) -> list[Outcome]:
    # Held until the batch ends: the row (and the hints) of every certificate,
    # never its staple (about 1 KB a certificate: 100 MB at 100,000).
    results: list[Outcome | None] = [None] * len(entries)
    sink: Sink | None = None
    if (options.sockets or options.below_admin) and not options.dry_run:

        def deployed(i: int, row: ResultRow) -> None:
            # The staple is in HAProxy (or its row says why not).
            done = results[i]
            assert done is not None  # noqa: S101 - pushed only once prepared
            results[i] = dataclasses.replace(done, row=row)

        sink = Pusher(options.sockets, deployed, below_admin=dict(options.below_admin))

    async def one(i: int, entry: CertEntry) -> None:
        prepared = noted(entry, await prepare(entry, options, fetcher, now, ctx))
        row = prepared.row
        results[i] = Outcome(row, prepared.max_age, prepared.elapsed) if hints else Outcome(row)
        if progress is not None:
            progress()
        if sink is not None and prepared.staple is not None:
            await sink.add(i, prepared.row, prepared.staple.deploys)

    try:
        await _in_pool(entries, one)
        if sink is not None:
            await sink.finish()
    finally:
        if sink is not None:
            await sink.close()
    return [o for o in results if o is not None]


async def _in_pool(
    entries: Sequence[CertEntry], handle: Callable[[int, CertEntry], Awaitable[None]]
) -> None:
    """
    ``handle(i, entry)`` for every entry, ``MAX_IN_FLIGHT`` at a time.

    A bounded pool, not one task per certificate: 10,000 live tasks hold
    10,000 parsed bundles and requests at once (about 100 MB more at 10k)
    while the fetcher lets only a few talk to each responder anyway.

    A certificate whose responder has stalled is set aside (its index only)
    until the rest are done: behind a host that answers nothing, a worker
    would wait for that host's requests to time out, and with enough of its
    certificates in a row every worker would, holding up every other host.
    """
    todo = iter(enumerate(entries))
    stalled: collections.deque[tuple[int, CertEntry]] = collections.deque()

    async def worker() -> None:
        with deferring():
            for i, entry in todo:
                try:
                    await handle(i, entry)
                except HostStalled:
                    stalled.append((i, entry))
        while stalled:  # nothing else is left: now wait for them
            await handle(*stalled.popleft())

    workers = [asyncio.create_task(worker()) for _ in range(min(MAX_IN_FLIGHT, len(entries)))]
    try:
        await asyncio.gather(*workers)
    finally:
        # After a bug in one worker, the others must not go on fetching and
        # writing behind the caller's back (the daemon's next batch).
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
