"""
What fetch keeps and what it refuses.

Nothing good is replaced by something worse, nothing revoked is passed off as
good, and AIA issuers never break HAProxy.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hastaple.engine import issuers
from hastaple.engine.fetch import Fetcher
from hastaple.sources import pem
from hastaple.testing.pki import PKI, Issued, make_ca, now
from hastaple.testing.responders import Serve
from test_fetch_command import fetch_json


async def test_revoked_is_remembered(pki, openssl_responder, tmp_path):
    """
    After the CA says "revoked", the older good staple is no longer "fresh".

    Every run asks the CA again and fails (exit 1) until it says "good" again;
    the file is kept (nothing is deleted), but never reported as in order.
    """
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    cert = pki.write(tmp_path, "site.pem", leaf)
    state = tmp_path / "state"
    assert (await fetch_json(cert, "--state-dir", state))[0] == 0
    good = (tmp_path / "site.pem.ocsp").read_bytes()

    index = openssl_responder.directory / "index.txt"
    index.write_text(
        index.read_text().replace("V\t", "R\t", 1).replace("\t\t", "\t261129000000Z\t", 1)
    )
    code, rows, _ = await fetch_json(cert, "--state-dir", state, "--force")
    assert (code, rows[0]["status"]) == (1, "revoked")
    requests = openssl_responder.requests
    code, rows, err = await fetch_json(cert, "--state-dir", state)  # no --force: still asks
    assert (code, rows[0]["status"], rows[0]["action"]) == (1, "revoked", "failed")
    assert openssl_responder.requests == requests + 1
    assert "REVOKED" in err
    assert (tmp_path / "site.pem.ocsp").read_bytes() == good

    index.write_text("")
    openssl_responder.add(leaf.cert)
    code, rows, _ = await fetch_json(cert, "--state-dir", state)
    assert (code, rows[0]["status"], rows[0]["action"]) == (0, "good", "fetched")


async def test_shorter_lived_answer_does_not_replace(pki, fault_responder, tmp_path):
    """A newer response that expires sooner than the staple on disk is not taken (--force)."""
    leaf = pki.leaf(ocsp_url=fault_responder.url_for("short"))
    t = now()
    short = pki.response(leaf.cert, this_update=t, next_update=t + dt.timedelta(hours=2))
    fault_responder.on("short", Serve(short))
    cert = pki.write(tmp_path, "site.pem", leaf)
    long = pki.response(leaf.cert, this_update=t - dt.timedelta(hours=1))  # 7 days
    (tmp_path / "site.pem.ocsp").write_bytes(long)
    code, rows, err = await fetch_json(cert, "--force")
    assert code == 0, err
    assert rows[0]["action"] == "fresh"
    assert len(fault_responder.seen_under("short")) == 1
    assert (tmp_path / "site.pem.ocsp").read_bytes() == long


async def test_aia_issuer_is_cached_but_never_written_next_to_the_certificate(
    pki, fault_responder, openssl_responder, tmp_path
):
    """
    A chainless PEM whose issuer only AIA knows: cached, and no staple asked for.

    The issuer is downloaded and cached in the state directory (0700), but no
    .ocsp may be written: without <crt>.issuer, HAProxy would refuse to start
    with it (docs/haproxy.md). So the CA is not asked for a response at all:
    it used to be, on every run, for an answer that was then thrown away.
    """
    der = pki.intermediate.cert.public_bytes(serialization.Encoding.DER)
    aia = fault_responder.on("aia", Serve(der, content_type="application/pkix-cert"))
    leaf = pki.leaf(ocsp_url=openssl_responder.url, ca_issuers_url=aia)
    openssl_responder.add(leaf.cert)
    certs = tmp_path / "certs"
    certs.mkdir()
    cert = certs / "site.pem"
    cert.write_bytes(pki.bundle(leaf, chain=False))
    state = tmp_path / "state"
    code, rows, err = await fetch_json(cert, "--state-dir", state)
    assert code == 1
    assert (rows[0]["status"], rows[0]["action"]) == ("error", "failed")
    assert "would stop HAProxy from starting" in err
    assert "create the .issuer file" in rows[0]["error"]
    # Refused before asking the CA: no answer could be stored (issue 10, item 9).
    assert openssl_responder.requests == 0
    assert sorted(p.name for p in certs.iterdir()) == ["site.pem"]
    cached = list((state / "issuers").iterdir())
    assert len(cached) == 1
    assert cached[0].read_bytes() == der
    assert (state.stat().st_mode & 0o777) == 0o700
    # The second run uses the cache: the AIA URL is not asked again.
    await fetch_json(cert, "--state-dir", state)
    assert len(fault_responder.seen_under("aia")) == 1


async def test_aia_garbage_is_a_fetch_failure(pki, fault_responder, tmp_path):
    """An AIA URL that answers with no certificate fails the certificate with exit 1, not 2."""
    aia = fault_responder.on("aia", Serve(b"<html>moved</html>", content_type="text/html"))
    leaf = pki.leaf(ca_issuers_url=aia)
    cert = tmp_path / "site.pem"
    cert.write_bytes(pki.bundle(leaf, chain=False))
    code, rows, err = await fetch_json(cert, "--state-dir", tmp_path / "state")
    assert code == 1
    assert rows[0]["action"] == "failed"
    assert f"gave no certificate that issued {cert}" in err


async def test_dry_run_writes_nothing_anywhere(pki, fault_responder, openssl_responder, tmp_path):
    """--dry-run fetches and validates, but writes no staple, no index and no issuer cache."""
    der = pki.intermediate.cert.public_bytes(serialization.Encoding.DER)
    aia = fault_responder.on("aia", Serve(der))
    leaf = pki.leaf(ocsp_url=openssl_responder.url, ca_issuers_url=aia)
    openssl_responder.add(leaf.cert)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "aia.pem").write_bytes(pki.bundle(leaf, chain=False))
    other = pki.leaf("other.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(other.cert)
    pki.write(certs, "other.pem", other)
    state = tmp_path / "state"
    code, rows, err = await fetch_json(certs, "--state-dir", state, "--dry-run")
    assert code == 1, err  # aia.pem: no .ocsp may be written next to it, dry run or not
    assert {Path(r["cert"]).name: r["status"] for r in rows} == {
        "aia.pem": "error",
        "other.pem": "good",
    }
    assert len(fault_responder.seen_under("aia")) == 1
    assert not state.exists()
    assert sorted(p.name for p in certs.iterdir()) == ["aia.pem", "other.pem"]


# -- the AIA issuer cache: it expires, and a wrong issuer is asked again (issue 10, item 9)


def _der(issued: Issued | x509.Certificate) -> bytes:
    cert = issued.cert if isinstance(issued, Issued) else issued
    return cert.public_bytes(serialization.Encoding.DER)


async def _resolve(pki: PKI, leaf: Issued, state: Path, tmp_path: Path) -> x509.Certificate:
    """``resolve_issuer`` for a chainless PEM of ``leaf``, as fetch calls it."""
    cert = tmp_path / "site.pem"
    cert.write_bytes(pki.bundle(leaf, chain=False))
    async with Fetcher() as fetcher:
        issuer, issuer_pem = await issuers.resolve_issuer(
            cert, pem.parse_file(cert), fetcher, state
        )
    assert issuer_pem is not None  # not in the chain: HAProxy needs it sent
    return issuer


def _cache_file(state: Path) -> Path:
    (cached,) = (state / "issuers").iterdir()
    return cached


async def test_a_fresh_cached_issuer_is_used_without_asking(pki, fault_responder, tmp_path):
    """Within its max age and validity, and having signed the leaf, the cache answers."""
    aia = fault_responder.on("aia", Serve(_der(pki.intermediate)))
    leaf = pki.leaf(ca_issuers_url=aia)
    state = tmp_path / "state"
    assert await _resolve(pki, leaf, state, tmp_path) == pki.intermediate.cert
    assert await _resolve(pki, leaf, state, tmp_path) == pki.intermediate.cert
    assert len(fault_responder.seen_under("aia")) == 1


async def test_a_cached_issuer_past_its_max_age_is_asked_again(pki, fault_responder, tmp_path):
    """A download older than AIA_MAX_AGE is refreshed: it used to be kept for ever."""
    aia = fault_responder.on("aia", Serve(_der(pki.intermediate)))
    leaf = pki.leaf(ca_issuers_url=aia)
    state = tmp_path / "state"
    await _resolve(pki, leaf, state, tmp_path)
    old = (now() - dt.timedelta(days=7, hours=1)).timestamp()  # AIA_MAX_AGE and more
    os.utime(_cache_file(state), (old, old))
    assert await _resolve(pki, leaf, state, tmp_path) == pki.intermediate.cert
    assert len(fault_responder.seen_under("aia")) == 2
    assert now().timestamp() - _cache_file(state).stat().st_mtime < 60  # cached anew


async def test_an_expired_cached_issuer_is_asked_again(pki, fault_responder, tmp_path):
    """A cached issuer past its notAfter (same key, so it still "signed" the leaf) is replaced."""
    aia = fault_responder.on("aia", Serve(_der(pki.intermediate)))
    leaf = pki.leaf(ca_issuers_url=aia)
    state = tmp_path / "state"
    await _resolve(pki, leaf, state, tmp_path)
    expired = _reissued(pki, pki.intermediate, not_after=now() - dt.timedelta(days=1))
    _cache_file(state).write_bytes(_der(expired))  # fresh mtime: only its validity is wrong
    assert await _resolve(pki, leaf, state, tmp_path) == pki.intermediate.cert
    assert len(fault_responder.seen_under("aia")) == 2


async def test_a_reissued_intermediate_is_noticed(pki, fault_responder, tmp_path):
    """
    The CA re-issued its intermediate with a new key: the cached one signed no new leaf.

    The cache used to answer for ever, and every new leaf failed with "gave no
    certificate that issued". Now a cached issuer that did not sign the leaf
    sends us back to the URL.
    """
    aia = fault_responder.on("aia", Serve(_der(pki.intermediate)))
    state = tmp_path / "state"
    await _resolve(pki, pki.leaf(ca_issuers_url=aia), state, tmp_path)
    renewed = make_ca("hastaple Test Intermediate CA", pki.root)  # same name, new key
    fault_responder.on("aia", Serve(_der(renewed)))
    new_pki = PKI(pki.root, renewed, pki.responder, pki.other_ca)
    leaf = new_pki.leaf(ca_issuers_url=aia)
    assert await _resolve(new_pki, leaf, state, tmp_path) == renewed.cert
    assert len(fault_responder.seen_under("aia")) == 2
    assert _cache_file(state).read_bytes() == _der(renewed)


async def test_a_stale_issuer_is_used_when_the_url_fails(pki, fault_responder, tmp_path, caplog):
    """Past its max age but still valid: a failing URL does not fail the certificate."""
    aia = fault_responder.on("aia", Serve(_der(pki.intermediate)))
    leaf = pki.leaf(ca_issuers_url=aia)
    state = tmp_path / "state"
    await _resolve(pki, leaf, state, tmp_path)
    old = (now() - dt.timedelta(days=7, hours=1)).timestamp()  # AIA_MAX_AGE and more
    os.utime(_cache_file(state), (old, old))
    fault_responder.on("aia", Serve(b"down", status=503))
    with caplog.at_level(logging.WARNING, logger="hastaple.engine.issuers"):
        assert await _resolve(pki, leaf, state, tmp_path) == pki.intermediate.cert
    assert "using the issuer cached from" in caplog.text
    assert len(fault_responder.seen_under("aia")) == 2


def _reissued(pki: PKI, ca: Issued, *, not_after: dt.datetime) -> x509.Certificate:
    """``ca`` again (same name and key) with another validity, signed by the root."""
    return (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(pki.root.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pki.root.key, hashes.SHA256())
    )
