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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.x509 import ocsp

from hastaple import store
from hastaple.errors import StoreError
from hastaple.model import Status, Verdict
from hastaple.ocsp.validate import CLOCK_SKEW

INDEX_NAME = "index.json"
JOURNAL_NAME = "index.journal"
# Changes the journal holds before the snapshot is rewritten: at least this
# many, else half the index (so a rewrite is paid for by as many cheap appends).
_MIN_JOURNAL = 1024
_VERSION = 2  # 2: entries say whether the certificate is must-staple
_PIECE = 64 * 1024  # bytes per write of the index document

Fingerprint = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def fingerprint_if(path: Path, data: bytes) -> Fingerprint | None:
    """
    The identity of ``path`` if it holds exactly ``data``, else None.

    Taken from the open file, so another writer replacing ``path`` after our
    write can never get its bytes indexed under our verdict.
    """
    try:
        held, st = store.read_file(path)
    except OSError:
        return None
    return _identity(st) if held == data else None


def fingerprint(path: Path) -> Fingerprint | None:
    """The identity of ``path``'s current content, or None when it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return _identity(st)


def _identity(st: os.stat_result) -> Fingerprint:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a validated, good staple and its certificate told us, and about which files."""

    pem: Fingerprint
    ocsp: Fingerprint
    issuer_file: Fingerprint | None
    url: str
    cert_id: bytes
    issuer_pem: bytes | None
    verdict: Verdict
    valid_from: dt.datetime
    valid_until: dt.datetime
    must_staple: bool = False


def signer_window(der: bytes, verdict: Verdict) -> tuple[dt.datetime, dt.datetime]:
    """
    When a validated response stays valid: within every included certificate's validity.

    Conservative: the earliest notAfter of any certificate in the response (the
    delegated signer) and its nextUpdate, so a hit is never judged valid later
    than a full validation would.
    """
    certs = ocsp.load_der_ocsp_response(der).certificates
    start = max([verdict.this_update - CLOCK_SKEW, *(c.not_valid_before_utc for c in certs)])
    end = min([verdict.next_update, *(c.not_valid_after_utc for c in certs)])
    return start, end


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
        # Names changed since the last save (entries and revoked marks).
        self._changed: set[str] = set()
        self._changed_revoked: set[str] = set()
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
        self._generation, self._journal, self._journal_at, self._journal_lines = None, None, 0, 0
        self._rewrite, self._loaded = True, True
        try:
            data, st = store.read_file(self.path)
        except OSError:
            self._snapshot = None
            return
        self._snapshot = _identity(st)
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            doc = json.loads(data)
            if doc.get("version") == _VERSION:
                pems = self._pems
                self._entries = {name: _entry(raw, pems) for name, raw in doc["certs"].items()}
                revoked = doc.get("revoked", {})
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
                self._journal = _identity(os.fstat(f.fileno()))
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
                self._entries[name] = _entry(raw, self._pems)  # type: ignore[arg-type]
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
        if entry.issuer_pem is not None and entry.issuer_file != fingerprint(_issuer_file(files)):
            return None
        return entry

    def read_staple(self, base: Path, entry: Entry) -> bytes | None:
        """The bytes of ``<base>.ocsp`` if they are still the ones ``entry`` describes."""
        try:
            der, st = store.read_file(store.staple_path(base))  # st: of exactly these bytes
        except OSError:
            return None
        return der if _identity(st) == entry.ocsp else None

    def record(self, cert: Path, entry: Entry) -> None:
        """Remember ``entry`` for ``cert`` (saved by ``save``)."""
        if entry.issuer_pem is not None:
            # Thousands of certificates share an intermediate: one copy of its PEM.
            shared = self._pems.setdefault(entry.issuer_pem, entry.issuer_pem)
            if shared is not entry.issuer_pem:
                entry = dataclasses.replace(entry, issuer_pem=shared)
        name = str(cert)
        if self._entries.get(name) != entry:  # a fresh staple seen again is no change
            self._entries[name] = entry
            self._changed.add(name)

    def forget(self, cert: Path) -> None:
        """Drop what we knew about ``cert`` (its staple is no longer good)."""
        if self._entries.pop(str(cert), None) is not None:
            self._changed.add(str(cert))

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
        if self.path is None or not (self._changed or self._changed_revoked):
            return
        changes = len(self._changed | self._changed_revoked)
        limit = max(_MIN_JOURNAL, len(self._entries) // 2)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._rewrite or self._journal_lines + changes > limit:
                self._write_snapshot()
            else:
                self._append()
        except (OSError, StoreError):
            self._rewrite = True  # a journal line may be cut short: never append after it
            return
        self._changed.clear()
        self._changed_revoked.clear()

    def _write_snapshot(self) -> None:
        """Replace index.json with the whole index under a new generation; drop the journal."""
        assert self.path is not None  # noqa: S101 - save checked
        generation = secrets.token_hex(8)
        store.write_atomic(self.path, self._encode(generation))
        # From here the old journal names another generation: never replayed again.
        self._journal_path.unlink(missing_ok=True)
        self._snapshot, self._generation = fingerprint(self.path), generation
        self._journal, self._journal_at, self._journal_lines = None, 0, 0
        self._rewrite = False

    def _append(self) -> None:
        """Append one line per changed name to the journal and sync it (one small write)."""
        out = bytearray()
        if self._journal is None:  # none since the snapshot: start one that names it
            out += _line({"base": self._generation})
        for name in sorted(self._changed | self._changed_revoked):
            change: dict[str, object] = {"cert": name}
            if name in self._changed:
                entry = self._entries.get(name)
                change["entry"] = None if entry is None else _raw(entry)
            if name in self._changed_revoked:
                change["revoked"] = self._revoked.get(name)
            out += _line(change)
            self._journal_lines += 1
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self._journal_path, flags, 0o600)
        try:
            view = memoryview(out)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
            self._journal = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        self._journal_at += len(out)

    def _encode(self, generation: str) -> Iterator[bytes]:
        """
        The same bytes as one ``json.dumps`` of the whole document, in pieces of about 64 KiB.

        At 10,000 certificates the document is about 7 MB; built whole (as
        dicts, as text, or as bytes) it was the daemon's peak, so it is
        written as it is produced.
        """
        out = bytearray(b'{"version":%d,"generation":' % _VERSION)
        out += _dumps(generation).encode()
        out += b',"certs":{'
        for i, (name, e) in enumerate(self._entries.items()):
            if i:
                out += b","
            out += _dumps(name).encode()
            out += b":"
            out += _dumps(_raw(e)).encode()
            if len(out) >= _PIECE:
                yield bytes(out)
                out.clear()
        out += b'},"revoked":'
        out += _dumps(self._revoked).encode()
        out += b"}"
        yield bytes(out)


