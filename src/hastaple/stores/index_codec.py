"""
How the validation index is kept and written: packed entries, JSON objects, JSON lines.

In memory an entry is packed (``Entry``): at 100,000 certificates the index
is the largest thing a run keeps, and as plain objects (three file identities
of four integers, five datetimes, a verdict) it was about 1 KB an entry. On
disk entries are JSON objects, changes JSON lines (the format is unchanged).
Shared PEM bytes are kept once per issuer (``shared``); responder names and
URLs are interned. Must not touch files (``index`` does).
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from hastaple.core.model import Status, Verdict
from hastaple.stores.fileid import Fingerprint

# The fixed part of ``Entry.packed``: the identities (inode, size, mtime_ns,
# ctime_ns) of the PEM, the .ocsp and the .issuer file; this_update,
# next_update, produced_at, valid_from and valid_until in microseconds since
# the epoch; flags. The CertID's DER follows. Each field is read on its own
# (``_FILE``, ``_TIME`` at its offset): unpacking all 18 numbers for each
# property cost a warm run 9 us a certificate.
_FIXED = struct.Struct("<QQqq QQqq QQqq qqqqq B")
_FILE = struct.Struct("<QQqq")
_TIME = struct.Struct("<q")
_PEM, _OCSP, _ISSUER, _TIMES, _FLAGS = 0, 32, 64, 96, 136
_THIS, _NEXT, _PRODUCED, _FROM, _UNTIL = (_TIMES + 8 * i for i in range(5))
_HAS_ISSUER_FILE, _MUST_STAPLE = 1, 2
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_PIECE = 64 * 1024  # bytes per write of the index document


def _us(when: dt.datetime) -> int:
    return (when - _EPOCH) // _US


def _time(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class Entry:
    """
    What a validated, good staple and its certificate told us, and about which files.

    Built with ``Entry.of``; read through its properties. The numbers and the
    CertID are one ``bytes`` (``packed``, about 170 bytes), decoded on use: a
    hit decodes one entry, while the index holds every certificate's.
    """

    packed: bytes
    url: str
    issuer_pem: bytes | None
    signer: str
    serial: int

    @classmethod
    def of(
        cls,
        *,
        pem: Fingerprint,
        ocsp: Fingerprint,
        issuer_file: Fingerprint | None,
        url: str,
        cert_id: bytes,
        issuer_pem: bytes | None,
        verdict: Verdict,
        valid_from: dt.datetime,
        valid_until: dt.datetime,
        must_staple: bool = False,
    ) -> Entry:
        """An entry of these facts (the verdict is a good one: only those are kept)."""
        v = verdict
        times = (v.this_update, v.next_update, v.produced_at, valid_from, valid_until)
        packed = _pack(pem, ocsp, issuer_file, times, must_staple=must_staple) + cert_id
        return cls(packed, url, issuer_pem, v.signer, v.serial)

    def _fields(self) -> tuple[int, ...]:
        return _FIXED.unpack_from(self.packed)

    def _file(self, at: int) -> Fingerprint:
        a, b, c, d = _FILE.unpack_from(self.packed, at)
        return (a, b, c, d)

    def _time(self, at: int) -> dt.datetime:
        return _time(_TIME.unpack_from(self.packed, at)[0])

    @property
    def pem(self) -> Fingerprint:
        """The identity of the certificate file the staple was judged for."""
        return self._file(_PEM)

    @property
    def ocsp(self) -> Fingerprint:
        """The identity of the ``.ocsp`` file holding the staple."""
        return self._file(_OCSP)

    @property
    def issuer_file(self) -> Fingerprint | None:
        """The identity of ``<crt>.issuer`` when the chain lacked the issuer, else None."""
        return self._file(_ISSUER) if self.packed[_FLAGS] & _HAS_ISSUER_FILE else None

    @property
    def cert_id(self) -> bytes:
        """The CertID's DER (what HAProxy keys the staple by)."""
        return self.packed[_FIXED.size :]

    @property
    def verdict(self) -> Verdict:
        """The good verdict the staple was given."""
        return Verdict(
            status=Status.GOOD, this_update=self._time(_THIS), next_update=self._time(_NEXT),
            produced_at=self._time(_PRODUCED), serial=self.serial, signer=self.signer,
        )  # fmt: skip

    @property
    def valid_from(self) -> dt.datetime:
        """From when the staple is valid (its thisUpdate less the skew, or its signer's start)."""
        return self._time(_FROM)

    @property
    def valid_until(self) -> dt.datetime:
        """Until when the staple is valid (its nextUpdate, or its signer's end if sooner)."""
        return self._time(_UNTIL)

    def covers(self, when: dt.datetime) -> bool:
        """Whether ``when`` is within ``valid_from`` and ``valid_until`` (compared as numbers)."""
        start: int = _TIME.unpack_from(self.packed, _FROM)[0]
        end: int = _TIME.unpack_from(self.packed, _UNTIL)[0]
        return start <= _us(when) <= end

    @property
    def must_staple(self) -> bool:
        """Whether the certificate promises a staple (RFC 7633)."""
        return bool(self.packed[_FLAGS] & _MUST_STAPLE)


