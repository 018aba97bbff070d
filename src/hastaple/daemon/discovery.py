"""
What a configuration means now, compared with what the daemon knows: the discovery diff.

``diff`` takes what ``sources.discover`` found and the records the daemon
holds and returns a ``View``: the certificates and sockets to serve, the
directories to watch, the records to save (added, renewed, touched) and the
ones to forget. It changes nothing: the daemon swaps a ``View`` in as one
immutable object (``Daemon.apply``), so a configuration that cannot be read
leaves the running one whole. Serials are read again only from files whose
identity changed. Owns: the diff. Must not write the state database, log or
talk to HAProxy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from hastaple.config import Config
from hastaple.core import schedule
from hastaple.core.model import CertEntry
from hastaple.daemon.state import Record
from hastaple.errors import HastapleError
from hastaple.sources import discover, pem
from hastaple.stores import fileid, index


class Leaf(NamedTuple):
    """What the daemon keeps of a certificate file's leaf: its serial, and must-staple."""

    serial: str | None  # None: the file holds no readable certificate
    must_staple: bool = False


# Per certificate: its file's identity, packed (``fileid.packed``), and its leaf.
Serials = Mapping[str, tuple[bytes, Leaf]]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """
    What a configuration means at one moment: ``diff`` computes it, the daemon swaps it in.

    ``saves`` are the records that change (new, renewed, due again),
    ``removed`` the certificates to forget, ``news`` the added/renewed ones
    to log.
    """

    config: Config
    entries: Mapping[str, CertEntry] = dataclasses.field(default_factory=_empty)
    sockets: tuple[str, ...] = ()
    # Sockets of the configuration below 'level admin', with why: every row says so.
    below_admin: tuple[tuple[str, str], ...] = ()
    roots: frozenset[Path] = frozenset()
    serials: Serials = dataclasses.field(default_factory=_empty)
    removed: tuple[str, ...] = ()
    saves: tuple[Record, ...] = ()
    news: tuple[tuple[str, str | None, str], ...] = ()
    warnings: tuple[str, ...] = ()

    @classmethod
    def empty(cls, config: Config) -> View:
        """Before the first discovery: ``config``, its sockets, no certificates."""
        return cls(config, sockets=tuple(config.sockets))


def diff(
    config: Config,
    found: discover.Discovery,
    records: Mapping[str, Record],
    known: Serials,
    *,
    changed: Iterable[Path],
    at_once: bool,
    now: dt.datetime,
    rng: random.Random,
) -> View:
    """
    The ``View`` of ``found`` for a daemon holding ``records``.

    ``changed``: files an event named (always read again, and due again);
    ``at_once``: due now, not spread over the start-up window.
    """
    touched = {str(p).removesuffix(".issuer") for p in changed}
    entries = {e.file: e for e in found.certs}
    serials = {n: v for n, v in known.items() if n in entries}
    leaves = {name: leaf_of(serials, name, touched=name in touched) for name in entries}
    news = [
        (name, leaf.serial, why)
        for name, leaf in leaves.items()
        if (why := _news(records.get(name), leaf.serial, touched=name in touched)) is not None
    ]
    spread = schedule.startup_spread(len(news), config.policy)
    saves = []
    for name, serial, why in news:
        due = now if at_once else now + spread * rng.random()
        rec = records.get(name)
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
        and (rec := records.get(name)) is not None
        and rec.must_staple != leaf.must_staple
    ]
    return View(
        config=config,
        entries=MappingProxyType(entries),
        sockets=tuple(dict.fromkeys((*config.sockets, *found.sockets))),
        below_admin=found.below_admin,
        roots=frozenset(roots(config, found.certs)),
        serials=MappingProxyType(serials),
        removed=tuple(sorted(set(records) - set(entries))),
        saves=tuple(saves),
        news=tuple((name, serial, why) for name, serial, why in news if why != "touched"),
        warnings=found.warnings,
    )


def _news(rec: Record | None, serial: str | None, *, touched: bool) -> str | None:
    """
    Why a certificate becomes due now ("added", "renewed", "touched"), or None.

    A touched file that still is no certificate (a log file in a ``crt``
    directory, say) is left to its backoff: retrying it at every write
    would log a failure at every write, for ever.
    """
    if rec is None:
        return "added"
    if serial != rec.serial:
        return "renewed"  # what we knew was about the previous certificate
    if rec.next_refresh is None:
        return "touched"
    if touched and not (serial is None and rec.failures > 0):
        return "touched"
    return None


def leaf_of(
    serials: dict[str, tuple[bytes, Leaf]],
    name: str,
    *,
    touched: bool,
) -> Leaf:
    """
    The leaf's serial and must-staple, parsed again only when the file changed.

    ``serials`` is updated.

    A file an event names is always read (an in-place rewrite of the same
    size can keep the identity within one timestamp tick).
    """
    fingerprint = fileid.packed(index.fingerprint(name))  # the name is the absolute path
    known = serials.get(name)
    if not touched and fingerprint is not None and known and known[0] == fingerprint:
        return known[1]
    leaf = _leaf(Path(name))
    if fingerprint is None:
        serials.pop(name, None)
    else:
        serials[name] = (fingerprint, leaf)
    return leaf


def roots(config: Config, certs: Sequence[CertEntry]) -> set[Path]:
    """The directories to watch: the sources' and every certificate's."""
    dirs = {p if p.is_dir() else p.parent for p in config.paths}
    dirs |= {p.parent for p in (*config.crt_lists, *config.haproxy_configs)}
    dirs |= {Path(d) for d in {os.path.dirname(e.file) for e in certs}}  # noqa: PTH120 - text
    return {r for r in dirs if r.is_dir()}


def _leaf(path: Path) -> Leaf:
    try:
        cert = pem.parse_leaf_file(path)
    except HastapleError:
        return Leaf(None)
    return Leaf(format(cert.serial_number, "x"), pem.is_must_staple(cert))
