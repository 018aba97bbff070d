"""
``hastaple deploy`` (the ACME hook) against real HAProxy and a real ``openssl ocsp`` responder.

A client shakes hands in a loop during each deploy: the new certificate is
never served without its staple, and HAProxy's pid never changes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from handshakes import Loop, record
from test_fetch_command import hastaple

pytestmark = pytest.mark.integration


async def deploy_json(*args: str | Path) -> tuple[int, list[dict[str, object]], str]:
    code, out, err = await hastaple("deploy", "--json", "--timeout", "2", *args)
    assert "Traceback" not in err, err
    return code, json.loads(out) if out.strip() else [], err


async def test_deploy_renewal(pki, openssl_responder, crt_dir, start_haproxy, tmp_path):
    old = pki.leaf("hook.test", ocsp_url=openssl_responder.url)
    path = pki.write(crt_dir, "hook.pem", old)
    path.with_name("hook.pem.ocsp").write_bytes(pki.response(old.cert))
    hap = start_haproxy()
    pid = hap.pid
    new = pki.leaf("hook.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(new.cert)
    with Loop(hap.port, "hook.test") as loop:
        loop.wait_count(3)
        start = time.monotonic()
        pki.write(crt_dir, "hook.pem", new)  # what certbot does before its deploy hook
        code, rows, err = await deploy_json(
            path, "--haproxy", hap.socket, "--state-dir", tmp_path / "state"
        )
        seen = loop.wait_for(lambda s: s.serial == new.cert.serial_number)
        loop.wait_count(3)
    assert code == 0, err
    [row] = rows
    assert (row["action"], row["status"], row["error"]) == ("deployed", "good", None)
    assert row["haproxy"] == {str(hap.socket): "renewed"}
    assert seen.stapled
    assert not [s for s in loop.seen if s.serial == new.cert.serial_number and not s.stapled]
    assert hap.pid == pid
    record("deploy renewal", hap, loop, start, seen.at)


async def test_deploy_new_file_found_through_the_config(
    pki, openssl_responder, crt_dir, start_haproxy, tmp_path
):
    first = pki.leaf("first.test", ocsp_url=openssl_responder.url)
    pki.write(crt_dir, "first.pem", first)
    hap = start_haproxy()
    pid = hap.pid
    leaf = pki.leaf("second.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    with Loop(hap.port, "second.test") as loop:
        start = time.monotonic()
        path = pki.write(crt_dir, "second.pem", leaf)
        code, rows, err = await deploy_json(
            path,
            "--haproxy-config",
            hap.workdir / "haproxy.cfg",
            "--state-dir",
            tmp_path / "state",
        )
        seen = loop.wait_for(lambda s: s.serial is not None)
    assert code == 0, err
    [row] = rows
    assert row["haproxy"] == {str(hap.socket): "added"}, row
    assert seen.serial == leaf.cert.serial_number and seen.stapled
    assert hap.pid == pid
    record("deploy new file", hap, loop, start, seen.at)


@pytest.mark.parametrize("setting", ["del-ext", "issuers-chain-path"])
async def test_deploy_renewal_reads_the_files_the_configuration_names(  # noqa: PLR0917 - fixtures
    pki, openssl_responder, crt_dir, start_haproxy, tmp_path, setting
):
    """
    A renewal is loaded with its staple where del-ext or issuers-chain-path put the files.

    With ssl-load-extra-del-ext the staple of site.crt is site.ocsp; with
    issuers-chain-path a chainless PEM's issuer is in that directory, and no
    .issuer exists.
    """
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "ca.pem").write_bytes(pki.intermediate.cert_pem)
    chainless = setting == "issuers-chain-path"
    name = "site.pem" if chainless else "site.crt"
    old = pki.leaf("site.test", ocsp_url=openssl_responder.url)
    path = pki.write(crt_dir, name, old, chain=not chainless)
    path.with_name(name + ".issuer").unlink(missing_ok=True)
    staple = crt_dir / ("site.pem.ocsp" if chainless else "site.ocsp")
    staple.write_bytes(pki.response(old.cert))
    extra = f"    issuers-chain-path {chains}" if chainless else "    ssl-load-extra-del-ext"
    hap = start_haproxy(global_extra=extra)
    new = pki.leaf("site.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(new.cert)
    with Loop(hap.port, "site.test") as loop:
        loop.wait_count(3)
        pki.write(crt_dir, name, new, chain=not chainless)
        path.with_name(name + ".issuer").unlink(missing_ok=True)
        code, rows, err = await deploy_json(
            path, "--haproxy-config", hap.workdir / "haproxy.cfg", "--state-dir", tmp_path / "s"
        )
        seen = loop.wait_for(lambda s: s.serial == new.cert.serial_number)
        loop.wait_count(3)
    assert code == 0, (err, rows)
    [row] = rows
    assert row["haproxy"] == {str(hap.socket): "renewed"}, row
    assert seen.stapled
    assert not [s for s in loop.seen if s.serial == new.cert.serial_number and not s.stapled]
    assert sorted(p.name for p in crt_dir.iterdir()) == sorted([name, staple.name])


@pytest.mark.parametrize("must_staple", [False, True])
async def test_deploy_with_the_ca_down(pki, crt_dir, start_haproxy, tmp_path, must_staple):
    """No staple: loaded unstapled (exit 1), unless must-staple: then the old one stays."""
    dead = "http://127.0.0.1:9/"
    old = pki.leaf("down.test", ocsp_url=dead, must_staple=must_staple)
    path = pki.write(crt_dir, "down.pem", old)
    path.with_name("down.pem.ocsp").write_bytes(pki.response(old.cert))
    hap = start_haproxy()
    new = pki.leaf("down.test", ocsp_url=dead, must_staple=must_staple)
    pki.write(crt_dir, "down.pem", new)
    with Loop(hap.port, "down.test") as loop:
        code, rows, err = await deploy_json(
            path, "--haproxy", hap.socket, "--state-dir", tmp_path / "state"
        )
        loop.wait_count(3)
    assert code == 1, err
    [row] = rows
    assert row["action"] == "failed" and row["must_staple"] is must_staple
    assert str(hap.socket) in str(row["error"])
    served = {s.serial for s in loop.seen[-3:]}
    if must_staple:
        assert "must-staple" in str(row["error"])
        assert served == {old.cert.serial_number}
        assert all(s.stapled for s in loop.seen)
    else:
        assert served == {new.cert.serial_number}


async def test_deploy_usage_errors(tmp_path):
    code, _, err = await deploy_json()
    assert code == 2 and "give the certificate files" in err
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    code, _, err = await deploy_json(pem)
    assert code == 2 and "--haproxy" in err
    code, _, err = await deploy_json(pem, "--haproxy", tmp_path / "nope.sock")
    assert code == 2 and "no such HAProxy socket" in err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--fleet", "http://127.0.0.1:6379/0"], "the scheme must be redis://"),
        (["--fleet", "unix://relative.sock"], "redis"),
        (["--fleet", "redis://127.0.0.1:6379/0", "--fleet-prefix", "a b"], "--fleet-prefix"),
        (["--fleet-lease", "0"], "--fleet-lease"),
        (["--responder-connections", "0"], "--responder-connections"),
        (["--wait", "-1"], "--wait"),
    ],
)
async def test_deploy_fleet_and_responder_usage_errors(tmp_path, flags, said):
    """The options deploy shares with fetch are checked as fetch checks them: exit 2."""
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    code, rows, err = await deploy_json(pem, "--haproxy", tmp_path / "nope.sock", *flags)
    assert code == 2, err
    assert said in err
    assert rows == []