def _pack(
    pem: Fingerprint,
    ocsp: Fingerprint,
    issuer_file: Fingerprint | None,
    times: tuple[dt.datetime, ...],
    *,
    must_staple: bool,
) -> bytes:
    """The fixed part of ``Entry.packed``."""
    flags = (_HAS_ISSUER_FILE if issuer_file is not None else 0) | (
        _MUST_STAPLE if must_staple else 0
    )
    return _FIXED.pack(*pem, *ocsp, *(issuer_file or (0, 0, 0, 0)), *map(_us, times), flags)


def line(change: dict[str, object]) -> bytes:
    """One journal line: a change as compact JSON."""
    return dumps(change).encode() + b"\n"


def shared(data: bytes, pems: dict[bytes, bytes]) -> bytes:
    """``data``, or the equal bytes already held (one copy per issuer PEM)."""
    return pems.setdefault(data, data)


def dumps(value: object) -> str:
    """Compact JSON."""
    return json.dumps(value, separators=(",", ":"))


def raw(e: Entry) -> dict[str, object]:
    """An entry as the JSON object the index stores."""
    f = e._fields()  # decoded once, not once per property
    return {
        "pem": f[0:4],
        "ocsp": f[4:8],
        "issuer_file": f[8:12] if f[17] & _HAS_ISSUER_FILE else None,
        "url": e.url,
        "cert_id": e.cert_id.hex(),
        "issuer_pem": e.issuer_pem.decode("ascii") if e.issuer_pem else None,
        "this": _time(f[12]).isoformat(),
        "next": _time(f[13]).isoformat(),
        "produced": _time(f[14]).isoformat(),
        "serial": format(e.serial, "x"),
        "signer": e.signer,
        "from": _time(f[15]).isoformat(),
        "until": _time(f[16]).isoformat(),
        "must_staple": bool(f[17] & _MUST_STAPLE),
    }


def entry(raw: dict[str, object], pems: dict[bytes, bytes]) -> Entry:
    """An entry from its JSON object; ValueError when it is unusable."""

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
    times = tuple(time(key) for key in ("this", "next", "produced", "from", "until"))
    must_staple = bool(raw["must_staple"])
    try:  # packed as it is read: no Verdict nor datetimes kept per entry
        packed = _pack(pem, staple, fp(raw["issuer_file"]), times, must_staple=must_staple)
        return Entry(
            packed + bytes.fromhex(str(raw["cert_id"])),
            url=sys.intern(str(raw["url"])),
            issuer_pem=None
            if issuer_pem is None
            else shared(str(issuer_pem).encode("ascii"), pems),
            signer=sys.intern(str(raw["signer"])),  # one copy per responder, not per entry
            serial=int(str(raw["serial"]), 16),
        )
    except struct.error as exc:  # a number out of a file identity's range
        raise ValueError(str(exc)) from exc


def document(
    version: int, generation: str, entries: Mapping[str, Entry], revoked: Mapping[str, int]
) -> Iterator[bytes]:
    """
    index.json: one JSON document, one entry per line, in pieces of about 64 KiB.

    At 10,000 certificates the document is about 7 MB; built whole (as
    dicts, as text, or as bytes) it was the daemon's peak, so it is
    written as it is produced. The line breaks are JSON whitespace; they
    let ``entry_lines`` read it back an entry at a time.
    """
    out = bytearray(b'{"version":%d,"generation":' % version)
    out += dumps(generation).encode()
    out += b',"certs":{\n'
    for i, (name, e) in enumerate(entries.items()):
        if i:
            out += b",\n"
        out += dumps(name).encode()
        out += b":"
        out += dumps(raw(e)).encode()
        if len(out) >= _PIECE:
            yield bytes(out)
            out.clear()
    out += b'\n},"revoked":'
    out += dumps(dict(revoked)).encode()
    out += b"}"
    yield bytes(out)


def entry_lines(f: BinaryIO, tail: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """
    The (name, raw entry) of each entry line of a snapshot; then ``tail`` gets the closing object.

    Raises:
        ValueError: a line is no entry, or the closing line is missing (cut short).
    """
    for line in f:
        if line.startswith(b"}"):  # '},"revoked":{...}}': the end of the document
            tail.update(json.loads(b"{" + line[2:]))
            return
        if line.strip():
            ((name, raw),) = json.loads(b"{" + line.rstrip(b",\n") + b"}").items()
            yield name, raw
    raise ValueError("index.json is cut short")
