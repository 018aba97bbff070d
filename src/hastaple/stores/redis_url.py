"""
The ``--fleet`` URL: which Redis (or Valkey) server, and how to reach it.

Three forms, read here rather than by redis-py's ``from_url`` so that a typo
is a configuration error (exit 2) naming the URL, not a silent default, and
so that a password never reaches a log line (``Address.display``):

- ``redis://[[user]:password@]host[:port][/db]`` (port 6379, db 0);
- ``rediss://...``: the same over TLS, with ``ssl_ca_certs=<file>`` (the CA
  that signed the server's certificate) and ``ssl_certfile=<file>`` plus
  ``ssl_keyfile=<file>`` (a client certificate) as query parameters, named as
  redis-py names them; the server's name is checked against its certificate;
- ``unix:///path/redis.sock[?db=N]`` (a password may precede the path:
  ``unix://:secret@/path``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hastaple.errors import ConfigError

DEFAULT_PORT = 6379
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed fleet URL: everything redis-py needs to open a connection."""

    scheme: str  # "redis", "rediss" or "unix"
    host: str | None = None
    port: int = DEFAULT_PORT
    path: str | None = None  # the unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def display(self) -> str:
        """The URL as logs and ``status`` show it: no password, no user name."""
        if self.scheme == "unix":
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.db}"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a redis-py connection (pool) to this server."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
        }
        if self.scheme == "unix":
            kwargs["path"] = self.path
            return kwargs
        kwargs.update(host=self.host, port=self.port)
        if self.scheme == "rediss":
            kwargs.update(
                ssl_ca_certs=self.ca_file,
                ssl_certfile=self.cert_file,
                ssl_keyfile=self.key_file,
                ssl_cert_reqs="required",
                ssl_check_hostname=True,
            )
        return kwargs


def parse(url: str) -> Address:
    """
    Read a fleet URL.

    Raises:
        ConfigError: the URL is not one of the three forms, or names a TLS file
            that cannot be read.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad(url, str(exc)) from exc
    scheme = parts.scheme.lower()
    if scheme not in {"redis", "rediss", "unix"}:
        raise _bad(url, "the scheme must be redis://, rediss:// or unix://")
    if parts.fragment:
        raise _bad(url, "a fragment (#...) means nothing here")
    query = _query(url, parts.query)
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    if scheme == "unix":
        return _unix(url, parts, query, username, password)
    files = {name: _readable(url, name, query.pop(name)) for name in _TLS_FILES if name in query}
    if files and scheme != "rediss":
        raise _bad(url, "ssl_* options need rediss:// (TLS)")
    if ("ssl_certfile" in files) != ("ssl_keyfile" in files):
        raise _bad(url, "a client certificate needs both ssl_certfile and ssl_keyfile")
    if query:
        raise _bad(url, f"unknown option {min(query)!r}")
    if not parts.hostname:
        raise _bad(url, "no host")
    return Address(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        db=_db(url, parts.path.strip("/") or "0"),
        username=username,
        password=password,
        ca_file=files.get("ssl_ca_certs"),
        cert_file=files.get("ssl_certfile"),
        key_file=files.get("ssl_keyfile"),
    )


def _unix(
    url: str,
    parts: urllib.parse.SplitResult,
    query: dict[str, str],
    username: str | None,
    password: str | None,
) -> Address:
    if parts.hostname:
        raise _bad(url, "write unix:///path/to/redis.sock (three slashes: no host)")
    if not parts.path.startswith("/") or parts.path == "/":
        raise _bad(url, "the socket path must be absolute")
    db = _db(url, query.pop("db", "0"))
    if query:
        raise _bad(url, f"unknown option {min(query)!r}")
    return Address(
        scheme="unix",
        path=urllib.parse.unquote(parts.path),
        db=db,
        username=username,
        password=password,
    )


def _query(url: str, text: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError as exc:
        raise _bad(url, f"query: {exc}") from exc
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise _bad(url, f"{name} given twice")
        query[name] = value
    return query


def _db(url: str, text: str) -> int:
    if not text.isdigit():
        raise _bad(url, f"the database must be a number, not {text!r}")
    return int(text)


def _readable(url: str, name: str, value: str) -> str:
    path = Path(value)
    if not value or not path.is_file():
        raise _bad(url, f"{name}: {value!r} is not a readable file")
    return str(path)


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(f"fleet URL {_without_password(url)!r}: {why}")


def _without_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (error messages reach logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
