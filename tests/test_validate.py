"""The validator: one test per rejection, each with a response wrong in exactly one way."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519
from cryptography.x509 import ocsp
from hypothesis import given, settings
from hypothesis import strategies as st

import der_edit
from hastaple.core.model import Status
from hastaple.core.ocsp.validate import MAX_DER_BYTES, validate
from hastaple.errors import InvalidResponse
from hastaple.testing.pki import PKI, Issued, issue, now

_EDWARDS = (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


@pytest.fixture(name="leaf")
def _leaf(pki: PKI) -> Issued:
    return pki.leaf("www.example.test")


def check(pki: PKI, leaf: Issued, der: bytes, **kwargs: object):
    return validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=now(), **kwargs)  # type: ignore[arg-type]


def rejects(pki: PKI, leaf: Issued, der: bytes, *words: str) -> str:
    with pytest.raises(InvalidResponse) as info:
        check(pki, leaf, der)
    for word in words:
        assert word in info.value.reason
    return info.value.reason


def test_good_delegated(pki, leaf):
    """A response signed by the delegated responder is good, with its times."""
    this = now() - dt.timedelta(minutes=2)
    der = pki.response(leaf.cert, this_update=this)
    verdict = check(pki, leaf, der)
    assert verdict.status is Status.GOOD
    assert verdict.this_update == this
    assert verdict.next_update == this + dt.timedelta(days=7)
    assert verdict.serial == leaf.cert.serial_number
    assert "delegated responder" in verdict.signer


def test_good_signed_by_issuer(pki, leaf):
    """A response signed with the issuer's own key is good."""
    verdict = check(pki, leaf, pki.response(leaf.cert, signer="issuer"))
    assert verdict.status is Status.GOOD
    assert verdict.signer.startswith("issuer ")


def test_good_rsa_leaf(pki):
    """RSA leaves validate as ECDSA ones do."""
    leaf = pki.leaf("rsa.example.test", kind="rsa")
    assert check(pki, leaf, pki.response(leaf.cert)).status is Status.GOOD


def test_rsa_signed_responses(pki, leaf):
    """
    A responder with an RSA key (most public CAs): good when the signature holds, else refused.

    The signer's key, not the leaf's, picks the verification: this is the
    PKCS#1 v1.5 path, which ECDSA-signed fixtures never reach.
    """
    rsa_signer = issue(
        pki.intermediate, "RSA OCSP Responder", ocsp_signing=True, ocsp_url=None, kind="rsa"
    )
    assert check(pki, leaf, pki.response(leaf.cert, signer=rsa_signer)).status is Status.GOOD
    forged = pki.response(leaf.cert, signer=rsa_signer, bad_signature=True)
    rejects(pki, leaf, forged, "signature does not verify")


def test_revoked_is_a_verdict(pki, leaf):
    """A signed 'revoked' is an answer, with its revocation time, not an error."""
    verdict = check(pki, leaf, pki.response(leaf.cert, status="revoked"))
    assert verdict.status is Status.REVOKED
    assert verdict.revocation_time is not None
    assert verdict.revocation_reason == "keyCompromise"


def test_unknown_is_a_verdict(pki, leaf):
    """A signed 'unknown' is reported as such."""
    assert check(pki, leaf, pki.response(leaf.cert, status="unknown")).status is Status.UNKNOWN


def test_bad_signature(pki, leaf):
    """One flipped bit in the signature is caught; HAProxy would staple it."""
    rejects(pki, leaf, pki.response(leaf.cert, bad_signature=True), "signature does not verify")


def test_signer_without_ocsp_signing_eku(pki, leaf):
    """A certificate of the right CA but without id-kp-OCSPSigning may not sign."""
    other_leaf = pki.leaf("not-a-responder.example.test")
    der = pki.response(leaf.cert, signer=other_leaf)
    rejects(pki, leaf, der, "OCSP Signing", "not-a-responder")


