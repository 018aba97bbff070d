"""
What a daemon batch of one certificate costs in the index, over a large index.

    python bench/index_batch.py -n 10000

Builds an index of N synthetic entries (the shape of real ones, with one
shared issuer PEM), then measures a batch that changes one entry, as the
daemon does it: bring the index up to date, record one entry, save. Prints
the median wall time, the bytes written and the fsync calls of that batch.
``--reload`` reads the index whole for each batch instead (what one ``fetch``
process does once).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Self

from hastaple.core.model import Status, Verdict
from hastaple.stores import index


def _entry(i: int) -> index.Entry:
    t = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    verdict = Verdict(Status.GOOD, t, t + dt.timedelta(days=7), t, 10**20 + i, "CN=responder")
    return index.Entry(
        pem=(i, 3000, 10**18 + i, 10**18 + i),
        ocsp=(i + 1, 500, 10**18 + i, 10**18 + i),
        issuer_file=None,
        url="http://ocsp.example.test/",
        cert_id=bytes(range(70)),
        issuer_pem=None,  # the usual case: the issuer is in the PEM's chain
        verdict=verdict,
        valid_from=t,
        valid_until=t + dt.timedelta(days=7),
    )


class _Counted:
    """Counts bytes written and fsync calls while active (os-level wrappers)."""

    def __init__(self) -> None:
        self.written = 0
        self.syncs = 0

    def __enter__(self) -> Self:
        self._saved = (os.write, os.fsync, os.fdatasync)
        write, fsync, fdatasync = self._saved

        def counted_write(fd: int, data: bytes) -> int:
            n = write(fd, data)
            self.written += n
            return n

        def counted_fsync(fd: int) -> None:
            self.syncs += 1
            fsync(fd)

        def counted_fdatasync(fd: int) -> None:
            self.syncs += 1
            fdatasync(fd)

        os.write, os.fsync, os.fdatasync = counted_write, counted_fsync, counted_fdatasync  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        os.write, os.fsync, os.fdatasync = self._saved  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument(
        "--reload", action="store_true", help="read the index whole for each batch (as fetch)"
    )
    args = parser.parse_args()
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        idx = index.Index.load(state)
        for i in range(args.n):
            idx.record(Path(f"/etc/haproxy/certs/site-{i:05d}.pem"), _entry(i))
        idx.save()
        libc.sync()
        held = index.Index.load(state)
        times, written, syncs = [], [], []
        for b in range(args.batches):
            with _Counted() as counted:
                start = time.perf_counter()
                if (
                    hasattr(held, "sync") and not args.reload
                ):  # kept by the daemon, caught up under the lock
                    held.sync()
                    batch = held
                else:  # loaded whole at the start of every batch
                    batch = index.Index.load(state)
                batch.record(Path(f"/etc/haproxy/certs/site-{b:05d}.pem"), _entry(args.n + b))
                batch.save()
                times.append(time.perf_counter() - start)
            written.append(counted.written)
            syncs.append(counted.syncs)
        files = {p.name: p.stat().st_size for p in state.iterdir()}
    print(
        f"index of {args.n} entries, {args.batches} one-certificate batches: "
        f"median {statistics.median(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms, "
        f"median {statistics.median(written)} bytes written, "
        f"median {statistics.median(syncs)} fsync calls per batch; files {files}"
    )


if __name__ == "__main__":
    main()
