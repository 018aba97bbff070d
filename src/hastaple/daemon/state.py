"""
The daemon's memory: one SQLite file in the state directory.

Per certificate, the last attempt and its result, the staple's times, the
next planned refresh and what each HAProxy holds, so that a restarted daemon
knows what is fresh (and asks no CA about it) and ``hastaple status`` can
answer without asking anyone. A bounded history of events per certificate
says what happened lately. Every write is one transaction: a daemon killed
mid-batch leaves the previous row or the new one, never half of each.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import operator
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hastaple.config import ensure_private_dir
from hastaple.core.model import rfc3339
from hastaple.core.schedule import Window
from hastaple.errors import ConfigError

DB_NAME = "state.sqlite3"
HISTORY_PER_CERT = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certs (
    cert TEXT PRIMARY KEY,
    ocsp_url TEXT, serial TEXT, status TEXT, result TEXT, error TEXT,
    last_attempt TEXT, last_success TEXT, this_update TEXT, next_update TEXT,
    fetched_at TEXT, max_age INTEGER, failures INTEGER NOT NULL DEFAULT 0,
    next_refresh TEXT, haproxy TEXT NOT NULL DEFAULT '{}',
    must_staple INTEGER NOT NULL DEFAULT 0,
    note TEXT
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cert TEXT NOT NULL, at TEXT NOT NULL, event TEXT NOT NULL, error TEXT
);
CREATE INDEX IF NOT EXISTS history_cert ON history (cert, id);
"""
_TIMES = (
    "last_attempt",
    "last_success",
    "this_update",
    "next_update",
    "fetched_at",
    "next_refresh",
)


@dataclass(frozen=True, slots=True)
class Record:
    """What the daemon knows about one certificate (one ``status`` row)."""

    cert: str
    ocsp_url: str | None = None
    serial: str | None = None
    status: str | None = None
    result: str | None = None
    error: str | None = None
    last_attempt: dt.datetime | None = None
    last_success: dt.datetime | None = None
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    fetched_at: dt.datetime | None = None
    max_age: int | None = None
    failures: int = 0
    next_refresh: dt.datetime | None = None
    haproxy: tuple[tuple[str, str], ...] = field(default=())
    # The certificate promises a staple (RFC 7633): without one it fails.
    must_staple: bool = False
    # Something to change though all is in order (a staple HAProxy will not
    # reload by itself), from the last outcome's row.
    note: str | None = None

    def window(self) -> Window | None:
        """The staple held, for the scheduler, or None when there is none."""
        if self.this_update is None:
            return None
        return Window(self.this_update, self.next_update, self.fetched_at, self.max_age)

    def action(self) -> str:
        """
        The contract's ``action`` for the last attempt, derived from ``result``.

        The daemon records its own outcome word (fetched, fresh, revoked,
        unknown, error, skipped); a fetched staple that HAProxy took is
        "deployed", and any error (a failed push included) is "failed".
        """
        if self.result in {"fetched", "fresh"}:
            if self.error:
                return "failed"
            pushed = any(how != "error" for _, how in self.haproxy)
            return "deployed" if self.result == "fetched" and pushed else self.result
        if self.result in {None, "skipped"}:
            return "skipped"
        return "failed"

    def to_json(self) -> dict[str, object]:
        """
        The ``status --json`` object: the README's row fields, then the daemon's own.

        ``status`` is never null: a certificate not checked yet is "error"
        with the sentence "not checked yet" (RFC 3339 UTC times).
        """
        out: dict[str, object] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "haproxy"
        }
        for name in _TIMES:
            out[name] = rfc3339(getattr(self, name))
        out["action"] = self.action()
        if self.status is None:
            out["status"] = "error"
            out["error"] = self.error or "not checked yet"
        out["haproxy"] = dict(self.haproxy)
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a certificate's history."""

    at: dt.datetime
    event: str
    error: str | None


