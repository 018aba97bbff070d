"""
Staples another node announced (``--fleet``): which certificates they are for.

An announcement names a serial; the certificates here with that serial become
due at once and go through the pipeline with ``Options(adopt=True)``: the
fleet's staple is taken if it validates and is newer than the one held, even
while that one is still fresh, and no CA is asked. So every node serves a
new staple within a second of its announcement. Owns: the serial -> names
map and the set of announced names. Must not fetch or judge anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, MutableMapping

from hastaple.daemon.discovery import View
from hastaple.daemon.state import Record


class Announced:
    """The certificates due because another node announced their staple."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._by_serial: tuple[object, dict[str, list[str]]] = (None, {})

    def mark(
        self, view: View, records: MutableMapping[str, Record], serial: str, now: dt.datetime
    ) -> None:
        """Make the certificates of ``serial`` due ``now`` (in memory: a restart re-plans)."""
        for name in self._names(view).get(serial, ()):
            rec = records.get(name)
            if rec is not None and (rec.next_refresh is None or rec.next_refresh > now):
                records[name] = dataclasses.replace(rec, next_refresh=now)
                self.names.add(name)

    def split(self, plain: list[str], due: Iterable[str]) -> tuple[list[str], list[str]]:
        """``plain`` less the announced names, and those names; all of ``due`` handled."""
        adopt = [n for n in plain if n in self.names]
        rest = [n for n in plain if n not in self.names]
        self.names.difference_update(due)
        return rest, adopt

    def _names(self, view: View) -> dict[str, list[str]]:
        """Certificate names by serial, kept until the certificates change."""
        if self._by_serial[0] is not view.serials:
            names: dict[str, list[str]] = {}
            for name, (_, leaf) in view.serials.items():
                if leaf.serial is not None and name in view.entries:
                    names.setdefault(leaf.serial, []).append(name)
            self._by_serial = (view.serials, names)
        return self._by_serial[1]
