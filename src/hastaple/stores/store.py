"""
Write ``<crt>.ocsp`` so that a crash or a full disk never leaves a bad file.

The temp file sits in the same directory (so ``os.replace`` is atomic) and its
name starts with a dot: HAProxy loads every other file of a ``crt`` directory
as a certificate, and a leftover ``x.pem.ocsp.tmp`` stops it from starting
(docs/haproxy.md). Data is fsynced before the rename and the directory after,
so the new name never points at unwritten blocks.

``write_many`` gives each file the same guarantee for a whole batch at the
cost of one ``syncfs`` instead of one ``fsync`` per file (each one a journal
commit on ext4: about 1 ms, so 10 s for 10,000 staples): every temp file is
written, the filesystem is flushed once, and only then is each renamed and
each directory fsynced once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hastaple.errors import StoreError

# An OCSP response is public (every TLS client receives it); readable by the
# HAProxy user, writable only by the owner.
_READ_SIZE = 64 * 1024  # bytes per read of a file that is not a regular one
STAPLE_MODE = 0o644
# syncfs flushes the whole filesystem, other programs' dirty data too: worth
# it only when it replaces several fsyncs. Smaller batches fsync file by file.
# Not higher: the pipeline's batches are what piles up during one flush, and
# at 32 a cold run's flushes of n files took n fsyncs, so batches stayed
# small (2,000 staples: 2,000 fsyncs, 5 syncfs); at 8, 71 of 95 batches
# (1,887 staples) took one syncfs each.
SYNCFS_MIN_BATCH = 8


def staple_path(cert: Path) -> Path:
    """Where HAProxy looks for the staple of ``cert``: ``<crt>.ocsp``."""
    return cert.with_name(cert.name + ".ocsp")


def issuer_path(cert: Path) -> Path:
    """Where HAProxy looks for the issuer of a chainless ``cert``: ``<crt>.issuer``."""
    return cert.with_name(cert.name + ".issuer")


def read(path: Path) -> bytes | None:
    """The bytes of an existing staple, or None when there is none or it cannot be read."""
    try:
        return read_file(path)[0]
    except OSError:
        return None


def read_file(path: Path) -> tuple[bytes, os.stat_result]:
    """
    A whole file, with the identity (``fstat``) of exactly what was read.

    Plain system calls (open, fstat, a read of the whole size, the read that
    finds the end, close): a cold run reads two or three small files per
    certificate, and a buffered file object costs about twice as many, each
    one a GIL hand-off with the writer thread.

    Raises:
        OSError: as ``open`` and ``read`` do.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        want = st.st_size + 1 if stat.S_ISREG(st.st_mode) else _READ_SIZE
        chunks = []
        while chunk := os.read(fd, want):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks), st


@dataclass(frozen=True, slots=True)
class Write:
    """One file for ``write_many``: its path, its bytes, and whose owner it takes."""

    path: Path
    # A bytearray is written as is, not copied; an iterable of chunks (a large
    # document produced piece by piece) is written as it is produced.
    data: bytes | bytearray | Iterable[bytes]
    owner_of: Path | None = None


def write_atomic(
    path: Path, data: bytes | bytearray | Iterable[bytes], *, owner_of: Path | None = None
) -> None:
    """
    Replace ``path`` with ``data`` atomically, owned like ``owner_of`` when possible.

    Raises:
        StoreError: nothing was changed; the previous file, if any, is intact.
    """
    tmp = _stage(Write(path, data, owner_of), fsync=True)
    _rename(tmp, path)
    _fsync_dir(path.parent)


def write_many(writes: Sequence[Write]) -> list[StoreError | None]:
    """
    Replace every file of ``writes`` atomically, flushing the disk once for all.

    Each file is either replaced by durable new data or left as it was, as
    with ``write_atomic``; a kill at any moment leaves at most dot temp files.
    The steps (stage, sync, publish, fsync the directories) run in one
    thread: creating a file is kernel work too, and staging on the event loop
    made a cold run 20% slower on the bench.

    Returns:
        One entry per write, in order: None when the file was replaced, else
        the ``StoreError`` saying why it was left unchanged.
    """
    # One syncfs only pays off over many files; a few are fsynced as they are written.
    syncfs = _SYNCFS if len(writes) >= SYNCFS_MIN_BATCH else None
    staged = _stage_many(writes, fsync=syncfs is None)
    if syncfs is None:
        durable = [tmp if isinstance(tmp, StoreError) else None for _, tmp in staged]
    else:
        durable = _sync(staged, syncfs)
    published = _publish(staged, durable)
    for directory in dict.fromkeys(w.path.parent for w in writes):
        _fsync_dir(directory)  # the renames are durable too
    return published