# One column per Record field; the statement is the same for every record.
_COLUMNS = tuple(f.name for f in dataclasses.fields(Record))
_PUT = (
    f"INSERT OR REPLACE INTO certs ({', '.join(_COLUMNS)}) "  # noqa: S608 - column names are ours
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_VALUES = operator.attrgetter(*_COLUMNS)
_TIME_AT = tuple(_COLUMNS.index(name) for name in _TIMES)
_HAPROXY_AT = _COLUMNS.index("haproxy")
_HISTORY = "INSERT INTO history (cert, at, event, error) VALUES (?, ?, ?, ?)"
# Older than the certificate's HISTORY_PER_CERT latest: one index range, no list of ids.
_TRIM = (
    "DELETE FROM history WHERE cert = ? AND id <= "
    "(SELECT id FROM history WHERE cert = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)


class State:
    """A repository over the SQLite file; one per process, used from one thread."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        try:
            if readonly:
                # A file: URI needs an absolute path (``status --state-dir st``).
                uri = path.resolve().as_uri()
                self._db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
            else:
                self._db = sqlite3.connect(path)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
                _upgrade(self._db)
            self._db.row_factory = sqlite3.Row
            self._db.execute("SELECT count(*) FROM certs").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot use the state database: {exc}") from exc
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> State:
        """Open (creating) ``state_dir``/state.sqlite3, the directory private (0700)."""
        try:
            ensure_private_dir(state_dir)
        except OSError as exc:
            raise ConfigError(f"{state_dir}: cannot create the state directory: {exc}") from exc
        return cls(state_dir / DB_NAME)

    @classmethod
    def open_readonly(cls, state_dir: Path) -> State:
        """Open an existing database for reading (``hastaple status``)."""
        path = state_dir / DB_NAME
        if not path.exists():
            raise ConfigError(f"{path}: no state yet (has 'hastaple run' been started?)")
        return cls(path, readonly=True)

    def close(self) -> None:
        """Close the database (every write is already committed)."""
        self._db.close()

    def get(self, cert: str) -> Record | None:
        """The record of ``cert``, or None when it is unknown."""
        row = self._db.execute("SELECT * FROM certs WHERE cert = ?", (cert,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[Record]:
        """Every record, ordered by certificate."""
        return [_record(r) for r in self._db.execute("SELECT * FROM certs ORDER BY cert")]

    def put(
        self, record: Record, *, event: str | None = None, at: dt.datetime | None = None
    ) -> None:
        """Insert or replace ``record``; with ``event``, append it to the bounded history."""
        self.put_many([(record, event, at)])

    def put_many(
        self,
        items: Iterable[tuple[Record, str | None, dt.datetime | None]],
        *,
        forget: Iterable[str] = (),
    ) -> None:
        """
        ``put`` for each (record, event, at), and ``forget`` ``forget``, in one transaction.

        One commit (one WAL sync) for a batch of 10,000 outcomes instead of
        one each; each row is still the previous one or the new one.
        """
        items = items if isinstance(items, list | tuple) else list(items)
        texts = _Texts()  # a batch's records share most of their times
        rows = (_row(record, texts) for record, _, _ in items)
        events = [item for item in items if item[1] is not None]
        with self._db:
            self._forget(forget)
            # Generators, not lists of rows: 100,000 rows at once would be 60 MB.
            self._db.executemany(_PUT, rows)
            self._db.executemany(_HISTORY, (
                (record.cert, texts(at or record.last_attempt or dt.datetime.now(dt.UTC)),
                 event, record.error)
                for record, event, at in events
            ))  # fmt: skip
            self._db.executemany(_TRIM, ((r.cert, r.cert, HISTORY_PER_CERT) for r, _, _ in events))

    def forget(self, *certs: str) -> None:
        """Drop ``certs`` and their history (removed), in one transaction."""
        with self._db:
            self._forget(certs)

    def _forget(self, certs: Iterable[str]) -> None:
        rows = [(cert,) for cert in certs]
        if rows:
            self._db.executemany("DELETE FROM certs WHERE cert = ?", rows)
            self._db.executemany("DELETE FROM history WHERE cert = ?", rows)

    def history(self, cert: str) -> list[Event]:
        """``cert``'s events, oldest first (at most HISTORY_PER_CERT)."""
        rows = self._db.execute(
            "SELECT at, event, error FROM history WHERE cert = ? ORDER BY id", (cert,)
        )
        return [Event(_time(r["at"]), r["event"], r["error"]) for r in rows]  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.all())


def _upgrade(db: sqlite3.Connection) -> None:
    """Add the columns a database written by an older hastaple lacks."""
    have = {row[1] for row in db.execute("PRAGMA table_info(certs)")}
    if "must_staple" not in have:
        with db:
            db.execute("ALTER TABLE certs ADD COLUMN must_staple INTEGER NOT NULL DEFAULT 0")
    if "note" not in have:
        with db:
            db.execute("ALTER TABLE certs ADD COLUMN note TEXT")


def _record(row: sqlite3.Row) -> Record:
    values = dict(row)
    values["must_staple"] = bool(values.get("must_staple", 0))
    for name in _TIMES:
        values[name] = _time(values[name])
    values["haproxy"] = tuple(sorted(json.loads(values["haproxy"] or "{}").items()))
    return Record(**values)


def _row(record: Record, texts: _Texts) -> tuple[object, ...]:
    """``record``'s column values, in ``_COLUMNS`` order, as SQLite stores them."""
    values = list(_VALUES(record))
    for at in _TIME_AT:
        if (when := values[at]) is not None:
            values[at] = texts(when)
    haproxy = record.haproxy
    values[_HAPROXY_AT] = json.dumps(dict(haproxy), sort_keys=True) if haproxy else "{}"
    return tuple(values)


class _Texts:
    """
    ``_text``, remembered for the last few distinct times (equal instants, same text).

    A batch's records share the batch's time (last attempt, last success,
    fetched at) and often the responder's (this and next update): about half
    of a row's cost was formatting them again. Bounded: the jittered
    ``next_refresh`` times are all different.
    """

    _KEEP = 64

    def __init__(self) -> None:
        self._texts: dict[dt.datetime, str] = {}

    def __call__(self, when: dt.datetime) -> str:
        text = self._texts.get(when)
        if text is None:
            if len(self._texts) >= self._KEEP:
                self._texts.clear()
            text = self._texts[when] = when.astimezone(dt.UTC).isoformat()
        return text


def _text(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).isoformat() if when is not None else None


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None
