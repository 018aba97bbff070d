"""
haproxy.cfg settings that change which files HAProxy reads, against real HAProxy 2.6 and 2.8.

Each test writes the staple with `hastaple fetch --haproxy-config`, then restarts
HAProxy and asks a real `openssl s_client -status` what it staples: a file
HAProxy does not read is a staple lost at the next restart.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from test_daemon import _running, _stapled

from hastaple.sources.discover import discover
from hastaple.testing import haproxy as haproxy_proc
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


def _served_names(binary: str, cfg: Path, sock: Path, cwd: Path, env: dict[str, str]) -> list[str]:
    """What a real HAProxy started on ``cfg`` lists in `show ssl cert`."""
    log = cwd / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(cfg)], cwd=cwd, stdout=out, stderr=out, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), log.read_text()
        reply = haproxy_proc.cli(sock, "show ssl cert")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return sorted(line for line in reply.splitlines() if line and not line.startswith("#"))


def test_environment_and_conditions_as_haproxy_reads_them(pki, haproxy_binary, tmp_path_factory):
    """
    setenv/presetenv/unsetenv and .if blocks choose the certificates exactly as HAProxy does.

    The branches not taken name files that do not exist: reading them would be
    an error. Which version-dependent branch is taken differs between 2.6 and
    2.8; discovery asks the binary that reads the configuration.
    """
    work = tmp_path_factory.mktemp("cond")
    certs = work / "certs"
    certs.mkdir()
    for name in ("set.pem", "pre.pem", "kept.pem", "new.pem", "old.pem", "ssl.pem", "else.pem"):
        pki.write(certs, name, pki.leaf(name.removesuffix(".pem") + ".example.test"))
    sock = work / "admin.sock"
    cfg = work / "haproxy.cfg"
    port = haproxy_proc.free_port
    cfg.write_text(
        f"""global
    stats socket {sock} level admin
    setenv SETDIR {certs}
    presetenv PRE set-by-the-process
    presetenv PRE2 {certs}
    setenv GONE x
    unsetenv GONE
.if defined(GONE)
    crt-base /nonexistent
.endif
defaults
    mode http
    timeout client 5s
    timeout server 5s
    timeout connect 5s
frontend f
    bind 127.0.0.1:{port()} ssl crt "$SETDIR/set.pem" crt "${{PRE2}}/pre.pem"
.if streq("$PRE",set-by-the-process)
    bind 127.0.0.1:{port()} ssl crt "$SETDIR/kept.pem"
.else
    bind 127.0.0.1:{port()} ssl crt /nonexistent/else.pem
.endif
.if version_atleast(2.7)
    bind 127.0.0.1:{port()} ssl crt "$SETDIR/new.pem"
.elif feature(OPENSSL) && !defined(NOT_SET)
    bind 127.0.0.1:{port()} ssl crt "$SETDIR/old.pem"
.else
    bind 127.0.0.1:{port()} ssl crt /nonexistent/x.pem
.endif
.if feature(OPENSSL)
  .if 0
    bind 127.0.0.1:{port()} ssl crt /nonexistent/y.pem
  .elif 1
    bind 127.0.0.1:{port()} ssl crt "$SETDIR/ssl.pem"
  .else
    bind 127.0.0.1:{port()} ssl crt /nonexistent/z.pem
  .endif
.else
    bind 127.0.0.1:{port()} ssl crt /nonexistent/w.pem
.endif
    .notice "read up to here"