def test_signer_from_another_ca(pki, leaf):
    """A responder certificate with the EKU but from another CA is not authorised."""
    stranger = issue(pki.other_ca, "Stranger Responder", ocsp_signing=True, ocsp_url=None)
    rejects(pki, leaf, pki.response(leaf.cert, signer=stranger), "not issued by")


def test_expired_responder_certificate(pki, leaf):
    """A delegated responder certificate outside its validity may not sign."""
    old = now() - dt.timedelta(days=30)
    expired = issue(
        pki.intermediate,
        "Expired Responder",
        ocsp_signing=True,
        ocsp_url=None,
        not_before=old,
        not_after=old + dt.timedelta(days=1),
    )
    rejects(pki, leaf, pki.response(leaf.cert, signer=expired), "not valid at")


def test_signer_not_included(pki, leaf):
    """A delegated signature without the responder certificate cannot be checked."""
    der = pki.response(leaf.cert, include_signer_cert=False)
    rejects(pki, leaf, der, "neither the issuer nor a certificate included")


def test_wrong_certid_serial(pki, leaf):
    """A response for another certificate of the same CA is not ours."""
    other = pki.leaf("other.example.test")
    rejects(pki, leaf, pki.response(other.cert), "not for this certificate")


def test_wrong_certid_issuer(pki, leaf):
    """Same serial, other issuer hashes: not ours."""
    der = pki.response(leaf.cert, cert_id_issuer=pki.other_ca.cert)
    rejects(pki, leaf, der, "another issuer")


def test_sha256_certid(pki, leaf):
    """A SHA-256 CertID is refused: HAProxy matches on SHA-1 only."""
    der = pki.response(leaf.cert, cert_id_hash=hashes.SHA256())
    rejects(pki, leaf, der, "SHA256 CertID", "SHA-1")


def test_expired(pki, leaf):
    """A response past its nextUpdate is refused."""
    this = now() - dt.timedelta(days=8)
    der = pki.response(leaf.cert, this_update=this, next_update=this + dt.timedelta(days=7))
    rejects(pki, leaf, der, "expired at")


@pytest.mark.parametrize("minutes", [2, 5, 14])
def test_next_update_inside_margin(pki, leaf, minutes):
    """A response expiring within the margin is refused: HAProxy would staple nothing."""
    der = pki.response(leaf.cert, next_update=now() + dt.timedelta(minutes=minutes))
    rejects(pki, leaf, der, "within 15 minutes", "staple nothing")


def test_next_update_just_outside_margin(pki, leaf):
    """The margin is a bound, not a guess: 16 minutes left passes."""
    der = pki.response(leaf.cert, next_update=now() + dt.timedelta(minutes=16))
    assert check(pki, leaf, der).status is Status.GOOD


def test_no_next_update(pki, leaf):
    """HAProxy refuses responses without nextUpdate, so do we."""
    rejects(pki, leaf, pki.response(leaf.cert, next_update="none"), "no nextUpdate")


def test_this_update_in_future(pki, leaf):
    """ThisUpdate beyond the clock-skew allowance is refused."""
    this = now() + dt.timedelta(hours=1)
    rejects(pki, leaf, pki.response(leaf.cert, this_update=this), "in the future")


def test_this_update_within_skew(pki, leaf):
    """A thisUpdate two minutes ahead (a responder with a fast clock) is accepted."""
    this = now() + dt.timedelta(minutes=2)
    assert check(pki, leaf, pki.response(leaf.cert, this_update=this)).status is Status.GOOD


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (ocsp.OCSPResponseStatus.TRY_LATER, "tryLater"),
        (ocsp.OCSPResponseStatus.UNAUTHORIZED, "unauthorized"),
        (ocsp.OCSPResponseStatus.MALFORMED_REQUEST, "malformedRequest"),
        (ocsp.OCSPResponseStatus.INTERNAL_ERROR, "internalError"),
    ],
)
def test_unsuccessful_response_status(pki, leaf, status, name):
    """Error responses are named by their RFC 6960 status."""
    rejects(pki, leaf, PKI.failure(status), f"'{name}'")


