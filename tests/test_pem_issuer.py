"""pem.py and issuer.py: reading bundles and finding issuers, as HAProxy does."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from hastaple.core import issuer
from hastaple.errors import CertificateError
from hastaple.sources import pem
from hastaple.testing.pki import issue, make_ca


def test_bundle_leaf_key_chain(pki):
    """The first certificate is the leaf; the rest is the chain; the key is noticed."""
    leaf = pki.leaf()
    bundle = pem.parse(pki.bundle(leaf), source="x.pem")
    assert bundle.leaf == leaf.cert
    assert bundle.chain == (pki.intermediate.cert,)
    assert bundle.has_key


def test_bundle_key_first_still_finds_leaf(pki):
    """HAProxy accepts the key before the certificate; so do we."""
    leaf = pki.leaf()
    bundle = pem.parse(leaf.key_pem + leaf.cert_pem, source="x.pem")
    assert bundle.leaf == leaf.cert
    assert bundle.chain == ()


def test_parse_file_missing(tmp_path):
    """A missing file is a CertificateError naming it."""
    with pytest.raises(CertificateError, match=r"nope\.pem: no such file"):
        pem.parse_file(tmp_path / "nope.pem")


def test_parse_file_directory(tmp_path):
    """A directory given as a certificate is named as such."""
    with pytest.raises(CertificateError, match="is a directory"):
        pem.parse_file(tmp_path)


@pytest.mark.parametrize("order", ["leaf-key-chain", "key-leaf-chain"])
def test_parse_leaf_file_is_parse_files_leaf(pki, tmp_path, order):
    """The daemon's leaf-only read gives the leaf ``parse_file`` gives, key first or not."""
    leaf = pki.leaf()
    path = tmp_path / "c.pem"
    chain = pki.intermediate.cert_pem + pki.root.cert_pem
    first = (
        leaf.cert_pem + leaf.key_pem if order == "leaf-key-chain" else leaf.key_pem + leaf.cert_pem
    )
    path.write_bytes(first + chain)
    assert pem.parse_leaf_file(path) == pem.parse_file(path).leaf == leaf.cert


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "file is empty"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no certificate"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "unreadable"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "unreadable"),  # no END line
    ],
)
def test_parse_leaf_file_fails_as_parse_file(tmp_path, data, problem):
    """A file that is no certificate fails the leaf-only read with parse_file's sentence."""
    path = tmp_path / "bad.pem"
    path.write_bytes(data)
    with pytest.raises(CertificateError, match=problem) as leaf_only:
        pem.parse_leaf_file(path)
    with pytest.raises(CertificateError) as whole:
        pem.parse_file(path)
    assert str(leaf_only.value) == str(whole.value)
    with pytest.raises(CertificateError, match="no such file"):
        pem.parse_leaf_file(tmp_path / "nope.pem")


def test_choose_needs_the_signing_key(pki):
    """A CA with the right name but another key is not the issuer."""
    leaf = pki.leaf()
    impostor = make_ca(pki.intermediate.cert.subject.rfc4514_string().split("=", 1)[1], pki.root)
    assert impostor.cert.subject == pki.intermediate.cert.subject
    assert issuer.choose(leaf.cert, [impostor.cert]) is None
    assert issuer.choose(leaf.cert, [impostor.cert, pki.intermediate.cert]) == pki.intermediate.cert


def _same_name_other_key(ca, *, key_cert_sign=True):
    """A CA certificate with ``ca``'s subject, no SKI and a key that signed nothing here."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def test_choose_local_is_haproxys_rule(pki):
    """Local files: the one chain certificate X509_check_issued accepts wins, as in HAProxy."""
    leaf = pki.leaf()
    look_alike = _same_name_other_key(pki.intermediate.cert)
    assert issuer.choose_local(leaf.cert, [pki.root.cert, pki.intermediate.cert]) == (
        pki.intermediate.cert
    )
    # HAProxy checks no signature: a lone look-alike is what it computes the CertID with.
    assert issuer.choose_local(leaf.cert, [look_alike]) == look_alike
    assert issuer.choose(leaf.cert, [look_alike]) is None


def test_choose_local_several_matches_the_key_decides(pki):
    """When more than one candidate passes HAProxy's rule, only the leaf's signature decides."""
    leaf = pki.leaf()
    look_alike = _same_name_other_key(pki.intermediate.cert)
    found = issuer.choose_local(leaf.cert, [look_alike, pki.intermediate.cert])
    assert found == pki.intermediate.cert
    assert issuer.choose_local(leaf.cert, [look_alike, look_alike]) is None


def test_choose_local_refuses_what_x509_check_issued_refuses(pki):
    """An SKI other than the leaf's AKI keyid, or no keyCertSign, makes no issuer."""
    leaf = pki.leaf()
    impostor = make_ca(pki.intermediate.cert.subject.rfc4514_string().split("=", 1)[1], pki.root)
    no_cert_sign = _same_name_other_key(pki.intermediate.cert, key_cert_sign=False)
    assert issuer.choose_local(leaf.cert, [impostor.cert]) is None
    assert issuer.choose_local(leaf.cert, [no_cert_sign]) is None
    assert issuer.choose_local(leaf.cert, [pki.root.cert]) is None


