"""
A deliberately fast local OCSP responder for the benchmark: never the bottleneck.

It serves pre-signed responses (built by ``bench/run.py``) from a dict keyed
by certificate serial, over a hand-written HTTP/1.1 keep-alive loop on
127.0.0.1 (asyncio protocol, no framework). GET (RFC 5019 / HAProxy's
updater / hastaple) and POST (``openssl ocsp``) are both answered.

Control (plain GET, same port):
    /_load?<path>   load a pickled {serial: DER} dict (the port is printed first,
                    so certificates can carry the URL before responses exist)
    /_reset         forget the first/last request times (counters keep counting)
    /_stats         JSON {"requests": n, "misses": n, "cpu": seconds of own CPU}

Latency mode: ``--delay SECONDS`` holds every OCSP answer that long after its
request arrived, as a CA that far away would (the control paths answer at
once). Each connection's answers still leave in the order of its requests,
and the wait costs no CPU (a timer per connection, nothing sleeps).

Usage: python bench/responder.py [PORT] [--delay SECONDS]
    -> prints "PORT <n>" on stdout, serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import pickle
import resource
import signal
import sys
import time
import urllib.parse
from pathlib import Path

from cryptography.x509 import ocsp

_RESPONSES: dict[int, bytes] = {}
_STATS = {"requests": 0, "misses": 0, "first": 0.0, "last": 0.0}
_DELAY = [0.0]  # seconds before each OCSP answer (--delay)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _answer(method: bytes, target: bytes, body: bytes) -> tuple[bytes, bytes, bytes, float]:
    """(status line, content type, body, seconds to hold it) for one request."""
    path, _, query = target.partition(b"?")
    if path == b"/_stats":
        data = dict(_STATS, cpu=_cpu(), loaded=len(_RESPONSES), delay=_DELAY[0])
        return b"200 OK", b"application/json", json.dumps(data).encode(), 0.0
    if path == b"/_reset":
        _STATS["first"] = _STATS["last"] = 0.0
        return b"200 OK", b"text/plain", b"ok", 0.0
    if path == b"/_load":
        with Path(urllib.parse.unquote(query.decode())).open("rb") as f:
            _RESPONSES.update(pickle.load(f))  # noqa: S301 - our own file, written by run.py
        return b"200 OK", b"text/plain", str(len(_RESPONSES)).encode(), 0.0
    return (*_ocsp(method, path, body), _DELAY[0])


def _ocsp(method: bytes, path: bytes, body: bytes) -> tuple[bytes, bytes, bytes]:
    now = time.monotonic()
    _STATS["requests"] += 1
    _STATS["first"] = _STATS["first"] or now
    _STATS["last"] = now
    try:
        if method == b"POST":
            der = body
        else:
            last = path.rstrip(b"/").rsplit(b"/", 1)[-1]
            der = base64.b64decode(urllib.parse.unquote_to_bytes(last))
        serial = ocsp.load_der_ocsp_request(der).serial_number
        return b"200 OK", b"application/ocsp-response", _RESPONSES[serial]
    except (ValueError, KeyError):
        _STATS["misses"] += 1
        return b"404 Not Found", b"text/plain", b"unknown certificate\n"


class _HTTP(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        # Answers not yet due, in request order: (due time, bytes, close after).
        self.held: collections.deque[tuple[float, bytes, bool]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = self.buf[:end].split(b"\r\n")
            method, target, version = lines[0].split(b" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            status, ctype, payload, delay = _answer(method, target, body)
            close = headers.get(b"connection", b"").lower() == b"close" or version == b"HTTP/1.0"
            self._send(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\nCache-Control: max-age=3600"
                + (b"\r\nConnection: close" if close else b"")
                + b"\r\n\r\n"
                + payload,
                delay,
                close=close,
            )
            if close:
                return

    def _send(self, data: bytes, delay: float, *, close: bool) -> None:
        """Write ``data`` after ``delay`` seconds, never before an earlier answer."""
        if not delay and not self.held:
            self._write(data, close=close)
            return
        loop = asyncio.get_running_loop()
        due = max(loop.time() + delay, self.held[-1][0] if self.held else 0.0)
        self.held.append((due, data, close))
        if self.timer is None:
            self.timer = loop.call_at(due, self._release)

    def _release(self) -> None:
        self.timer = None
        now = asyncio.get_running_loop().time()
        while self.held and self.held[0][0] <= now:
            _, data, close = self.held.popleft()
            self._write(data, close=close)
        if self.held:
            self.timer = asyncio.get_running_loop().call_at(self.held[0][0], self._release)

    def _write(self, data: bytes, *, close: bool) -> None:
        assert self.transport is not None  # noqa: S101
        if self.transport.is_closing():
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio's signature
        if self.timer is not None:
            self.timer.cancel()
        self.held.clear()


async def _main() -> None:
    ap = argparse.ArgumentParser(description="the benchmark's OCSP responder")
    ap.add_argument("port", type=int, nargs="?", default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each OCSP answer")
    args = ap.parse_args()
    _DELAY[0] = args.delay
    loop = asyncio.get_running_loop()
    port = args.port
    server = await loop.create_server(_HTTP, "127.0.0.1", port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_main())
