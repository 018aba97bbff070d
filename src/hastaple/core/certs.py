"""
Facts about a certificate that several commands need: pure, no I/O.

``is_must_staple``: RFC 7633's TLS Feature extension (1.3.6.1.5.5.7.1.24)
with ``status_request``: the certificate promises a staple, so clients that
honour it (Firefox) refuse a handshake without a valid one. For such a
certificate a missing staple is an outage, not a slower handshake.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa


def is_must_staple(cert: x509.Certificate) -> bool:
    """
    Whether ``cert`` carries the TLS Feature extension with status_request (RFC 7633).

    Raises:
        ValueError: the certificate's extensions do not decode.
    """
    try:
        features = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    return x509.TLSFeatureType.status_request in features


def key_type(cert: x509.Certificate) -> str:
    """The family of the certificate's key as TLS picks certificates: RSA, ECDSA, Ed25519..."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return "unknown"
    kinds: tuple[tuple[type, str], ...] = (
        (rsa.RSAPublicKey, "RSA"),
        (ec.EllipticCurvePublicKey, "ECDSA"),
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
        (dsa.DSAPublicKey, "DSA"),
    )
    return next((name for kind, name in kinds if isinstance(key, kind)), "unknown")
