"""
Ask OCSP responders (and AIA caIssuers URLs) over HTTP: the only aiohttp client.

One ``Fetcher`` owns one keep-alive ``aiohttp.ClientSession`` and bounds
connections per responder host, so thousands of certificates never flood a
CA; each host has its own bound and queue, so a stalled responder holds up
only its own certificates. Every exchange is bounded: connect time, total
time (redirects included), body size, number of redirects; only http and https
are spoken, also after a redirect. ``HTTP(S)_PROXY``/``NO_PROXY`` are honoured
(what aiohttp's ``trust_env`` reads, looked up by us: ``proxies.Routes``).

Every aiohttp, timeout and socket error is translated into ``FetchError`` at
this boundary (``fetch_errors``, httpx's ``map_httpcore_exceptions``); callers
see nothing else.
The body is returned as bytes: whether it is a valid OCSP response is the
validator's question, not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import aiohttp
from yarl import URL

from hastaple import __version__
from hastaple.config import FETCH_TIMEOUT, RESPONDER_CONNECTIONS
from hastaple.core.ocsp.request import http_request
from hastaple.engine.fetch_errors import MapErrors
from hastaple.engine.proxies import Routes
from hastaple.errors import FetchError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

OCSP_CONTENT_TYPE = "application/ocsp-response"  # RFC 6960 Appendix A.2
_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK_BYTES = 16 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Limits:
    """
    Bounds on what one ``Fetcher`` may do; the defaults suit public CAs.

    ``per_host`` bounds the connections to one responder host (scheme, host,
    port); there is no total across hosts: one host's stalled connections
    must not use up a shared pool (the pipeline's pool of certificates in
    flight bounds the total). ``timeout`` bounds a whole exchange, redirects
    and body included; ``connect_timeout`` bounds each TCP (and TLS) connect.
    A host whose connections are all busy and none of which has answered for
    ``stalled_after`` seconds is stalled: a caller that allows it (``deferring``)
    gets ``HostStalled`` instead of waiting for it.
    """

    per_host: int = RESPONDER_CONNECTIONS
    stalled_after: float = 2.0
    connect_timeout: float = 5.0
    timeout: float = FETCH_TIMEOUT
    max_body_bytes: int = 64 * 1024
    max_redirects: int = 3


@dataclass(frozen=True, slots=True)
class OCSPReply:
    """
    The raw answer of a responder, not yet validated.

    ``max_age`` is the Cache-Control max-age in seconds (RFC 5019 §6.2), a hint
    for the scheduler; ``elapsed`` is the seconds the whole exchange took.
    """

    der: bytes
    url: str
    max_age: int | None
    elapsed: float
    date: str | None = None  # the HTTP Date header: the responder's clock, for `doctor`


@dataclass(frozen=True, slots=True)
class _Body:
    """What ``_exchange`` hands back: the body and the headers we care about."""

    data: bytes
    url: str
    cache_control: str | None
    date: str | None = None


_DEFAULT_LIMITS = Limits()


class HostStalled(Exception):  # noqa: N818 - a signal to set work aside, not an error
    """
    The responder host is stalled and the caller chose not to wait (``deferring``).

    Nothing was sent. Not a ``HastapleError``: no certificate failed; the
    caller puts this one aside and does other hosts' work first.
    """


_DEFERRING: contextvars.ContextVar[bool] = contextvars.ContextVar("deferring", default=False)


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """
    In this context (this task), waiting for a stalled host raises ``HostStalled``.

    For a pool of workers over many hosts: a worker waiting behind a host that
    answers nothing would hold up the other hosts' certificates for as long as
    that host's requests take to time out.
    """
    token = _DEFERRING.set(True)
    try:
        yield
    finally:
        _DEFERRING.reset(token)


class _Host:
    """One responder host's connection slots, and when it last showed signs of life."""

    def __init__(self, connections: int, now: float) -> None:
        self.slots = asyncio.Semaphore(connections)
        self.talking = 0
        self.alive = now  # loop time of the last answer (or failure), or of the first request

    def stalled(self, now: float, after: float) -> bool:
        return self.slots.locked() and now - self.alive >= after


