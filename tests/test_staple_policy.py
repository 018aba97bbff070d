"""
What fetch keeps and what it refuses.

Nothing good is replaced by something worse, nothing revoked is passed off as
good, and AIA issuers never break HAProxy.
"""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives import serialization

from pki import now
from responders import Serve
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
    A chainless PEM whose issuer only AIA knows: cached, validated, not stored.

    The issuer is downloaded and cached in the state directory (0700) and the
    response validated, but no .ocsp is written: without <crt>.issuer, HAProxy
    would refuse to start with it (HAPROXY.md §3a).
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
    assert rows[0]["status"] == "good"  # the answer itself was fine
    assert "would stop HAProxy from starting" in err
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
    assert {r["status"] for r in rows} == {"good"}
    assert len(fault_responder.seen_under("aia")) == 1
    assert not state.exists()
    assert sorted(p.name for p in certs.iterdir()) == ["aia.pem", "other.pem"]
