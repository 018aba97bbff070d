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

Usage: python bench/responder.py [PORT]   -> prints "PORT <n>" on stdout, serves until killed.
"""

from __future__ import annotations

import asyncio
import base64
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


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _answer(method: bytes, target: bytes, body: bytes) -> tuple[bytes, bytes, bytes]:
    """(status line, content type, body) for one request."""
    path, _, query = target.partition(b"?")
    if path == b"/_stats":
        data = dict(_STATS, cpu=_cpu(), loaded=len(_RESPONSES))
        return b"200 OK", b"application/json", json.dumps(data).encode()
    if path == b"/_reset":
        _STATS["first"] = _STATS["last"] = 0.0
        return b"200 OK", b"text/plain", b"ok"
    if path == b"/_load":
        with Path(urllib.parse.unquote(query.decode())).open("rb") as f:
            _RESPONSES.update(pickle.load(f))  # noqa: S301 - our own file, written by run.py
        return b"200 OK", b"text/plain", str(len(_RESPONSES)).encode()
    if method == b"POST":
        der = body
    else:
        last = path.rstrip(b"/").rsplit(b"/", 1)[-1]
        der = base64.b64decode(urllib.parse.unquote_to_bytes(last))
    now = time.monotonic()
    _STATS["requests"] += 1
    _STATS["first"] = _STATS["first"] or now
    _STATS["last"] = now
    try:
        serial = ocsp.load_der_ocsp_request(der).serial_number
        return b"200 OK", b"application/ocsp-response", _RESPONSES[serial]
    except (ValueError, KeyError):
        _STATS["misses"] += 1
        return b"404 Not Found", b"text/plain", b"unknown certificate\n"


class _HTTP(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

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
            status, ctype, payload = _answer(method, target, body)
            close = headers.get(b"connection", b"").lower() == b"close" or version == b"HTTP/1.0"
            assert self.transport is not None  # noqa: S101
            self.transport.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\nCache-Control: max-age=3600"
                + (b"\r\nConnection: close" if close else b"")
                + b"\r\n\r\n"
                + payload
            )
            if close:
                self.transport.close()
                return


async def _main() -> None:
    loop = asyncio.get_running_loop()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
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
