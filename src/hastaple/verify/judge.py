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
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from hastaple import issuer as issuers
from hastaple.errors import HastapleError, InvalidResponse
from hastaple.model import Action, ResultRow, Status, Verdict
from hastaple.ocsp.validate import validate

# A served staple is judged as a TLS client would: valid until nextUpdate.
# The 15-minute margin of ``fetch`` is about what is safe to push, not to serve.
SERVED_MARGIN = dt.timedelta(0)


class VerifyError(HastapleError):
    """The endpoint could not be reached or the TLS handshake failed."""

    def __init__(self, target: str, problem: str) -> None:
        self.target = target
        self.problem = problem
        super().__init__(f"{target}: {problem}")


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to check: where to connect and which name to send as SNI."""

    host: str
    port: int
    servername: str | None = None

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

    @property
    def ok(self) -> bool:
        """Whether this check passes (exit code 0)."""
        return self.error is None and self.verdict is not None and self.status is Status.GOOD

    def to_row(self) -> ResultRow:
        """The DESIGN.md result row: ``fresh`` for a valid staple, ``failed`` otherwise."""
        v = self.verdict
        return ResultRow(
            cert=self.cert,
            ocsp_url=self.ocsp_url,
            status=self.status,
            action=Action.FRESH if self.ok else Action.FAILED,
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
        )
        return out


def judge(target: Target, result: Handshake, *, now: dt.datetime) -> Check:
    """
    Validate the staple in ``result`` for the certificate the server served.

    Pure: no I/O, ``now`` is given. The issuer must be in the served chain,
    which is how HAProxy is normally set up (the PEM holds the chain).
    """
    if not result.chain:
        return failed(target, "the server sent no certificate")
    leaf = result.chain[0]
    name = _subject(leaf)
    url = issuers.ocsp_url(leaf)
    if result.staple is None:
        why = "no OCSP staple: the server did not answer status_request"
        return Check(target, stapled=False, cert=name, ocsp_url=url, status=Status.ERROR, error=why)
    issuer = issuers.choose(leaf, result.chain[1:])
    if issuer is None:
        why = "stapled, but the served chain lacks the issuer, so the staple cannot be checked"
        return Check(target, stapled=True, cert=name, ocsp_url=url, status=Status.ERROR, error=why)
    try:
        verdict = validate(result.staple, cert=leaf, issuer=issuer, now=now, margin=SERVED_MARGIN)
    except InvalidResponse as exc:
        return Check(
            target, stapled=True, cert=name, ocsp_url=url, status=Status.ERROR,
            error=f"invalid staple: {exc.reason}",
        )  # fmt: skip
    left = int((verdict.next_update - now).total_seconds())
    error = None
    if verdict.status is Status.REVOKED:
        error = f"the staple says this certificate is {verdict.revocation()}"
    elif verdict.status is not Status.GOOD:
        error = f"the staple says this certificate's status is {verdict.status.value}"
    return Check(target, True, name, url, verdict.status, verdict, error, left)  # noqa: FBT003


def failed(target: Target, problem: str) -> Check:
    """A check that failed before there was a certificate to judge (no connection, no TLS)."""
    return Check(
        target, stapled=False, cert=target.sni or target.address, ocsp_url=None,
        status=Status.ERROR, error=problem,
    )  # fmt: skip


def _subject(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()
