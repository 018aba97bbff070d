"""
haproxy.cfg settings that change which files HAProxy reads, against real HAProxy 2.6 and 2.8.

Each test writes the staple with `hastaple fetch --haproxy-config`, then restarts
HAProxy and asks a real `openssl s_client -status` what it staples: a file
HAProxy does not read is a staple lost at the next restart.
"""

from __future__ import annotations

import pytest

import haproxy_proc
from test_fetch_command import fetch_json

pytestmark = pytest.mark.integration

DEL_EXT = "    ssl-load-extra-del-ext"


async def test_del_ext_staple_is_the_file_haproxy_reads(
    pki, openssl_responder, crt_dir, start_haproxy
):
    """
    With ssl-load-extra-del-ext, site.crt's staple is site.ocsp and its issuer site.issuer.

    Written as site.crt.ocsp it would be ignored at the next start; a chainless
    bare.crt finds its issuer in bare.issuer, as HAProxy does.
    """
    site = pki.leaf("site.example.test", ocsp_url=openssl_responder.url)
    bare = pki.leaf("bare.example.test", ocsp_url=openssl_responder.url)
    for leaf in (site, bare):
        openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "site.crt", site)
    pki.write(crt_dir, "bare.crt", bare, chain=False)
    (crt_dir / "bare.crt.issuer").rename(crt_dir / "bare.issuer")
    hap = start_haproxy(global_extra=DEL_EXT)

    code, rows, err = await fetch_json("--haproxy-config", hap.workdir / "haproxy.cfg")
    assert code == 0, err
    assert {r["action"] for r in rows} == {"deployed"}, rows
    assert sorted(p.name for p in crt_dir.iterdir()) == [
        "bare.crt",
        "bare.issuer",
        "bare.ocsp",
        "site.crt",
        "site.ocsp",
    ]
    hap.stop()
    restarted = start_haproxy(global_extra=DEL_EXT)
    for name in ("site.example.test", "bare.example.test"):
        assert "Cert Status: good" in haproxy_proc.staple(restarted.port, name)
