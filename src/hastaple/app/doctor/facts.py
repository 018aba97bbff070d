"""
What ``doctor`` looks at, as plain values: settings, sockets, certificates, directories, responders.

``gather`` fills them (all the I/O); ``checks`` judges them without any.
Must not read anything itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Setting:
    """A ``global`` keyword's value as written, and where."""

    words: tuple[str, ...]
    source: str


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``global`` settings that decide whether staples survive and fit."""

    extra_files: Setting | None = None
    bufsize: Setting | None = None


@dataclass(frozen=True, slots=True)
class SocketFact:
    """One runtime socket and what it answered."""

    address: str
    source: str | None  # "cfg:line", or None for --haproxy
    config_level: str | None
    error: str | None = None
    level: str | None = None  # ``show cli level``
    pid: int | None = None
    version: str | None = None
    served: tuple[str, ...] | None = None  # ``show ssl cert`` names (admin sockets only)


@dataclass(frozen=True, slots=True)
class CertFact:
    """One certificate file and what it holds."""

    path: Path
    names: tuple[str, ...]
    source: str
    managed: bool
    error: str | None = None
    not_after: dt.datetime | None = None
    ocsp_url: str | None = None
    must_staple: bool = False
    has_local_issuer: bool = False
    staple_bytes: int | None = None  # the ``.ocsp`` on disk
    staple_problem: str | None = None  # why the staple on disk is not fresh; None when fresh


@dataclass(frozen=True, slots=True)
class DirFact:
    """A directory hastaple must write ``.ocsp`` files into."""

    path: Path
    writable: bool
    certs: tuple[str, ...]  # a certificate that lives there, for the message


@dataclass(frozen=True, slots=True)
class StateDirFact:
    """The state directory: whether it exists, its mode, and whether we can write it."""

    path: Path
    exists: bool
    mode: int | None
    writable: bool  # the directory itself, or its nearest existing parent when missing


@dataclass(frozen=True, slots=True)
class ResponderFact:
    """One OCSP request to one responder host."""

    url: str
    cert: str
    error: str | None = None
    elapsed: float | None = None
    local_time: dt.datetime | None = None  # our clock when the answer came
    date: dt.datetime | None = None  # the HTTP Date header
    this_update: dt.datetime | None = None
    delegate: str | None = None
    delegate_not_after: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the checks judge."""

    user: str
    now: dt.datetime
    configs: tuple[str, ...] = ()
    config_errors: tuple[str, ...] = ()
    settings: Settings = Settings()
    sockets: tuple[SocketFact, ...] = ()
    certs: tuple[CertFact, ...] = ()
    dirs: tuple[DirFact, ...] = ()
    state_dir: StateDirFact | None = None
    responders: tuple[ResponderFact, ...] = ()
    responders_skipped: bool = False
