"""pem.py and issuer.py: reading bundles and finding issuers, as HAProxy does."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from hastaple import issuer, pem
from hastaple.errors import CertificateError
from pki import make_ca


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


def test_choose_needs_the_signing_key(pki):
    """A CA with the right name but another key is not the issuer."""
    leaf = pki.leaf()
    impostor = make_ca(pki.intermediate.cert.subject.rfc4514_string().split("=", 1)[1], pki.root)
    assert impostor.cert.subject == pki.intermediate.cert.subject
    assert issuer.choose(leaf.cert, [impostor.cert]) is None
    assert issuer.choose(leaf.cert, [impostor.cert, pki.intermediate.cert]) == pki.intermediate.cert


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
