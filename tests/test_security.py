"""
Least privilege and safe files (docs/SECURITY.md): what hastaple writes, where, how.

Symlinks in the certificate directory, file modes under a strict umask,
ownership like the certificate, the state directory, responder URL schemes,
no key material in logs, and the validator's fuzz contract at extreme clocks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_haproxy import NOBODY, NOGROUP, as_nobody
from hastaple.core.ocsp.validate import validate
from hastaple.errors import InvalidResponse, StoreError
from hastaple.stores import store
from test_fetch_command import fetch_json, hastaple


def test_symlinked_staple_is_replaced_not_followed(tmp_path):
    """A <crt>.ocsp symlink pointing out of the directory is replaced; its target untouched."""
    crt_dir, outside = tmp_path / "crt", tmp_path / "outside"
    crt_dir.mkdir()
    outside.mkdir()
    victim = outside / "passwd"
    victim.write_bytes(b"root:x:0:0\n")
    (crt_dir / "site.pem.ocsp").symlink_to(victim)
    store.write_atomic(crt_dir / "site.pem.ocsp", b"\x30\x03\x0a\x01\x00")
    assert victim.read_bytes() == b"root:x:0:0\n"
    assert not (crt_dir / "site.pem.ocsp").is_symlink()
    assert (crt_dir / "site.pem.ocsp").read_bytes() == b"\x30\x03\x0a\x01\x00"


def test_mode_is_0644_under_strict_umask(tmp_path):
    """Staples are 0644 even under umask 077: HAProxy (another user) must read them."""
    old = os.umask(0o077)
    try:
        store.write_atomic(tmp_path / "site.pem.ocsp", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "site.pem.ocsp").stat().st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_copied_from_certificate(tmp_path):
    """Run as root, the staple gets the certificate's owner and group."""
    cert = tmp_path / "site.pem"
    cert.write_text("cert")
    os.chown(cert, NOBODY, NOGROUP)
    store.write_atomic(tmp_path / "site.pem.ocsp", b"x", owner_of=cert)
    st_ = (tmp_path / "site.pem.ocsp").stat()
    assert (st_.st_uid, st_.st_gid) == (NOBODY, NOGROUP)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_unprivileged_writer():
    """As nobody: writes into its own directory (0644, its owner); a root dir is a StoreError."""
    base = Path(tempfile.mkdtemp(prefix="sec"))
    try:
        base.chmod(0o755)
        mine, roots = base / "mine", base / "roots"
        mine.mkdir()
        roots.mkdir(mode=0o755)
        os.chown(mine, NOBODY, NOGROUP)

        def attempt() -> str:
            store.write_atomic(mine / "a.pem.ocsp", b"x")
            try:
                store.write_atomic(roots / "a.pem.ocsp", b"x")
            except StoreError as exc:
                return f"StoreError: {exc.problem}"
            return "wrote into root's directory"

        assert as_nobody(attempt) == "StoreError: cannot create a file in " + str(roots) + (
            ": permission denied"
        )
        st_ = (mine / "a.pem.ocsp").stat()
        assert (st_.st_uid, stat.S_IMODE(st_.st_mode)) == (NOBODY, 0o644)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/ocsp", "gopher://127.0.0.1:70/"]
)
async def test_only_http_responder_urls(pki, tmp_path, url):
    """A certificate whose OCSP URL is not http(s) fails with the scheme named; nothing read."""
    cert = pki.write(tmp_path, "site.pem", pki.leaf(ocsp_url=url))
    code, rows, _ = await fetch_json(cert)
    assert code == 1
    assert "unsupported URL scheme" in str(rows[0]["error"])
    assert not (tmp_path / "site.pem.ocsp").exists()


async def test_no_key_material_in_logs(pki, openssl_responder, tmp_path):
    """At -vv, neither the private key nor any PEM block appears on stderr or stdout."""
    leaf = pki.leaf(ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    cert = pki.write(tmp_path, "site.pem", leaf)
    code, out, err = await hastaple("-vv", "fetch", "--json", cert, "--state-dir", tmp_path / "s")
    assert code == 0, err
    key_body = b"".join(leaf.key_pem.splitlines()[1:-1]).decode()
    for text in (out, err):
        assert "PRIVATE KEY" not in text
        assert "-----BEGIN" not in text
        assert key_body[:40] not in text


async def test_state_dir_is_private(pki, fault_responder, tmp_path):
    """The state directory fetch creates (AIA issuer cache) is 0700, as is its cache."""
    leaf = pki.leaf(
        ocsp_url=fault_responder.url_for("ocsp"), ca_issuers_url=fault_responder.url_for("aia")
    )
    fault_responder.on("aia", _der_cert(pki))
    cert = tmp_path / "site.pem"
    cert.write_bytes(pki.bundle(leaf, chain=False))
    state = tmp_path / "state"
    await fetch_json(cert, "--state-dir", state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert len(list((state / "issuers").glob("*.der"))) == 1  # the cache was written
    for sub in state.rglob("*"):
        if sub.is_dir():
            assert stat.S_IMODE(sub.stat().st_mode) == 0o700, sub


def _der_cert(pki):
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from hastaple.testing.responders import Serve  # noqa: PLC0415

    der = pki.intermediate.cert.public_bytes(serialization.Encoding.DER)
    return Serve(der, content_type="application/pkix-cert")


@settings(max_examples=200, deadline=None)
@given(
    when=st.datetimes(
        min_value=dt.datetime(1, 1, 2),  # noqa: DTZ001 - made aware below
        max_value=dt.datetime(9999, 12, 30),  # noqa: DTZ001
    )
)
def test_fuzz_validate_at_any_time(pki, when):
    """Judged at any time (`check --at`), a real response is a verdict or InvalidResponse."""
    leaf = _FUZZ.setdefault("leaf", pki.leaf("fuzz.example.test"))
    der = _FUZZ.setdefault("der", pki.response(leaf.cert))
    with contextlib.suppress(InvalidResponse):
        validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=when.replace(tzinfo=dt.UTC))


_FUZZ: dict[str, object] = {}
