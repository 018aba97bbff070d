"""
Build OCSP requests the way responders and HAProxy expect them.

The CertID uses SHA-1: HAProxy computes its key for a certificate with SHA-1
and matches pushed responses on it (docs/haproxy.md: a SHA-256 CertID gets
"Certificate ID does not match any certificate or issuer"). Requests carry no
nonce, so responders and CDNs may cache them (RFC 5019 §2.1).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from hastaple.core.ocsp import der

# RFC 5019 §5: use GET when the encoded request is under 255 bytes.
MAX_GET_BYTES = 255
# What urllib.parse.quote(safe="") does to base64, the three characters that need it.
_PERCENT = str.maketrans({"+": "%2B", "/": "%2F", "=": "%3D"})


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """How to send one OCSP request: GET with the request in the URL, or POST."""

    method: str
    url: str
    body: bytes | None


def build(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """Return the DER OCSPRequest for ``cert`` with a SHA-1 CertID and no nonce."""
    req = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 - see module docstring
        .build()
    )
    return req.public_bytes(serialization.Encoding.DER)


def cert_id(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """
    Return the DER CertID of ``cert``: HAProxy's "OCSP Response Key" is its hex.

    The OCSPRequest is SEQUENCE { tbsRequest SEQUENCE { requestList SEQUENCE {
    Request SEQUENCE { reqCert CertID } } } }, so the CertID is the innermost
    SEQUENCE; we walk the DER rather than rebuild the structure by hand.
    """
    return cert_id_of(build(cert, issuer))


def cert_id_of(req: bytes) -> bytes:
    """The CertID inside a one-certificate DER OCSPRequest made by ``build``."""
    start = 0
    for _ in range(4):  # into OCSPRequest, TBSRequest, requestList, Request
        _, start, _ = der.element(req, start)
    _, _, end = der.element(req, start)  # the CertID, whole
    return req[start:end]


def http_request(url: str, der: bytes) -> HTTPRequest:
    """
    Choose GET (cacheable) or POST for ``der`` sent to responder ``url``.

    RFC 5019 §5: GET when the whole URL-encoded request is under 255 bytes;
    the base64 is percent-encoded (``+ / =`` are not safe in a path).
    """
    encoded = base64.b64encode(der).decode("ascii").translate(_PERCENT)
    if len(encoded) < MAX_GET_BYTES:
        base = url if url.endswith("/") else url + "/"
        return HTTPRequest("GET", base + encoded, None)
    return HTTPRequest("POST", url, der)
