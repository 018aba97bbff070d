"""
Write ``<crt>.ocsp`` so that a crash or a full disk never leaves a bad file.

The temp file sits in the same directory (so ``os.replace`` is atomic) and its
name starts with a dot: HAProxy loads every other file of a ``crt`` directory
as a certificate, and a leftover ``x.pem.ocsp.tmp`` stops it from starting
(HAPROXY.md §5.10). Data is fsynced before the rename and the directory after,
so the new name never points at unwritten blocks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from hastaple.errors import StoreError

# An OCSP response is public (every TLS client receives it); readable by the
# HAProxy user, writable only by the owner.
STAPLE_MODE = 0o644


def staple_path(cert: Path) -> Path:
    """Where HAProxy looks for the staple of ``cert``: ``<crt>.ocsp``."""
    return cert.with_name(cert.name + ".ocsp")


def read(path: Path) -> bytes | None:
    """The bytes of an existing staple, or None when there is none or it cannot be read."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_atomic(path: Path, data: bytes, *, owner_of: Path | None = None) -> None:
    """
    Replace ``path`` with ``data`` atomically, owned like ``owner_of`` when possible.

    Raises:
        StoreError: nothing was changed; the previous file, if any, is intact.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, STAPLE_MODE)
    except OSError as exc:
        raise StoreError(path, f"cannot create a file in {directory}: {_why(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), STAPLE_MODE)  # the umask may have narrowed it
            _copy_owner(f.fileno(), owner_of)
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(path, f"cannot write: {_why(exc)}") from exc
    _fsync_dir(directory)


def _copy_owner(fd: int, like: Path | None) -> None:
    """Give the staple the certificate's owner and group, where we may (root)."""
    if like is None:
        return
    try:
        st = like.stat()
    except OSError:
        return
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) == (st.st_uid, st.st_gid):
        return
    # Not root: keep our own ownership; HAProxy can read the 0644 file anyway.
    with contextlib.suppress(PermissionError):
        os.fchown(fd, st.st_uid, st.st_gid)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
