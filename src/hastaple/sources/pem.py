"""
Read the PEM bundles HAProxy loads: leaf first, then key and chain in any order.

``parse`` sees bytes; ``parse_file`` is the one-line I/O wrapper (hynek/pem).
``parse_leaf_file`` reads only the leaf (the daemon's discovery: its serial).
``is_must_staple`` says whether a certificate promises a staple.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from hastaple.core import certs
from hastaple.errors import CertificateError
from hastaple.stores import store

_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_CERT_END = b"-----END CERTIFICATE-----"
# RFC 7633's TLS Feature extension's OID, 1.3.6.1.5.5.7.1.24, as DER encodes it.
_TLS_FEATURE_OID = bytes.fromhex("06082b06010505070118")
_KEY_MARKER = b"PRIVATE KEY-----"


@dataclass(frozen=True, slots=True)
class Bundle:
    """A certificate file as HAProxy sees it: the first certificate is the leaf."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    has_key: bool


def parse(data: bytes, *, source: str | Path) -> Bundle:
    """
    Split a PEM bundle into leaf, chain and whether a key is present.

    Raises:
        CertificateError: the bytes hold no usable certificate; names ``source``.
    """
    if not data.strip():
        raise CertificateError(source, "file is empty")
    has_key = _KEY_MARKER in data
    if _CERT_MARKER not in data:
        problem = (
            "holds a private key but no certificate" if has_key else "no PEM certificate found"
        )
        raise CertificateError(source, problem)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        # cryptography's message points at its FAQ; a person needs the file and the fact.
        raise CertificateError(source, "unreadable PEM certificate") from exc
    return Bundle(leaf=certs[0], chain=tuple(certs[1:]), has_key=has_key)


def is_must_staple(cert: x509.Certificate) -> bool:
    """
    Whether ``cert`` carries the TLS Feature extension with status_request (RFC 7633).

    Such a certificate promises a staple: clients that honour it (Firefox)
    refuse a handshake without a valid one, so a missing staple is an outage.
    Extensions that do not decode promise nothing we can read: False (the
    fetch reports the broken file on its own).
    """
    # Without the OID's bytes there is no such extension: skip decoding them all.
    if _TLS_FEATURE_OID not in cert.tbs_certificate_bytes:
        return False
    try:
        return certs.is_must_staple(cert)
    except ValueError:
        return False


def parse_file(path: Path) -> Bundle:
    """Read and parse ``path``; see ``parse``."""
    return parse(read(path), source=path)


def parse_leaf_file(path: Path) -> x509.Certificate:
    """
    ``parse_file(path).leaf`` without decoding the chain: a third of the work.

    The daemon's discovery needs only the leaf's serial and must-staple for
    every file; the pipeline parses the whole bundle when it fetches.

    Raises:
        CertificateError: as ``parse_file``.
    """
    data = read(path)
    start = data.find(_CERT_MARKER)
    end = data.find(_CERT_END, start)
    if start >= 0 and end > start:
        try:
            return x509.load_pem_x509_certificate(data[start : end + len(_CERT_END)])
        except ValueError:
            pass  # the whole file's parse says what is wrong, in the same words
    return parse(data, source=path).leaf


def read(path: Path) -> bytes:
    """
    Read a certificate-related file, turning OS errors into one sentence.

    Raises:
        CertificateError: the file is missing, unreadable or a directory.
    """
    try:
        return store.read_file(path)[0]
    except FileNotFoundError as exc:
        raise CertificateError(path, "no such file") from exc
    except PermissionError as exc:
        raise CertificateError(path, "permission denied") from exc
    except IsADirectoryError as exc:
        raise CertificateError(path, "is a directory, not a certificate file") from exc
    except OSError as exc:
        raise CertificateError(path, exc.strerror or str(exc)) from exc