class Fetcher:
    """
    An HTTP client for OCSP responders; use as ``async with Fetcher() as f``.

    The session lives as long as the context, so connections to one responder
    are reused across certificates (keep-alive).
    """

    def __init__(
        self,
        limits: Limits = _DEFAULT_LIMITS,
        *,
        user_agent: str = f"hastaple/{__version__}",
    ) -> None:
        self.limits = limits
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        # Our own per-host queue, in front of aiohttp's: a request's timeout
        # starts when it may talk, so 10,000 certificates queued behind 4
        # connections to one responder never time out while merely waiting.
        self._hosts: dict[tuple[str, str | None, int | None], _Host] = {}
        self._routes = Routes()

    async def __aenter__(self) -> Self:
        # limit=0: no pool shared by all hosts, whose wait would count against
        # a request's timeout and let a stalled host hold up the others.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.limits.per_host)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # `sock_connect`, not `connect`: the latter also counts the wait for
            # a free slot under `limit_per_host`, which is queueing, not a fault.
            # No `total`: `_exchange` bounds each exchange, redirects included.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.limits.connect_timeout),
            headers={"User-Agent": self._user_agent},
            # The proxy variables and ~/.netrc are honoured, but looked up by
            # `Routes`: aiohttp's trust_env costs two thread hand-offs per request.
            trust_env=False,
            # Responders have no business setting cookies on us.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ocsp(self, url: str, request_der: bytes) -> OCSPReply:
        """
        Send ``request_der`` to responder ``url``: GET when short (RFC 5019), else POST.

        Returns:
            The body, which must come with HTTP 200 and ``application/ocsp-response``.

        Raises:
            FetchError: on any failure; anything else is a bug.
        """
        req = http_request(url, request_der)
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = await self._exchange(
            url, req.method, req.url, req.body, content_type=OCSP_CONTENT_TYPE
        )
        return OCSPReply(
            der=body.data,
            url=body.url,
            max_age=_max_age(body.cache_control),
            elapsed=loop.time() - started,
            date=body.date,
        )

    async def get(self, url: str) -> bytes:
        """
        Download ``url`` (an AIA caIssuers certificate) under the same limits.

        Raises:
            FetchError: on any failure; anything else is a bug.
        """
        return (await self._exchange(url, "GET", url, None, content_type=None)).data

    async def _exchange(
        self,
        origin: str,
        method: str,
        url: str,
        body: bytes | None,
        *,
        content_type: str | None,
    ) -> _Body:
        """Run one exchange, following redirects by hand so each target is checked."""
        if self._session is None:
            msg = "Fetcher used outside 'async with'"
            raise RuntimeError(msg)
        session = self._session
        target = _parse_url(origin, url)
        _check_scheme(origin, target, redirected=False)
        headers = {"Content-Type": "application/ocsp-request"} if body is not None else {}
        key = (target.scheme, target.host, target.port)
        loop = asyncio.get_running_loop()
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(self.limits.per_host, loop.time())
        await self._acquire(host, origin)
        if host.talking == 0:
            host.alive = loop.time()
        host.talking += 1
        try:
            reply = await self._talk(session, origin, method, target, body, headers, content_type)
        except FetchError as exc:
            if not isinstance(exc.__cause__, TimeoutError):  # it answered, if badly
                host.alive = loop.time()
            raise
        else:
            host.alive = loop.time()
            return reply
        finally:
            host.talking -= 1
            host.slots.release()

    async def _talk(  # noqa: PLR0917 - the one exchange of _exchange, split out
        self,
        session: aiohttp.ClientSession,
        origin: str,
        method: str,
        target: URL,
        body: bytes | None,
        headers: dict[str, str],
        content_type: str | None,
    ) -> _Body:
        """The exchange itself, redirects included, with a connection already ours."""
        with MapErrors(origin, self.limits):
            async with asyncio.timeout(self.limits.timeout):
                for _ in range(self.limits.max_redirects + 1):
                    route = self._routes.get(target)
                    async with session.request(
                        method,
                        target,
                        data=body,
                        headers=headers | route.headers if route.headers else headers,
                        allow_redirects=False,
                        proxy=route.proxy,
                        proxy_headers=route.proxy_headers,
                    ) as resp:
                        if resp.status in _REDIRECT_STATUSES:
                            target = _redirect_target(origin, resp)
                            # The method and body are kept even for 301-303: an
                            # OCSP POST is a query, and a GET would lose it.
                            continue
                        _check_status(origin, resp.status)
                        if content_type is not None and resp.content_type != content_type:
                            raise FetchError(
                                origin,
                                f"responder answered with content type '{resp.content_type}',"
                                f" not {content_type}",
                            )
                        data = await _read_capped(origin, resp, self.limits.max_body_bytes)
                        return _Body(
                            data,
                            str(resp.url),
                            resp.headers.get("Cache-Control"),
                            resp.headers.get("Date"),
                        )
                raise FetchError(origin, f"more than {self.limits.max_redirects} redirects")

    async def _acquire(self, host: _Host, origin: str) -> None:
        """
        Wait for one of ``host``'s connections.

        Raises:
            HostStalled: in ``deferring``, when the host is stalled (at once, or
                while waiting: it answered nothing for ``stalled_after``).
        """
        if not _DEFERRING.get() or not host.slots.locked():
            await host.slots.acquire()
            return
        loop = asyncio.get_running_loop()
        while True:
            wait = host.alive + self.limits.stalled_after - loop.time()
            if wait <= 0 and host.stalled(loop.time(), self.limits.stalled_after):
                raise HostStalled(origin)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, self.limits.stalled_after / 10)):
                    await host.slots.acquire()
                    return


