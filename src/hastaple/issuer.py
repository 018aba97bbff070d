"""
Find the certificate that issued a leaf, as HAProxy does, and then from AIA.

HAProxy takes the issuer from the PEM chain, else from ``<crt>.issuer``
(HAPROXY.md §3a); it never downloads one (§5.9). We accept the same local
sources and, when both are missing, the AIA caIssuers URL (RFC 5280
§4.2.2.1: DER, or PKCS#7 "certs-only"; PEM from misconfigured servers).
Everything here is pure; the pipeline reads files and downloads.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID


def choose(
    leaf: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """Return the candidate whose subject is the leaf's issuer and whose key signed it."""
    for cand in candidates:
        if cand.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(cand)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return cand
    return None


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
    return [
        d.access_location.value
        for d in aia
        if d.access_method == method
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]
