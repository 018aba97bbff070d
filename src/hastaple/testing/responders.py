"""
Real OCSP responders for the tests, all on 127.0.0.1 and a free port.

- ``OpensslResponder``: answers with the real ``openssl ocsp`` (run once per
  request over an index file). OpenSSL 3's own ``-port`` listens on every
  address, so a small aiohttp front takes the HTTP side instead.
- ``FaultResponder``: an aiohttp server whose behaviour each test sets, per
  first path segment (``url_for("name")``) or globally: given DER bytes, HTTP
  errors, wrong content types, huge or slow bodies, stalls, redirects, or
  ``Sign``: a CA signing each answer at the time a (simulated) clock says
  (the behaviours are in ``hastaple.testing.behaviours``).
- ``RecordingProxy``: a minimal forward HTTP proxy that records what it is
  asked and answers by itself, to prove HTTP_PROXY is honoured.
"""

# Behaviours share one call signature and use only what they need.
# ruff: noqa: ARG002

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from aiohttp import web

from hastaple.testing.behaviours import (
    MB,
    OCSP_TYPE,
    Behaviour,
    Cut,
    Drip,
    Hangup,
    Huge,
    Redirect,
    Serve,
    Sign,
    Stall,
    request_der,
)
from hastaple.testing.pki import PKI

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from cryptography import x509

__all__ = [
    "MB", "OCSP_TYPE", "Behaviour", "Cut", "Drip", "FaultResponder", "Hangup", "Huge",
    "OpensslResponder", "RecordingProxy", "Redirect", "Seen", "Serve", "Sign", "Stall",
    "request_der",
]  # fmt: skip


@dataclass(frozen=True)
class Seen:
    """One request as a responder saw it."""

    method: str
    path: str
    body: bytes
    user_agent: str | None
    client_port: int  # the same port twice means a kept-alive connection


class _Server:
    """An aiohttp application on 127.0.0.1:<free port>, started and stopped by hand."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def requests(self) -> int:
        """How many requests arrived."""
        return len(self.seen)

    @property
    def methods(self) -> list[str]:
        return [s.method for s in self.seen]

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a client that gives up cancels the handler, so a
        # huge or stalled answer stops as it would on a real server.
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"{'https' if self.ssl_context else 'http'}://{host}:{port}"
        return self

    async def stop(self) -> None:
        self.closing.set()  # releases stalls
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(
            Seen(
                request.method,
                request.raw_path,
                body,
                request.headers.get("User-Agent"),
                peer[1] if peer else 0,
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.handle(request, body)
        finally:
            self.in_flight -= 1

    async def handle(self, request: web.Request, body: bytes) -> web.StreamResponse:
        raise NotImplementedError


class OpensslResponder(_Server):
    """
    ``openssl ocsp`` as a responder over ``directory`` (from ``pki.write_openssl_ca``).

    GET /<base64 request> and POST / (any path) are answered with the DER
    ``openssl ocsp -index ... -reqin ... -respout ...`` produces.
    """

    def __init__(self, directory: Path, *, ndays: int = 7) -> None:
        super().__init__()
        self.directory = directory
        self.ndays = ndays
        self._counter = itertools.count()

    def add(self, cert: x509.Certificate, *, revoked: bool = False) -> None:
        """Make ``cert`` known to the responder (else openssl answers "unknown")."""
        PKI.add_to_index(self.directory, cert, revoked=revoked)

    async def handle(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Answer with what ``openssl ocsp`` says for the request."""
        der = request_der(request, body)
        if isinstance(der, web.Response):
            return der
        n = next(self._counter)
        req, resp = self.directory / f"req-{n}.der", self.directory / f"resp-{n}.der"
        req.write_bytes(der)
        proc = await asyncio.create_subprocess_exec(
            "openssl", "ocsp", "-index", "index.txt", "-CA", "ca.pem",
            "-rsigner", "rsigner.pem", "-rkey", "rkey.pem",
            "-reqin", req.name, "-respout", resp.name, "-ndays", str(self.ndays),
            cwd=self.directory,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0 or not resp.exists():
            return web.Response(status=500, text=err.decode(errors="replace"))
        return web.Response(body=resp.read_bytes(), content_type=OCSP_TYPE)


class FaultResponder(_Server):
    """
    An OCSP responder that misbehaves on demand.

    ``on(name, behaviour)`` applies to every request whose path starts with
    ``/name/`` (``url_for(name)`` is such a responder URL: GET requests land
    on ``/name/<base64>``, POSTs on ``/name/``); ``on(None, behaviour)`` is
    the default for the rest, initially a 404.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context=ssl_context)
        self._routes: dict[str | None, Behaviour] = {None: Serve(b"no behaviour set", 404)}

    def on(self, name: str | None, behaviour: Behaviour) -> str:
        """Set the behaviour for ``/name/...`` (or the default); return its URL."""
        self._routes[name] = behaviour
        return self.url_for(name)

    def url_for(self, name: str | None) -> str:
        """The URL whose first path segment selects ``name``'s behaviour."""
        return f"{self.url}/{name}/" if name else f"{self.url}/"

    def seen_under(self, name: str) -> list[Seen]:
        """The requests that arrived under ``name``."""
        return [s for s in self.seen if s.path.startswith(f"/{name}/")]

    async def handle(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Dispatch to the behaviour set for the first path segment."""
        name = request.raw_path.split("/")[1] if request.raw_path.count("/") > 1 else None
        behaviour = self._routes.get(name) or self._routes[None]
        return await behaviour(request, self)


class RecordingProxy:
    """
    A forward HTTP proxy that answers every request itself with ``body``.

    ``request_lines`` holds what clients asked, e.g. ``GET http://host/x HTTP/1.1``:
    the absolute-form target is how a proxied request looks (RFC 9112 §3.2.2).
    """

    def __init__(self, body: bytes, content_type: str = OCSP_TYPE) -> None:
        self.body = body
        self.content_type = content_type
        self.request_lines: list[str] = []
        self.heads: list[str] = []  # each request's whole head, headers included
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.request_lines.append(lines[0])
            self.heads.append(head.decode("latin-1"))
            length = next(
                (int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                 if k.strip().lower() == "content-length"),
                0,
            )  # fmt: skip
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\n"
                + f"Content-Type: {self.content_type}\r\n".encode()
                + f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