"""
    )
    env = {"PATH": os.environ.get("PATH", ""), "PRE": "set-by-the-process"}
    found = discover(haproxy_configs=[cfg], cwd=work, environ=env, haproxy_binary=haproxy_binary)
    served = _served_names(haproxy_binary, cfg, sock, work, env)
    assert sorted(n for c in found.certs for n in c.names) == served
    assert found.warnings == ()
    version_branch = {f"{certs}/new.pem", f"{certs}/old.pem"} & set(served)
    assert len(version_branch) == 1


NO_OCSP = "    ssl-load-extra-files bundle key"


async def test_extra_files_without_ocsp_warns_and_the_daemon_restaples_after_restart(
    pki, openssl_responder, crt_dir, haproxy_binary, tmp_path
):
    """
    ssl-load-extra-files without 'ocsp': HAProxy ignores site.pem.ocsp when it starts.

    fetch says so in one warning naming the line; after a restart only a push
    staples again, and the daemon's re-push after a restart does it, without
    asking the CA.
    """
    leaf = pki.leaf("noocsp.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "site.pem", leaf)
    workdir = tmp_path / "h"
    workdir.mkdir()
    hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir, global_extra=NO_OCSP)
    cfg = workdir / "haproxy.cfg"
    try:
        code, rows, err = await fetch_json("--haproxy-config", cfg)
        assert (code, rows[0]["action"]) == (0, "deployed"), err
        warnings = [line for line in err.splitlines() if "ssl-load-extra-files" in line]
        assert len(warnings) == 1, err
        assert f"{cfg}:4: ssl-load-extra-files without 'ocsp'" in warnings[0]
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, "noocsp.example.test")

        hap.stop()  # HAProxy's own behaviour: the .ocsp on disk is not read at start
        hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir, global_extra=NO_OCSP)
        assert "no response sent" in haproxy_proc.staple(hap.port, "noocsp.example.test")

        async with _running(tmp_path, None, haproxy_configs=(cfg,)):
            await _stapled(hap, "noocsp.example.test", within=5)
            asked = openssl_responder.requests
            hap.stop()
            await asyncio.sleep(0.5)  # the daemon polls HAProxy every 0.2 s
            hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir, global_extra=NO_OCSP)
            await _stapled(hap, "noocsp.example.test", within=5)
            assert openssl_responder.requests == asked
    finally:
        hap.stop()


@pytest.mark.parametrize("chroot", [False, True], ids=["plain", "master-chroot"])
async def test_relative_paths_are_read_from_haproxys_directory(
    pki, openssl_responder, haproxy_binary, tmp_path_factory, chroot
):
    """
    A relative `crt certs` is read from the running HAProxy's directory, not ours.

    fetch runs in another directory; the pid from `show info` gives HAProxy's
    directory. A chrooted worker shows its jail there, so its master is asked.
    """
    work = tmp_path_factory.mktemp("rel")
    (work / "certs").mkdir()
    (work / "jail").mkdir()
    leaf = pki.leaf("relative.example.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(work / "certs", "site.pem", leaf)
    extra = f"    chroot {work / 'jail'}" if chroot else ""
    hap = haproxy_proc.start(haproxy_binary, work, Path("certs"), global_extra=extra, master=chroot)
    try:
        assert Path.cwd() != work
        code, rows, err = await fetch_json("--haproxy-config", work / "haproxy.cfg")
        assert code == 0, err
        assert [(r["cert"], r["action"]) for r in rows] == [
            (str(work / "certs" / "site.pem"), "deployed")
        ]
        assert "relative certificate paths" not in err  # found, not guessed
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, "relative.example.test")
    finally:
        hap.stop()


def test_version_conditions_are_asked_of_the_running_haproxy(pki, haproxy_binary, tmp_path_factory):
    """
    Without a binary given, `.if version_atleast()` is asked of the HAProxy that runs.

    The PATH holds 2.6 only; a running 2.8 takes the other branch, and so must we.
    """
    work = tmp_path_factory.mktemp("ver")
    for name in ("new.pem", "old.pem"):
        pki.write(work, name, pki.leaf(name.removesuffix(".pem") + ".example.test"))
    sock = work / "admin.sock"
    cfg = work / "haproxy.cfg"
    cfg.write_text(
        f"""global
    stats socket {sock} level admin
frontend f
    mode http
.if version_atleast(2.7)
    bind 127.0.0.1:{haproxy_proc.free_port()} ssl crt {work}/new.pem
.else
    bind 127.0.0.1:{haproxy_proc.free_port()} ssl crt {work}/old.pem
.endif
"""
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/bin"}
    log = work / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [haproxy_binary, "-db", "-f", str(cfg)], cwd=work, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # HAProxy gives no readiness signal in the foreground
        assert sock.exists(), log.read_text()
        served = [
            line
            for line in haproxy_proc.cli(sock, "show ssl cert").splitlines()
            if line and not line.startswith("#")
        ]
        found = discover(haproxy_configs=[cfg], cwd=work, environ=env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [str(c.path) for c in found.certs] == served
    assert found.warnings == ()


async def test_issuers_chain_path_gives_chainless_certificates_their_issuer(
    pki, openssl_responder, crt_dir, start_haproxy, tmp_path
):
    """
    A chainless PEM with no .issuer is stapled when global issuers-chain-path holds its CA.

    HAProxy takes the chain from that directory, so it computes the CertID and
    staples: hastaple must find the same issuer there, for a certificate
    registered at start-up (empty .ocsp) and for one that is not (the commit
    path), and the staples must survive a restart.
    """
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "intermediate.pem").write_bytes(pki.intermediate.cert_pem)
    for name in ("kept", "fresh"):
        leaf = pki.leaf(f"{name}.example.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(leaf.cert)
        pki.write(crt_dir, f"{name}.pem", leaf, chain=False)
        (crt_dir / f"{name}.pem.issuer").unlink()
    (crt_dir / "kept.pem.ocsp").write_bytes(b"")
    chain_path = f"    issuers-chain-path {chains}"
    hap = start_haproxy(global_extra=chain_path)

    code, rows, err = await fetch_json("--haproxy-config", hap.workdir / "haproxy.cfg")
    assert code == 0, (err, rows)
    assert {r["action"] for r in rows} == {"deployed"}, rows
    assert sorted(p.name for p in crt_dir.iterdir()) == [
        "fresh.pem", "fresh.pem.ocsp", "kept.pem", "kept.pem.ocsp",
    ]  # fmt: skip
    for name in ("kept.example.test", "fresh.example.test"):
        assert "Cert Status: good" in haproxy_proc.staple(hap.port, name)
    hap.stop()
    restarted = start_haproxy(global_extra=chain_path)
    for name in ("kept.example.test", "fresh.example.test"):
        assert "Cert Status: good" in haproxy_proc.staple(restarted.port, name)
