"""
Every Prometheus object of the daemon, defined once, and /metrics + /healthz.

Each daemon gets its own ``CollectorRegistry`` (not the global one), so tests
in one process never collide. Per-certificate series (staple expiry, last
success, the certificate's facts) carry only the certificate and a few
low-cardinality labels; they are computed at scrape time from the daemon's
records and clock, so "seconds until expiry" is never stale between refreshes.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hastaple.core import schedule
from hastaple.daemon.state import Record
from hastaple.errors import ConfigError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
_QUIET = frozenset({"no-ocsp", "managed"})
_SIGNED_BAD = frozenset({"revoked", "unknown"})
# Every documented label value of the counters, created at 0 at start-up: a
# series that first appears at 1 hides its first rise from ``increase()``.
FETCH_RESULTS = ("fetched", "fresh", "revoked", "unknown", "error", "skipped")
PUSH_OUTCOMES = ("update", "commit", "stored", "error")

Snapshot = Callable[[], tuple[dt.datetime, Iterable[Record]]]
Sockets = Callable[[], Iterable[tuple[str, bool]]]


class Metrics:
    """The daemon's counters and histograms, plus the per-certificate gauges."""

    def __init__(self, snapshot: Snapshot, *, sockets: Sockets = lambda: ()) -> None:
        self.registry = CollectorRegistry()
        self.fetches = Counter(
            "hastaple_fetches",
            "Refresh attempts by result (fetched, fresh, revoked, unknown, error, skipped).",
            ["result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hastaple_responder_latency_seconds",
            "Time an OCSP responder took to answer, whole exchange.",
            ["responder"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pushes = Counter(
            "hastaple_haproxy_pushes",
            "Staples loaded into HAProxy by outcome (update, commit, error).",
            ["outcome"],
            registry=self.registry,
        )
        # Each label value's series, looked up once: ``labels()`` takes a lock
        # and checks its arguments, at every outcome of every batch.
        self._fetches = {result: self.fetches.labels(result) for result in FETCH_RESULTS}
        self._pushes = {outcome: self.pushes.labels(outcome) for outcome in PUSH_OUTCOMES}
        self._latency: dict[str, Histogram] = {}
        self.registry.register(_Staples(snapshot))
        self.registry.register(_Sockets(sockets))

    def fetched(self, result: str) -> None:
        """Count one refresh attempt that ended in ``result``."""
        series = self._fetches.get(result)
        if series is None:
            series = self._fetches[result] = self.fetches.labels(result)
        series.inc()

    def answered(self, responder: str, seconds: float) -> None:
        """Observe how long ``responder`` (host[:port]) took to answer."""
        series = self._latency.get(responder)
        if series is None:
            series = self._latency[responder] = self.latency.labels(responder)
        series.observe(seconds)

    def pushed(self, outcome: str) -> None:
        """Count one staple pushed to HAProxy with ``outcome``."""
        series = self._pushes.get(outcome)
        if series is None:
            series = self._pushes[outcome] = self.pushes.labels(outcome)
        series.inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _Staples(Collector):
    """The per-certificate gauges, at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        now, records = self.snapshot()
        expiry = GaugeMetricFamily(
            "hastaple_staple_expiry_seconds",
            "Seconds until the staple held expires (negative: expired).",
            labels=["cert"],
        )
        success = GaugeMetricFamily(
            "hastaple_last_success_timestamp_seconds",
            "Unix time of the last successful fetch.",
            labels=["cert"],
        )
        info = GaugeMetricFamily(
            "hastaple_certificate_info",
            "1 for each watched certificate that needs a staple, stapled or not; "
            "status: the CA's last word (good, revoked, unknown; error: no staple yet).",
            labels=["cert", "must_staple", "status"],
        )
        failures = GaugeMetricFamily(
            "hastaple_consecutive_failures",
            "Failed attempts in a row (refreshes and pushes) since the last success.",
            labels=["cert"],
        )
        for r in records:
            if r.next_update is not None:
                expiry.add_metric([r.cert], (r.next_update - now).total_seconds())
            if r.last_success is not None:
                success.add_metric([r.cert], r.last_success.timestamp())
            if watched(r):
                must = "true" if r.must_staple else "false"
                info.add_metric([r.cert, must, r.status or "error"], 1.0)
                failures.add_metric([r.cert], float(r.failures))
        yield expiry
        yield success
        yield info
        yield failures


class _Sockets(Collector):
    """Per runtime socket: 1 while it answers and takes every staple, else 0."""

    def __init__(self, sockets: Sockets) -> None:
        self.sockets = sockets

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            "hastaple_haproxy_ok",
            "1 while the runtime socket answers and took every staple pushed last; 0 otherwise.",
            labels=["socket"],
        )
        for socket, good in self.sockets():
            ok.add_metric([socket], 1.0 if good else 0.0)
        yield ok


@dataclass(frozen=True, slots=True)
class Health:
    """The /healthz answer: ok, or the reasons it is not."""

    ok: bool
    reasons: tuple[str, ...]


def watched(rec: Record) -> bool:
    """
    Whether ``rec`` needs a staple from hastaple (a ``hastaple_certificate_info`` series).

    Not a certificate without an OCSP URL, nor one HAProxy's own updater
    owns; a must-staple one without an OCSP URL is listed: it cannot work.
    """
    if rec.status == "managed":
        return False
    return rec.status != "no-ocsp" or rec.must_staple


def expiring(rec: Record, now: dt.datetime, policy: schedule.Policy) -> bool:
    """
    Whether ``rec``'s staple is in the alert window (a log warning, and /healthz fails).

    A must-staple certificate's window opens earlier (``must_staple_alert_before``).
    """
    if rec.status in _QUIET or rec.this_update is None or rec.next_update is None:
        return False
    return schedule.in_alert_window(
        rec.this_update, rec.next_update, now, policy, must_staple=rec.must_staple
    )


def health(records: Iterable[Record], now: dt.datetime, policy: schedule.Policy) -> Health:
    """
    Unhealthy only for what an operator must act on.

    That is: a staple inside the alert window (or expired) without a
    successful refresh, a certificate with no valid staple whose fetch
    failed, or a certificate the CA says is revoked or unknown. A failed
    refresh while a valid staple has time left is not one: the backoff
    retries it, and ``expiring`` fires while several retries still fit. A
    certificate without an OCSP URL, or one HAProxy updates itself, is fine.
    """
    reasons = []
    for r in records:
        if r.status in _QUIET:
            continue
        if r.status in _SIGNED_BAD:
            reasons.append(f"{r.cert}: the CA answers {r.status}: {r.error or 'replace it'}")
        elif expiring(r, now, policy) and r.next_update is not None:
            left = r.next_update - now
            when = "expired" if left <= dt.timedelta(0) else f"expires in {_human(left)}"
            why = f": {r.error}" if r.error else ""
            reasons.append(f"{r.cert}: staple {when} without a successful refresh{why}{must(r)}")
        elif r.failures > 0 and not _valid_staple(r, now):
            reasons.append(f"{r.cert}: no valid staple: {r.error or 'fetch failed'}{must(r)}")
    return Health(not reasons, tuple(reasons))


def must(rec: Record) -> str:
    """The note a must-staple certificate's alert ends with ("" for the others)."""
    return " (must-staple: clients refuse it without a valid staple)" if rec.must_staple else ""


def _valid_staple(rec: Record, now: dt.datetime) -> bool:
    """Whether ``rec`` holds a staple that has not expired."""
    if rec.this_update is None:
        return False
    return rec.next_update is None or rec.next_update > now


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m"


def app(metrics: Metrics, check: Callable[[], Health]) -> web.Application:
    """The small HTTP app: GET /metrics and GET /healthz."""

    async def _metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(_: web.Request) -> web.Response:
        result = check()
        text = "ok\n" if result.ok else "".join(f"{r}\n" for r in result.reasons)
        return web.Response(text=text, status=200 if result.ok else 503)

    application = web.Application()
    application.router.add_get("/metrics", _metrics)
    application.router.add_get("/healthz", _healthz)
    return application


async def serve(application: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """
    Start serving; return the runner (``await runner.cleanup()`` stops it) and the port.

    Raises:
        ConfigError: the address cannot be bound (in use, not ours); the runner is
            cleaned up first, so nothing is left half-started.
    """
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        # asyncio wraps the bind error in a long sentence; the errno says it plainly.
        why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError(f"metrics_address {where}: {why}") from exc
    server = site._server  # noqa: SLF001 - aiohttp exposes the bound port nowhere else
    sockets = getattr(server, "sockets", None) or ()
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return runner, bound
