"""
What a ``FaultResponder`` does for one request: behaviours, each a fault or a CA.

``Serve`` (given bytes, any status and content type), ``Huge`` and ``Drip``
(big or slow bodies), ``Stall``, ``Redirect``, ``Cut`` and ``Hangup``
(broken transports), and ``Sign``: a CA that signs a fresh answer at the time
a (simulated) clock says. ``request_der`` reads the OCSP request of a GET or
a POST. Owns: the behaviours. Must not start servers (``responders`` does).
"""

# Behaviours share one call signature and use only what they need.
# ruff: noqa: ARG002

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from aiohttp import web
from cryptography.x509 import ocsp

from hastaple.testing.pki import PKI

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography import x509

    from hastaple.testing.responders import FaultResponder

OCSP_TYPE = "application/ocsp-response"
MB = 1024 * 1024


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
