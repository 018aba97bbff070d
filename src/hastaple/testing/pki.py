"""
A throw-away PKI for the tests, built with cryptography's builders.

root -> intermediate -> leaves (RSA and ECDSA, with an AIA OCSP URL), plus a
delegated responder (id-kp-OCSPSigning) issued by the intermediate, and a
second, unrelated CA for "issued by another CA" cases. ``response()`` signs
OCSP responses that are right, or wrong in exactly one chosen way.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_serials = itertools.count(0x1000)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key in unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def now() -> dt.datetime:
    """The current time in UTC, to the second (as certificates carry it)."""
    return dt.datetime.now(UTC).replace(microsecond=0)


def _key(kind: Literal["rsa", "ec"]) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str, parent: Issued | None = None, *, kind: Literal["rsa", "ec"] = "ec") -> Issued:
    """A CA certificate, self-signed when ``parent`` is None."""
    key = _key(kind)
    issuer_name = parent.cert.subject if parent else _name(cn)
    signing_key = parent.key if parent else key
    start = now() - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(next(_serials))
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


def issue(
    ca: Issued,
    cn: str,
    *,
    kind: Literal["rsa", "ec"] = "ec",
    ocsp_url: str | None = "http://127.0.0.1:9/",
    ca_issuers_url: str | None = None,
    ocsp_signing: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    serial: int | None = None,
    sans: list[str] | None = None,
    must_staple: bool = False,
) -> Issued:
    """An end-entity certificate issued by ``ca`` (``must_staple``: RFC 7633 status_request)."""
    key = _key(kind)
    start = not_before or (now() - dt.timedelta(days=1))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else next(_serials))
        .not_valid_before(start)
        .not_valid_after(not_after or (start + dt.timedelta(days=365)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in (sans or [cn])]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    access = []
    if ocsp_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
        )
    if ca_issuers_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(ca_issuers_url),
            )
        )
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    if must_staple:
        builder = builder.add_extension(
            x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


Signer = Literal["delegated", "issuer"] | Issued


@dataclass
class PKI:
    """The test PKI: CAs and responder certificates; leaves are issued per test."""

    root: Issued
    intermediate: Issued
    responder: Issued
    other_ca: Issued

    @classmethod
    def build(cls) -> PKI:
        """Root, intermediate, delegated responder and an unrelated CA, fresh keys each time."""
        root = make_ca("hastaple Test Root CA")
        intermediate = make_ca("hastaple Test Intermediate CA", root)
        responder = issue(
            intermediate, "hastaple Test OCSP Responder", ocsp_signing=True, ocsp_url=None
        )
        other_ca = make_ca("Unrelated CA")
        return cls(root, intermediate, responder, other_ca)

    def leaf(self, cn: str = "www.example.test", **kwargs: object) -> Issued:
        """A leaf issued by the intermediate."""
        return issue(self.intermediate, cn, **kwargs)  # type: ignore[arg-type]

    def bundle(self, leaf: Issued, *, chain: bool = True, key: bool = True) -> bytes:
        """The PEM HAProxy loads: leaf, then key, then (optionally) the intermediate."""
        parts = [leaf.cert_pem]
        if key:
            parts.append(leaf.key_pem)
        if chain:
            parts.append(self.intermediate.cert_pem)
        return b"".join(parts)

    def write(self, directory: Path, name: str, leaf: Issued, *, chain: bool = True) -> Path:
        """Write ``name`` (and ``name.issuer`` when chainless) into ``directory``."""
        path = directory / name
        path.write_bytes(self.bundle(leaf, chain=chain))
        if not chain:
            path.with_name(name + ".issuer").write_bytes(self.intermediate.cert_pem)
        return path

    def response(
        self,
        leaf: x509.Certificate,
        *,
        status: Literal["good", "revoked", "unknown"] = "good",
        this_update: dt.datetime | None = None,
        next_update: dt.datetime | Literal["none"] | None = None,
        signer: Signer = "delegated",
        cert_id_issuer: x509.Certificate | None = None,
        cert_id_hash: hashes.HashAlgorithm | None = None,
        include_signer_cert: bool = True,
        extra_leaf: x509.Certificate | None = None,
        bad_signature: bool = False,
    ) -> bytes:
        """A DER OCSP response for ``leaf``; each keyword makes it wrong in one way."""
        this = this_update or (now() - dt.timedelta(minutes=1))
        nxt = None if next_update == "none" else (next_update or this + dt.timedelta(days=7))
        if signer == "delegated":
            signing = self.responder
        elif signer == "issuer":
            signing = self.intermediate
        else:
            signing = signer
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=leaf,
            issuer=cert_id_issuer or self.intermediate.cert,
            algorithm=cert_id_hash or hashes.SHA1(),  # noqa: S303 - SHA-1 CertIDs are what HAProxy matches
            cert_status={
                "good": ocsp.OCSPCertStatus.GOOD,
                "revoked": ocsp.OCSPCertStatus.REVOKED,
                "unknown": ocsp.OCSPCertStatus.UNKNOWN,
            }[status],
            this_update=this,
            next_update=nxt,
            revocation_time=this - dt.timedelta(hours=1) if status == "revoked" else None,
            revocation_reason=x509.ReasonFlags.key_compromise if status == "revoked" else None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signing.cert)
        if include_signer_cert and signing is not self.intermediate:
            builder = builder.certificates([signing.cert])
        if extra_leaf is not None:
            # OCSPResponseBuilder takes one SingleResponse only; callers wanting
            # two use openssl (see test_validate), so this knob is a guard.
            msg = "use openssl ocsp for multi-response fixtures"
            raise NotImplementedError(msg)
        resp = builder.sign(signing.key, hashes.SHA256())
        der = resp.public_bytes(serialization.Encoding.DER)
        if bad_signature:
            sig = resp.signature
            at = der.rindex(sig)
            flipped = bytes([sig[len(sig) // 2] ^ 0x01])
            der = der[: at + len(sig) // 2] + flipped + der[at + len(sig) // 2 + 1 :]
        return der

    @staticmethod
    def failure(status: ocsp.OCSPResponseStatus) -> bytes:
        """An unsigned error response (tryLater, unauthorized, ...)."""
        return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
            serialization.Encoding.DER
        )

    def write_openssl_ca(self, directory: Path, revoked: list[Issued] | None = None) -> Path:
        """Files for ``openssl ocsp`` as a responder: CA, signer, key and index."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.pem").write_bytes(self.intermediate.cert_pem)
        (directory / "rsigner.pem").write_bytes(self.responder.cert_pem)
        (directory / "rkey.pem").write_bytes(self.responder.key_pem)
        index = directory / "index.txt"
        index.write_text("")
        for cert in revoked or []:
            self.add_to_index(directory, cert.cert, revoked=True)
        return directory

    @staticmethod
    def add_to_index(directory: Path, cert: x509.Certificate, *, revoked: bool = False) -> None:
        """Append ``cert`` to an openssl ``index.txt`` as valid (V) or revoked (R)."""
        exp = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        rev = (now() - dt.timedelta(hours=1)).strftime("%y%m%d%H%M%SZ") if revoked else ""
        subject = "/" + cert.subject.rfc4514_string()
        line = (
            f"{'R' if revoked else 'V'}\t{exp}\t{rev}\t{cert.serial_number:X}\tunknown\t{subject}\n"
        )
        with (directory / "index.txt").open("a") as f:
            f.write(line)