# A staged write: its temp file, or why it could not be created.
# Temp paths are text: pathlib interns every part of a path, and a group of
# thousands of writes kept that many unique temp names in the interpreter's
# interned-string table, which never shrinks (a daemon at 5,000 certificates:
# 1.9 MB for good).
Staged = tuple[Write, str | StoreError]


def _stage_many(writes: Sequence[Write], *, fsync: bool) -> list[Staged]:
    """Write each file's data into a new dot temp file next to it."""
    staged: list[Staged] = []
    for w in writes:
        try:
            staged.append((w, _stage(w, fsync=fsync)))
        except StoreError as exc:
            staged.append((w, exc))
    return staged


def _sync(staged: Sequence[Staged], syncfs: Callable[[int], int]) -> list[StoreError | None]:
    """
    Make the staged temp files' data durable: one syncfs per filesystem.

    Called only once every temp file of the group is written, so one syncfs
    covers them all. A failed temp file is removed and its error returned.
    """
    results: list[StoreError | None] = []
    synced_devices: set[int] = set()
    for w, tmp in staged:
        if isinstance(tmp, StoreError):
            results.append(tmp)
            continue
        try:
            _syncfs_once(tmp, w.path, synced_devices, syncfs)
        except StoreError as exc:
            results.append(exc)
            continue
        results.append(None)
    return results


def _publish(
    staged: Sequence[Staged], durable: Sequence[StoreError | None]
) -> list[StoreError | None]:
    """Rename each durable temp file over its target (its data is on disk first, always)."""
    results: list[StoreError | None] = []
    for (w, tmp), error in zip(staged, durable, strict=True):
        if error is not None or not isinstance(tmp, str):
            results.append(error)
            continue
        try:
            _rename(tmp, w.path)
        except StoreError as exc:
            results.append(exc)
            continue
        results.append(None)
    return results


def _stage(w: Write, *, fsync: bool) -> str:
    """Write ``w.data`` into a new dot temp file next to ``w.path``; return its path."""
    path, directory = w.path, w.path.parent
    tmp = os.path.join(directory, f".{path.name}.{secrets.token_hex(4)}.tmp")  # noqa: PTH118 - text
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, STAPLE_MODE)
    except OSError as exc:
        raise StoreError(path, f"cannot create a file in {directory}: {_why(exc)}") from exc
    try:
        try:
            chunks = (w.data,) if isinstance(w.data, bytes | bytearray) else w.data
            for chunk in chunks:
                view = memoryview(chunk)
                while view:  # os.write: no buffered file object (fstat, lseek) per staple
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, STAPLE_MODE)  # the umask may have narrowed it
            _copy_owner(fd, w.owner_of)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _discard(tmp)
        raise StoreError(path, f"cannot write: {_why(exc)}") from exc
    except BaseException:  # a bug in whatever produced the chunks: no temp file left
        _discard(tmp)
        raise
    return tmp


def _syncfs_once(
    tmp: str, path: Path, synced_devices: set[int], syncfs: Callable[[int], int]
) -> None:
    """
    Flush ``tmp``'s filesystem, unless this group already did (``synced_devices``).

    Raises:
        StoreError: the data may not be on disk; ``tmp`` was removed.
    """
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            device = os.fstat(fd).st_dev
            if device not in synced_devices:
                if syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                synced_devices.add(device)
        finally:
            os.close(fd)
    except OSError as exc:
        _discard(tmp)
        raise StoreError(path, f"cannot flush to disk: {_why(exc)}") from exc


def _rename(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)  # noqa: PTH105 - a text temp path (see Staged)
    except OSError as exc:
        _discard(tmp)
        raise StoreError(path, f"cannot write: {_why(exc)}") from exc


def _discard(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)  # noqa: PTH108 - a text temp path (see Staged)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2) (flush one filesystem), or None where libc lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


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
