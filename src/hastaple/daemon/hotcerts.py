"""
``hastaple run --hot-certs``: the running HAProxy follows the certificate files as a reload would.

The daemon already notices renewed, new and removed files (its watcher and
discovery) and fetches the staple of each new certificate first. With
``hot_certs`` on, this module then loads each changed file into every
HAProxy process (``certpush``): the renewed PEM with its staple in one
transaction, a new file into its crt-list or directory, a removed file out
of them. A must-staple certificate without a valid staple is not loaded;
the old one stays and the row fails with the reason (an alert).

The rows of the batch are rewritten with what each process now serves, so
the daemon's records, metrics and retries see the truth: a load that failed
fails the row (retried with backoff), one that worked is ``renewed`` or
``added`` for that socket.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from hastaple.core.model import Action, CertEntry
from hastaple.daemon.eventlog import log_event
from hastaple.engine.pipeline import Outcome
from hastaple.errors import CertificateError
from hastaple.haproxy import certpush
from hastaple.haproxy.certload import Remove
from hastaple.sources import certfiles
from hastaple.sources.certfiles import target_of

logger = logging.getLogger(__name__)


class HotCerts:
    """Which files changed since HAProxy last loaded them, and loading them."""

    def __init__(self) -> None:
        self.pending: set[str] = set()  # added or renewed, not yet loaded everywhere
        self.removals: list[tuple[str, CertEntry]] = []

    def note(
        self,
        news: Sequence[tuple[str, str | None, str]],
        removed: Sequence[str],
        entries: Mapping[str, CertEntry],
    ) -> None:
        """What discovery found: ``news`` (name, serial, why) and ``removed`` names."""
        for name in removed:
            self.removed(name, entries.get(name))
        for name, _, why in news:
            if why in {"added", "renewed"}:
                self.changed(name)

    def changed(self, name: str) -> None:
        """``name`` was added or renewed on disk: load it after its staple is fetched."""
        self.pending.add(name)

    def removed(self, name: str, entry: CertEntry | None) -> None:
        """``name`` is gone from disk (or from its crt-list): remove it from HAProxy."""
        self.pending.discard(name)
        if entry is not None:
            self.removals.append((name, entry))

    async def follow(
        self,
        outcomes: Sequence[Outcome],
        entries: Mapping[str, CertEntry],
        sockets: Sequence[str],
        *,
        configs: Sequence[Path],
        directories: Sequence[Path],
        now: dt.datetime,
        serials: Mapping[str, str | None],
    ) -> list[Outcome]:
        """
        Load the pending files of this batch and apply the removals; the rows rewritten.

        ``serials`` are the certificates (hex serials) the batch fetched for:
        a file renewed again while the batch ran holds another one, whose
        staple was not asked for yet. It waits for its own batch (it is due
        at once), rather than being loaded without its staple.
        """
        config_files = {p.resolve() for p in configs}
        dirs = {p.resolve() for p in directories}
        removals = [
            Remove(entry.haproxy_names[0], target.crt_list)
            for _, entry in self.removals
            if (target := target_of(entry, config_files, dirs)).crt_list is not None
        ]
        self.removals = []
        rows = list(outcomes)
        todo = self._todo(rows, entries, (config_files, dirs), now, serials)
        if not (todo or removals) or not sockets:
            return rows
        results = await certpush.load(sockets, [w for _, w in todo], again=False, removals=removals)
        for socket, result in results.items():
            if isinstance(result, str):
                if not result.startswith("alias of "):
                    for i, _ in todo:
                        rows[i] = _failed(rows[i], f"haproxy {socket}: {result}", socket)
                continue
            for (i, _), one in zip(todo, result, strict=False):
                rows[i] = _merge(rows[i], socket, one)
            for one in result[len(todo) :]:
                level = logging.INFO if one.ok else logging.WARNING
                log_event(level, "hot_removed", cert=one.crt, socket=socket, error=one.error)
        self.pending -= {
            rows[i].row.cert for i, _ in todo if rows[i].row.action is not Action.FAILED
        }
        return rows

    def _todo(
        self,
        rows: list[Outcome],
        entries: Mapping[str, CertEntry],
        where: tuple[set[Path], set[Path]],
        now: dt.datetime,
        serials: Mapping[str, str | None],
    ) -> list[tuple[int, certpush.Wanted]]:
        """The pending files among ``rows``, as read from disk (an unreadable one fails its row)."""
        todo = []
        for i, outcome in enumerate(rows):
            name = outcome.row.cert
            if name not in self.pending or name not in entries:
                continue
            entry = entries[name]
            target = target_of(entry, *where)
            try:
                read = certfiles.read(
                    entry.path, entry.haproxy_names[0], now=now,
                    base=entry.files_base, chains=entry.issuers_chain,
                )  # fmt: skip
            except CertificateError as exc:
                rows[i] = _failed(outcome, str(exc))
                continue
            if serials.get(name) != format(read.files.serial, "x"):
                continue  # renewed again meanwhile: its own batch loads it with its staple
            todo.append((i, certpush.Wanted(read.files, target.crt_list, target.line)))
        return todo


def _merge(outcome: Outcome, socket: str, one: certpush.Outcome) -> Outcome:
    """The row with what ``socket``'s process now serves."""
    row = outcome.row
    if one.action == "current":
        return outcome
    if not one.ok:
        return _failed(outcome, f"haproxy {socket}: {one.error}", socket)
    how = one.action if one.stapled else f"{one.action}-unstapled"
    log_event(logging.INFO, "hot_" + one.action, cert=row.cert, socket=socket, stapled=one.stapled)
    # The push before this load failed on this socket only because HAProxy did
    # not serve the file yet: that error is superseded.
    prefix = f"haproxy {socket}: "
    rest = [e for e in (row.error or "").split("; ") if e and not e.startswith(prefix)]
    action, error, note = row.action, "; ".join(rest) or None, row.note
    if action is Action.STORED or (
        action is Action.FAILED and row.haproxy.get(socket) == "error" and error is None
    ):
        action, note = Action.DEPLOYED, None
    haproxy = {**row.haproxy, socket: how}
    changed = dataclasses.replace(row, haproxy=haproxy, action=action, error=error, note=note)
    return dataclasses.replace(outcome, row=changed)


def _failed(outcome: Outcome, error: str, socket: str | None = None) -> Outcome:
    row = outcome.row
    haproxy = {**row.haproxy, socket: "error"} if socket is not None else row.haproxy
    errors = "; ".join(e for e in (row.error, error) if e)
    failed = dataclasses.replace(row, action=Action.FAILED, error=errors, haproxy=haproxy)
    return dataclasses.replace(outcome, row=failed)
