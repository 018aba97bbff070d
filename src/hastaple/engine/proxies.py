"""
Which proxy and credentials reach a responder: aiohttp's ``trust_env`` rules, once per origin.

``Routes.get(url)`` answers what aiohttp with ``trust_env=True`` would use
(``HTTP(S)_PROXY``, ``NO_PROXY``, ``~/.netrc``) from the same aiohttp
helpers, computed on the loop once per origin instead of in a thread per
request, and looked up again when the variables or the netrc file change.
Owns: the route for a URL. Must not send requests (``fetch`` does).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

from aiohttp import helpers
from yarl import URL


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach one origin: through which proxy, with which credentials."""

    proxy: URL | None = None
    proxy_headers: dict[str, str] | None = None  # Proxy-Authorization for CONNECT (https)
    headers: dict[str, str] | None = None  # Authorization (netrc); Proxy-Authorization (http)


DIRECT = Route()


class Routes:
    """
    What aiohttp's ``trust_env`` would use for a URL, computed once per origin.

    aiohttp with ``trust_env=True`` runs two lookups per request in a thread
    (the proxy variables, then ~/.netrc): at 10,000 requests that is 20,000
    thread hand-offs and the GIL contention that comes with them (measured:
    the biggest single cost of a cold run). We call the same aiohttp helpers,
    on the loop, once per origin, and look again whenever the variables they
    read change (the daemon's reload sets ``HTTP_PROXY``) or, within
    ``NETRC_RECHECK`` seconds, the netrc file does.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._routes: dict[tuple[str, str | None, int | None, bool], Route] = {}
        self._netrc_seen = -NETRC_RECHECK  # monotonic time of the last stat of ~/.netrc

    def get(self, url: URL) -> Route:
        """The route for ``url`` under the current environment."""
        env = tuple(map(os.environ.get, _ENV_NAMES))
        now = time.monotonic()
        if self._key is None or env != self._key[0] or now - self._netrc_seen >= NETRC_RECHECK:
            self._netrc_seen = now
            key = (env, _netrc_identity(env))
            if key != self._key:
                self._key, self._routes = key, {}
        origin = (url.scheme, url.host, url.port, _has_credentials(url))
        route = self._routes.get(origin)
        if route is None:
            route = self._routes[origin] = _env_route(url)
        return route


# Every variable the lookups below read for an http(s) URL (urllib's getproxies
# and proxy_bypass, aiohttp's netrc_from_env): a fixed list, because iterating
# os.environ on every request costs more than the request's own Python.
_ENV_NAMES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",  # a CGI environment: urllib then ignores HTTP_PROXY
    "NETRC",
    "HOME",
)


# Seconds between looks at the netrc file for changes: a stat per request is
# a system call per certificate; the variables are compared on every request.
NETRC_RECHECK = 1.0


def _netrc_identity(env: tuple[str | None, ...]) -> tuple[int, int, int, int] | None:
    """The identity of the netrc file that ``env`` (``_ENV_NAMES``) points at, or None."""
    netrc = env[-2] or os.path.join(env[-1] or os.path.expanduser("~"), ".netrc")  # noqa: PTH111, PTH118
    try:
        st = os.stat(netrc)  # noqa: PTH116 - a bare stat, no Path needed
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _env_route(url: URL) -> Route:
    """The trust_env rules of aiohttp: env proxy unless NO_PROXY, netrc for the host."""
    headers = None
    if url.host is not None and not _has_credentials(url):  # credentials in the URL win
        with contextlib.suppress(LookupError):
            auth = helpers.basicauth_from_netrc(helpers.netrc_from_env(), url.host)
            headers = {"Authorization": auth.encode()}
    try:
        proxy, proxy_auth = helpers.get_env_proxy_for_url(url)
    except LookupError:
        return Route(headers=headers) if headers else DIRECT
    if proxy_auth is None:
        return Route(proxy, None, headers)
    credentials = {"Proxy-Authorization": proxy_auth.encode()}
    if url.scheme == "https":  # sent on the CONNECT to the proxy
        return Route(proxy, credentials, headers)
    # A plain-http request goes to the proxy as is: aiohttp puts proxy_headers
    # only on a CONNECT, so the credentials travel with the request itself.
    return Route(proxy, None, (headers or {}) | credentials)


def _has_credentials(url: URL) -> bool:
    """A user or a password in the URL (``http://:pw@host`` counts): netrc is then not used."""
    return url.raw_user is not None or url.raw_password is not None
