"""
Every way a responder can lie or fail, as one table for the fetch and adversarial tests.

``FAULTS[name](case)`` gives the responder behaviour for a certificate and the
words its rejection must contain. A ``Case`` holds what a fault is built from.
"""

# Each fault takes the Case, whether or not it needs it.
# ruff: noqa: ARG005

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from der_edit import HOSTILE
from hastaple.testing.pki import PKI, Issued, issue, now
from hastaple.testing.responders import MB, Behaviour, Drip, Huge, Redirect, Serve, Stall

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Case:
    """The certificate under attack, its PKI, and the URL its responder answers on."""

    pki: PKI
    leaf: Issued
    url: str

    def response(self, **kwargs: object) -> bytes:
        return self.pki.response(self.leaf.cert, **kwargs)  # type: ignore[arg-type]


def big_response(pki: PKI, leaf: Issued) -> bytes:
    """A valid, signed response over the ~12 KB HAProxy's CLI takes (many extra certs)."""
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf.cert,
            issuer=pki.intermediate.cert,
            algorithm=hashes.SHA1(),  # noqa: S303 - HAProxy's CertID
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now() - dt.timedelta(minutes=1),
            next_update=now() + 7 * DAY,
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.responder.cert)
        .certificates([pki.responder.cert] + [pki.intermediate.cert] * 40)
    )
    return builder.sign(pki.responder.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _signer_expired(c: Case) -> bytes:
    t = now()
    stale = issue(
        c.pki.intermediate, "Stale OCSP", ocsp_signing=True, ocsp_url=None,
        not_before=t - 30 * DAY, not_after=t - DAY,
    )  # fmt: skip
    return c.response(signer=stale)


def _failure(status: ocsp.OCSPResponseStatus) -> Serve:
    return Serve(PKI.failure(status))


_S = ocsp.OCSPResponseStatus
Fault = Callable[[Case], tuple[Behaviour, str]]

FAULTS: dict[str, Fault] = {
    "bad-signature": lambda c: (
        Serve(c.response(bad_signature=True)), "signature does not verify"),
    "signer-no-eku": lambda c: (
        Serve(c.response(signer=c.pki.leaf("stranger.example.test"))), "lacks the OCSP Signing"),
    "signer-other-ca": lambda c: (
        Serve(c.response(signer=issue(c.pki.other_ca, "Foreign OCSP", ocsp_signing=True,
                                      ocsp_url=None))),
        "not issued by the certificate"),
    "signer-expired": lambda c: (Serve(_signer_expired(c)), "is not valid at"),
    "wrong-certid": lambda c: (
        Serve(c.pki.response(c.pki.leaf("other.example.test").cert)), "not for this certificate"),
    "sha256-certid": lambda c: (Serve(c.response(cert_id_hash=hashes.SHA256())), "SHA256 CertID"),
    "expired": lambda c: (
        Serve(c.response(this_update=now() - 8 * DAY, next_update=now() - DAY)), "expired at"),
    "next-update-in-4-min": lambda c: (
        Serve(c.response(next_update=now() + dt.timedelta(minutes=4))), "staple nothing"),
    "this-update-future": lambda c: (
        Serve(c.response(this_update=now() + dt.timedelta(hours=2))), "in the future"),
    "unknown": lambda c: (Serve(c.response(status="unknown")), "unknown"),
    "revoked": lambda c: (Serve(c.response(status="revoked")), "REVOKED"),
    "try-later": lambda c: (_failure(_S.TRY_LATER), "'tryLater'"),
    "unauthorized": lambda c: (_failure(_S.UNAUTHORIZED), "'unauthorized'"),
    "malformed-request": lambda c: (_failure(_S.MALFORMED_REQUEST), "'malformedRequest'"),
    "internal-error": lambda c: (_failure(_S.INTERNAL_ERROR), "'internalError'"),
    "http-404": lambda c: (Serve(b"not here", status=404), "HTTP 404"),
    "http-500": lambda c: (Serve(b"oops", status=500), "HTTP 500"),
    "wrong-content-type": lambda c: (
        Serve(c.response(), content_type="text/html"), "content type 'text/html'"),
    "garbage": lambda c: (Serve(b"<html>hello</html>"), "not a DER OCSP response"),
    "truncated-der": lambda c: (Serve(c.response()[:100]), "not a DER OCSP response"),
    "body-50mb": lambda c: (Huge(50 * MB), "larger than"),
    "stall-30s": lambda c: (Stall(30), "no complete answer within"),
    "slow-drip": lambda c: (Drip(c.response(), chunk=1, interval=0.1), "no complete answer within"),
    "redirect-loop": lambda c: (Redirect(c.url), "more than 3 redirects"),
    "redirect-to-file": lambda c: (
        Redirect("file:///etc/passwd"), "unsupported URL scheme 'file'"),
    "over-cli-size": lambda c: (Serve(big_response(c.pki, c.leaf)), "runtime API can take"),
    # Signed answers with an odd algorithm, extension or certificate (der_edit.HOSTILE):
    # each once escaped validate as an exception, not a reason.
    **{
        f"hostile-{name}": (lambda c, name=name: (
            Serve(HOSTILE[name][0](c.pki, c.leaf)), HOSTILE[name][1]))
        for name in ("sigalg-unknown-oid", "certid-hash-md5", "critical-unknown-extension",
                     "revoked-reason-99", "responder-cert-unknown-key-type")
    },
}  # fmt: skip
