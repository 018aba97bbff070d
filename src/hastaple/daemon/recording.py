"""
What one refresh outcome does to the daemon: metrics, the next record, one log line.

``record`` runs for every outcome of a batch (``Daemon.refresh_due``), so it
is the daemon's own per-certificate work on top of the pipeline's: it counts
the attempt, keeps the next record (``scheduling.after_refresh``) for the
batch's one state transaction (``batching``), and logs the result, plus a
warning when the staple is close to expiry. An outcome about a certificate
removed or renewed while its batch was in flight is dropped.
Owns: the order of that bookkeeping. Must not decide what a record says
(``scheduling`` does) nor write the database itself (``batching`` does).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from hastaple.core.model import ResultRow
from hastaple.daemon import metrics as prom
from hastaple.daemon import scheduling
from hastaple.daemon.eventlog import log_event
from hastaple.daemon.state import Record
from hastaple.engine.pipeline import Outcome

if TYPE_CHECKING:
    from hastaple.daemon.scheduler import Daemon

_INFO_RESULTS = frozenset({"fetched", "fresh", "skipped"})


def record(
    daemon: Daemon, outcome: Outcome, now: dt.datetime, started: dict[str, str | None]
) -> None:
    """Count, keep and log ``outcome``; ``started``: each serial when the batch began."""
    row = outcome.row
    asked = outcome.elapsed is not None
    if asked and row.ocsp_url:
        host = row.ocsp_url.split("/")[2] if "//" in row.ocsp_url else row.ocsp_url
        daemon.metrics.answered(host, outcome.elapsed or 0.0)
    count_pushes(daemon.metrics, row)
    result = scheduling.result_of(row)
    daemon.metrics.fetched(result)
    rec = daemon.records.get(row.cert)
    if rec is None or row.cert not in daemon.entries or rec.serial != started.get(row.cert):
        # Removed (or renewed) while the batch was in flight: the outcome is
        # about a certificate that is gone; saving it would bring it back.
        log_event(logging.DEBUG, "discarded", cert=row.cert, result=result)
        return
    policy = daemon.config.policy
    new = scheduling.after_refresh(
        rec, row, asked=asked, max_age=outcome.max_age, now=now, rng=daemon.rng, policy=policy
    )
    refused = scheduling.refused(row)
    if refused and scheduling.has_staple(row):
        for sock in refused:
            daemon.haproxy.push_failed(sock, now, row.error, daemon.rng, policy)
    daemon.records.save(new, event=result, at=now)
    level = logging.INFO if result in _INFO_RESULTS else logging.ERROR
    if refused and level == logging.INFO:
        level = logging.WARNING  # stored, but not (everywhere) in HAProxy
    log_event(
        level, result, cert=row.cert, responder=row.ocsp_url, status=new.status,
        action=row.action.value, next_update=new.next_update, next_refresh=new.next_refresh,
        failures=new.failures, error=row.error,
    )  # fmt: skip
    if prom.expiring(new, now, policy):
        warn_expiring(new, now)


def warn_expiring(rec: Record, now: dt.datetime) -> None:
    """The warning for a staple in its alert window."""
    if rec.next_update is not None:
        log_event(
            logging.WARNING, "expiring", cert=rec.cert, next_update=rec.next_update,
            left=str(rec.next_update - now), failures=rec.failures, error=rec.error,
        )  # fmt: skip


def count_pushes(metrics: prom.Metrics, row: ResultRow) -> None:
    """Count each HAProxy push of ``row`` by its outcome."""
    for outcome in row.haproxy.values():
        metrics.pushed(outcome)
