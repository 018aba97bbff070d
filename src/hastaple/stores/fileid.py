"""
A file's identity: inode, size, mtime and ctime in nanoseconds.

The validation index keys what it remembers by the identities of the PEM,
``<crt>.ocsp`` and ``<crt>.issuer``: any change to any of them is a miss. The
daemon uses the same identity to re-parse only changed certificates. Must not
read more than a ``stat`` (or, for ``fingerprint_if``, the file it checks).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hastaple.stores import store

Fingerprint = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
# A fingerprint packed into 32 bytes: to keep one per certificate (65 bytes
# as a ``bytes``, against about 210 as a tuple of four integers).
PACKED = struct.Struct("<QQqq")


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
    return identity(st) if held == data else None


def fingerprint(path: Path | str) -> Fingerprint | None:
    """The identity of ``path``'s current content, or None when it is missing."""
    try:
        st = os.stat(path)  # noqa: PTH116 - a Path or its text
    except OSError:
        return None
    return identity(st)


def identity(st: os.stat_result) -> Fingerprint:
    """The identity in a ``stat`` result."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def packed(fp: Fingerprint | None) -> bytes | None:
    """``fp`` as 32 bytes (None stays None): equal fingerprints, equal bytes."""
    return None if fp is None else PACKED.pack(*fp)


def issuer_fingerprint(cert: Path) -> Fingerprint | None:
    """The fingerprint of ``<crt>.issuer`` (None when there is none)."""
    return fingerprint(issuer_file(cert))


def issuer_file(cert: Path) -> Path:
    """Where HAProxy looks for the issuer of ``cert`` (``<crt>.issuer``)."""
    return store.issuer_path(cert)
