"""
Real OCSP responders for the tests, all on 127.0.0.1 and a free port.

- ``OpensslResponder``: answers with the real ``openssl ocsp`` (run once per
  request over an index file). OpenSSL 3's own ``-port`` listens on every
  address, so a small aiohttp front takes the HTTP side instead.
- ``FaultResponder``: an aiohttp server whose behaviour each test sets, per
  first path segment (``url_for("name")``) or globally: given DER bytes, HTTP
  errors, wrong content types, huge or slow bodies, stalls, redirects, or
  ``Sign``: a CA signing each answer at the time a (simulated) clock says.
- ``RecordingProxy``: a minimal forward HTTP proxy that records what it is
  asked and answers by itself, to prove HTTP_PROXY is honoured.
"""

# Behaviours share one call signature and use only what they need.
# ruff: noqa: ARG002

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import itertools
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, Self

from aiohttp import web
from cryptography.x509 import ocsp

from hastaple.testing.pki import PKI

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

    from cryptography import x509

OCSP_TYPE = "application/ocsp-response"
MB = 1024 * 1024


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


def request_der(request: web.Request, body: bytes) -> bytes | web.Response:
    """The DER OCSP request of a GET (RFC 5019, base64 in the path) or a POST, or an error."""
    if request.method == "GET":
        encoded = urllib.parse.unquote(request.raw_path.split("?", 1)[0].rsplit("/", 1)[-1])
        try:
            return base64.b64decode(encoded, validate=True)
        except ValueError:
            return web.Response(status=400, text="not base64")
    if request.method == "POST":
        return body
    return web.Response(status=405)


@dataclass
class Sign:
    """
    A CA that signs a fresh answer for the serial asked, at the time ``clock()`` says.

    The responder of a simulated clock (the daemon's week, its outages): each
    answer is valid from a minute before ``clock()`` for ``validity``, good
    unless the serial is in ``revoked``. ``max_age`` is sent as
    Cache-Control: seconds, or "next_update" for the time left until
    nextUpdate (what CAs commonly send). Faults: ``down`` (HTTP 503 to
    everyone), ``failing`` (503 for these serials), ``gate`` (each request
    waits for it to be set; ``entered`` says one does). ``asked`` counts
    requests per serial.
    """

    pki: PKI
    clock: Callable[[], dt.datetime]
    leaves: dict[int, x509.Certificate] = field(default_factory=dict)
    validity: dt.timedelta = dt.timedelta(days=7)
    max_age: int | Literal["next_update"] | None = None
    down: bool = False
    failing: set[int] = field(default_factory=set)
    revoked: set[int] = field(default_factory=set)
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    asked: collections.Counter[int] = field(default_factory=collections.Counter)

    def add(self, *leaves: x509.Certificate) -> None:
        """Answer for ``leaves`` (others get "unauthorized", as a CA that does not know them)."""
        self.leaves.update((leaf.serial_number, leaf) for leaf in leaves)

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Sign an answer for the asked serial at the clock's time."""
        der = request_der(request, await request.read())
        if isinstance(der, web.Response):
            return der
        serial = ocsp.load_der_ocsp_request(der).serial_number
        self.asked[serial] += 1
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if self.down or serial in self.failing:
            return web.Response(status=503, text="down")
        leaf = self.leaves.get(serial)
        if leaf is None:
            body = PKI.failure(ocsp.OCSPResponseStatus.UNAUTHORIZED)
            return web.Response(body=body, content_type=OCSP_TYPE)
        now = self.clock()
        this = now - dt.timedelta(minutes=1)
        status: Literal["good", "revoked"] = "revoked" if serial in self.revoked else "good"
        body = self.pki.response(
            leaf, status=status, this_update=this, next_update=this + self.validity
        )
        headers = {"Content-Type": OCSP_TYPE}
        if self.max_age is not None:
            age = self.max_age
            if age == "next_update":
                age = int((this + self.validity - now).total_seconds())
            headers["Cache-Control"] = f"max-age={age}, public, no-transform, must-revalidate"
        return web.Response(body=body, headers=headers)


class Behaviour(Protocol):
    """What a ``FaultResponder`` does for one request."""

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer ``request``."""
        ...


@dataclass(frozen=True)
class Serve:
    """Answer with ``body`` (DER, garbage, truncated ...), status, type and headers of choice."""

    body: bytes = b""
    status: int = 200
    content_type: str = OCSP_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds before answering, to make requests overlap

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer with the given body."""
        if self.delay:
            await asyncio.sleep(self.delay)
        # Set as a raw header: aiohttp's content_type= refuses parameters.
        headers = {"Content-Type": self.content_type, **dict(self.headers)}
        return web.Response(body=self.body, status=self.status, headers=headers)


@dataclass
class Huge:
    """
    Stream ``size`` bytes in ``chunk``-sized writes; ``sent`` says how many went out.

    Without ``declare_length`` the body is chunked, so the client can only
    notice while reading; ``interval`` (seconds between chunks) makes it slow
    too. ``done`` is set when the handler stops, early or not.
    """

    size: int = 50 * MB
    chunk: int = 64 * 1024
    declare_length: bool = False
    interval: float = 0.0
    sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer with the huge body."""
        resp = web.StreamResponse(headers={"Content-Type": OCSP_TYPE})
        if self.declare_length:
            resp.content_length = self.size
        try:
            await resp.prepare(request)
            block = b"\x30" * self.chunk
            while self.sent < self.size:
                part = block[: self.size - self.sent]
                await resp.write(part)
                self.sent += len(part)
                if self.interval:
                    await asyncio.sleep(self.interval)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client hung up: exactly what the test wants to see
        finally:
            self.done.set()
        return resp


@dataclass(frozen=True)
class Stall:
    """Send nothing for ``seconds`` (or until the responder stops), then 200."""

    seconds: float = 30.0
    body: bytes = b""

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer as this behaviour says."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.closing.wait(), self.seconds)
        return web.Response(body=self.body, content_type=OCSP_TYPE)


@dataclass(frozen=True)
class Drip:
    """Headers at once, then ``body`` one ``chunk`` every ``interval`` seconds."""

    body: bytes = b"\x30" * 100
    chunk: int = 1
    interval: float = 0.05

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer as this behaviour says."""
        resp = web.StreamResponse(headers={"Content-Type": OCSP_TYPE})
        resp.content_length = len(self.body)
        with contextlib.suppress(ConnectionError):
            await resp.prepare(request)
            for at in range(0, len(self.body), self.chunk):
                await resp.write(self.body[at : at + self.chunk])
                await asyncio.sleep(self.interval)
            await resp.write_eof()
        return resp


@dataclass(frozen=True)
class Redirect:
    """Answer ``status`` with ``Location: location`` (a loop when it points back here)."""

    location: str
    status: int = 302

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer as this behaviour says."""
        return web.Response(status=self.status, headers={"Location": self.location})


@dataclass(frozen=True)
class Cut:
    """Promise ``declared`` bytes, send ``body``, then drop the connection."""

    body: bytes = b"\x30\x82"
    declared: int = 1000

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer as this behaviour says."""
        resp = web.StreamResponse(headers={"Content-Type": OCSP_TYPE})
        resp.content_length = self.declared
        await resp.prepare(request)
        await resp.write(self.body)
        if request.transport is not None:
            request.transport.abort()
        return resp


@dataclass(frozen=True)
class Hangup:
    """Close the connection without answering."""

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:
        """Answer as this behaviour says."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError


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
