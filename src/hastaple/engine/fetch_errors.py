"""
Every aiohttp, timeout and socket error as a ``FetchError`` with one sentence for a person.

``MapErrors`` is the boundary (httpx's ``map_httpcore_exceptions``): inside
it, a transport exception becomes a ``FetchError`` naming the URL; anything
not listed escapes as the bug it is. Owns: the sentences. Must not retry or
decide what a failure means for a certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from hastaple.errors import FetchError

if TYPE_CHECKING:
    from hastaple.engine.fetch import Limits


class MapErrors:
    """
    Translate transport exceptions into ``FetchError`` (httpx's map_httpcore_exceptions).

    A class rather than ``@contextmanager`` so that ``__exit__`` is typed as
    never swallowing: mypy then knows the block either returns or raises.
    Order matters: the most specific classes first (aiohttp's timeouts are also
    ``OSError``s and ``ClientError``s).
    """

    def __init__(self, url: str, limits: Limits) -> None:
        self.url = url
        self.limits = limits

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, FetchError):
            return
        for caught, sentence in _ERROR_MAP:
            if isinstance(exc, caught):
                raise FetchError(self.url, sentence(exc, self.limits)) from exc


# (caught type, sentence), most specific first: aiohttp's timeouts
# are also OSErrors and ClientErrors. Anything not listed escapes: a bug.
_ERROR_MAP: tuple[tuple[type[BaseException], Callable[[Any, Limits], str]], ...] = (
    (
        aiohttp.ConnectionTimeoutError,
        lambda _, lim: f"no connection within {lim.connect_timeout:g} s",
    ),
    (
        TimeoutError,  # asyncio.timeout, ClientTimeout(total), SocketTimeoutError
        lambda _, lim: f"no complete answer within {lim.timeout:g} s",
    ),
    (
        aiohttp.ClientConnectorDNSError,
        lambda e, _: f"cannot resolve the host: {_reason(e)}",
    ),
    (
        aiohttp.ClientProxyConnectionError,
        lambda e, _: f"cannot connect to the proxy: {_reason(e)}",
    ),
    (
        aiohttp.ClientConnectorCertificateError,
        lambda e, _: f"the responder's TLS certificate is not trusted: {_tls_reason(e)}",
    ),
    (aiohttp.ClientSSLError, lambda e, _: f"TLS handshake failed: {_tls_reason(e)}"),
    (aiohttp.ClientConnectorError, lambda e, _: f"cannot connect: {_reason(e)}"),
    (
        aiohttp.ServerDisconnectedError,
        lambda _e, _: "the responder closed the connection without answering",
    ),
    (
        aiohttp.ClientPayloadError,
        lambda _e, _: "the response body was cut short or malformed",
    ),
    (aiohttp.ClientHttpProxyError, lambda e, _: f"the proxy answered HTTP {e.status}"),
    (aiohttp.InvalidURL, lambda e, _: f"invalid URL: {e}"),
    (aiohttp.ClientResponseError, lambda e, _: f"malformed HTTP response: {e.message}"),
    (aiohttp.ClientError, lambda e, _: f"HTTP client error: {_reason(e)}"),
    (OSError, lambda e, _: f"network error: {_reason(e)}"),
)


def _reason(exc: BaseException) -> str:
    """The most human part of an exception: the OS's strerror when there is one."""
    os_error = getattr(exc, "os_error", exc)
    strerror = getattr(os_error, "strerror", None)
    return str(strerror or exc or type(exc).__name__)


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's own words ("certificate has expired"), without the [SSL: ...] noise."""
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", exc)
    if verify_message := getattr(inner, "verify_message", None):
        return str(verify_message)
    if reason := getattr(inner, "reason", None):  # e.g. WRONG_VERSION_NUMBER
        return str(reason).replace("_", " ").lower()
    return _reason(exc)