def _undecodable_key_usage(subject: x509.Name) -> x509.Certificate:
    """A certificate named ``subject`` whose KeyUsage extension cryptography cannot decode."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    bad = x509.UnrecognizedExtension(x509.oid.ExtensionOID.KEY_USAGE, b"\x04\x00")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(bad, critical=False)
        .sign(key, hashes.SHA256())
    )


def test_choose_local_reads_extensions_only_of_a_name_match(pki):
    """
    As X509_check_issued: the name first; extensions that do not decode make no issuer.

    HAProxy loads a bundle with such an extra certificate, so it is no error here.
    """
    leaf = pki.leaf()
    other = _undecodable_key_usage(x509.Name.from_rfc4514_string("CN=Somebody Else"))
    look_alike = _undecodable_key_usage(pki.intermediate.cert.subject)
    with pytest.raises(ValueError, match="error parsing asn1"):
        _ = look_alike.extensions  # cryptography refuses to decode it
    assert issuer.choose_local(leaf.cert, [other, pki.intermediate.cert]) == pki.intermediate.cert
    assert issuer.choose_local(leaf.cert, [look_alike]) is None
    assert issuer.choose_local(leaf.cert, [look_alike, pki.intermediate.cert]) == (
        pki.intermediate.cert
    )


@pytest.mark.parametrize("form", ["der", "pem", "pkcs7-der", "pkcs7-pem"])
def test_parse_certificates_forms(pki, form):
    """CaIssuers answers come as DER, PEM or PKCS#7 (RFC 5280 §4.2.2.1)."""
    cert = pki.intermediate.cert
    data = {
        "der": lambda: cert.public_bytes(serialization.Encoding.DER),
        "pem": lambda: cert.public_bytes(serialization.Encoding.PEM),
        "pkcs7-der": lambda: pkcs7.serialize_certificates([cert], serialization.Encoding.DER),
        "pkcs7-pem": lambda: pkcs7.serialize_certificates([cert], serialization.Encoding.PEM),
    }[form]()
    assert issuer.parse_certificates(data) == [cert]


def test_parse_certificates_garbage():
    """Bytes that are no certificate give an empty list, not an exception."""
    assert issuer.parse_certificates(b"<html>not found</html>") == []


def test_aia_urls(pki):
    """OCSP and caIssuers URLs come from the AIA extension; none is None."""
    leaf = pki.leaf(ocsp_url="http://ocsp.test/", ca_issuers_url="http://ca.test/int.der")
    assert issuer.ocsp_url(leaf.cert) == "http://ocsp.test/"
    assert issuer.ca_issuers_urls(leaf.cert) == ["http://ca.test/int.der"]
    bare = pki.leaf(ocsp_url=None)
    assert issuer.ocsp_url(bare.cert) is None
    assert issuer.ca_issuers_urls(bare.cert) == []


def test_is_must_staple_reads_the_tls_feature_extension(pki):
    """status_request in TLS Feature (1.3.6.1.5.5.7.1.24) is must-staple; its absence is not."""
    assert pem.is_must_staple(pki.leaf("must.test", must_staple=True).cert) is True
    assert pem.is_must_staple(pki.leaf("plain.test").cert) is False
    # status_request_v2 alone (RFC 6961) is not the promise RFC 7633 clients enforce.
    other = x509.TLSFeature([x509.TLSFeatureType.status_request_v2])
    assert x509.ExtensionOID.TLS_FEATURE.dotted_string == "1.3.6.1.5.5.7.1.24"
    ca = make_ca("v2 CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "v2.test")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
        .add_extension(other, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    assert pem.is_must_staple(cert) is False


def test_issuer_chains_file_a_chain_as_haproxy_does(pki):
    """Filed by the first certificate's SKI; a leaf gets the chain its AKI and issuer name match."""
    leaf = pki.leaf()
    other = make_ca("Other CA", pki.root)
    chains = issuer.IssuerChains.of(
        [
            ("a-empty.pem", []),
            ("b-other.pem", [other.cert, pki.root.cert]),
            ("c-inter.pem", [pki.intermediate.cert, pki.root.cert]),
            ("d-again.pem", [pki.intermediate.cert]),  # the same subject again: skipped
            ("e-no-ski.pem", [_same_name_other_key(pki.intermediate.cert)]),
        ]
    )
    assert chains.chain_for(leaf.cert) == [pki.intermediate.cert, pki.root.cert]
    assert chains.chain_for(issue(other, "x.example.test").cert) == [
        other.cert, pki.root.cert,
    ]  # fmt: skip
    assert [w.split(":")[0] for w in chains.warnings] == [
        "a-empty.pem", "d-again.pem", "e-no-ski.pem",
    ]  # fmt: skip
    assert issuer.IssuerChains.of([]).chain_for(leaf.cert) == ()


def test_issuer_chains_need_the_name_too(pki):
    """A chain filed under the right SKI whose first certificate has another name is not it."""
    leaf = pki.leaf()
    renamed = make_ca("Renamed", pki.root)
    chains = issuer.IssuerChains({pki.intermediate.cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest: [[renamed.cert]]})  # fmt: skip
    assert chains.chain_for(leaf.cert) == ()
