"""
Read a ``global issuers-chain-path`` directory, once per change of the directory.

HAProxy reads it when it starts; certificates without a chain of their own
then take theirs from it (``hastaple.core.issuer.IssuerChains`` says which).
hastaple must find the same issuer, or the CertID it asks for and pushes is
not the one HAProxy computes. The chains are kept per directory until its
modification time changes (a file added, removed or renamed into place), so
10,000 certificates read it once. Must not choose an issuer (``core.issuer``
does).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

from cryptography import x509

from hastaple.core.issuer import IssuerChains

logger = logging.getLogger(__name__)

_cache: dict[Path, tuple[int, IssuerChains]] = {}
_lock = threading.Lock()  # the writer thread never reads it, but verify's checks may run in threads


def load(directory: Path) -> IssuerChains:
    """The chains of ``directory``; an unreadable directory or file holds none."""
    try:
        mtime = directory.stat().st_mtime_ns
    except OSError as exc:
        logger.warning("issuers-chain-path %s: %s", directory, exc.strerror or exc)
        return IssuerChains()
    with _lock:
        held = _cache.get(directory)
        if held is not None and held[0] == mtime:
            return held[1]
    chains = IssuerChains.of(_files(directory))
    for warning in chains.warnings:
        logger.warning("issuers-chain-path %s", warning)
    with _lock:
        _cache[directory] = (mtime, chains)
    return chains


def _files(directory: Path) -> list[tuple[str, list[x509.Certificate]]]:
    """Every regular file's certificates, in byte order of the names, as HAProxy scans."""
    try:
        paths = sorted(directory.iterdir(), key=lambda p: os.fsencode(p.name))
    except OSError as exc:
        logger.warning("issuers-chain-path %s: %s", directory, exc.strerror or exc)
        return []
    found = []
    for path in paths:
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                continue
            data = path.read_bytes()
        except OSError as exc:
            logger.warning("issuers-chain-path %s: %s", path, exc.strerror or exc)
            continue
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            certs = []  # HAProxy reads PEM only
        found.append((str(path), certs))
    return found