def _appended_to(before: Fingerprint | None, now: Fingerprint | None) -> bool:
    """Whether the journal ``now`` is ``before`` with lines added (same file, grown)."""
    if now is None:
        return False
    return before is None or (now[0] == before[0] and now[1] > before[1])


def _line(change: dict[str, object]) -> bytes:
    return _dumps(change).encode() + b"\n"


def _shared(data: bytes, pems: dict[bytes, bytes]) -> bytes:
    return pems.setdefault(data, data)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def issuer_fingerprint(cert: Path) -> Fingerprint | None:
    """The fingerprint of ``<crt>.issuer`` (None when there is none)."""
    return fingerprint(_issuer_file(cert))


def _issuer_file(cert: Path) -> Path:
    return store.issuer_path(cert)


def _raw(e: Entry) -> dict[str, object]:
    v = e.verdict
    return {
        "pem": e.pem,
        "ocsp": e.ocsp,
        "issuer_file": e.issuer_file,
        "url": e.url,
        "cert_id": e.cert_id.hex(),
        "issuer_pem": e.issuer_pem.decode("ascii") if e.issuer_pem else None,
        "this": v.this_update.isoformat(),
        "next": v.next_update.isoformat(),
        "produced": v.produced_at.isoformat(),
        "serial": format(v.serial, "x"),
        "signer": v.signer,
        "from": e.valid_from.isoformat(),
        "until": e.valid_until.isoformat(),
        "must_staple": e.must_staple,
    }


def _entry(raw: dict[str, object], pems: dict[bytes, bytes]) -> Entry:
    def fp(value: object) -> Fingerprint | None:
        if value is None:
            return None
        a, b, c, d = (int(x) for x in value)  # type: ignore[attr-defined]
        return (a, b, c, d)

    def time(key: str) -> dt.datetime:
        return dt.datetime.fromisoformat(str(raw[key]))

    pem, staple = fp(raw["pem"]), fp(raw["ocsp"])
    if pem is None or staple is None:
        raise ValueError  # caught by load: an unusable file
    issuer_pem = raw["issuer_pem"]
    verdict = Verdict(
        status=Status.GOOD,
        this_update=time("this"),
        next_update=time("next"),
        produced_at=time("produced"),
        serial=int(str(raw["serial"]), 16),
        signer=sys.intern(str(raw["signer"])),  # one copy per responder, not per entry
    )
    return Entry(
        pem=pem,
        ocsp=staple,
        issuer_file=fp(raw["issuer_file"]),
        url=sys.intern(str(raw["url"])),
        cert_id=bytes.fromhex(str(raw["cert_id"])),
        issuer_pem=None if issuer_pem is None else _shared(str(issuer_pem).encode("ascii"), pems),
        verdict=verdict,
        valid_from=time("from"),
        valid_until=time("until"),
        must_staple=bool(raw["must_staple"]),
    )
