"""
Decide whether an OCSP response may be stapled: RFC 6960 plus HAProxy's limits.

Theory of operation. ``validate`` sees bytes, two certificates and a clock
value, never a file, a socket or ``datetime.now()``, so ``hastaple check --at``
and the tests need no patching. The checks run in the order a forger would
have to pass them, so a reason always names the first thing that is wrong:

1. size: HAProxy's runtime API takes one command of at most ``tune.bufsize``
   (16 KiB); base64 of more than about 12 KB of DER cannot be pushed.
2. syntax and responseStatus (RFC 6960 §4.2.1): a DER OCSPResponse whose
   status is successful, with a basic response.
3. the SingleResponse for our CertID (§4.2.2.2 "the certificate identified in
   a received response corresponds to the certificate that was identified in
   the corresponding request"), with SHA-1 hashes, because HAProxy matches
   staples on a SHA-1 CertID; and exactly one SingleResponse, because HAProxy
   ignores responses with more ("contains multiple single responses").
4. the signer (§4.2.2.2): the issuer itself, or a delegated responder
   certificate issued directly by the issuer, carrying id-kp-OCSPSigning and
   valid now.
5. the signature over tbsResponseData, with the signer's key (4 and 5 are
   ``hastaple.core.ocsp.signer``'s).
7. the times (§4.2.2.1): thisUpdate not in the future beyond ``CLOCK_SKEW``;
   nextUpdate present (HAProxy: "missing nextupdate"), after thisUpdate, and
   at least ``margin`` away: HAProxy accepts a response expiring within 300 s
   and then staples nothing, losing the good staple it had.
6. the extensions (RFC 6960 §4.4): each must decode, and a critical one that
   is not understood makes the response unusable (TLS clients such as
   Firefox refuse it too).
8. the certificate status: good, revoked or unknown. A signed "revoked" is an
   answer, not an error, so it is a ``Verdict``; the caller decides.

Every byte here is the responder's (or, for ``verify``, the server's): an
unknown algorithm, an odd key type or an extension that does not decode is
a reason like any other. Raises ``InvalidResponse`` with one line for a
person; anything else is a bug. Must not read files, sockets or the clock.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from hastaple.core.model import Status, Verdict
from hastaple.core.ocsp.reasons import UNREADABLE, fmt, oid_in, one_line
from hastaple.core.ocsp.signer import HashKey, check_signature, find_signer, issuer_hashes
from hastaple.errors import InvalidResponse

__all__ = ["CLOCK_SKEW", "MAX_DER_BYTES", "MIN_REMAINING", "UNREADABLE", "one_line", "validate"]

# docs/haproxy.md: 11,561 B of DER was pushed, 12,329 B was refused (16 KiB buffer).
MAX_DER_BYTES = 12_000
# RFC 5019 §4 leaves the allowance to local policy; HAProxy itself allows 300 s.
CLOCK_SKEW = dt.timedelta(minutes=5)
# nextUpdate must be this far away: 3x HAProxy's 300 s "do not staple" window.
MIN_REMAINING = dt.timedelta(minutes=15)

_STATUS = {
    ocsp.OCSPCertStatus.GOOD: Status.GOOD,
    ocsp.OCSPCertStatus.REVOKED: Status.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: Status.UNKNOWN,
}
_RESPONSE_STATUS = {
    ocsp.OCSPResponseStatus.MALFORMED_REQUEST: "malformedRequest",
    ocsp.OCSPResponseStatus.INTERNAL_ERROR: "internalError",
    ocsp.OCSPResponseStatus.TRY_LATER: "tryLater",
    ocsp.OCSPResponseStatus.SIG_REQUIRED: "sigRequired",
    ocsp.OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
}


def validate(
    der: bytes,
    *,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: dt.datetime,
    margin: dt.timedelta = MIN_REMAINING,
) -> Verdict:
    """
    Check ``der`` as the staple for ``cert`` issued by ``issuer``, as of ``now``.

    Args:
        der: the OCSP response as received.
        cert: the certificate the staple is for.
        issuer: the certificate that issued ``cert``.
        now: the time to judge validity at (timezone-aware).
        margin: how far in the future nextUpdate must be.

    Returns:
        The verdict: status and times of a response that passed every check.

    Raises:
        InvalidResponse: the response must not be stapled; ``.reason`` says why.
    """
    if len(der) > MAX_DER_BYTES:  # the largest response HAProxy's runtime API can take
        raise InvalidResponse(
            f"response is {len(der)} bytes, more than the {MAX_DER_BYTES} bytes "
            "HAProxy's runtime API can take"
        )
    try:
        resp = _parse(der)
        single = _our_single_response(resp, cert, issuer)
        signer, signer_name = find_signer(resp, issuer, now)
        check_signature(resp, signer)
        _check_extensions(resp)
        this_update, next_update = _check_times(single, now, margin)
        return Verdict(
            status=_STATUS[single.certificate_status],
            this_update=this_update,
            next_update=next_update,
            produced_at=resp.produced_at_utc,
            serial=single.serial_number,
            signer=signer_name,
            revocation_time=single.revocation_time_utc,
            revocation_reason=_revocation_reason(single),
        )
    except UNREADABLE as exc:
        # The last net: what cryptography raises while decoding hostile bytes
        # that no check above named. Never a traceback for a responder's bytes.
        raise InvalidResponse(f"response cannot be checked: {one_line(exc)}") from exc


def signer_window(der: bytes, verdict: Verdict) -> tuple[dt.datetime, dt.datetime]:
    """
    When a validated response stays valid: within every included certificate's validity.

    Conservative: the earliest notAfter of any certificate in the response (the
    delegated signer) and its nextUpdate, so a hit is never judged valid later
    than a full validation would.
    """
    certs = ocsp.load_der_ocsp_response(der).certificates
    start = max([verdict.this_update - CLOCK_SKEW, *(c.not_valid_before_utc for c in certs)])
    end = min([verdict.next_update, *(c.not_valid_after_utc for c in certs)])
    return start, end


def _parse(der: bytes) -> ocsp.OCSPResponse:
    if not der:
        raise InvalidResponse("response is empty")
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise InvalidResponse(f"response is not a DER OCSP response ({one_line(exc)})") from exc
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        name = _RESPONSE_STATUS.get(resp.response_status, resp.response_status.name)
        raise InvalidResponse(f"responder answered '{name}' instead of a response")
    return resp


def _our_single_response(
    resp: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    """Find the SingleResponse whose CertID is the SHA-1 CertID of ``cert``."""
    singles = list(resp.responses)
    unknown_hash: UnsupportedAlgorithm | None = None
    for single in singles:
        if single.serial_number != cert.serial_number:
            continue
        try:
            alg = single.hash_algorithm
        except UnsupportedAlgorithm as exc:  # MD5, or an OID nobody knows
            unknown_hash = exc
            continue
        name_hash, key_hash = issuer_hashes(issuer, HashKey(alg.name, alg.digest_size, alg))
        if single.issuer_name_hash != name_hash or single.issuer_key_hash != key_hash:
            continue
        if not isinstance(alg, hashes.SHA1):
            raise InvalidResponse(
                f"response identifies the certificate with a {alg.name.upper()} CertID; "
                "HAProxy matches staples only on SHA-1 CertIDs"
            )
        if len(singles) != 1:
            raise InvalidResponse(
                f"response holds {len(singles)} single responses; HAProxy staples only "
                "responses with exactly one"
            )
        return single
    if unknown_hash is not None:
        raise InvalidResponse(
            f"response identifies the certificate with a CertID hash hastaple cannot compute "
            f"({oid_in(unknown_hash)}); HAProxy matches staples only on SHA-1 CertIDs"
        )
    if any(s.serial_number == cert.serial_number for s in singles):
        raise InvalidResponse(
            f"response is for serial {cert.serial_number:x} but from another issuer "
            f"than {issuer.subject.rfc4514_string()} (CertID issuer hashes do not match)"
        )
    serials = ", ".join(f"{s.serial_number:x}" for s in singles) or "none"
    raise InvalidResponse(
        f"response is not for this certificate: it covers serial {serials}, "
        f"not {cert.serial_number:x}"
    )


def _check_extensions(resp: ocsp.OCSPResponse) -> None:
    """Every extension decodes; no critical one is unknown (RFC 6960 §4.4, RFC 5280 §4.2)."""
    for where, read in (
        ("response", _response_extensions),
        ("single response", _single_extensions),
    ):
        try:
            extensions = read(resp)
        except UNREADABLE as exc:
            raise InvalidResponse(
                f"response has a {where} extension that does not decode ({one_line(exc)})"
            ) from exc
        for ext in extensions:
            if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
                raise InvalidResponse(
                    f"response has a critical {where} extension hastaple does not understand "
                    f"({ext.oid.dotted_string}); RFC 6960 says to reject it, and TLS clients do"
                )


def _response_extensions(resp: ocsp.OCSPResponse) -> x509.Extensions:
    return resp.extensions


def _single_extensions(resp: ocsp.OCSPResponse) -> x509.Extensions:
    return resp.single_extensions


def _revocation_reason(single: ocsp.OCSPSingleResponse) -> str | None:
    try:
        reason = single.revocation_reason
    except ValueError as exc:  # a reason code outside RFC 5280's list
        raise InvalidResponse(
            f"response says revoked, with a reason that does not decode ({one_line(exc)})"
        ) from exc
    return reason.value if reason else None


def _check_times(
    single: ocsp.OCSPSingleResponse, now: dt.datetime, margin: dt.timedelta
) -> tuple[dt.datetime, dt.datetime]:
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update - now > CLOCK_SKEW:  # not now + skew: that overflows at year 9999
        raise InvalidResponse(
            f"response thisUpdate {fmt(this_update)} is in the future (now {fmt(now)})"
        )
    if next_update is None:
        raise InvalidResponse("response has no nextUpdate; HAProxy refuses such responses")
    if next_update < this_update:
        raise InvalidResponse(
            f"response nextUpdate {fmt(next_update)} is before its thisUpdate {fmt(this_update)}"
        )
    if next_update <= now:
        raise InvalidResponse(f"response expired at {fmt(next_update)} (now {fmt(now)})")
    if next_update - now < margin:
        minutes = int(margin.total_seconds() // 60)
        raise InvalidResponse(
            f"response expires at {fmt(next_update)}, within {minutes} minutes; "
            "HAProxy would accept it and then staple nothing"
        )
    return this_update, next_update


# Per-certificate facts, the same for every response an issuer or a delegated
# responder is part of: computed once per certificate (DER equality), not once
# per response. Nothing here depends on the response being checked.
