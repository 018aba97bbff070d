"""Values passed between the pipeline's stages: frozen, slotted, no behaviour."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, overload

# What a row holds for "no socket": one shared, read-only empty mapping. Two new
# dicts per row were 128 bytes a certificate, most rows of a run without HAProxy.
NO_SOCKETS: Mapping[str, str] = MappingProxyType({})


def _no_sockets() -> Mapping[str, str]:
    return NO_SOCKETS  # a factory: dataclasses refuse an unhashable default


class Status(enum.Enum):
    """What is known about a certificate's staple (the ``status`` JSON field)."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    NO_OCSP = "no-ocsp"
    MANAGED = "managed"
    ERROR = "error"


class Action(enum.Enum):
    """What this run did for a certificate (the ``action`` JSON field)."""

    FETCHED = "fetched"
    FRESH = "fresh"
    DEPLOYED = "deployed"
    SKIPPED = "skipped"
    FAILED = "failed"
    # The staple is stored for a renewed certificate HAProxy does not serve
    # yet (it serves the older one until its next reload): not a failure.
    STORED = "stored"


@dataclass(frozen=True, slots=True)
class Verdict:
    """
    A response that passed every check, and what it says.

    ``status`` is GOOD, REVOKED or UNKNOWN: a signed "revoked" is an answer,
    not an error; the pipeline deploys only GOOD.
    """

    status: Status
    this_update: datetime
    next_update: datetime
    produced_at: datetime
    serial: int
    signer: str
    revocation_time: datetime | None = None
    revocation_reason: str | None = None

    def revocation(self) -> str:
        """A revoked status as a person reads it: ``REVOKED since <time> (<reason>)``."""
        when = rfc3339(self.revocation_time) or "an unknown time"
        why = f" ({self.revocation_reason})" if self.revocation_reason else ""
        return f"REVOKED since {when}{why}"


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One certificate's outcome: a table row, or one object of ``--json``."""

    cert: str
    ocsp_url: str | None
    status: Status
    action: Action
    this_update: datetime | None = None
    next_update: datetime | None = None
    error: str | None = None
    haproxy: Mapping[str, str] = field(default_factory=_no_sockets)
    # Sockets that reach the same HAProxy process as another one (value): not
    # deployed through, "alias" in ``haproxy``.
    aliases: Mapping[str, str] = field(default_factory=_no_sockets)
    # The certificate promises a staple (RFC 7633): without one it fails.
    must_staple: bool = False
    # The certificate file itself is unusable, as opposed to a failed fetch or
    # deploy. The run exits 2 only when every row is such (nothing could be
    # done); otherwise it is one failed certificate (exit 1). Not in the JSON.
    bad_input: bool = False
    # Something the operator should change though the row is in order (for
    # example a staple HAProxy will not reload by itself); in JSON only when set.
    note: str | None = None

    @classmethod
    def of(
        cls,
        cert: str,
        url: str | None,
        verdict: Verdict,
        action: Action,
        error: str | None = None,
        *,
        must_staple: bool = False,
    ) -> ResultRow:
        """The row for a validated response: its status and times."""
        return cls(
            cert, url, verdict.status, action, verdict.this_update, verdict.next_update, error,
            must_staple=must_staple,
        )  # fmt: skip

    @property
    def ok(self) -> bool:
        """Whether this row counts as "in order" for the exit code."""
        return self.action is not Action.FAILED

    def to_json(self) -> dict[str, Any]:
        """Render as the ``--json`` object the README's contract promises (RFC 3339 UTC times)."""
        return {
            "cert": self.cert,
            "ocsp_url": self.ocsp_url,
            "status": self.status.value,
            "action": self.action.value,
            "this_update": rfc3339(self.this_update),
            "next_update": rfc3339(self.next_update),
            "error": self.error,
            "haproxy": dict(self.haproxy),
            "aliases": dict(self.aliases),
            "must_staple": self.must_staple,
        } | ({"note": self.note} if self.note else {})


@overload
def rfc3339(when: datetime) -> str: ...
@overload
def rfc3339(when: datetime | None) -> str | None: ...
def rfc3339(when: datetime | None) -> str | None:
    """``2026-11-29T17:00:00Z`` (UTC, whole seconds), the form of every time we print."""
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class CertEntry:
    """
    One certificate file HAProxy serves.

    ``file`` is its absolute path, as text: a run keeps one entry per
    certificate, and a ``Path`` (its parts, its hash) was about 300 bytes
    more than the text, 30 MB at 100,000 certificates; ``path`` makes one
    when asked. ``names`` are the spellings
    HAProxy's runtime API uses for it (``show ssl cert``), empty when unknown
    (a certificate given as an argument). ``extra_base`` is what HAProxy
    appends ``.ocsp`` and ``.issuer`` to when that is not ``path``
    (``ssl-load-extra-del-ext``). ``ocsp_file`` is the file HAProxy loads the
    staple from when it is not ``<base>.ocsp`` (a crt-store ``load ... ocsp
    <file>``). ``ocsp_at_start`` is False when HAProxy reads no staple file
    for it when it starts (``ssl-load-extra-files`` without ``ocsp``, or a
    ``load`` line without ``ocsp``): the staple lasts only until HAProxy
    restarts unless pushed again; ``ocsp_source`` names the line that says so.
    ``issuers_chain`` is the directory of ``global issuers-chain-path``, where
    HAProxy finds the chain of a PEM that has none.
    """

    file: str
    managed: bool = False
    source: str = ""
    names: tuple[str, ...] = ()
    extra_base: Path | None = None
    ocsp_at_start: bool = True
    ocsp_source: str = ""
    ocsp_file: Path | None = None
    issuer_file: Path | None = None  # a crt-store load line's 'issuer <file>'
    issuers_chain: Path | None = None  # the global 'issuers-chain-path' HAProxy read it with

    @property
    def path(self) -> Path:
        """The absolute path (a new ``Path`` each time: take it once per use)."""
        return Path(self.file)

    @property
    def haproxy_names(self) -> tuple[str, ...]:
        """The names to use in runtime commands: ``names``, or the absolute path."""
        return self.names or (self.file,)

    @property
    def files_base(self) -> Path:
        """The path HAProxy appends ``.ocsp`` and ``.issuer`` to."""
        return self.extra_base or self.path
