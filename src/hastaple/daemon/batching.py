"""
The daemon's records, saved to the state database one transaction per batch.

``Records`` is the in-memory ``Record`` per certificate and its mirror in
SQLite (``hastaple.daemon.state``). Inside ``batch()``, saves are collected
and written in one transaction at the end: one commit per certificate (a WAL
sync each) made a cold daemon spend about 0.7 ms per certificate on SQLite
alone, twice (added, fetched). Owns: when records reach the database. Must
not decide what a record says (``scheduling`` does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

from hastaple.daemon.state import Record, State


class Records(dict[str, Record]):
    """The records by certificate name; ``save`` keeps memory and database in step."""

    def __init__(self, state: State) -> None:
        super().__init__((r.cert, r) for r in state.all())
        self.state = state
        self._pending: list[tuple[Record, str | None, dt.datetime | None]] | None = None

    def save(self, rec: Record, *, event: str | None = None, at: dt.datetime | None = None) -> None:
        """Keep ``rec``; write it now, or at the end of the batch in progress."""
        self[rec.cert] = rec
        if self._pending is not None:
            self._pending.append((rec, event, at))
        else:
            self.state.put(rec, event=event, at=at)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """
        Save the records of a whole batch in one state transaction, at the end.

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