def _parse_url(origin: str, url: str) -> URL:
    """Parse ``url`` (ours or a Location header); a malformed one is no transport fault."""
    try:
        return URL(url)
    except ValueError as exc:
        raise FetchError(origin, f"invalid URL {url!r}: {exc}") from exc


def _check_scheme(origin: str, url: URL, *, redirected: bool) -> None:
    """Refuse anything but http(s), before sending and after each redirect."""
    if url.scheme not in _SCHEMES:
        problem = f"unsupported URL scheme '{url.scheme}'"
        if redirected:
            problem = f"redirected to {problem} ({url})"
        raise FetchError(origin, problem)


def _redirect_target(origin: str, resp: aiohttp.ClientResponse) -> URL:
    """Where a 3xx points, made absolute and checked."""
    location = resp.headers.get("Location")
    if not location:
        raise FetchError(origin, f"HTTP {resp.status} redirect without a Location header")
    target = resp.url.join(_parse_url(origin, location))
    _check_scheme(origin, target, redirected=True)
    return target


def _check_status(origin: str, status: int) -> None:
    """Only 200 carries an OCSP response (RFC 5019 §5)."""
    if status != 200:  # noqa: PLR2004 - HTTP OK
        raise FetchError(origin, f"HTTP {status} from responder")


async def _read_capped(origin: str, resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """Read the body in chunks and stop as soon as it exceeds ``cap`` bytes."""
    too_large = f"response larger than {cap} bytes"
    if resp.content_length is not None and resp.content_length > cap:
        resp.close()  # drop the connection rather than drain a huge body
        raise FetchError(origin, too_large)
    if resp.content_length is not None and not resp.headers.get("Content-Encoding"):
        return await resp.read()  # within the cap, and not inflated by decompression
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK_BYTES):
        size += len(chunk)
        if size > cap:
            resp.close()
            raise FetchError(origin, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _max_age(cache_control: str | None) -> int | None:
    """The max-age of a Cache-Control header (RFC 5019 §6.2), or None."""
    if not cache_control:
        return None
    match = _MAX_AGE.search(cache_control)
    return int(match.group(1)) if match else None
