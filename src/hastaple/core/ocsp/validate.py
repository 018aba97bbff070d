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
5. the signature over tbsResponseData, with the signer's key.
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
person; anything else is a bug.
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier, SignatureAlgorithmOID

from hastaple.core.model import Status, Verdict
from hastaple.core.ocsp import der as _der
from hastaple.errors import InvalidResponse

# docs/haproxy.md: 11,561 B of DER was pushed, 12,329 B was refused (16 KiB buffer).
MAX_DER_BYTES = 12_000
# RFC 5019 §4 leaves the allowance to local policy; HAProxy itself allows 300 s.
CLOCK_SKEW = dt.timedelta(minutes=5)
# nextUpdate must be this far away: 3x HAProxy's 300 s "do not staple" window.
MIN_REMAINING = dt.timedelta(minutes=15)
# What decoding untrusted DER can raise in cryptography, besides our own reasons
# (public: verify reads served certificates with the same net).
UNREADABLE = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension)

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
        signer, signer_name = _signer(resp, issuer, now)
        _check_signature(resp, signer)
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
        name_hash, key_hash = _issuer_hashes(issuer, _HashKey(alg.name, alg.digest_size, alg))
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
            f"({_oid_in(unknown_hash)}); HAProxy matches staples only on SHA-1 CertIDs"
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


def _signer(
    resp: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime
) -> tuple[x509.Certificate, str]:
    """Return the authorised certificate that signed ``resp`` (RFC 6960 §4.2.2.2)."""
    if _responder_is(resp, issuer):
        return issuer, f"issuer {_who(issuer)}"
    candidates = [c for c in resp.certificates if _responder_is(resp, c)]
    if not candidates:
        raise InvalidResponse(
            "response is signed by a responder that is neither the issuer nor a "
            "certificate included in the response"
        )
    # Several may match during a responder-certificate rollover: the first
    # authorised one wins; if none is, the first one's reason is reported.
    problems: list[InvalidResponse] = []
    for delegate in candidates:
        try:
            _check_delegate(delegate, issuer, now)
        except InvalidResponse as exc:
            problems.append(exc)
            continue
        # One string for the thousands of responses one delegate signs (memory).
        return delegate, sys.intern(f"delegated responder {_who(delegate)}")
    raise problems[0]


