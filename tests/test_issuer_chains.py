"""Reading an issuers-chain-path directory, and the issuer it gives a chainless PEM."""

from __future__ import annotations

import os

from hastaple.engine.issuers import local_issuer
from hastaple.sources import issuerchains, pem


def test_a_chainless_pem_takes_its_issuer_from_the_directory(pki, tmp_path):
    """No .issuer to send: HAProxy finds the issuer itself; a PEM with a chain keeps its own."""
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "inter.pem").write_bytes(pki.intermediate.cert_pem)
    (chains / "sub").mkdir()  # not a regular file: skipped, as HAProxy does
    leaf = pki.leaf()
    bare = pki.write(tmp_path, "bare.pem", leaf, chain=False)
    (tmp_path / "bare.pem.issuer").unlink()

    bundle = pem.parse_file(bare)
    assert local_issuer(bare, bundle) is None
    assert local_issuer(bare, bundle, chains=chains) == (pki.intermediate.cert, None)


def test_the_directory_is_read_again_when_it_changes(pki, tmp_path):
    """A file renamed into place is seen; an unchanged directory is not read again."""
    chains = tmp_path / "chains"
    chains.mkdir()
    leaf = pki.leaf()
    first = issuerchains.load(chains)
    assert first.chain_for(leaf.cert) == ()
    assert issuerchains.load(chains) is first
    seen = chains.stat().st_mtime_ns
    (tmp_path / "inter.tmp").write_bytes(pki.intermediate.cert_pem)
    (tmp_path / "inter.tmp").rename(chains / "inter.pem")
    os.utime(chains, ns=(seen, seen + 10**9))  # a coarse clock may not have moved
    assert issuerchains.load(chains).chain_for(leaf.cert) == [pki.intermediate.cert]


def test_unreadable_files_hold_no_chain(pki, tmp_path, caplog):
    """Garbage and a missing directory are no chain and a warning, never an error."""
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "garbage.pem").write_bytes(b"not a certificate")
    assert issuerchains.load(chains).chain_for(pki.leaf().cert) == ()
    assert "garbage.pem: no PEM certificate; skipped" in caplog.text
    assert issuerchains.load(tmp_path / "gone").chain_for(pki.leaf().cert) == ()
