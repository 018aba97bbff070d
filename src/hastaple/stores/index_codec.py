"""
How the validation index is written: entries as JSON objects, changes as JSON lines.

Shared PEM bytes are kept once per issuer (``shared``); responder names and
URLs are interned. Must not touch files (``index`` does).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass

from hastaple.core.model import Status, Verdict
from hastaple.stores.fileid import Fingerprint


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
        issuer_pem=None if issuer_pem is None else shared(str(issuer_pem).encode("ascii"), pems),
        verdict=verdict,
        valid_from=time("from"),
        valid_until=time("until"),
        must_staple=bool(raw["must_staple"]),
    )
