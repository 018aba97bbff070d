"""
``hastaple run``: the fetch pipeline, scheduled, for ever.

Theory of operation. ``Daemon`` holds one ``state.Record`` per certificate
(mirrored in SQLite) and does three kinds of work, each a method a test can
call with a simulated clock:

- ``refresh_due()``: every certificate whose ``next_refresh`` has come goes
  through ``pipeline.run_outcomes`` in one batch (the same code as ``fetch``);
  each outcome gives the next record via ``scheduling.after_refresh``
  (counted and logged by ``recording``), saved in one transaction per
  batch (``batching``);
- ``rediscover(changed)``: the certificate sources are read again (after a
  file-system event); new and renewed (new serial) certificates are due at
  once, removed ones are forgotten. It is ``prepare`` (read everything,
  change nothing, may raise: ``discovery.diff``) then ``apply`` (swap one
  immutable ``View`` in), so a SIGHUP with a bad configuration changes nothing;
- ``check_haproxy()``: ``show info`` on each runtime socket; a restart or
  reload (``restarts.Tracker``) means the staples on disk are pushed again
  with ``Options(fetch=False)``: no CA is asked. A socket that is down or
  refuses a staple is retried with backoff and, once that has lasted
  ``haproxy_grace``, fails ``health()``.

``serve()`` is the asyncio wiring around them: the watcher (``watcher``), a
poll timer, and a stop event set by SIGTERM. The clock and the rng are
injected; nothing here reads the time or sleeps by itself in the core.
Owns: the order of the work. Must not parse files, judge responses or speak
HAProxy's protocol itself (the parts above and the pipeline do).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hastaple.config import Config
from hastaple.core.model import CertEntry, Status
from hastaple.daemon import loop, recording, scheduling
from hastaple.daemon import metrics as prom
from hastaple.daemon.announced import Announced
from hastaple.daemon.batching import Records
from hastaple.daemon.discovery import View, diff
from hastaple.daemon.eventlog import log_event
from hastaple.daemon.hotcerts import HotCerts
from hastaple.daemon.restarts import Tracker, show_info
from hastaple.daemon.state import Record, State
from hastaple.engine import pipeline
from hastaple.engine.fetch import Fetcher
from hastaple.errors import HastapleError, StateBusy
from hastaple.sources import discover
from hastaple.stores import index

if TYPE_CHECKING:  # redis-py is imported only with --fleet
    from hastaple.stores.coordinator import Coordinator
    from hastaple.stores.fleet import StapleKey

logger = logging.getLogger(__name__)
_ERROR_PAUSE_SECONDS = 5.0


class Clock(Protocol):
    """Where the daemon gets the time; tests pass a simulated one."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> dt.datetime:
        """``datetime.now(UTC)``."""
        return dt.datetime.now(dt.UTC)


