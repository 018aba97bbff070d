"""
What one pipeline outcome means for a certificate's record, and when it is due next.

``after_refresh`` turns a row (fetched, fresh, failed...) into the next
``Record``: status, times, failures and ``next_refresh`` from
``core.schedule``; ``after_repush`` does the same for a staple re-pushed to
one socket. Pure: the clock, the rng and the policy come in as arguments.
Owns: the per-certificate bookkeeping rules. Must not do I/O, log, or count
metrics (the daemon does, with what these return).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

from hastaple.core import schedule
from hastaple.core.model import Action, ResultRow, Status
from hastaple.daemon.state import Record


def after_refresh(
    rec: Record,
    row: ResultRow,
    *,
    asked: bool,
    max_age: int | None,
    now: dt.datetime,
    rng: random.Random,
    policy: schedule.Policy,
) -> Record:
    """
    ``rec`` after the pipeline handled it with result ``row``.

    ``asked``: a responder was asked (its ``max_age`` hint applies).
    """
    # The fields that change, worked out first, then one ``replace`` (each
    # costs about 5 us: three per outcome were a tenth of the daemon's own work).
    this_update, next_update, last_success = rec.this_update, rec.next_update, rec.last_success
    fetched_at, hint = rec.fetched_at, rec.max_age
    status: str | None
    if has_staple(row):
        this_update, next_update, status = row.this_update, row.next_update, row.status.value
        # The max-age hint belongs to an answer from the CA; none was asked.
        fetched_at, hint = (now, max_age) if asked else (None, None)
        if asked:
            last_success = now
        # A staple HAProxy refused is a failure too (the next fetch is
        # still planned from the staple: the CA is not the problem).
        failures = rec.failures + 1 if refused(row) else 0
        assert this_update is not None  # noqa: S101 - has_staple says so (for mypy)
        window = schedule.Window(this_update, next_update, fetched_at, hint)
        next_refresh = schedule.next_refresh(window, now, 0, rng, policy)
    elif row.status in {Status.NO_OCSP, Status.MANAGED}:
        status, failures, next_refresh = row.status.value, 0, now + policy.interval
    else:
        status, failures = _failed_status(row, rec), rec.failures + 1
        next_refresh = schedule.next_refresh(rec.window(), now, failures, rng, policy)
    return dataclasses.replace(
        rec, ocsp_url=row.ocsp_url, result=result_of(row), error=row.error, last_attempt=now,
        haproxy=served(rec, _named_aliases(row)), note=row.note, status=status,
        this_update=this_update, next_update=next_update, fetched_at=fetched_at, max_age=hint,
        last_success=last_success, failures=failures, next_refresh=next_refresh,
    )  # fmt: skip


def after_repush(rec: Record, socket: str, how: str, error: str | None) -> Record:
    """``rec`` after its staple was pushed again to ``socket`` (``how``: the push's result)."""
    new = dataclasses.replace(rec, haproxy=served(rec, {socket: how}))
    if how == "error":
        return dataclasses.replace(new, failures=rec.failures + 1, error=error)
    if deployed(new):
        return dataclasses.replace(new, failures=0, error=None)
    return new


def refused(row: ResultRow) -> list[str]:
    """The sockets that did not take the row's staple."""
    return [sock for sock, how in row.haproxy.items() if how == "error"]


def hint_due(rec: Record, now: dt.datetime) -> bool:
    """Whether a max-age hint (RFC 5019), not the half-life, made this one due."""
    if rec.this_update is None or rec.next_update is None or rec.max_age is None:
        return False
    return schedule.is_fresh(rec.this_update, rec.next_update, now)


def served(rec: Record, pushes: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """``rec``'s per-socket push results, updated with ``pushes`` (socket -> how)."""
    return tuple(sorted({**dict(rec.haproxy), **pushes}.items()))


def deployed(rec: Record) -> bool:
    """Whether ``rec``'s last fetch went well and every HAProxy took its staple."""
    return rec.result in {"fetched", "fresh"} and all(how != "error" for _, how in rec.haproxy)


def has_staple(row: ResultRow) -> bool:
    """A good staple is stored (a failed push does not undo that)."""
    if row.status is not Status.GOOD or row.this_update is None:
        return False
    return row.action is not Action.FAILED or "error" in row.haproxy.values()


def _failed_status(row: ResultRow, rec: Record) -> str | None:
    """A signed revoked/unknown answer is news; otherwise the staple held keeps its status."""
    if row.status in {Status.REVOKED, Status.UNKNOWN}:
        return str(row.status.value)
    return rec.status if rec.this_update else str(Status.ERROR.value)


def result_of(row: ResultRow) -> str:
    """The row as one word for the log and the metrics: fetched, fresh, skipped, error..."""
    if row.status in {Status.REVOKED, Status.UNKNOWN}:
        return str(row.status.value)
    if has_staple(row):
        return "fresh" if row.action is Action.FRESH else "fetched"
    if row.action is Action.SKIPPED and row.status is not Status.ERROR:
        return "skipped"
    return "error"


def _named_aliases(row: ResultRow) -> dict[str, str]:
    """Each socket's push outcome; an alias says which socket reached its process."""
    return {
        sock: f"alias of {row.aliases[sock]}" if sock in row.aliases else how
        for sock, how in row.haproxy.items()
    }
