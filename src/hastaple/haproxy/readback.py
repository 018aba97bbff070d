"""
What HAProxy serves, compared with what was sent; which file a name it serves is.

Neither "updated" nor "Success!" proves a staple (docs/haproxy.md, "What
HAProxy checks, and what it does not"): these decide, from the read-back
replies, whether the item sent is the one served.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.x509 import ocsp

from hastaple.core.ocsp import der
from hastaple.errors import (
    InvalidResponse,
)
from hastaple.haproxy import protocol
from hastaple.haproxy.deployitem import DeployItem, Process

if TYPE_CHECKING:
    from collections.abc import Sequence


READ_BACK_FAILED = "HAProxy answered 'updated' but the read-back failed: {}"
NOT_SERVED = "HAProxy does not serve {}"


def compare_der(item: DeployItem, served_der: bytes) -> str | None:
    """Why what HAProxy 2.8 serves (base64 read-back) is not ``item``, or None."""
    if served_der != item.der:
        return (
            f"HAProxy answered 'updated' but serves another response for {item.crt} "
            f"({len(served_der)} bytes, not the {len(item.der)} bytes sent)"
        )
    # Ours, byte for byte: the times are ours too, but a staple must be good.
    try:
        status = ocsp.load_der_ocsp_response(served_der).certificate_status
    except ValueError as exc:
        return f"HAProxy answered 'updated' but serves an unreadable response: {exc}"
    if status is not ocsp.OCSPCertStatus.GOOD:
        return (
            f"HAProxy answered 'updated' but serves status {status.name.lower()} "
            f"for {item.crt} (expected good)"
        )
    return None


def served_error(
    socket: str, item: DeployItem, cmd: protocol.Command, reply: protocol.Reply, *, exact: bool
) -> str | None:
    """
    Why what HAProxy serves for ``item``'s CertID is not ``item``, or None.

    ``exact``: ``reply`` is the base64 DER read-back (2.8), else the text dump.
    """
    if exact:  # 2.8: the exact bytes
        return compare_der(item, protocol.parse_ocsp_response_der(socket, cmd, reply))
    served = protocol.parse_ocsp_response(socket, cmd, reply)
    want = (whole_seconds(item.this_update), whole_seconds(item.next_update))
    got = (served.this_update, served.next_update)
    if served.cert_status != "good" or got != want:
        next_update = served.next_update.isoformat() if served.next_update else "none"
        return (
            f"HAProxy answered 'updated' but serves status {served.cert_status}, "
            f"thisUpdate {served.this_update.isoformat()}, nextUpdate {next_update} "
            f"for {item.crt} (expected good, {want[0].isoformat()}, {want[1].isoformat()})"
        )
    return None


def process_cwd(process: Process | None) -> Path | None:
    """HAProxy's working directory, when it runs on this host and we may look."""
    if process is None:
        return None
    try:
        return Path(f"/proc/{process.pid}/cwd").readlink()
    except OSError:
        return None


def same_file(crt: str, names: Sequence[str], cwd: Path | None) -> list[str]:
    """
    The names in ``names`` that are the file ``crt``.

    A relative name is HAProxy's working directory's: with it known (same
    host) the files are compared; without it, a relative name matches when
    it ends ``crt``'s path.
    """
    want = Path(crt).resolve()
    same = []
    for name in names:
        if Path(name).is_absolute() or cwd is not None:
            if (Path(cwd or "/") / name).resolve() == want:
                same.append(name)
        elif str(want).endswith(os.sep + os.path.normpath(name)):
            same.append(name)
    return same


def older_certificate(item: DeployItem, info: protocol.CertInfo) -> str | None:
    """
    Why HAProxy serves another certificate from ``item``'s file (renewed on disk), or None.

    The CertID ends with the certificate's serial; ``show ssl cert`` prints
    the served one. A different serial is the certificate HAProxy loaded
    before the file was renewed: our staple cannot go to it (a commit of the
    new ``.ocsp`` onto the old PEM fails: "Certificate ID does not match").
    """
    if info.serial is None:
        return None
    try:
        served = int(info.serial, 16)
    except ValueError:
        return None
    ours = cert_id_serial(item.cert_id)
    if ours is None or served == ours:
        return None
    return (
        f"HAProxy serves an older certificate from {item.crt} (serial {info.serial}, the file "
        f"now holds {ours:X}) until its next reload, which loads the new one with this staple"
    )


def cert_id_serial(cert_id: bytes) -> int | None:
    """The serial number inside a DER CertID, or None when it does not parse."""
    try:
        _, start, end = der.element(cert_id)
        tag, _, content, stop = der.children(cert_id, start, end)[-1]
    except (InvalidResponse, IndexError):
        return None
    return int.from_bytes(cert_id[content:stop], "big") if tag == _INTEGER else None


_INTEGER = 0x02


def whole_seconds(when: datetime) -> datetime:
    """OpenSSL prints whole seconds; compare at that precision."""
    return when.replace(microsecond=0)