class Daemon:
    """The scheduler, state and HAProxy watcher around the one pipeline."""

    def __init__(
        self,
        config: Config,
        *,
        fetcher: Fetcher,
        state: State,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        fleet: Coordinator | None = None,
    ) -> None:
        self.fleet = fleet  # staples shared with other nodes (``--fleet``), or None
        self.announced = Announced()
        self.fetcher = fetcher
        self.state = state
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        # The configuration and what it means, swapped whole by ``apply``.
        self.view = View.empty(config)
        self.records = Records(state)
        self.haproxy = Tracker()
        self.metrics = prom.Metrics(
            lambda: (self.clock.now(), list(self.records.values())), sockets=self.sockets_ok
        )
        self.wake = asyncio.Event()
        # One pipeline run at a time: a refresh batch and a re-push to the same
        # HAProxy must not open competing transactions on one certificate.
        self._busy = asyncio.Lock()
        # Kept between batches: each batch reads only what others appended (``index``).
        self.index = index.Index.open(config.state_dir)
        # Set when the watched directories change (SIGHUP): the watcher restarts at once.
        self.rewatch = asyncio.Event()
        self.hot = HotCerts()  # --hot-certs: changed files to load into HAProxy

    @property
    def config(self) -> Config:
        """The configuration in force (``apply`` changes it)."""
        return self.view.config

    @property
    def entries(self) -> Mapping[str, CertEntry]:
        """The certificates served, by name."""
        return self.view.entries

    @property
    def sockets(self) -> tuple[str, ...]:
        """The runtime sockets staples go to."""
        return self.view.sockets

    @property
    def watch_roots(self) -> frozenset[Path]:
        """The directories watched for changes."""
        return self.view.roots

    # -- discovery -------------------------------------------------------

    def rediscover(self, changed: Iterable[Path] = (), *, at_once: bool = False) -> None:
        """
        Read the sources again; new, renewed and ``changed`` certificates become due.

        ``at_once``: due now, not spread (a watched change, to meet the 2 s promise).
        """
        self.apply(self.prepare(self.config, changed, at_once=at_once))

    def prepare(
        self, config: Config, changed: Iterable[Path] = (), *, at_once: bool = False
    ) -> View:
        """
        Everything ``config`` means now: read and computed, nothing changed yet.

        Raises:
            HastapleError: a source cannot be read; the daemon is as it was.
        """
        found = discover.discover(config.paths, config.crt_lists, config.haproxy_configs)
        return diff(
            config, found, self.records, self.view.serials, changed=changed, at_once=at_once,
            now=self.clock.now(), rng=self.rng,
        )  # fmt: skip

    def apply(self, view: View) -> None:
        """
        Make ``view`` the daemon's configuration and certificates, in one step.

        The state database is written first (one transaction): if that
        raises, memory is untouched and the old view stays whole.
        """
        self.state.put_many([(rec, None, None) for rec in view.saves], forget=view.removed)
        for name in [n for n in self.records if n not in view.entries]:
            del self.records[name]
        self.records.update((rec.cert, rec) for rec in view.saves)
        # The records saved and the news logged are not kept: at start-up they
        # are one record and one tuple per certificate (about 250 bytes each).
        old, self.view = self.view, dataclasses.replace(view, saves=(), news=())
        if view.config.hot_certs:
            self.hot.note(view.news, view.removed, old.entries)
        for socket in self.haproxy.asked() - set(view.sockets):
            self.haproxy.forget(socket)
        for name in view.removed:
            log_event(logging.INFO, "removed", cert=name)
        for name, serial, why in view.news:
            log_event(logging.INFO, why, cert=name, serial=serial)
        if view.warnings != old.warnings:  # once, not at every file event
            for warning in view.warnings:
                log_event(logging.WARNING, "discover", warning=warning)
        if view.roots != old.roots:
            self.rewatch.set()
        self.wake.set()

    def on_change(self, changed: Iterable[Path]) -> None:
        """
        A watched file changed: read the sources again, the changed ones due at once.

        A source that is briefly broken (a certificate missing while a renewal
        swaps files) is expected: a warning, and the last good view is kept
        until the next event. Only anything else is a bug with a traceback.
        """
        try:
            self.rediscover(changed, at_once=True)
        except HastapleError as exc:
            log_event(logging.WARNING, "discover_failed", error=str(exc))
        except Exception:
            logger.exception("internal error while reading the certificate sources")

    # -- refreshing ------------------------------------------------------

    def next_wakeup(self) -> dt.datetime | None:
        """
        The earliest planned refresh, or None when there is nothing to do.

        Only certificates ``refresh_due`` would take count: a time it would
        skip would stay in the past and the loop would sleep 0 s for ever.
        """
        times = [
            r.next_refresh
            for n, r in self.records.items()
            if r.next_refresh is not None and n in self.entries
        ]
        return min(times, default=None)

    async def refresh_due(self) -> list[pipeline.Outcome]:
        """Run every due certificate through the pipeline, one batch; record the outcomes."""
        now = self.clock.now()
        due = [
            n
            for n, r in self.records.items()
            if n in self.entries and (r.next_refresh is None or r.next_refresh <= now)
        ]
        if not due and not (self.config.hot_certs and self.hot.removals):
            return []
        forced: list[str] = []
        plain: list[str] = []
        for n in due:
            (forced if scheduling.hint_due(self.records[n], now) else plain).append(n)
        plain, adopt = self.announced.split(plain, due)  # taken from the fleet if newer
        # What each certificate was when its batch started: a file event while
        # the batch is in flight may remove or renew it (``_record``).
        started = {n: self.records[n].serial for n in due}
        outcomes: list[pipeline.Outcome] = []
        async with self._busy:
            for names, force, adopting in ((plain, False, False), (forced, True, False),
                                           (adopt, False, True)):  # fmt: skip
                if names:
                    options = dataclasses.replace(self._options(force=force), adopt=adopting)
                    entries = [self.entries[n] for n in names]
                    try:
                        outcomes += await pipeline.run_outcomes(
                            entries, options, fetcher=self.fetcher, now=now, held=self.index,
                            fleet=self.fleet,
                        )  # fmt: skip
                    except StateBusy as exc:  # still due: the next turn waits again
                        log_event(logging.WARNING, "busy", certs=len(names), error=str(exc))
            if self.config.hot_certs:
                outcomes = await self.hot.follow(
                    outcomes, self.entries, self.sockets, configs=self.config.haproxy_configs,
                    directories=self.config.paths, now=now, serials=started,
                )  # fmt: skip
        with self.records.batch():
            for outcome in outcomes:
                recording.record(self, outcome, now, started)
        if self.fleet is not None:
            from hastaple.stores import fleet_status  # noqa: PLC0415 - fleet mode only

            fleet_status.write(self.config.state_dir, self.fleet)
        return outcomes

    def fleet_published(self, key: StapleKey) -> None:
        """Another node stored a new staple: its certificates here are due now (``announced``)."""
        self.announced.mark(self.view, self.records, key.serial, self.clock.now())
        self.wake.set()

    def _options(self, *, force: bool = False, fetch: bool = True) -> pipeline.Options:
        return pipeline.Options(
            sockets=self.sockets,
            below_admin=self.view.below_admin,
            force=force,
            state_dir=self.config.state_dir,
            fetch=fetch,
        )

    # -- HAProxy ---------------------------------------------------------

    async def check_haproxy(self) -> None:
        """Notice restarts and reloads; push the staples on disk to an HAProxy that needs them."""
        for socket in self.sockets:
            try:
                info = await show_info(socket)
            except HastapleError as exc:
                if self.haproxy.down(socket, str(exc), self.clock.now()):
                    log_event(logging.WARNING, "haproxy_down", socket=socket, error=str(exc))
                continue
            restarted = self.haproxy.answered(socket, info)
            if restarted or self.haproxy.retry_due(socket, self.clock.now()):
                if restarted:
                    log_event(logging.INFO, "haproxy_started", socket=socket, pid=info.pid)
                await self.repush(socket)

    async def repush(self, socket: str) -> None:
        """
        Load every valid staple on disk into ``socket``; ask no CA.

        A certificate whose last signed answer was REVOKED is left out: the good
        staple still on disk is older than that answer, and pushing it would
        tell clients the opposite of what the CA said last.
        """
        entries = self._repushable(socket)
        if not entries:
            self.haproxy.push_ok(socket)
            return
        options = dataclasses.replace(self._options(fetch=False), sockets=(socket,))
        async with self._busy:
            try:
                outcomes = await pipeline.run_outcomes(
                    entries, options, fetcher=self.fetcher, now=self.clock.now(), held=self.index
                )
            except StateBusy as exc:  # retried with the failed pushes' backoff
                log_event(logging.WARNING, "busy", socket=socket, error=str(exc))
                self._push_failed(socket, self.clock.now(), f"state directory busy: {exc}")
                return
        failed: str | None = None
        with self.records.batch():
            for outcome in outcomes:
                row = outcome.row
                if socket not in row.haproxy or row.cert not in self.records:
                    continue
                recording.count_pushes(self.metrics, row)
                rec = self.records[row.cert]
                new = scheduling.after_repush(rec, socket, row.haproxy[socket], row.error)
                if row.haproxy[socket] == "error":
                    failed = row.error or "push failed"
                    log_event(
                        logging.WARNING, "push_failed", cert=row.cert, socket=socket,
                        failures=new.failures, error=row.error,
                    )  # fmt: skip
                self.records.save(new)
        if failed:
            self._push_failed(socket, self.clock.now(), failed)
        else:
            self.haproxy.push_ok(socket)
        log_event(logging.INFO, "repushed", socket=socket, certs=len(entries))

    def _repushable(self, socket: str) -> list[CertEntry]:
        """The certificates whose staple on disk may go to ``socket`` again."""
        entries = []
        for name, entry in self.entries.items():
            rec = self.records.get(name, Record(name))
            if not rec.ocsp_url:
                continue
            if rec.status == Status.REVOKED.value:
                log_event(
                    logging.WARNING, "repush_skipped", cert=name, socket=socket,
                    status=rec.status, error=rec.error,
                )  # fmt: skip
                continue
            entries.append(entry)
        return entries

    def _push_failed(self, socket: str, now: dt.datetime, error: str | None) -> None:
        self.haproxy.push_failed(socket, now, error, self.rng, self.config.policy)

    def sockets_ok(self) -> list[tuple[str, bool]]:
        """Each runtime socket, and whether it answers and took every staple last time."""
        return [(socket, self.haproxy.ok(socket)) for socket in self.sockets]

    def health(self) -> prom.Health:
        """
        The /healthz verdict now: the staples, then the runtime sockets.

        A socket that is down, or refuses staples, fails it once that has
        lasted ``haproxy_grace``: long enough for HAProxy to restart and for
        the first retry, short enough that a mistyped ``--haproxy`` is noticed.
        """
        now = self.clock.now()
        verdict = prom.health(self.records.values(), now, self.config.policy)
        late = self.haproxy.late(now, self.config.haproxy_grace)
        if not late:
            return verdict
        return prom.Health(ok=False, reasons=(*verdict.reasons, *late))

    # -- the loop --------------------------------------------------------

    async def serve(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """
        Run until ``stop`` is set: refresh on schedule, watch files, watch HAProxy.

        A batch in progress is finished before returning (no partial file, no
        half-written row), so SIGTERM exits cleanly (``hastaple.daemon.loop``).
        """
        await loop.serve(self, stop, ready=ready)
