"""
Find the certificate that issued a leaf, as HAProxy does, and then from AIA.

HAProxy takes the issuer from the PEM chain (or, for a PEM without one,
the chain ``issuers-chain-path`` gives it), else from ``<crt>.issuer``
(docs/haproxy.md); it never downloads one. We accept the same local
sources and, when both are missing, the AIA caIssuers URL (RFC 5280
§4.2.2.1: DER, or PKCS#7 "certs-only"; PEM from misconfigured servers).
Everything here is pure; the pipeline reads files and downloads.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID

_E = TypeVar("_E", bound=x509.ExtensionType)


def choose(
    leaf: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """
    Return the candidate whose subject is the leaf's issuer and whose key signed it.

    For certificates from the network (AIA caIssuers over plain http): the
    issuer is what responses are checked against, so only the signature on
    the leaf may decide, never a name an attacker can copy.
    """
    for cand in candidates:
        if not _same_name(cand.subject, leaf.issuer):
            continue
        if _signed(leaf, cand):
            return cand
    return None


def choose_local(
    leaf: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """
    The issuer among the operator's own files (PEM chain, ``<crt>.issuer``), as HAProxy picks it.

    HAProxy takes the first chain certificate that ``X509_check_issued`` the
    leaf (docs/haproxy.md): subject = the leaf's issuer name, AKI keyid (and
    issuer serial) = its SKI, keyCertSign if it has a key usage; no signature.
    We apply that rule, so the CertID we ask for and push is the one HAProxy
    computes for the file. The signature check (an ECDSA verify per
    certificate, a tenth of a millisecond: as much as validating the response)
    is kept when more than one candidate passes, where only the key can tell
    which one issued the leaf. These files are local configuration, trusted
    exactly as HAProxy trusts them; certificates from the network go
    through ``choose``.
    """
    issuer_der = leaf.issuer.public_bytes()
    matches = [c for c in candidates if _check_issued(c, leaf, issuer_der)]
    if len(matches) == 1:
        return matches[0]
    return next((c for c in matches if _signed(leaf, c)), None)


@dataclass(frozen=True, slots=True)
class IssuerChains:
    """
    The chains of a ``global issuers-chain-path`` directory, as HAProxy files them.

    HAProxy reads every regular file of the directory in name order, takes
    the certificates of each as one chain, and files the chain under its
    first certificate's subject key identifier; a file without one, or whose
    first certificate has the subject of a chain already filed under the same
    identifier, is skipped with a warning (src/ssl_sock.c). A PEM without a
    chain of its own gets the first chain filed under its authority key
    identifier whose first certificate issued it.
    """

    by_key: dict[bytes, list[Sequence[x509.Certificate]]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @classmethod
    def of(cls, files: Iterable[tuple[str, Sequence[x509.Certificate]]]) -> IssuerChains:
        """The chains of ``(file name, certificates)`` pairs, given in name order."""
        by_key: dict[bytes, list[Sequence[x509.Certificate]]] = {}
        warnings = []
        for name, chain in files:
            if not chain:
                warnings.append(f"{name}: no PEM certificate; skipped")
                continue
            ski = _facts(chain[0]).ski
            if ski is None:
                warnings.append(f"{name}: no subject key identifier to file it by; skipped")
                continue
            filed = by_key.setdefault(ski, [])
            if any(_same_name(chain[0].subject, other[0].subject) for other in filed):
                warnings.append(f"{name}: the same issuer as an earlier file; skipped")
                continue
            filed.append(chain)
        return cls(by_key, tuple(warnings))

    def chain_for(self, leaf: x509.Certificate) -> Sequence[x509.Certificate]:
        """The chain HAProxy gives ``leaf`` when its PEM has none (empty: none)."""
        try:
            aki = _extension(leaf, x509.AuthorityKeyIdentifier)
        except ValueError:
            return ()
        if aki is None or aki.key_identifier is None:
            return ()
        issuer_der = leaf.issuer.public_bytes()
        for chain in self.by_key.get(aki.key_identifier, ()):
            if _check_issued(chain[0], leaf, issuer_der):
                return chain
        return ()


@dataclass(frozen=True, slots=True)
class _Facts:
    """What ``X509_check_issued`` reads of a candidate issuer, once its name matched."""

    ski: bytes | None
    serial: int
    can_sign: bool  # no key usage, or keyCertSign; False when the extensions do not decode


@functools.lru_cache(maxsize=64)
def _subject_der(cand: x509.Certificate) -> tuple[x509.Name, bytes]:
    """A candidate's subject, once per certificate (hashed and compared by DER)."""
    subject = cand.subject
    return subject, subject.public_bytes()


@functools.lru_cache(maxsize=64)
def _facts(cand: x509.Certificate) -> _Facts:
    """
    A candidate's SKI and key usage, once per certificate.

    Thousands of PEM files usually share one intermediate: its extensions
    were decoded again for every leaf. Extensions that do not decode make it
    no issuer, as OpenSSL's extension cache failing does in X509_check_issued.
    """
    try:
        ski = _extension(cand, x509.SubjectKeyIdentifier)
        usage = _extension(cand, x509.KeyUsage)
    except ValueError:
        return _Facts(None, cand.serial_number, can_sign=False)
    digest = ski.digest if ski is not None else None
    return _Facts(digest, cand.serial_number, usage is None or usage.key_cert_sign)


def _check_issued(cand: x509.Certificate, leaf: x509.Certificate, issuer_der: bytes) -> bool:
    """OpenSSL's X509_check_issued(cand, leaf) without its proxy-certificate cases."""
    subject, subject_der = _subject_der(cand)
    if subject_der != issuer_der and subject != leaf.issuer:  # the name first, as OpenSSL
        return False
    facts = _facts(cand)
    aki = _extension(leaf, x509.AuthorityKeyIdentifier)  # decoded once by cryptography
    if aki is not None:
        if None not in (aki.key_identifier, facts.ski) and facts.ski != aki.key_identifier:
            return False
        if (
            aki.authority_cert_serial_number is not None
            and aki.authority_cert_serial_number != facts.serial
        ):
            return False
    return facts.can_sign


def _same_name(a: x509.Name, b: x509.Name) -> bool:
    """Name equality, the identical-DER case first (four times cheaper than ``==``)."""
    return a.public_bytes() == b.public_bytes() or a == b


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _signed(leaf: x509.Certificate, cand: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(cand)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):  # e.g. a key type
        # cryptography does not know, in a certificate downloaded over AIA
        return False
    return True


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """
    Read certificates from DER, PEM or PKCS#7 (DER or PEM) bytes.

    Returns an empty list for bytes that are none of these.
    """
    loaders = (
        lambda d: [x509.load_der_x509_certificate(d)],
        x509.load_pem_x509_certificates,
        pkcs7.load_der_pkcs7_certificates,
        pkcs7.load_pem_pkcs7_certificates,
    )
    for load in loaders:
        try:
            return list(load(data))
        except ValueError:
            continue
    return []


def ocsp_url(cert: x509.Certificate) -> str | None:
    """The first OCSP responder URL in the AIA extension, or None."""
    return next(iter(_aia(cert, AuthorityInformationAccessOID.OCSP)), None)


def ca_issuers_urls(cert: x509.Certificate) -> list[str]:
    """The caIssuers URLs in the AIA extension."""
    return _aia(cert, AuthorityInformationAccessOID.CA_ISSUERS)


def _aia(cert: x509.Certificate, method: x509.ObjectIdentifier) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    # Interned: 10,000 certificates of one CA share one URL string (memory).
    return [
        sys.intern(d.access_location.value)
        for d in aia
        if d.access_method == method
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]
