"""
HAProxy 3.0 ``crt-store`` configurations, end to end: fetch, run, verify, managed.

HAProxy names such certificates ``@store/alias`` (or ``@store/<crt>``) and, for a
``load`` line, reads only the staple file named by its ``ocsp`` keyword, never
``<crt>.ocsp``. So hastaple writes that file when it is named; otherwise its
staple lasts until HAProxy restarts, and hastaple says so and pushes it again.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_daemon import _running, _stapled

from hastaple.app.cli import cli
from hastaple.testing import haproxy as haproxy_proc
from test_fetch_command import fetch_json, valid_staple

pytestmark = pytest.mark.integration

NAMES = ("named", "plain", "anon", "listed")


def _world(pki, responder, crt_dir: Path, tmp_path: Path) -> tuple[str, str, dict]:
    """Four certificates, four ways a 3.0 configuration can reach a crt-store."""
    leaves = {}
    for name in NAMES:
        leaves[name] = pki.leaf(f"{name}.test", ocsp_url=responder.url)
        responder.add(leaves[name].cert)
        pki.write(crt_dir, f"{name}.pem", leaves[name])
    # The files named by 'ocsp' must exist before HAProxy starts; empty is accepted
    # (docs/haproxy.md, "HAProxy 3.0: crt-store").
    for name in ("named", "anon", "listed"):
        (crt_dir / f"{name}.ocsp").write_bytes(b"")
    crt_list = tmp_path / "list.txt"
    crt_list.write_text("@web/listed listed.test\n")
    sections = (
        "crt-store web\n"
        f"    crt-base {crt_dir}\n"
        "    load crt named.pem alias named ocsp named.ocsp\n"
        "    load crt plain.pem\n"
        "    load crt listed.pem alias listed ocsp listed.ocsp\n"
        "crt-store\n"
        f"    load crt {crt_dir}/anon.pem alias anon ocsp {crt_dir}/anon.ocsp\n"
    )
    certs = f'crt "@web/named" crt @web/plain.pem crt @/anon crt-list {crt_list}'
    return sections, certs, leaves


def _served(hap: haproxy_proc.HAProxy, name: str) -> str:
    return haproxy_proc.staple(hap.port, f"{name}.test")


async def test_fetch_writes_the_load_lines_ocsp_file_and_pushes_by_store_name(
    pki, openssl_responder, crt_dir, tmp_path
):
    """
    `fetch --haproxy-config` on a crt-store configuration staples every certificate at once.

    The staple goes to the 'ocsp' file of the load line where there is one
    (HAProxy reads it at the next start); the load line without one gets
    <crt>.ocsp as hastaple's own copy, a note in --json, and after a restart
    (no staple: HAProxy read nothing) the next fetch pushes it again without
    asking the CA.
    """
    binary = haproxy_proc.require("3.0")
    sections, certs, leaves = _world(pki, openssl_responder, crt_dir, tmp_path)
    workdir = tmp_path / "w"
    workdir.mkdir()
    hap = haproxy_proc.start(binary, workdir, crt_dir, certs=certs, sections=sections)
    try:
        assert "@web/named" in hap.command("show ssl cert")
        code, rows, err = await fetch_json(
            "--haproxy-config", workdir / "haproxy.cfg", "--state-dir", tmp_path / "s"
        )
        assert code == 0, err
        by_name = {Path(str(r["cert"])).stem: r for r in rows}
        assert sorted(by_name) == sorted(NAMES)
        assert {n: r["action"] for n, r in by_name.items()} == dict.fromkeys(NAMES, "deployed")
        for name in ("named", "anon", "listed"):
            assert valid_staple(pki, leaves[name], crt_dir / f"{name}.ocsp")
            assert not (crt_dir / f"{name}.pem.ocsp").exists()
            assert "note" not in by_name[name]
        assert valid_staple(pki, leaves["plain"], crt_dir / "plain.pem.ocsp")
        note = str(by_name["plain"]["note"])
        assert "haproxy.cfg" in note
        assert f"'ocsp {crt_dir}/plain.pem.ocsp'" in note
        for name in NAMES:
            assert "Cert Status: good" in _served(hap, name), name

        hap.stop()
        hap = haproxy_proc.start(binary, workdir, crt_dir, certs=certs, sections=sections)
        for name in ("named", "anon", "listed"):  # read from the load line's file at start
            assert "Cert Status: good" in _served(hap, name), name
        assert "no response sent" in _served(hap, "plain")  # what the note warned about

        asked = openssl_responder.requests
        code, rows, err = await fetch_json(
            "--haproxy-config", workdir / "haproxy.cfg", "--state-dir", tmp_path / "s"
        )
        assert code == 0, err
        assert "Cert Status: good" in _served(hap, "plain")
        assert openssl_responder.requests == asked
    finally:
        hap.stop()


async def test_crt_store_with_missing_ocsp_placeholder_is_written_before_haproxy_starts(
    pki, openssl_responder, crt_dir, tmp_path
):
    """
    A load line naming an 'ocsp' file that does not exist yet (HAProxy would not start).

    fetch writes it, and then HAProxy 3.0 starts and staples from it.
    """
    binary = haproxy_proc.require("3.0")
    leaf = pki.leaf("first.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "first.pem", leaf)
    sections = f"crt-store web\n    load crt {crt_dir}/first.pem alias first ocsp first.der\n"
    workdir = tmp_path / "w"
    workdir.mkdir()
    config = workdir / "haproxy.cfg"
    # The configuration HAProxy will read, written by start() below; first without HAProxy.
    config.write_text(
        "global\n    crt-base " + str(crt_dir) + "\n" + sections
        + 'frontend f\n    bind 127.0.0.1:1 ssl crt "@web/first"\n'
    )  # fmt: skip
    code, rows, err = await fetch_json("--haproxy-config", config, "--state-dir", tmp_path / "s")
    assert code == 0, err
    assert [r["action"] for r in rows] == ["fetched"]
    assert valid_staple(pki, leaf, crt_dir / "first.der")
    hap = haproxy_proc.start(
        binary,
        workdir,
        crt_dir,
        certs='crt "@web/first"',
        sections=sections,
        global_extra=f"    crt-base {crt_dir}",
    )
    try:
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, "first.test")
    finally:
        hap.stop()


@pytest.mark.parametrize("form", ["load-line", "global-mode"])
async def test_certificate_under_haproxys_updater_is_managed(
    pki, openssl_responder, crt_dir, tmp_path, form
):
    """
    'ocsp-update on' on a load line, or 'ocsp-update.mode on' in global: managed, untouched.

    With the global mode, a load line saying 'ocsp-update off' is ours again.
    """
    binary = haproxy_proc.require("3.0")
    for name in ("mine", "theirs"):
        leaf = pki.leaf(f"{name}.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(leaf.cert)
        pki.write(crt_dir, f"{name}.pem", leaf)
    (crt_dir / "mine.ocsp").write_bytes(b"")
    if form == "load-line":
        global_extra, theirs, mine = "", "ocsp-update on", ""
    else:
        global_extra, theirs, mine = "    ocsp-update.mode on", "", "ocsp-update off"
    sections = (
        f"crt-store web\n    crt-base {crt_dir}\n"
        f"    load crt theirs.pem alias theirs {theirs}\n"
        f"    load crt mine.pem alias mine ocsp mine.ocsp {mine}\n"
    )
    workdir = tmp_path / "w"
    workdir.mkdir()
    hap = haproxy_proc.start(
        binary,
        workdir,
        crt_dir,
        certs='crt "@web/theirs" crt "@web/mine"',
        sections=sections,
        global_extra=global_extra,
    )
    try:
        assert "@web/theirs" in hap.command("show ssl ocsp-updates")
        code, rows, err = await fetch_json("--haproxy-config", workdir / "haproxy.cfg")
        assert code == 0, err
        by_name = {Path(str(r["cert"])).stem: r for r in rows}
        assert (by_name["theirs"]["status"], by_name["theirs"]["action"]) == ("managed", "skipped")
        assert by_name["mine"]["action"] == "deployed"
        assert not (crt_dir / "theirs.pem.ocsp").exists()
        assert "@web/theirs" in hap.command("show ssl ocsp-updates")  # one look, no polling
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, "mine.test")
    finally:
        hap.stop()


async def test_daemon_restaples_a_crt_store_certificate_after_haproxy_restarts(
    pki, openssl_responder, crt_dir, tmp_path
):
    """`run` over a crt-store configuration: stapled, and stapled again after a restart."""
    binary = haproxy_proc.require("3.0")
    sections, certs, _ = _world(pki, openssl_responder, crt_dir, tmp_path)
    workdir = tmp_path / "w"
    workdir.mkdir()
    hap = haproxy_proc.start(binary, workdir, crt_dir, certs=certs, sections=sections)
    try:
        async with _running(tmp_path, None, haproxy_configs=(workdir / "haproxy.cfg",)):
            for name in NAMES:
                await _stapled(hap, f"{name}.test", within=5)
            asked = openssl_responder.requests
            hap.stop()
            await asyncio.sleep(0.5)  # the daemon polls HAProxy every 0.2 s
            hap = haproxy_proc.start(binary, workdir, crt_dir, certs=certs, sections=sections)
            for name in NAMES:
                await _stapled(hap, f"{name}.test", within=5)
            assert openssl_responder.requests == asked
    finally:
        hap.stop()
    # `status` says which staple will not survive a reload by itself, and the fix.
    shown = CliRunner().invoke(cli, ["status", "--json", "--state-dir", str(tmp_path / "state")])
    notes = {Path(r["cert"]).stem: r["note"] for r in json.loads(shown.stdout)}
    assert sorted(notes) == sorted(NAMES)
    assert f"'ocsp {crt_dir}/plain.pem.ocsp'" in str(notes.pop("plain"))
    assert set(notes.values()) == {None}


def test_verify_checks_crt_store_binds(pki, crt_dir, tmp_path):
    """`verify --haproxy-config` follows '@store/name' to the certificate and its names."""
    binary = haproxy_proc.require("3.0")
    leaf = pki.leaf("v.test")
    pki.write(crt_dir, "v.pem", leaf)
    (crt_dir / "v.ocsp").write_bytes(pki.response(leaf.cert))
    sections = f"crt-store web\n    load crt {crt_dir}/v.pem alias v ocsp {crt_dir}/v.ocsp\n"
    workdir = tmp_path / "w"
    workdir.mkdir()
    hap = haproxy_proc.start(binary, workdir, crt_dir, certs='crt "@web/v"', sections=sections)
    try:
        from hastaple.app.cli import cli  # noqa: PLC0415 - the CLI imports every module

        result = CliRunner().invoke(
            cli, ["verify", "--haproxy-config", str(workdir / "haproxy.cfg"), "--json"]
        )
        assert result.exit_code == 0, result.output
        [row] = json.loads(result.stdout)
        assert (row["cert"], row["status"], row["stapled"]) == ("v.test", "good", True)
    finally:
        hap.stop()


async def test_chainless_pem_staple_is_written_only_where_haproxy_finds_the_issuer(
    pki, openssl_responder, crt_dir, tmp_path
):
    """
    A chainless PEM on a load line: HAProxy 3 takes the issuer only from 'issuer <file>'.

    Without it HAProxy refuses to start with any file named by 'ocsp' (even an
    empty one; its <crt>.issuer is ignored), so that row fails with the fix and
    nothing is written; with it the staple is written and HAProxy starts stapled.
    """
    binary = haproxy_proc.require("3.0")
    for name in ("bare", "given"):
        leaf = pki.leaf(f"{name}.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(leaf.cert)
        pki.write(crt_dir, f"{name}.pem", leaf, chain=False)  # and <name>.pem.issuer
    (crt_dir / "ca.pem").write_bytes(pki.intermediate.cert_pem)
    bare = "    load crt bare.pem alias bare ocsp bare.ocsp\n"
    given = (
        f"crt-store web\n    crt-base {crt_dir}\n"
        "    load crt given.pem alias given ocsp given.ocsp issuer ca.pem\n"
    )
    workdir = tmp_path / "w"
    workdir.mkdir()
    config = workdir / "both.cfg"
    binds = 'frontend f\n    bind :1 ssl crt "@web/bare" crt "@web/given"\n'
    config.write_text(given + bare + binds)
    code, rows, err = await fetch_json("--haproxy-config", config)
    assert code == 1, err
    by_name = {Path(str(r["cert"])).stem: r for r in rows}
    assert by_name["bare"]["action"] == "failed"
    assert "names no 'issuer <file>'" in str(by_name["bare"]["error"])
    assert not (crt_dir / "bare.ocsp").exists()
    assert by_name["given"]["action"] == "fetched"
    hap = haproxy_proc.start(binary, workdir, crt_dir, certs='crt "@web/given"', sections=given)
    try:
        assert "Cert Status: good" in _served(hap, "given")
    finally:
        hap.stop()
