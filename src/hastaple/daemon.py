"""
``hastaple run``: the fetch pipeline, scheduled, for ever.

Theory of operation. ``Daemon`` holds one ``state.Record`` per certificate
(mirrored in SQLite) and does three kinds of work, each a method a test can
call with a simulated clock:

- ``refresh_due()``: every certificate whose ``next_refresh`` has come goes
  through ``pipeline.run_outcomes`` in one batch (the same code as ``fetch``);
  each outcome gives the next refresh via ``schedule.next_refresh``;
- ``rediscover(changed)``: the certificate sources are read again (after a
  file-system event); new and renewed (new serial) certificates are due at
  once, removed ones are forgotten. It is ``prepare`` (read everything,
  change nothing, may raise) then ``apply`` (swap in one step), so a SIGHUP
  with a bad configuration changes nothing;
- ``check_haproxy()``: ``show info`` on each runtime socket; a new Pid, a
  smaller Uptime, or a socket that comes back means a restart or reload, so
  the staples on disk are pushed again with ``Options(fetch=False)``: no CA
  is asked. A socket that is down or refuses a staple is retried with
  backoff and, once that has lasted ``haproxy_grace``, fails ``health()``.

``serve()`` is the asyncio wiring around them: watchfiles, a poll timer, the
metrics server and a stop event set by SIGTERM. The clock and the rng are
injected; nothing here reads the time or sleeps by itself in the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import watchfiles

from hastaple import discover, index, pem, pipeline, schedule
from hastaple import metrics as prom
from hastaple.config import Config
from hastaple.errors import HastapleError, StateBusy
from hastaple.events import log_event
from hastaple.fetch import Fetcher
from hastaple.haproxy import client, protocol
from hastaple.model import Action, ResultRow, Status, rfc3339
from hastaple.state import Record, State

if TYPE_CHECKING:  # redis-py is imported only with --fleet
    from hastaple.stores.coordinator import Coordinator
    from hastaple.stores.fleet import StapleKey

logger = logging.getLogger(__name__)
_WATCH_STEP_MS = 50  # a burst of events is handled 50 ms after it ends
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
        self.config = config
        self.fleet = fleet  # staples shared with other nodes (``--fleet``), or None
        self.fetcher = fetcher
        self.state = state
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.records: dict[str, Record] = {r.cert: r for r in state.all()}
        self.entries: dict[str, discover.CertEntry] = {}
        self.sockets: tuple[str, ...] = tuple(config.sockets)
        self.watch_roots: frozenset[Path] = frozenset()
        self.metrics = prom.Metrics(
            lambda: (self.clock.now(), list(self.records.values())), sockets=self.sockets_ok
        )
        self.wake = asyncio.Event()
        self._haproxy: dict[str, protocol.Info | None] = {}
        # Sockets whose last push failed: retried with backoff, not every poll
        # (a renewed certificate HAProxy has not reloaded yet fails until it does).
        self._push_again: dict[str, tuple[int, dt.datetime]] = {}
        # Sockets down or refusing staples: since when, and why (for /healthz).
        self._failing: dict[str, tuple[dt.datetime, str]] = {}
        # One pipeline run at a time: a refresh batch and a re-push to the same
        # HAProxy must not open competing transactions on one certificate.
        self._busy = asyncio.Lock()
        # Kept between batches: each batch reads only what others appended (``index``).
        self.index = index.Index.open(config.state_dir)
        # Serial per certificate with the file identity it was read from: a file
        # event re-parses only what changed, not 10,000 PEMs on the event loop.
        self._serials: dict[str, tuple[index.Fingerprint, Leaf]] = {}
        # Saves waiting for one transaction while a batch runs (``_batch``).
        self._pending: list[tuple[Record, str | None, dt.datetime | None]] | None = None
        # Set when the watched directories change (SIGHUP): the watcher restarts at once.
        self.rewatch = asyncio.Event()
        self._warned: tuple[str, ...] = ()  # discovery warnings already logged
        self._by_serial: tuple[object, dict[str, list[str]]] = (None, {})
        self._announced: set[str] = set()  # due because another node announced their staple

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
        now = self.clock.now()
        touched = {str(p).removesuffix(".issuer") for p in changed}
        entries = {str(e.path): e for e in found.certs}
        serials = {n: v for n, v in self._serials.items() if n in entries}
        leaves = {
            name: _leaf_of(serials, name, entry.path, touched=name in touched)
            for name, entry in entries.items()
        }
        news = [
            (name, leaf.serial, why)
            for name, leaf in leaves.items()
            if (why := self._news(name, leaf.serial, touched=name in touched)) is not None
        ]
        spread = schedule.startup_spread(len(news), config.policy)
        saves = []
        for name, serial, why in news:
            due = now if at_once else now + spread * self.rng.random()
            rec = self.records.get(name)
            must_staple = leaves[name].must_staple
            if why == "touched" and rec is not None:
                saves.append(dataclasses.replace(rec, next_refresh=due, must_staple=must_staple))
            else:
                saves.append(Record(name, serial=serial, next_refresh=due, must_staple=must_staple))
        # A database from before must-staple was recorded: learn it, due as planned.
        due_now = {name for name, _, _ in news}
        saves += [
            dataclasses.replace(rec, must_staple=leaf.must_staple)
            for name, leaf in leaves.items()
            if name not in due_now
            and (rec := self.records.get(name)) is not None
            and rec.must_staple != leaf.must_staple
        ]
        return View(
            config=config,
            entries=entries,
            sockets=tuple(dict.fromkeys((*config.sockets, *found.sockets))),
            roots=frozenset(_roots(config, found.certs)),
            serials=serials,
            removed=tuple(sorted(set(self.records) - set(entries))),
            saves=tuple(saves),
            news=tuple((name, serial, why) for name, serial, why in news if why != "touched"),
            warnings=found.warnings,
        )

    def apply(self, view: View) -> None:
        """
        Make ``view`` the daemon's configuration and certificates, in one step.

        The state database is written first (one transaction): if that
        raises, memory is untouched and the old view stays whole.
        """
        self.state.put_many([(rec, None, None) for rec in view.saves], forget=view.removed)
        records = {n: r for n, r in self.records.items() if n in view.entries}
        records.update((rec.cert, rec) for rec in view.saves)
        roots_changed = view.roots != self.watch_roots
        self.config, self.records, self._serials = view.config, records, view.serials
        self.entries, self.sockets, self.watch_roots = view.entries, view.sockets, view.roots
        for socket in set(self._haproxy) - set(view.sockets):
            self._forget_socket(socket)
        for name in view.removed:
            log_event(logging.INFO, "removed", cert=name)
        for name, serial, why in view.news:
            log_event(logging.INFO, why, cert=name, serial=serial)
        if view.warnings != self._warned:  # once, not at every file event
            for warning in view.warnings:
                log_event(logging.WARNING, "discover", warning=warning)
            self._warned = view.warnings
        if roots_changed:
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

    def _news(self, name: str, serial: str | None, *, touched: bool) -> str | None:
        """
        Why ``name`` becomes due now ("added", "renewed", "touched"), or None.

        A touched file that still is no certificate (a log file in a ``crt``
        directory, say) is left to its backoff: retrying it at every write
        would log a failure at every write, for ever.
        """
        rec = self.records.get(name)
        if rec is None:
            return "added"
        if serial != rec.serial:
            return "renewed"  # what we knew was about the previous certificate
        if rec.next_refresh is None:
            return "touched"
        if touched and not (serial is None and rec.failures > 0):
            return "touched"
        return None

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
        if not due:
            return []
        forced: list[str] = []
        plain: list[str] = []
        for n in due:
            (forced if _hint_due(self.records[n], now) else plain).append(n)
        # Announced by another node: taken from the fleet if newer (``fleet_published``).
        adopt = [n for n in plain if n in self._announced]
        plain = [n for n in plain if n not in self._announced]
        self._announced.difference_update(due)
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
        with self._batch():
            for outcome in outcomes:
                self._record(outcome, now, started)
        if self.fleet is not None:
            from hastaple.stores import fleet_status  # noqa: PLC0415 - fleet mode only

            fleet_status.write(self.config.state_dir, self.fleet)
        return outcomes

    def fleet_published(self, key: StapleKey) -> None:
        """
        Another node stored a new staple: the certificates here with its serial are due now.

        The batch that follows asks the fleet first, so the staple is validated
        and deployed within a second, with no CA request (``stores.coordinator``).
        """
        now = self.clock.now()
        for name in self._names_by_serial().get(key.serial, ()):
            rec = self.records.get(name)
            if rec is not None and (rec.next_refresh is None or rec.next_refresh > now):
                self.records[name] = dataclasses.replace(rec, next_refresh=now)
                self._announced.add(name)
        self.wake.set()

    def _names_by_serial(self) -> dict[str, list[str]]:
        """Certificate names by serial, kept until the certificates change."""
        if self._by_serial[0] is not self._serials:
            names: dict[str, list[str]] = {}
            for name, (_, leaf) in self._serials.items():
                if leaf.serial is not None and name in self.entries:
                    names.setdefault(leaf.serial, []).append(name)
            self._by_serial = (self._serials, names)
        return self._by_serial[1]

    def _options(self, *, force: bool = False, fetch: bool = True) -> pipeline.Options:
        return pipeline.Options(
            sockets=self.sockets, force=force, state_dir=self.config.state_dir, fetch=fetch
        )

    def _record(
        self, outcome: pipeline.Outcome, now: dt.datetime, started: dict[str, str | None]
    ) -> None:
        row = outcome.row
        asked = outcome.elapsed is not None
        if asked and row.ocsp_url:
            host = row.ocsp_url.split("/")[2] if "//" in row.ocsp_url else row.ocsp_url
            self.metrics.latency.labels(host).observe(outcome.elapsed or 0.0)
        self._count_pushes(row)
        policy = self.config.policy
        result = _result(row)
        self.metrics.fetches.labels(result).inc()
        rec = self.records.get(row.cert)
        if rec is None or row.cert not in self.entries or rec.serial != started.get(row.cert):
            # Removed (or renewed) while the batch was in flight: the outcome is
            # about a certificate that is gone; saving it would bring it back.
            log_event(logging.DEBUG, "discarded", cert=row.cert, result=result)
            return
        haproxy = _served(rec, row.haproxy)
        base = dataclasses.replace(
            rec, ocsp_url=row.ocsp_url, result=result, error=row.error, last_attempt=now,
            haproxy=haproxy,
        )  # fmt: skip
        refused = [sock for sock, how in row.haproxy.items() if how == "error"]
        if _has_staple(row):
            new = dataclasses.replace(
                base,
                status=row.status.value,
                this_update=row.this_update,
                next_update=row.next_update,
                # The max-age hint belongs to an answer from the CA; none was asked.
                fetched_at=now if asked else None,
                max_age=outcome.max_age if asked else None,
                last_success=now if asked else rec.last_success,
                # A staple HAProxy refused is a failure too (the next fetch is
                # still planned from the staple: the CA is not the problem).
                failures=rec.failures + 1 if refused else 0,
            )
            new = dataclasses.replace(
                new, next_refresh=schedule.next_refresh(new.window(), now, 0, self.rng, policy)
            )
            for sock in refused:
                self._push_failed(sock, now, row.error)
        elif row.status in {Status.NO_OCSP, Status.MANAGED}:
            new = dataclasses.replace(
                base, status=row.status.value, failures=0, next_refresh=now + policy.interval
            )
        else:
            failures = rec.failures + 1
            window = rec.window()
            new = dataclasses.replace(
                base,
                status=_failed_status(row, rec),
                failures=failures,
                next_refresh=schedule.next_refresh(window, now, failures, self.rng, policy),
            )
        self._save(new, event=result, at=now)
        level = logging.INFO if result in {"fetched", "fresh", "skipped"} else logging.ERROR
        if refused and level == logging.INFO:
            level = logging.WARNING  # stored, but not (everywhere) in HAProxy
        log_event(
            level, result, cert=row.cert, responder=row.ocsp_url, status=new.status,
            action=row.action.value, next_update=new.next_update, next_refresh=new.next_refresh,
            failures=new.failures, error=row.error,
        )  # fmt: skip
        self._warn_if_expiring(new, now)

    def _warn_if_expiring(self, rec: Record, now: dt.datetime) -> None:
        if prom.expiring(rec, now, self.config.policy) and rec.next_update is not None:
            log_event(
                logging.WARNING, "expiring", cert=rec.cert, next_update=rec.next_update,
                left=str(rec.next_update - now), failures=rec.failures, error=rec.error,
            )  # fmt: skip

    def _count_pushes(self, row: ResultRow) -> None:
        for outcome in row.haproxy.values():
            self.metrics.pushes.labels(outcome).inc()

    def _save(
        self, rec: Record, *, event: str | None = None, at: dt.datetime | None = None
    ) -> None:
        self.records[rec.cert] = rec
        if self._pending is not None:
            self._pending.append((rec, event, at))
        else:
            self.state.put(rec, event=event, at=at)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[None]:
        """
        Save the records of a whole batch in one state transaction, at the end.

        One commit per certificate (a WAL sync each) made a cold daemon spend
        about 0.7 ms per certificate on SQLite alone, twice (added, fetched).
        Records saved inside are written even when the batch raises part-way.
        """
        if self._pending is not None:  # nested: the outer batch writes
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                self.state.put_many(pending)

    # -- HAProxy ---------------------------------------------------------

    async def check_haproxy(self) -> None:
        """Notice restarts and reloads; push the staples on disk to an HAProxy that needs them."""
        for socket in self.sockets:
            try:
                info = await _show_info(socket)
            except HastapleError as exc:
                if self._haproxy.get(socket, "unknown") is not None:
                    log_event(logging.WARNING, "haproxy_down", socket=socket, error=str(exc))
                self._haproxy[socket] = None
                self._failing.setdefault(socket, (self.clock.now(), str(exc)))
                continue
            before = self._haproxy.get(socket)
            restarted = (
                before is None or info.pid != before.pid or info.uptime_sec < before.uptime_sec
            )
            self._haproxy[socket] = info
            retry = self._push_again.get(socket)
            if restarted or (retry is not None and retry[1] <= self.clock.now()):
                if restarted:
                    log_event(logging.INFO, "haproxy_started", socket=socket, pid=info.pid)
                await self.repush(socket)

    async def repush(self, socket: str) -> None:  # noqa: C901 - one skip per kind of record
        """
        Load every valid staple on disk into ``socket``; ask no CA.

        A certificate whose last signed answer was REVOKED is left out: the good
        staple still on disk is older than that answer, and pushing it would
        tell clients the opposite of what the CA said last.
        """
        failed: str | None = None
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
        if not entries:
            self._push_again.pop(socket, None)
            self._failing.pop(socket, None)
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
        with self._batch():
            for outcome in outcomes:
                row = outcome.row
                if socket not in row.haproxy or row.cert not in self.records:
                    continue
                self._count_pushes(row)
                rec = self.records[row.cert]
                served = _served(rec, {socket: row.haproxy[socket]})
                new = dataclasses.replace(rec, haproxy=served)
                if row.haproxy[socket] == "error":
                    failed = row.error or "push failed"
                    new = dataclasses.replace(new, failures=rec.failures + 1, error=row.error)
                    log_event(
                        logging.WARNING, "push_failed", cert=row.cert, socket=socket,
                        failures=new.failures, error=row.error,
                    )  # fmt: skip
                elif _deployed(new):
                    new = dataclasses.replace(new, failures=0, error=None)
                self._save(new)
        if failed:
            self._push_failed(socket, self.clock.now(), failed)
        else:
            self._push_again.pop(socket, None)
            self._failing.pop(socket, None)
        log_event(logging.INFO, "repushed", socket=socket, certs=len(entries))

    def _push_failed(self, socket: str, now: dt.datetime, error: str | None) -> None:
        """A push to ``socket`` failed: retry with backoff; unhealthy if it lasts."""
        failures = self._push_again.get(socket, (0, now))[0] + 1
        wait = schedule.backoff(failures, self.rng, policy=self.config.policy)
        self._push_again[socket] = (failures, now + wait)
        self._failing.setdefault(socket, (now, error or "push failed"))

    def _forget_socket(self, socket: str) -> None:
        """``socket`` is no longer configured: nothing about it is kept."""
        self._haproxy.pop(socket, None)
        self._push_again.pop(socket, None)
        self._failing.pop(socket, None)

    def sockets_ok(self) -> list[tuple[str, bool]]:
        """Each runtime socket, and whether it answers and took every staple last time."""
        return [(socket, socket not in self._failing) for socket in self.sockets]

    def health(self) -> prom.Health:
        """
        The /healthz verdict now: the staples, then the runtime sockets.

        A socket that is down, or refuses staples, fails it once that has
        lasted ``haproxy_grace``: long enough for HAProxy to restart and for
        the first retry, short enough that a mistyped ``--haproxy`` is noticed.
        """
        now = self.clock.now()
        verdict = prom.health(self.records.values(), now, self.config.policy)
        grace = self.config.haproxy_grace
        late = [
            f"haproxy {socket}: {_about(socket, error)} (failing since {rfc3339(since)})"
            for socket, (since, error) in sorted(self._failing.items())
            if now - since >= grace
        ]
        if not late:
            return verdict
        return prom.Health(ok=False, reasons=(*verdict.reasons, *late))

    # -- the loop --------------------------------------------------------

    async def serve(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """
        Run until ``stop`` is set: refresh on schedule, watch files, watch HAProxy.

        A batch in progress is finished before returning (no partial file, no
        half-written row), so SIGTERM exits cleanly.
        """
        self.rediscover()
        tasks = [
            asyncio.create_task(self._watch(stop), name="watch"),
            asyncio.create_task(self._poll(stop), name="poll"),
        ]
        if ready is not None:
            ready.set()
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    if await self.refresh_due():
                        _trim_heap()
                except Exception:
                    # A bug must not stop the daemon nor spin it: log, pause, go on.
                    logger.exception("internal error in the refresh loop")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), _ERROR_PAUSE_SECONDS)
                await self._sleep(stop)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _sleep(self, stop: asyncio.Event) -> None:
        wakeup = self.next_wakeup()
        delay = 3600.0 if wakeup is None else (wakeup - self.clock.now()).total_seconds()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=max(delay, 0.0), return_when="FIRST_COMPLETED")
        finally:
            for w in waiters:
                w.cancel()

    async def _poll(self, stop: asyncio.Event) -> None:
        interval = self.config.haproxy_poll.total_seconds()
        while not stop.is_set():
            try:
                await self.check_haproxy()
            except Exception:
                logger.exception("internal error while checking HAProxy")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _watch(self, stop: asyncio.Event) -> None:
        """
        Watch ``watch_roots``; start again at once when they change (``rewatch``).

        A directory a SIGHUP adds is watched within one watcher step (50 ms),
        not after the next event from the old directories.
        """
        until = _Either(stop, self.rewatch)
        first = True
        while not stop.is_set():
            self.rewatch.clear()
            roots = self.watch_roots
            if not roots:
                await _first(stop, self.rewatch)
                first = False
                continue
            _quiet_watcher()
            if not first:
                # A file created while the watcher restarted has no event: look
                # once more, as soon as awatch has set up the new watches (its
                # first step runs them synchronously, then waits in a thread).
                asyncio.get_running_loop().call_soon(self.on_change, ())
            first = False
            async for changes in watchfiles.awatch(
                *roots, stop_event=until, watch_filter=_relevant, step=_WATCH_STEP_MS,
                debounce=500, recursive=False,
            ):  # fmt: skip
                self.on_change({Path(p) for _, p in changes})


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


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """
    What a configuration means at one moment: ``Daemon.prepare`` reads it, ``apply`` swaps it in.

    ``saves`` are the records that change (new, renewed, due again),
    ``removed`` the certificates to forget, ``news`` the added/renewed ones
    to log.
    """

    config: Config
    entries: dict[str, discover.CertEntry]
    sockets: tuple[str, ...]
    roots: frozenset[Path]
    serials: dict[str, tuple[index.Fingerprint, Leaf]]
    removed: tuple[str, ...]
    saves: tuple[Record, ...]
    news: tuple[tuple[str, str | None, str], ...]
    warnings: tuple[str, ...]


class Leaf(NamedTuple):
    """What the daemon keeps of a certificate file's leaf: its serial, and must-staple."""

    serial: str | None  # None: the file holds no readable certificate
    must_staple: bool = False


