"""
Remember validated staples, so an hourly run does not re-read 10,000 unchanged files.

For each certificate the index keeps what the pipeline learnt the last time it
parsed the PEM and validated the staple next to it: OCSP URL, CertID, the
issuer PEM HAProxy may need, the verdict's times, and until when the staple
stays valid (its nextUpdate, or sooner if a certificate in the response, the
delegated signer, expires first). It is keyed by the file identities
(inode, size, mtime and ctime in nanoseconds) of the PEM, of ``<crt>.ocsp``
and of ``<crt>.issuer``: any change to any of them (a renewal, a new staple
from anyone, an edited issuer) is a miss and the pipeline parses and
validates everything again. A hit is therefore the same bytes that passed
every check before; only the clock has moved, and the caller re-checks the
times against ``now``.

It lives in the state directory: a snapshot (``index.json``, written
atomically) and a journal of later changes (``index.journal``); see ``Index``.
A missing, unreadable or foreign file is an empty index, never an error.
File identities are ``fileid``'s, the on-disk format ``index_codec``'s. Must
not judge a response (the pipeline validated it before ``record``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO

from hastaple.errors import StoreError
from hastaple.stores import index_codec as codec
from hastaple.stores import store
from hastaple.stores.fileid import (
    Fingerprint,
    fingerprint,
    fingerprint_if,
    identity,
    issuer_file,
    issuer_fingerprint,
)
from hastaple.stores.index_codec import Entry

__all__ = [
    "Entry",
    "Fingerprint",
    "Index",
    "fingerprint",
    "fingerprint_if",
    "issuer_fingerprint",
]

INDEX_NAME = "index.json"
JOURNAL_NAME = "index.journal"
# Changes the journal holds before the snapshot is rewritten: at least this
# many, else half the index (so a rewrite is paid for by as many cheap appends).
_MIN_JOURNAL = 1024
_VERSION = 2  # 2: entries say whether the certificate is must-staple


class Index:
    """
    The index of one state directory: ``open``, ``sync``, ``lookup``/``record``, ``save``.

    On disk it is a snapshot (``index.json``) plus a journal of the changes
    made since (``index.journal``, one JSON line per change). ``save`` appends
    only what changed, so a daemon batch of one certificate writes one line
    and syncs one small file, not the whole index; the snapshot is rewritten
    (and the journal dropped) only once the journal has grown to half the
    index. The journal's first line names the snapshot it follows (a random
    generation), so a crash between writing a new snapshot and dropping the
    old journal never replays stale changes over the new snapshot.

    Callers that run one after the other (the daemon's batches) keep one
    ``Index`` and call ``sync`` at the start of each run, under the state
    directory's lock (``lock``): it reads only what other processes appended
    since, and the whole index again only after one of them rewrote it.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, Entry] = {}
        # certificate path -> serial the CA said is revoked: an older good staple
        # on disk must not count as fresh, nor be pushed, for that serial.
        self._revoked: dict[str, int] = {}
        # One copy of each issuer PEM (thousands of entries share an intermediate);
        # filled while reading, so the copies never exist at once.
        self._pems: dict[bytes, bytes] = {}
        # Names changed since the last save (entries and revoked marks), for the
        # journal. Not kept once the next save is a new snapshot anyway
        # (``_dirty`` then): a cold run's set was 100 bytes a certificate.
        self._changed: set[str] = set()
        self._changed_revoked: set[str] = set()
        self._dirty = False  # something changed that ``_changed`` does not name
        # What of the files this object has read (or written) itself.
        self._snapshot: Fingerprint | None = None  # identity of index.json as read
        self._generation: str | None = None  # of that snapshot; None: none usable
        self._journal: Fingerprint | None = None  # identity of index.journal as read
        self._journal_at = 0  # bytes of the journal replayed (or written) so far
        self._journal_lines = 0  # changes in the journal (decides when to rewrite)
        self._rewrite = True  # the next save writes a new snapshot (nothing usable yet)
        self._loaded = False

    @classmethod
    def open(cls, state_dir: Path | None) -> Index:
        """The index of ``state_dir`` (None: a throw-away one), not read yet (``sync``)."""
        return cls(None if state_dir is None else state_dir / INDEX_NAME)

    @classmethod
    def load(cls, state_dir: Path | None) -> Index:
        """Read ``state_dir``'s index; anything unusable gives an empty index."""
        idx = cls.open(state_dir)
        idx.sync()
        return idx

    @property
    def state_dir(self) -> Path | None:
        """The directory this index lives in."""
        return None if self.path is None else self.path.parent

    @property
    def _journal_path(self) -> Path:
        assert self.path is not None  # noqa: S101 - only called with a state directory
        return self.path.with_name(JOURNAL_NAME)

    def sync(self) -> None:
        """
        Catch up with what other processes wrote since this object last read or wrote.

        Unsaved changes are dropped when the snapshot was rewritten meanwhile:
        call ``save`` first (the pipeline saves at the end of every run).
        """
        if self.path is None:
            return
        snapshot = fingerprint(self.path)
        journal = fingerprint(self._journal_path)
        if self._loaded and snapshot == self._snapshot:
            if journal == self._journal:
                return  # nobody wrote since: one stat of each file, nothing read
            if _appended_to(self._journal, journal):
                self._read_journal()  # only the lines other processes added
                return
        self._read_snapshot()
        self._read_journal()

    def _read_snapshot(self) -> None:
        assert self.path is not None  # noqa: S101 - sync checked
        self._entries, self._revoked, self._pems = {}, {}, {}
        self._changed.clear()
        self._changed_revoked.clear()
        self._dirty = False
        self._generation, self._journal, self._journal_at, self._journal_lines = None, None, 0, 0
        self._rewrite, self._loaded = True, True
        try:
            with self.path.open("rb") as f:
                self._snapshot = identity(os.fstat(f.fileno()))
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    self._parse_snapshot(f)
        except OSError:
            self._snapshot = None

    def _parse_snapshot(self, f: BinaryIO) -> None:
        """
        Read index.json an entry per line (as ``codec.document`` writes it), or whole (older files).

        Line by line, only one entry's JSON exists at a time: the whole
        document as dicts was about 3 KB a certificate on top of the file's
        bytes and the entries, the peak of a warm run (300 MB at 100,000).
        """
        first = f.readline()
        head: Any = None
        if first.endswith(b'"certs":{\n'):
            head = json.loads(first[:-1] + b"}}")  # '{"version":..,"certs":{' closed
        tail: dict[str, Any] = {}
        if isinstance(head, dict):
            doc, certs = head, codec.entry_lines(f, tail)
        else:
            doc = tail = json.loads(first + f.read())  # one line: written by an older version
            certs = iter(doc["certs"].items())
        if doc.get("version") != _VERSION:
            return
        pems = self._pems
        entries = {name: codec.entry(raw, pems) for name, raw in certs}
        revoked = tail.get("revoked", {})  # ``tail`` is complete once ``certs`` is exhausted
        self._entries = entries
        self._revoked = {name: int(serial) for name, serial in revoked.items()}
        generation = doc.get("generation")
        self._generation = generation if isinstance(generation, str) else None
        self._rewrite = self._generation is None

    def _read_journal(self) -> None:
        """Replay the complete lines appended since ``_journal_at``; a torn one ends it."""
        if self._generation is None:
            return  # a journal follows a snapshot; without one it means nothing
        try:
            with self._journal_path.open("rb") as f:
                self._journal = identity(os.fstat(f.fileno()))
                f.seek(self._journal_at)
                data = f.read()
        except OSError:
            return
        at = 0
        while (end := data.find(b"\n", at)) >= 0:
            try:
                self._replay(json.loads(data[at:end]), first=self._journal_at + at == 0)
            except (ValueError, KeyError, TypeError, AttributeError):
                self._rewrite = True  # garbage or another generation's: never append to it
                break
            at = end + 1
        else:
            if at < len(data):
                self._rewrite = True  # a line cut short by a crash: never append after it
        self._journal_at += at

    def _replay(self, change: dict[str, object], *, first: bool) -> None:
        """
        Apply one journal line.

        Raises:
            ValueError: the first line does not name our snapshot (a journal
                left by a crash after a newer snapshot was written), or a
                later line is a header.
        """
        if first or "base" in change:
            if not first or change["base"] != self._generation:
                raise ValueError
            return
        name = str(change["cert"])
        if "entry" in change:
            raw = change["entry"]
            if raw is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = codec.entry(raw, self._pems)  # type: ignore[arg-type]
        if "revoked" in change:
            serial = change["revoked"]
            if serial is None:
                self._revoked.pop(name, None)
            else:
                self._revoked[name] = int(str(serial))
        self._journal_lines += 1

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, cert: Path, pem: Fingerprint | None, *, base: Path | None = None
    ) -> Entry | None:
        """
        The entry for ``cert`` if none of its files changed since it was recorded.

        ``base`` is what HAProxy appends ``.ocsp``/``.issuer`` to (default ``cert``).
        """
        entry = self._entries.get(str(cert))
        if entry is None or pem is None or entry.pem != pem:
            return None
        files = base or cert
        if entry.ocsp != fingerprint(store.staple_path(files)):
            return None
        # ``.issuer`` counts only when the chain lacks the issuer (``issuer_pem``
        # set): HAProxy and we take the chain first (docs/haproxy.md).
        if entry.issuer_pem is not None and entry.issuer_file != fingerprint(issuer_file(files)):
            return None
        return entry

    def read_staple(self, base: Path, entry: Entry) -> bytes | None:
        """The bytes of ``<base>.ocsp`` if they are still the ones ``entry`` describes."""
        try:
            der, st = store.read_file(store.staple_path(base))  # st: of exactly these bytes
        except OSError:
            return None
        return der if identity(st) == entry.ocsp else None

    def record(self, cert: Path | str, entry: Entry) -> None:
        """Remember ``entry`` for ``cert`` (saved by ``save``)."""
        if entry.issuer_pem is not None:
            # Thousands of certificates share an intermediate: one copy of its PEM.
            shared = self._pems.setdefault(entry.issuer_pem, entry.issuer_pem)
            if shared is not entry.issuer_pem:
                entry = dataclasses.replace(entry, issuer_pem=shared)
        name = str(cert)
        if self._entries.get(name) != entry:  # a fresh staple seen again is no change
            self._entries[name] = entry
            self._note(name)

    def forget(self, cert: Path) -> None:
        """Drop what we knew about ``cert`` (its staple is no longer good)."""
        if self._entries.pop(str(cert), None) is not None:
            self._note(str(cert))

    def _note(self, name: str) -> None:
        """``name``'s entry changed: remember it for the journal, unless a snapshot is due."""
        if self._rewrite:
            self._dirty = True
            return
        self._changed.add(name)
        if self._journal_lines + len(self._changed) > self._journal_limit():
            # Too many for the journal: the next save writes a snapshot.
            self._rewrite, self._dirty = True, True
            self._changed.clear()
            self._changed_revoked.clear()

    def _journal_limit(self) -> int:
        """Changes the journal may hold: at least ``_MIN_JOURNAL``, else half the index."""
        return max(_MIN_JOURNAL, len(self._entries) // 2)

    def mark_revoked(self, cert: Path, serial: int) -> None:
        """Remember that the CA answered "revoked" for ``cert`` with this serial."""
        if self._revoked.get(str(cert)) != serial:
            self._revoked[str(cert)] = serial
            self._changed_revoked.add(str(cert))

    def clear_revoked(self, cert: Path) -> None:
        """The CA answered "good" again (or the certificate was renewed)."""
        if self._revoked.pop(str(cert), None) is not None:
            self._changed_revoked.add(str(cert))

    def is_revoked(self, cert: Path, serial: int) -> bool:
        """Whether the last answer for this certificate and serial was "revoked"."""
        return self._revoked.get(str(cert)) == serial

    def save(self) -> None:
        """
        Write what changed: a few journal lines, or a new snapshot; a failure only costs speed.

        The state directory is created private (0700) by the caller's config.
        """
        if self.path is None or not (self._changed or self._changed_revoked or self._dirty):
            return
        changes = len(self._changed | self._changed_revoked)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._rewrite or self._journal_lines + changes > self._journal_limit():
                self._write_snapshot()
            else:
                self._append()
        except (OSError, StoreError):
            self._rewrite = True  # a journal line may be cut short: never append after it
            self._dirty = True  # and the names not written are no longer all in _changed
            return
        self._changed.clear()
        self._changed_revoked.clear()
        self._dirty = False

    def _write_snapshot(self) -> None:
        """Replace index.json with the whole index under a new generation; drop the journal."""
        assert self.path is not None  # noqa: S101 - save checked
        self._drop_missing()
        generation = secrets.token_hex(8)
        document = codec.document(_VERSION, generation, self._entries, self._revoked)
        store.write_atomic(self.path, document)
        # From here the old journal names another generation: never replayed again.
        self._journal_path.unlink(missing_ok=True)
        self._snapshot, self._generation = fingerprint(self.path), generation
        self._journal, self._journal_at, self._journal_lines = None, 0, 0
        self._rewrite = False

    def _drop_missing(self) -> None:
        """
        Forget the certificates that no longer exist, once per snapshot.

        A platform that adds and removes certificates every day would carry
        each removed one in index.json, and in every run's memory, for ever.
        One lstat per entry, paid only with a snapshot (itself a write of every
        entry). Revoked marks stay: a certificate that comes back with the same
        serial must not get an older good staple again.
        """
        gone = []
        for name in self._entries:
            try:
                os.lstat(name)
            except (FileNotFoundError, NotADirectoryError):
                gone.append(name)
            except OSError:  # unreadable is not gone: keep it
                continue
        for name in gone:
            del self._entries[name]

    def _append(self) -> None:
        """Append one line per changed name to the journal and sync it (one small write)."""
        out = bytearray()
        if self._journal is None:  # none since the snapshot: start one that names it
            out += codec.line({"base": self._generation})
        for name in sorted(self._changed | self._changed_revoked):
            change: dict[str, object] = {"cert": name}
            if name in self._changed:
                entry = self._entries.get(name)
                change["entry"] = None if entry is None else codec.raw(entry)
            if name in self._changed_revoked:
                change["revoked"] = self._revoked.get(name)
            out += codec.line(change)
            self._journal_lines += 1
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self._journal_path, flags, 0o600)
        try:
            view = memoryview(out)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
            self._journal = identity(os.fstat(fd))
        finally:
            os.close(fd)
        self._journal_at += len(out)


def _appended_to(before: Fingerprint | None, now: Fingerprint | None) -> bool:
    """Whether the journal ``now`` is ``before`` with lines added (same file, grown)."""
    if now is None:
        return False
    return before is None or (now[0] == before[0] and now[1] > before[1])
