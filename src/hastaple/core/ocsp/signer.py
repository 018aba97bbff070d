"""
Who signed an OCSP response, whether they may, and whether the signature holds.

The signer is the issuer itself or a delegated responder it certified for
OCSP signing (RFC 6960 §4.2.2.2), found by the ResponderID among the
response's certificates; its key must suit the signature algorithm, and the
signature must verify. HAProxy checks none of this (docs/haproxy.md, "What
HAProxy checks, and what it does not"). Per-certificate facts (CertID hashes,
keys, names) are cached by certificate. Pure. Must not judge the times or
the status (``validate`` does).
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

from hastaple.core.ocsp import der as _der
from hastaple.core.ocsp.reasons import UNREADABLE, fmt, one_line
from hastaple.errors import InvalidResponse


def find_signer(
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
            f"valid at {fmt(now)} (valid {fmt(delegate.not_valid_before_utc)} to "
            f"{fmt(delegate.not_valid_after_utc)})"
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


def check_signature(resp: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    """Check that ``signer``'s key suits the algorithm and made the signature."""
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


@dataclass(frozen=True, slots=True)
class HashKey:
    """A hash algorithm as a cache key: its name and size, not the object's identity."""

    name: str
    digest_size: int
    algorithm: hashes.HashAlgorithm = field(compare=False, hash=False)


@functools.lru_cache(maxsize=64)
def issuer_hashes(issuer: x509.Certificate, alg: HashKey) -> tuple[bytes, bytes]:
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
