"""
Certificates HAProxy's own updater owns (`[ocsp-update on]`, 2.8 and 3.0) are left alone.

A commit over such a certificate silently removes it from the updater
(docs/haproxy.md), so `fetch` must not touch it: no request, no file, no push.
"""

from __future__ import annotations

import pytest

from hastaple.testing import haproxy as haproxy_proc
from test_fetch_command import fetch_json

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", ["2.8", "3.0"])  # 2.6 has no updater
async def test_managed_certificate_stays_with_haproxy_updater(
    pki, openssl_responder, crt_dir, tmp_path, version
):
    """`fetch --haproxy-config` skips the [ocsp-update on] line and staples the other."""
    binary = haproxy_proc.require(version)
    managed = pki.leaf("managed.example.test", ocsp_url=openssl_responder.url)
    ours = pki.leaf("ours.example.test", ocsp_url=openssl_responder.url)
    for leaf in (managed, ours):
        openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "managed.pem", managed)
    pki.write(crt_dir, "ours.pem", ours)
    crt_list = tmp_path / "list.txt"
    crt_list.write_text(
        f"{crt_dir}/managed.pem [ocsp-update on] managed.example.test\n"
        f"{crt_dir}/ours.pem ours.example.test\n"
    )
    workdir = tmp_path / "w"
    workdir.mkdir()
    hap = haproxy_proc.start(binary, workdir, crt_dir, crt_list=crt_list)
    try:
        assert f"{crt_dir}/managed.pem" in hap.command("show ssl ocsp-updates")
        code, rows, err = await fetch_json("--haproxy-config", workdir / "haproxy.cfg")
        assert code == 0, err
        by_name = {r["cert"].rsplit("/", 1)[1]: r for r in rows}
        assert (by_name["managed.pem"]["status"], by_name["managed.pem"]["action"]) == (
            "managed",
            "skipped",
        )
        assert by_name["ours.pem"]["action"] == "deployed"
        assert not (crt_dir / "managed.pem.ocsp").exists()
        # Still owned by HAProxy's updater: one look, never a polling loop
        # (docs/haproxy.md, "HAProxy's own updater").
        assert f"{crt_dir}/managed.pem" in hap.command("show ssl ocsp-updates")
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, "ours.example.test")
    finally:
        hap.stop()