def _check_delegate(delegate: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> None:
    """RFC 6960 §4.2.2.2: issued by the issuer, id-kp-OCSPSigning, valid now; a key we can use."""
    try:
        _check_authorised(delegate, issuer)
    except UNREADABLE as exc:  # its signature algorithm or its extensions
        raise InvalidResponse(
            f"response is signed by {_who(delegate)}, a certificate hastaple cannot read "
            f"({one_line(exc)})"
        ) from exc
    if not delegate.not_valid_before_utc <= now <= delegate.not_valid_after_utc:
        raise InvalidResponse(
            f"response is signed by the responder certificate {_who(delegate)}, which is not "
            f"valid at {_fmt(now)} (valid {_fmt(delegate.not_valid_before_utc)} to "
            f"{_fmt(delegate.not_valid_after_utc)})"
        )
    _usable_key(delegate)


def _usable_key(signer: x509.Certificate) -> CertificatePublicKeyTypes:
    """
    The signer's key object, or a reason: a key type cryptography cannot load.

    Checked while choosing among included certificates too, so an unusable
    one next to the real responder certificate does not hide it.
    """
    try:
        return _public_key(signer)
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise InvalidResponse(
            f"response is signed by {_who(signer)}, whose key type hastaple cannot use "
            f"({one_line(exc)})"
        ) from exc


@functools.lru_cache(maxsize=64)
def _check_authorised(delegate: x509.Certificate, issuer: x509.Certificate) -> None:
    """
    Raise unless ``issuer``'s key signed ``delegate`` and it has id-kp-OCSPSigning.

    Success is remembered: a CA's delegated responder signs every response it
    makes, so a batch of 10,000 staples would check the same certificate
    against the same issuer 10,000 times. Certificates hash and compare by
    their DER, so a hit is the very same pair; a failure raises and is never
    cached. The validity period depends on ``now`` and is checked every time.
    """
    try:
        delegate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise InvalidResponse(
            f"response is signed by {_who(delegate)}, which was not issued by the "
            "certificate's issuer, so it is not authorised to answer for it"
        ) from exc
    try:
        eku = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise InvalidResponse(
            f"response is signed by {_who(delegate)}, which lacks the OCSP Signing extended "
            "key usage, so it is not authorised to sign OCSP responses"
        )


def _responder_is(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the ResponderID (by name or by SHA-1 key hash) designates ``cert``."""
    if resp.responder_key_hash is not None:
        return resp.responder_key_hash == _key_sha1(cert)
    return resp.responder_name == cert.subject


def _check_signature(resp: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    oid = resp.signature_algorithm_oid
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        # cryptography does not expose an OCSP response's PSS parameters; say so
        # rather than call a genuine signature forged.
        raise InvalidResponse("response is signed with RSASSA-PSS, which hastaple cannot verify")
    try:
        alg = resp.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise InvalidResponse(
            f"response is signed with an algorithm hastaple does not know ({oid.dotted_string})"
        ) from exc
    key = _usable_key(signer)
    family = _KEY_FAMILY.get(oid)
    if family is not None and not isinstance(key, family):
        # The signature is checked with the key, so the algorithm the response
        # names must be the key's: an RSA name over an ECDSA signature is a lie.
        raise InvalidResponse(
            f"response names the signature algorithm {oid.dotted_string}, which does not "
            f"fit the signer's key ({type(key).__name__})"
        )
    data, signature = resp.tbs_response_bytes, resp.signature
    try:
        if isinstance(key, rsa.RSAPublicKey) and alg is not None:
            key.verify(signature, data, padding.PKCS1v15(), alg)
        elif isinstance(key, ec.EllipticCurvePublicKey) and alg is not None:
            key.verify(signature, data, ec.ECDSA(alg))
        elif isinstance(key, dsa.DSAPublicKey) and alg is not None:
            key.verify(signature, data, alg)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            raise InvalidResponse(f"response uses an unsupported signature ({type(key).__name__})")
    except InvalidSignature as exc:
        raise InvalidResponse(
            "response signature does not verify: it was altered or forged"
        ) from exc


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
            f"response thisUpdate {_fmt(this_update)} is in the future (now {_fmt(now)})"
        )
    if next_update is None:
        raise InvalidResponse("response has no nextUpdate; HAProxy refuses such responses")
    if next_update < this_update:
        raise InvalidResponse(
            f"response nextUpdate {_fmt(next_update)} is before its thisUpdate {_fmt(this_update)}"
        )
    if next_update <= now:
        raise InvalidResponse(f"response expired at {_fmt(next_update)} (now {_fmt(now)})")
    if next_update - now < margin:
        minutes = int(margin.total_seconds() // 60)
        raise InvalidResponse(
            f"response expires at {_fmt(next_update)}, within {minutes} minutes; "
            "HAProxy would accept it and then staple nothing"
        )
    return this_update, next_update


# The key type each signature algorithm needs (RFC 3279, 5758, 8410).
_S = SignatureAlgorithmOID
_KEY_FAMILY: dict[ObjectIdentifier, type] = {
    **dict.fromkeys(
        (_S.RSA_WITH_MD5, _S.RSA_WITH_SHA1, _S.RSA_WITH_SHA224, _S.RSA_WITH_SHA256,
         _S.RSA_WITH_SHA384, _S.RSA_WITH_SHA512),
        rsa.RSAPublicKey,
    ),
    **dict.fromkeys(
        (_S.ECDSA_WITH_SHA1, _S.ECDSA_WITH_SHA224, _S.ECDSA_WITH_SHA256, _S.ECDSA_WITH_SHA384,
         _S.ECDSA_WITH_SHA512),
        ec.EllipticCurvePublicKey,
    ),
    **dict.fromkeys((_S.DSA_WITH_SHA1, _S.DSA_WITH_SHA224, _S.DSA_WITH_SHA256), dsa.DSAPublicKey),
    _S.ED25519: ed25519.Ed25519PublicKey,
    _S.ED448: ed448.Ed448PublicKey,
}  # fmt: skip


def _oid_in(exc: Exception) -> str:
    """The dotted OID cryptography names in an UnsupportedAlgorithm message, else 'unknown'."""
    words = [w for w in str(exc).replace(":", " ").split() if w.count(".") >= 2]  # noqa: PLR2004
    return words[0] if words else "unknown"


def one_line(exc: BaseException) -> str:  # public: verify words its reasons the same way
    """An exception's message on one line, short enough for a log line or a table cell."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."  # noqa: PLR2004


@dataclass(frozen=True, slots=True)
class _HashKey:
    """A hash algorithm as a cache key: its name and size, not the object's identity."""

    name: str
    digest_size: int
    algorithm: hashes.HashAlgorithm = field(compare=False, hash=False)


# Per-certificate facts, the same for every response an issuer or a delegated
# responder is part of: computed once per certificate (DER equality), not once
# per response. Nothing here depends on the response being checked.


@functools.lru_cache(maxsize=64)
def _issuer_hashes(issuer: x509.Certificate, alg: _HashKey) -> tuple[bytes, bytes]:
    """The issuerNameHash and issuerKeyHash a CertID for a certificate of ``issuer`` holds."""
    return _digest(alg.algorithm, issuer.subject.public_bytes()), _digest(
        alg.algorithm, _public_key_bits(issuer)
    )


@functools.lru_cache(maxsize=64)
def _key_sha1(cert: x509.Certificate) -> bytes:
    """The SHA-1 of the subjectPublicKey bits: a ResponderID byKey (RFC 6960 §4.2.1)."""
    return _digest(hashes.SHA1(), _public_key_bits(cert))  # noqa: S303 - RFC 6960 says SHA-1


@functools.lru_cache(maxsize=64)
def _public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    """The certificate's key object (loading it costs about a third of an ECDSA verify)."""
    return cert.public_key()


@functools.lru_cache(maxsize=64)
def _who(cert: x509.Certificate) -> str:
    """The certificate's subject as a person reads it, for reasons and the verdict."""
    return cert.subject.rfc4514_string()


@functools.lru_cache(maxsize=64)
def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents, which CertID and ResponderID hash."""
    spki = _der.certificate_spki(cert.public_bytes(serialization.Encoding.DER))
    return _der.public_key_bits(spki)


def _digest(alg: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(alg)
    h.update(data)
    return h.finalize()


def _fmt(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%SZ")