@pytest.mark.parametrize(
    "der",
    [b"", b"garbage" * 10, b"\x30\x82\xff\xff", bytes(64)],
    ids=["empty", "text", "hdr", "nul"],
)
def test_garbage(pki, leaf, der):
    """Bytes that are not an OCSP response are refused with a reason."""
    reason = rejects(pki, leaf, der)
    assert "response" in reason


def test_truncated(pki, leaf):
    """A response cut short is refused."""
    der = pki.response(leaf.cert)
    rejects(pki, leaf, der[: len(der) // 2], "not a DER OCSP response")


def test_oversized(pki, leaf):
    """More DER than HAProxy's runtime API can take is refused before parsing."""
    rejects(pki, leaf, b"\x30" * (MAX_DER_BYTES + 1), "runtime API")


def test_validity_is_judged_at_now(pki, leaf):
    """The same response is good now and expired eight days later (check --at)."""
    der = pki.response(leaf.cert)
    later = now() + dt.timedelta(days=8)
    with pytest.raises(InvalidResponse, match="expired"):
        validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=later)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def test_two_single_responses(pki, tmp_path):
    """A real `openssl ocsp` answer covering two certificates is refused: HAProxy ignores it."""
    a, b = pki.leaf("a.example.test"), pki.leaf("b.example.test")
    ca = pki.write_openssl_ca(tmp_path)
    for leaf, name in ((a, "a.pem"), (b, "b.pem")):
        (tmp_path / name).write_bytes(leaf.cert_pem)
        PKI.add_to_index(ca, leaf.cert)
    _openssl("ocsp", "-issuer", ca / "ca.pem", "-cert", tmp_path / "a.pem", "-cert",
             tmp_path / "b.pem", "-no_nonce", "-reqout", tmp_path / "req.der")  # fmt: skip
    _openssl("ocsp", "-index", ca / "index.txt", "-CA", ca / "ca.pem", "-rsigner",
             ca / "rsigner.pem", "-rkey", ca / "rkey.pem", "-reqin", tmp_path / "req.der",
             "-respout", tmp_path / "resp.der", "-ndays", "7")  # fmt: skip
    der = (tmp_path / "resp.der").read_bytes()
    rejects(pki, a, der, "2 single responses")


def test_openssl_single_response_is_good(pki, tmp_path):
    """The negative of the test above: openssl's answer for one certificate passes."""
    a = pki.leaf("a.example.test")
    ca = pki.write_openssl_ca(tmp_path)
    (tmp_path / "a.pem").write_bytes(a.cert_pem)
    PKI.add_to_index(ca, a.cert)
    _openssl("ocsp", "-issuer", ca / "ca.pem", "-cert", tmp_path / "a.pem", "-no_nonce",
             "-reqout", tmp_path / "req.der")  # fmt: skip
    _openssl("ocsp", "-index", ca / "index.txt", "-CA", ca / "ca.pem", "-rsigner",
             ca / "rsigner.pem", "-rkey", ca / "rkey.pem", "-reqin", tmp_path / "req.der",
             "-respout", tmp_path / "resp.der", "-ndays", "7")  # fmt: skip
    verdict = check(pki, a, (tmp_path / "resp.der").read_bytes())
    assert verdict.status is Status.GOOD


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048))
def test_fuzz_any_bytes(pki, data):
    """For any bytes, validate returns a verdict or raises InvalidResponse, nothing else."""
    leaf = _FUZZ_LEAF.setdefault("leaf", pki.leaf("fuzz.example.test"))
    with contextlib.suppress(InvalidResponse):
        validate(data, cert=leaf.cert, issuer=pki.intermediate.cert, now=now())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_responses(pki, data):
    """A real response with bytes flipped or cut validates or raises InvalidResponse only."""
    leaf = _FUZZ_LEAF.setdefault("leaf", pki.leaf("fuzz.example.test"))
    der = bytearray(_FUZZ_LEAF.setdefault("der", pki.response(leaf.cert)))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(der) - 1))
        der[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    with contextlib.suppress(InvalidResponse):
        validate(bytes(der[:cut]), cert=leaf.cert, issuer=pki.intermediate.cert, now=now())


_FUZZ_LEAF: dict[str, object] = {}


@pytest.mark.parametrize("name", list(der_edit.HOSTILE))
def test_hostile_vector_is_one_line_reason(pki, leaf, name):
    """
    A signed response with an odd algorithm, extension, time or certificate: a reason, no crash.

    Each of these raised UnsupportedAlgorithm, ValueError or DuplicateExtension
    out of validate (which crashed verify, check and fetch), or was accepted
    although TLS clients refuse it (critical unknown extension, an algorithm
    name that does not fit the key).
    """
    build, words = der_edit.HOSTILE[name]
    reason = rejects(pki, leaf, build(pki, leaf))
    assert words in reason
    assert "\n" not in reason
    assert len(reason) < 300


@pytest.mark.parametrize("name", ["sigalg-unknown-oid", "certid-hash-md5", "revoked-reason-99"])
def test_check_command_prints_one_line_not_a_traceback(pki, leaf, tmp_path, name):
    """`hastaple check` on a hostile response file: exit 1, one error line, no traceback."""
    build, words = der_edit.HOSTILE[name]
    cert = pki.write(tmp_path, "site.pem", leaf)
    (tmp_path / "resp.der").write_bytes(build(pki, leaf))
    proc = subprocess.run(
        [sys.executable, "-m", "hastaple", "check", tmp_path / "resp.der", "--cert", cert],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert words in proc.stderr


def test_unusable_certificate_next_to_the_real_responder_does_not_hide_it(pki, leaf):
    """An included certificate with an unknown key type, then the real responder: good."""
    weird = der_edit.recertify(pki, pki.responder.cert, der_edit._unknown_key)
    real = pki.responder.cert.public_bytes(serialization.Encoding.DER)
    assert check(pki, leaf, der_edit._with_certs(pki, leaf, [weird, real])).status is Status.GOOD


def test_downloaded_issuer_with_an_unknown_key_type_is_no_issuer(pki, leaf):
    """
    A caIssuers download holding a certificate with an unknown key type: not the issuer.

    issuer.choose raised UnsupportedAlgorithm from the signature check, which
    crashed fetch's AIA step (and verify's) instead of trying the next one.
    """
    from hastaple.core import issuer as issuers  # noqa: PLC0415

    weird = x509.load_der_x509_certificate(
        der_edit.recertify(pki, pki.intermediate.cert, der_edit._unknown_key)
    )
    assert issuers.choose(leaf.cert, [weird, pki.intermediate.cert]) == pki.intermediate.cert
    assert issuers.choose(leaf.cert, [weird]) is None
    with pytest.raises(InvalidResponse):  # and validate against it: a reason, not a crash
        validate(pki.response(leaf.cert), cert=leaf.cert, issuer=weird, now=now())


def test_non_critical_unknown_extension_and_a_nonce_are_ignored(pki, leaf):
    """RFC 6960 §4.4: extensions not understood are ignored unless critical; nonces are fine."""
    der = der_edit.mutated(
        pki, leaf,
        lambda n: (der_edit._add_extension(n[0], der_edit.extension("1.2.3.4.5", b"\x05\x00")),
                   der_edit._add_extension(n[0], der_edit.extension(der_edit.NONCE, b"\x04\x01a"))),
    )  # fmt: skip
    assert check(pki, leaf, der).status is Status.GOOD


@pytest.mark.parametrize(
    ("kind", "key", "alg"),
    [
        ("ed25519", ed25519.Ed25519PrivateKey.generate, None),
        ("ed448", ed448.Ed448PrivateKey.generate, None),
        ("dsa", lambda: dsa.generate_private_key(2048), hashes.SHA256()),
        ("p384", lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
    ],
)
def test_unusual_responder_keys_verify_or_refuse(pki, leaf, kind, key, alg):
    """Delegated responders with Ed25519, Ed448, DSA or P-384 keys: good, and forged refused."""
    private = key()
    responder = _delegate_with(pki, private, f"{kind} responder")
    good = _signed_by(pki, leaf, private, [responder], alg=alg)
    assert check(pki, leaf, good).status is Status.GOOD
    sig = ocsp.load_der_ocsp_response(good).signature
    at = good.rindex(sig)
    forged = good[: at + 1] + bytes([good[at + 1] ^ 1]) + good[at + 2 :]
    rejects(pki, leaf, forged, "does not verify")


def _delegate_with(pki: PKI, private, cn: str):
    """A delegated responder certificate (id-kp-OCSPSigning) for any kind of key."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    start = now() - dt.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(pki.intermediate.cert.subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .sign(pki.intermediate.key, hashes.SHA256())
    )


# Algorithm identifiers a hostile responder may name: known, deprecated, unknown.
_OIDS = st.sampled_from([
    "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.4", "1.2.840.113549.1.1.10",
    "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.4", "1.2.840.10040.4.3", "1.3.101.112",
    "1.3.101.113", "1.3.14.3.2.26", "1.2.840.113549.2.5", "2.16.840.1.101.3.4.2.1",
    "1.2.3.4.5", "2.999.1", der_edit.NONCE, der_edit.CRL_REASON, der_edit.SCT_LIST,
    "2.5.29.24", "1.3.6.1.5.5.7.48.1.3", "1.3.6.1.5.5.7.48.1.6",
]) | st.lists(st.integers(0, 2**32), min_size=1, max_size=6).map(
    lambda arcs: "1.3." + ".".join(map(str, arcs))
)  # fmt: skip


def _fuzz_change(pki: PKI, data) -> object:
    """One structure-aware change to a BasicOCSPResponse, drawn by Hypothesis."""
    what = data.draw(st.sampled_from(
        ["sigalg", "certid-hash", "response-ext", "single-ext", "time", "status", "certs"]
    ))  # fmt: skip
    dotted = data.draw(_OIDS)
    params = data.draw(st.booleans())
    value = data.draw(st.binary(max_size=40))
    critical = data.draw(st.booleans())
    time = data.draw(
        st.binary(max_size=20) | st.text("0123456789.Z+-", max_size=20).map(str.encode)
    )
    tag = data.draw(st.integers(0, 255))

    def change(node: der_edit.Node) -> None:
        one = der_edit.single(node)
        if what == "sigalg":
            node.children[1] = der_edit.algorithm(dotted, null_params=params)
        elif what == "certid-hash":
            one[0].children[0] = der_edit.algorithm(dotted, null_params=params)
        elif what == "response-ext":
            der_edit._add_extension(node[0], der_edit.extension(dotted, value, critical=critical))
        elif what == "single-ext":
            der_edit._add_extension(one, der_edit.extension(dotted, value, critical=critical))
        elif what == "time":
            one.children[2] = der_edit.Node(der_edit.GENERALIZED_TIME, time)
        elif what == "status":
            one.children[1] = der_edit.Node(tag & ~der_edit.CONSTRUCTED, value)
        else:  # the responder's certificate with another key algorithm, signed again

            def key_algorithm(tbs: der_edit.Node) -> None:
                der_edit._spki(tbs)[0].children[0] = der_edit.oid(dotted)

            cert = der_edit.recertify(pki, pki.responder.cert, key_algorithm)
            node.children[3] = der_edit.Node(0xA0, children=[der_edit.Node(
                der_edit.SEQUENCE, children=[der_edit.parse(cert)])])  # fmt: skip

    return change


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_structure_aware(pki, data):
    """
    Algorithm OIDs, extensions, times, statuses and certificates changed, then signed again.

    Signed again by the real delegated responder (or left with the old
    signature), so a change reaches every check after the signature, as from
    a responder whose key the CA authorised: a verdict or InvalidResponse
    with one line, never another exception.
    """
    leaf = _FUZZ_LEAF.setdefault("leaf", pki.leaf("fuzz.example.test"))
    node = der_edit.basic(_FUZZ_LEAF.setdefault("der", pki.response(leaf.cert)))  # type: ignore[arg-type]
    _fuzz_change(pki, data)(node)  # type: ignore[operator]
    sign = data.draw(st.booleans())
    der = der_edit.resign(node, pki.responder.key) if sign else der_edit.put_basic(node)
    reason = ""
    try:
        validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=now())  # type: ignore[attr-defined]
    except InvalidResponse as exc:
        reason = exc.reason
    assert "\n" not in reason


def test_extreme_clock_does_not_crash(pki, leaf):
    """`check --at 9999-12-31` judges the response expired instead of overflowing."""
    der = pki.response(leaf.cert, signer="issuer")
    end = dt.datetime.max.replace(tzinfo=dt.UTC)
    with pytest.raises(InvalidResponse, match="expired"):
        validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=end)


def test_responder_rollover_picks_the_valid_certificate(pki, leaf):
    """
    Two responder certificates for one key (old expired, renewed valid) in one response.

    The renewed one authorises the signature, whatever the order; alone, the
    expired one is refused.
    """
    old_start = now() - dt.timedelta(days=30)
    expired = issue(
        pki.intermediate, "Rollover Responder", ocsp_signing=True, ocsp_url=None,
        not_before=old_start, not_after=old_start + dt.timedelta(days=1),
    )  # fmt: skip
    renewed = _reissue(pki, expired.cert, expired.key)
    good = _signed_by(pki, leaf, expired.key, [expired.cert, renewed])
    verdict = check(pki, leaf, good)
    assert verdict.status is Status.GOOD
    assert "Rollover Responder" in verdict.signer
    with pytest.raises(InvalidResponse, match="not valid at"):
        check(pki, leaf, _signed_by(pki, leaf, expired.key, [expired.cert]))


def _signed_by(pki: PKI, leaf: Issued, key, certs, alg=None) -> bytes:
    """A good response signed with ``key``, naming ``certs[0]`` and carrying ``certs``."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    this = now() - dt.timedelta(minutes=1)
    return (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf.cert, issuer=pki.intermediate.cert, algorithm=hashes.SHA1(),  # noqa: S303 - HAProxy matches SHA-1 CertIDs
            cert_status=ocsp.OCSPCertStatus.GOOD, this_update=this,
            next_update=this + dt.timedelta(days=7), revocation_time=None, revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, certs[0])
        .certificates(certs)
        .sign(key, alg or (None if isinstance(key, _EDWARDS) else hashes.SHA256()))
        .public_bytes(serialization.Encoding.DER)
    )  # fmt: skip


def _reissue(pki: PKI, template, key):
    """``template`` renewed: same subject and key, new validity, signed by the intermediate."""
    from cryptography import x509  # noqa: PLC0415

    start = now() - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
    )
    for ext in template.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(pki.intermediate.key, hashes.SHA256())


def test_cert_id_is_haproxys_key(pki, leaf):
    """The CertID taken from the request is HAProxy's 'OCSP Response Key' (docs/haproxy.md)."""
    from hastaple.core.ocsp import request  # noqa: PLC0415

    cid = request.cert_id_of(request.build(leaf.cert, pki.intermediate.cert))
    assert cid == request.cert_id(leaf.cert, pki.intermediate.cert)
    assert cid.hex().startswith("303b300906052b0e03021a05000414")  # SEQUENCE, SHA-1, name hash
    assert cid.hex().endswith(f"02{len(f'{leaf.cert.serial_number:x}') // 2:02x}"
                              f"{leaf.cert.serial_number:x}")  # fmt: skip
