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

The file lives in the state directory (``index.json``), written atomically;
a missing, unreadable or foreign file is an empty index, never an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
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
_VERSION = 1
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
    """The index of one state directory; ``load``, ``lookup``/``record``, then ``save``."""

    def __init__(
        self,
        path: Path | None,
        entries: dict[str, Entry] | None = None,
        revoked: dict[str, int] | None = None,
        pems: dict[bytes, bytes] | None = None,
    ) -> None:
        self.path = path
        self._entries = entries or {}
        # certificate path -> serial the CA said is revoked: an older good staple
        # on disk must not count as fresh, nor be pushed, for that serial.
        self._revoked = revoked or {}
        self._dirty = False
        # One copy of each issuer PEM (thousands of entries share an intermediate);
        # ``load`` fills it while it reads, so the copies never exist at once.
        self._pems: dict[bytes, bytes] = pems if pems is not None else {}

    @classmethod
    def load(cls, state_dir: Path | None) -> Index:
        """Read ``state_dir``/index.json; anything unusable gives an empty index."""
        if state_dir is None:
            return cls(None)
        path = state_dir / INDEX_NAME
        entries: dict[str, Entry] = {}
        revoked: dict[str, int] = {}
        pems: dict[bytes, bytes] = {}  # one copy of each issuer PEM, as in ``record``
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            doc = json.loads(path.read_bytes())
            if doc.get("version") == _VERSION:
                entries = {name: _entry(raw, pems) for name, raw in doc["certs"].items()}
                revoked = {name: int(serial) for name, serial in doc.get("revoked", {}).items()}
        return cls(path, entries, revoked, pems)

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
        # set): HAProxy and we take the chain first (HAPROXY.md §3a).
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
        self._entries[str(cert)] = entry
        self._dirty = True

    def forget(self, cert: Path) -> None:
        """Drop what we knew about ``cert`` (its staple is no longer good)."""
        if self._entries.pop(str(cert), None) is not None:
            self._dirty = True

    def mark_revoked(self, cert: Path, serial: int) -> None:
        """Remember that the CA answered "revoked" for ``cert`` with this serial."""
        if self._revoked.get(str(cert)) != serial:
            self._revoked[str(cert)] = serial
            self._dirty = True

    def clear_revoked(self, cert: Path) -> None:
        """The CA answered "good" again (or the certificate was renewed)."""
        if self._revoked.pop(str(cert), None) is not None:
            self._dirty = True

    def is_revoked(self, cert: Path, serial: int) -> bool:
        """Whether the last answer for this certificate and serial was "revoked"."""
        return self._revoked.get(str(cert)) == serial

    def save(self) -> None:
        """
        Write the index atomically when it changed; a failure only costs speed.

        The state directory is created private (0700) by the caller's config.
        """
        if not self._dirty or self.path is None:
            return
        with contextlib.suppress(OSError, StoreError):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            store.write_atomic(self.path, self._encode())
            self._dirty = False

    def _encode(self) -> Iterator[bytes]:
        """
        The same bytes as one ``json.dumps`` of the whole document, in pieces of about 64 KiB.

        At 10,000 certificates the document is about 7 MB; built whole (as
        dicts, as text, or as bytes) it was the daemon's peak, so it is
        written as it is produced.
        """
        out = bytearray(b'{"version":%d,"certs":{' % _VERSION)
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
    )