def _leaf_of(
    serials: dict[str, tuple[index.Fingerprint, Leaf]],
    name: str,
    path: Path,
    *,
    touched: bool,
) -> Leaf:
    """
    The leaf's serial and must-staple, parsed again only when the file changed.

    ``serials`` is updated.

    A file an event names is always read (an in-place rewrite of the same
    size can keep the identity within one timestamp tick).
    """
    fingerprint = index.fingerprint(path)
    known = serials.get(name)
    if not touched and fingerprint is not None and known and known[0] == fingerprint:
        return known[1]
    leaf = _leaf(path)
    if fingerprint is None:
        serials.pop(name, None)
    else:
        serials[name] = (fingerprint, leaf)
    return leaf


def _roots(config: Config, certs: Sequence[discover.CertEntry]) -> set[Path]:
    """The directories to watch: the sources' and every certificate's."""
    roots = {p if p.is_dir() else p.parent for p in config.paths}
    roots |= {p.parent for p in (*config.crt_lists, *config.haproxy_configs)}
    roots |= {e.path.parent for e in certs}
    return {r for r in roots if r.is_dir()}


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None elsewhere (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def _trim_heap() -> None:
    """
    Give the heap a batch freed back to the system (glibc keeps it otherwise).

    At 10,000 certificates about 10 MB stays resident after the first batch
    for nothing; ``malloc_trim`` takes a few milliseconds once per batch.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


async def _show_info(socket: str) -> protocol.Info:
    async with client.connect(socket, timeout=5.0) as conn:
        reply = await conn.run_one(protocol.SHOW_INFO)
        return protocol.parse_info(conn.address.text, protocol.SHOW_INFO, reply)


def _relevant(change: watchfiles.Change, path: str) -> bool:  # noqa: ARG001 - watchfiles' signature
    """Our own ``.ocsp`` writes and temp files are not news; everything else may be."""
    name = Path(path).name
    return discover.is_certificate_file(name) or name.endswith(".issuer")


def _leaf(path: Path) -> Leaf:
    try:
        cert = pem.parse_file(path).leaf
    except HastapleError:
        return Leaf(None)
    return Leaf(format(cert.serial_number, "x"), pem.is_must_staple(cert))


def _hint_due(rec: Record, now: dt.datetime) -> bool:
    """Whether a max-age hint (RFC 5019), not the half-life, made this one due."""
    if rec.this_update is None or rec.next_update is None or rec.max_age is None:
        return False
    return schedule.is_fresh(rec.this_update, rec.next_update, now)


def _served(rec: Record, pushes: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """``rec``'s per-socket push results, updated with ``pushes`` (socket -> how)."""
    return tuple(sorted({**dict(rec.haproxy), **pushes}.items()))


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


def _deployed(rec: Record) -> bool:
    """Whether ``rec``'s last fetch went well and every HAProxy took its staple."""
    return rec.result in {"fetched", "fresh"} and all(how != "error" for _, how in rec.haproxy)


def _has_staple(row: ResultRow) -> bool:
    """A good staple is stored (a failed push does not undo that)."""
    if row.status is not Status.GOOD or row.this_update is None:
        return False
    return row.action is not Action.FAILED or "error" in row.haproxy.values()


def _failed_status(row: ResultRow, rec: Record) -> str | None:
    """A signed revoked/unknown answer is news; otherwise the staple held keeps its status."""
    if row.status in {Status.REVOKED, Status.UNKNOWN}:
        return str(row.status.value)
    return rec.status if rec.this_update else str(Status.ERROR.value)


def _result(row: ResultRow) -> str:
    if row.status in {Status.REVOKED, Status.UNKNOWN}:
        return str(row.status.value)
    if _has_staple(row):
        return "fresh" if row.action is Action.FRESH else "fetched"
    if row.action is Action.SKIPPED and row.status is not Status.ERROR:
        return "skipped"
    return "error"
