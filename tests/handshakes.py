"""
TLS handshakes in a loop, in a thread, while a test changes what HAProxy serves.

Each handshake asks for a staple (status_request, through pyOpenSSL: the
standard ``ssl`` module cannot) and records the served leaf's serial and the
serial the staple is about, so a test can count handshakes that got a
certificate without its staple, or with another certificate's staple.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from cryptography.x509 import ocsp
from OpenSSL import SSL


@dataclass(frozen=True)
class Seen:
    """One handshake: when it ended, the leaf's serial (None: failed), the staple's serial."""

    at: float
    serial: int | None
    staple_serial: int | None
    error: str | None = None

    @property
    def stapled(self) -> bool:
        """The staple is for the served certificate."""
        return self.serial is not None and self.staple_serial == self.serial


def handshake(port: int, servername: str, timeout: float = 5.0) -> Seen:
    """One handshake with SNI ``servername`` and status_request."""
    staples: list[bytes] = []

    def on_ocsp(_conn: SSL.Connection, data: bytes, _arg: object) -> bool:
        staples.append(data)
        return True

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_ocsp_client_callback(on_ocsp)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            # pyOpenSSL needs a blocking socket (a timeout makes it raise WantRead);
            # the kernel's receive timeout still bounds a silent server.
            sock.settimeout(None)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(timeout), 0)
            )
            conn = SSL.Connection(ctx, sock)
            conn.set_tlsext_host_name(servername.encode())
            conn.request_ocsp()
            conn.set_connect_state()
            conn.do_handshake()
            leaf = conn.get_peer_certificate()
            serial = None if leaf is None else leaf.get_serial_number()
            with_staple = None
            if staples and staples[0]:
                with_staple = ocsp.load_der_ocsp_response(staples[0]).serial_number
            with contextlib.suppress(SSL.Error, OSError):
                conn.shutdown()
    except (SSL.Error, OSError) as exc:
        return Seen(time.monotonic(), None, None, repr(exc))
    return Seen(time.monotonic(), serial, with_staple)


@dataclass
class Loop:
    """Handshakes with ``servername`` one after the other until ``stop()``."""

    port: int
    servername: str
    seen: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.append(handshake(self.port, self.servername))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_for(self, predicate, timeout: float = 10.0) -> Seen:
        """The first handshake (from now on) for which ``predicate`` holds."""
        start = len(self.seen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.seen[start:]:
                if predicate(item):
                    return item
            time.sleep(0.005)
        msg = f"no such handshake within {timeout} s; last: {self.seen[-3:]}"
        raise AssertionError(msg)

    async def until(self, predicate, timeout: float = 10.0) -> Seen:
        """``wait_for`` without blocking the event loop (a daemon in the same loop must run)."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    async def count(self, n: int, timeout: float = 10.0) -> None:
        """``wait_count`` without blocking the event loop."""
        await asyncio.to_thread(self.wait_count, n, timeout)

    def wait_count(self, n: int, timeout: float = 10.0) -> None:
        """Wait until at least ``n`` more handshakes happened."""
        start = len(self.seen)
        deadline = time.monotonic() + timeout
        while len(self.seen) < start + n and time.monotonic() < deadline:
            time.sleep(0.005)


def record(name: str, hap, loop: Loop, start: float, served_at: float | None) -> None:
    """Append one measured change to the file CERTLOAD_MEASURE names, if it is set."""
    path = os.environ.get("CERTLOAD_MEASURE")
    if not path:
        return
    during = [s for s in loop.seen if s.at >= start]
    row = {
        "scenario": name,
        "version": hap.info()["Version"],
        "seconds_to_stapled": None if served_at is None else served_at - start,
        "handshakes": len(during),
        "unstapled_new": sum(1 for s in during if s.serial is not None and not s.stapled),
    }
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")
