"""
What ``verify`` judges, and the judgement: pure (bytes, certificates and a clock in, a Check out).

The served certificate is judged, not trusted: its chain is not verified
against a trust store; what is checked is the staple, against the
certificate the server actually served, with the same ``ocsp.validate`` as
``fetch``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from hastaple.core import certs
from hastaple.core import issuer as issuers
from hastaple.core.model import Action, ResultRow, Status, Verdict
from hastaple.core.ocsp.validate import validate
from hastaple.errors import InvalidResponse

# A served staple is judged as a TLS client would: valid until nextUpdate.
# The 15-minute margin of ``fetch`` is about what is safe to push, not to serve.
SERVED_MARGIN = dt.timedelta(0)


@dataclass(frozen=True, slots=True)
class Target:
    """
    One endpoint to check: where to connect and which name to send as SNI.

    From haproxy.cfg, also what the bind says: the certificate files behind
    the name (where ``.issuer`` lives), whether it expects a PROXY protocol
    header (``accept-proxy``), and a note such as which port of a range.
    """

    host: str
    port: int
    servername: str | None = None
    cert_files: tuple[Path, ...] = ()
    proxy: bool = False
    note: str | None = None

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 literal."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def sni(self) -> str | None:
        """The SNI to send: the servername, else the host unless it is an IP literal."""
        if self.servername:
            return self.servername
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return self.host
        return None

    def __str__(self) -> str:
        name = self.servername
        return f"{self.address} ({name})" if name and name != self.host else self.address


@dataclass(frozen=True, slots=True)
class Handshake:
    """What one handshake brought back: the staple (None if none) and the served chain."""

    staple: bytes | None
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome for one target; ``ok`` only for a valid, good staple of the served cert."""

    target: Target
    stapled: bool
    cert: str
    ocsp_url: str | None
    status: Status
    verdict: Verdict | None = None
    error: str | None = None
    seconds_left: int | None = None
    key_type: str | None = None
    must_staple: bool = False
    several: bool = False  # the name served more than one certificate (RSA and ECDSA)

    @property
    def ok(self) -> bool:
        """Whether this check passes (exit code 0): a good staple, or no OCSP to staple."""
        if self.error is not None:
            return False
        return self.status is Status.NO_OCSP or (
            self.verdict is not None and self.status is Status.GOOD
        )

    @property
    def label(self) -> str:
        """The target as a person reads it, with the key type when a name serves several."""
        return f"{self.target} [{self.key_type}]" if self.several else str(self.target)

    def to_row(self) -> ResultRow:
        """The common result row: ``fresh``, ``skipped`` (no-ocsp) or ``failed``."""
        v = self.verdict
        return ResultRow(
            cert=self.cert,
            ocsp_url=self.ocsp_url,
            status=self.status,
            action=_action(self),
            this_update=v.this_update if v else None,
            next_update=v.next_update if v else None,
            error=self.error,
        )

    def to_json(self) -> dict[str, Any]:
        """The row's JSON plus what only verify knows."""
        out = self.to_row().to_json()
        out.pop("haproxy", None)
        out.update(
            target=self.target.address,
            servername=self.target.sni,
            stapled=self.stapled,
            signer=self.verdict.signer if self.verdict else None,
            seconds_left=self.seconds_left,
            key_type=self.key_type,
            must_staple=self.must_staple,
            note=self.target.note,
        )
        return out


def _action(check: Check) -> Action:
    if not check.ok:
        return Action.FAILED
    return Action.SKIPPED if check.status is Status.NO_OCSP else Action.FRESH


def judge(
    target: Target,
    result: Handshake,
    *,
    now: dt.datetime,
    issuer: x509.Certificate | None = None,
    issuer_problem: str | None = None,
) -> Check:
    """
    Validate the staple in ``result`` for the certificate the server served.

    Pure: no I/O, ``now`` is given. The issuer is taken from the served chain
    (how HAProxy is normally set up), else ``issuer``, found by the caller the
    way ``fetch`` finds it (``.issuer``, AIA); ``issuer_problem`` says why
    there is none.

    A certificate without an OCSP URL served without a staple has nothing to
    staple: status ``no-ocsp``, not a failure (as in ``fetch``). A must-staple
    certificate (RFC 7633) without a valid staple fails with its own words.
    """
    if not result.chain:
        return failed(target, "the server sent no certificate")
    leaf = result.chain[0]
    name = _subject(leaf)
    url = issuers.ocsp_url(leaf)
    must = certs.is_must_staple(leaf)

    def check(status: Status, error: str | None, *, stapled: bool = True) -> Check:
        return Check(
            target, stapled=stapled, cert=name, ocsp_url=url, status=status, error=error,
            key_type=certs.key_type(leaf), must_staple=must,
        )  # fmt: skip

    if result.staple is None:
        if must or url is not None:
            return check(Status.ERROR, _MUST_STAPLE_BARE if must else _NO_STAPLE, stapled=False)
        return check(Status.NO_OCSP, None, stapled=False)
    issuer = issuers.choose(leaf, result.chain[1:]) or issuer
    if issuer is None:
        why = issuer_problem or "the served chain lacks the issuer"
        return check(Status.ERROR, f"stapled, but {why}, so the staple cannot be checked")
    try:
        verdict = validate(result.staple, cert=leaf, issuer=issuer, now=now, margin=SERVED_MARGIN)
    except InvalidResponse as exc:
        prefix = "must-staple certificate with an invalid staple" if must else "invalid staple"
        return check(Status.ERROR, f"{prefix}: {exc.reason}")
    left = int((verdict.next_update - now).total_seconds())
    error = None
    if verdict.status is Status.REVOKED:
        error = f"the staple says this certificate is {verdict.revocation()}"
    elif verdict.status is not Status.GOOD:
        error = f"the staple says this certificate's status is {verdict.status.value}"
    return Check(
        target, True, name, url, verdict.status, verdict, error, left,  # noqa: FBT003
        key_type=certs.key_type(leaf), must_staple=must,
    )  # fmt: skip


_NO_STAPLE = "no OCSP staple: the server did not answer status_request"
_MUST_STAPLE_BARE = (
    "must-staple certificate served without a staple: clients that honour must-staple "
    "(such as Firefox) refuse the connection"
)


def failed(target: Target, problem: str) -> Check:
    """A check that failed before there was a certificate to judge (no connection, no TLS)."""
    return Check(
        target, stapled=False, cert=target.sni or target.address, ocsp_url=None,
        status=Status.ERROR, error=problem,
    )  # fmt: skip


def _subject(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()
