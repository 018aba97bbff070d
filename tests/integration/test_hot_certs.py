"""
``hastaple run --hot-certs`` against real HAProxy 2.6 / 2.8 / 3.0 and ``openssl ocsp``.

Files change in a watched ``crt`` directory while a client shakes hands in a
loop: the daemon fetches each new certificate's staple first, then loads
certificate and staple together. No handshake gets a new certificate
without its staple; HAProxy's pid never changes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from test_daemon import _running

from handshakes import Loop, record

pytestmark = pytest.mark.integration


def _swap(path: Path, data: bytes) -> None:
    """Replace ``path`` at once, as certbot and acme.sh do (write aside, rename)."""
    staging = path.with_name(f".{path.name}.new")
    staging.write_bytes(data)
    staging.replace(path)


async def test_hot_certs_follow_renewal_new_file_and_removal(
    pki, crt_dir, tmp_path, start_haproxy, openssl_responder
):
    keep = pki.leaf("keep.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(keep.cert)
    pki.write(crt_dir, "keep.pem", keep)
    old = pki.leaf("roll.test", ocsp_url=openssl_responder.url)
    roll = pki.write(crt_dir, "roll.pem", old)
    roll.with_name("roll.pem.ocsp").write_bytes(pki.response(old.cert))
    hap = start_haproxy()
    pid = hap.pid
    async with _running(tmp_path, crt_dir, hap.socket, hot_certs=True):
        # Renewal: the daemon's fetch, then one transaction.
        new = pki.leaf("roll.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(new.cert)
        with Loop(hap.port, "roll.test") as loop:
            await loop.count(3)
            start = time.monotonic()
            _swap(roll, pki.bundle(new))
            seen = await loop.until(lambda s: s.serial == new.cert.serial_number, timeout=10)
            await loop.count(5)
        assert seen.stapled
        assert not [s for s in loop.seen if s.serial is not None and not s.stapled]
        record("run --hot-certs renewal", hap, loop, start, seen.at)

        # A new file in the directory: added to HAProxy's crt-list for it.
        added = pki.leaf("fresh.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(added.cert)
        with Loop(hap.port, "fresh.test") as loop:
            await loop.count(2)
            start = time.monotonic()
            _swap(crt_dir / "fresh.pem", pki.bundle(added))
            seen = await loop.until(lambda s: s.serial is not None, timeout=10)
            await loop.count(5)
        assert seen.serial == added.cert.serial_number and seen.stapled
        assert not [s for s in loop.seen if s.serial is not None and not s.stapled]
        record("run --hot-certs new file", hap, loop, start, seen.at)

        # A removed file is no longer served.
        with Loop(hap.port, "fresh.test") as loop:
            (crt_dir / "fresh.pem").unlink()
            (crt_dir / "fresh.pem.ocsp").unlink()
            await loop.until(lambda s: s.serial is None, timeout=10)
        assert f"{crt_dir}/fresh.pem" not in hap.command("show ssl cert")
    assert hap.pid == pid


async def test_hot_certs_must_staple_with_the_ca_down(pki, crt_dir, tmp_path, start_haproxy):
    """The CA is down: a renewed must-staple certificate is not loaded; the old one stays."""
    dead = "http://127.0.0.1:9/"
    old = pki.leaf("strict.test", ocsp_url=dead, must_staple=True)
    path = pki.write(crt_dir, "strict.pem", old)
    path.with_name("strict.pem.ocsp").write_bytes(pki.response(old.cert))
    hap = start_haproxy()
    async with _running(tmp_path, crt_dir, hap.socket, hot_certs=True) as daemon:
        new = pki.leaf("strict.test", ocsp_url=dead, must_staple=True)
        with Loop(hap.port, "strict.test") as loop:
            await loop.count(3)
            _swap(path, pki.bundle(new))
            deadline = time.monotonic() + 10
            while "must-staple" not in str(daemon.records[str(path)].error):
                assert time.monotonic() < deadline, daemon.records[str(path)]
                await asyncio.sleep(0.05)  # waiting for the daemon's attempt
            await loop.count(5)
        assert {s.serial for s in loop.seen} == {old.cert.serial_number}
        assert all(s.stapled for s in loop.seen)


async def test_hot_certs_new_crt_list_line_with_sni_filter(
    pki, crt_dir, tmp_path, start_haproxy, openssl_responder
):
    """A line added to a watched crt-list is served for its SNI filter, stapled at once."""
    first = pki.leaf("one.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(first.cert)
    one = pki.write(crt_dir, "one.pem", first)
    crt_list = tmp_path / "list.txt"
    crt_list.write_text(f"{one} one.test\n")
    hap = start_haproxy(crt_list=crt_list)
    pid = hap.pid
    empty = tmp_path / "none"
    empty.mkdir()
    async with _running(tmp_path, empty, hap.socket, hot_certs=True, crt_lists=(crt_list,)):
        leaf = pki.leaf("two.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(leaf.cert)
        with Loop(hap.port, "other-name.test") as loop:
            await loop.count(2)
            start = time.monotonic()
            two = pki.write(crt_dir, "two.pem", leaf)
            _swap(crt_list, f"{one} one.test\n{two} [alpn h2] other-name.test\n".encode())
            seen = await loop.until(lambda s: s.serial is not None, timeout=10)
            await loop.count(5)
        assert seen.serial == leaf.cert.serial_number and seen.stapled
        assert not [s for s in loop.seen if s.serial is not None and not s.stapled]
        record("run --hot-certs crt-list line", hap, loop, start, seen.at)
    assert hap.pid == pid
