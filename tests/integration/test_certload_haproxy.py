"""
Certificates changed in a running HAProxy 2.6 / 2.8 while a client shakes hands in a loop.

Every scenario asserts: no handshake got the new certificate without its
own staple, HAProxy's pid did not change, and the loader's read-back agrees
with what the handshakes saw. Timings go to $CERTLOAD_MEASURE (JSON lines)
when it is set, for the figures of the report.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from handshakes import Loop, record
from hastaple.haproxy import certload, protocol
from hastaple.haproxy.certload import Remove, Renew
from hastaple.haproxy.certpush import Wanted, load, open_loader
from hastaple.sources import certfiles
from hastaple.testing.pki import now

pytestmark = pytest.mark.integration


def _write(pki, crt_dir: Path, name: str, leaf, *, staple: bool = True, **kw) -> Path:
    path = pki.write(crt_dir, name, leaf, **kw)
    if staple:
        path.with_name(name + ".ocsp").write_bytes(pki.response(leaf.cert))
    return path


def _no_unstapled(loop: Loop, serial: int) -> None:
    bad = [s for s in loop.seen if s.serial == serial and not s.stapled]
    assert not bad, f"{len(bad)} handshakes got the new certificate without its staple: {bad[:3]}"


async def test_renewal_is_served_stapled_from_the_first_handshake(pki, crt_dir, start_haproxy):
    old = pki.leaf("renew.test")
    path = _write(pki, crt_dir, "renew.pem", old)
    hap = start_haproxy()
    pid = hap.pid
    new = pki.leaf("renew.test")
    with Loop(hap.port, "renew.test") as loop:
        loop.wait_count(5)
        start = time.monotonic()
        _write(pki, crt_dir, "renew.pem", new)  # the renewal: same path, new serial
        read = certfiles.read(path, now=now())
        results = await load([str(hap.socket)], [Wanted(read.files)])
        seen = loop.wait_for(lambda s: s.serial == new.cert.serial_number)
        loop.wait_count(5)
    [outcome] = results[str(hap.socket)]
    assert (outcome.ok, outcome.stapled, outcome.action, outcome.error) == (
        True, True, "renewed", None,
    )  # fmt: skip
    assert seen.stapled
    _no_unstapled(loop, new.cert.serial_number)
    assert all(s.stapled for s in loop.seen), [s for s in loop.seen if not s.stapled][:3]
    assert hap.pid == pid
    record("renewal", hap, loop, start, seen.at)


async def test_renewal_of_chainless_pem_with_separate_key(pki, crt_dir, start_haproxy):
    old = pki.leaf("split.test")
    path = crt_dir / "split.pem"
    path.write_bytes(old.cert_pem)
    path.with_name("split.pem.key").write_bytes(old.key_pem)
    path.with_name("split.pem.issuer").write_bytes(pki.intermediate.cert_pem)
    path.with_name("split.pem.ocsp").write_bytes(pki.response(old.cert))
    hap = start_haproxy()
    new = pki.leaf("split.test")
    with Loop(hap.port, "split.test") as loop:
        loop.wait_count(3)
        path.write_bytes(new.cert_pem)
        path.with_name("split.pem.key").write_bytes(new.key_pem)
        path.with_name("split.pem.ocsp").write_bytes(pki.response(new.cert))
        read = certfiles.read(path, now=now())
        assert read.files.key is not None and read.files.issuer_pem is not None
        results = await load([str(hap.socket)], [Wanted(read.files)])
        loop.wait_for(lambda s: s.serial == new.cert.serial_number)
    [outcome] = results[str(hap.socket)]
    assert (outcome.ok, outcome.stapled, outcome.error) == (True, True, None)
    _no_unstapled(loop, new.cert.serial_number)


async def test_new_file_in_crt_directory(pki, crt_dir, start_haproxy):
    _write(pki, crt_dir, "a.pem", pki.leaf("a.test"))
    hap = start_haproxy()
    pid = hap.pid
    leaf = pki.leaf("b.test")
    with Loop(hap.port, "b.test") as loop:
        loop.wait_count(3)  # strict-sni: refused until it is added
        start = time.monotonic()
        path = _write(pki, crt_dir, "b.pem", leaf)
        read = certfiles.read(path, now=now())
        results = await load([str(hap.socket)], [Wanted(read.files, crt_list=str(crt_dir))])
        seen = loop.wait_for(lambda s: s.serial is not None)
        loop.wait_count(5)
    [outcome] = results[str(hap.socket)]
    assert (outcome.ok, outcome.stapled, outcome.action) == (True, True, "added"), outcome
    assert seen.stapled
    _no_unstapled(loop, leaf.cert.serial_number)
    assert hap.pid == pid
    record("new file", hap, loop, start, seen.at)


async def test_new_crt_list_line_with_sni_filter(pki, crt_dir, start_haproxy, tmp_path):
    _write(pki, crt_dir, "a.pem", pki.leaf("a.test"))
    crt_list = tmp_path / "list.txt"
    crt_list.write_text(f"{crt_dir}/a.pem a.test\n")
    hap = start_haproxy(crt_list=crt_list)
    pid = hap.pid
    leaf = pki.leaf("b.test")  # served for the filter's name, not its own
    with Loop(hap.port, "alias.test") as loop:
        loop.wait_count(3)
        start = time.monotonic()
        path = _write(pki, crt_dir, "b.pem", leaf)
        with crt_list.open("a") as f:
            f.write(f"{path} [alpn h2,http/1.1] alias.test\n")
        read = certfiles.read(path, now=now())
        wanted = Wanted(read.files, crt_list=str(crt_list), line="[alpn h2,http/1.1] alias.test")
        results = await load([str(hap.socket)], [wanted])
        seen = loop.wait_for(lambda s: s.serial is not None)
    [outcome] = results[str(hap.socket)]
    assert (outcome.ok, outcome.stapled, outcome.action) == (True, True, "added"), outcome
    assert seen.serial == leaf.cert.serial_number and seen.stapled
    _no_unstapled(loop, leaf.cert.serial_number)
    listing = hap.command(f"show ssl crt-list {crt_list}")
    # HAProxy prints the alpn list with its NUL terminator: compare around it.
    line = next(x for x in listing.splitlines() if x.startswith(f"{path} "))
    assert line.startswith(f"{path} [alpn h2,http/1.1") and line.endswith("] alias.test"), line
    assert hap.pid == pid
    record("new crt-list line", hap, loop, start, seen.at)


async def test_removal_and_never_the_last(pki, crt_dir, start_haproxy):
    _write(pki, crt_dir, "a.pem", pki.leaf("a.test"))
    gone = _write(pki, crt_dir, "b.pem", pki.leaf("b.test"))
    hap = start_haproxy()
    pid = hap.pid
    with Loop(hap.port, "a.test") as loop:
        loop.wait_count(3)
        for suffix in ("", ".ocsp"):
            Path(f"{gone}{suffix}").unlink()
        async with open_loader(str(hap.socket)) as loader:
            removed = await loader.apply(Remove(str(gone), str(crt_dir)))
            last = await loader.apply(Remove(f"{crt_dir}/a.pem", str(crt_dir)))
        loop.wait_count(5)
    assert (removed.ok, removed.error) == (True, None)
    assert not last.ok and "last certificate" in (last.error or "")
    assert "Not found" in hap.command(f"show ssl cert {gone}") or str(gone) not in hap.command(
        "show ssl cert"
    )
    assert all(s.stapled for s in loop.seen)  # a.test never lost its staple
    assert hap.pid == pid


async def test_must_staple_with_the_ca_down_keeps_the_old_certificate(pki, crt_dir, start_haproxy):
    old = pki.leaf("must.test", must_staple=True)
    path = _write(pki, crt_dir, "must.pem", old)
    hap = start_haproxy()
    new = pki.leaf("must.test", must_staple=True)
    with Loop(hap.port, "must.test") as loop:
        loop.wait_count(3)
        pki.write(crt_dir, "must.pem", new)  # renewed; the CA is down: the .ocsp is the old one
        read = certfiles.read(path, now=now())
        assert read.files.staple is None and "not valid" in (read.staple_problem or "")
        results = await load([str(hap.socket)], [Wanted(read.files)])
        loop.wait_count(5)
    [outcome] = results[str(hap.socket)]
    assert not outcome.ok and "must-staple" in (outcome.error or ""), outcome
    assert {s.serial for s in loop.seen} == {old.cert.serial_number}
    assert all(s.stapled for s in loop.seen)


async def test_renewal_without_staple_is_loaded_when_not_must_staple(pki, crt_dir, start_haproxy):
    old = pki.leaf("plain.test")
    path = _write(pki, crt_dir, "plain.pem", old)
    hap = start_haproxy()
    new = pki.leaf("plain.test")
    pki.write(crt_dir, "plain.pem", new)
    read = certfiles.read(path, now=now())
    results = await load([str(hap.socket)], [Wanted(read.files)])
    [outcome] = results[str(hap.socket)]
    assert (outcome.ok, outcome.stapled) == (True, False), outcome
    with Loop(hap.port, "plain.test") as loop:
        seen = loop.wait_for(lambda s: s.serial is not None)
    assert seen.serial == new.cert.serial_number and seen.staple_serial is None


async def test_pem_bigger_than_one_command_is_loaded_with_the_key_apart(
    pki, crt_dir, start_haproxy
):
    """
    Measured: a PEM command of about 15,800-15,900 bytes (tune.bufsize 16384) is taken.

    The whole bundle (leaf, RSA key, a long chain) does not fit one command;
    the certificate with its chain does, and the key follows as ``.key``.
    """
    old = pki.leaf("big.test", kind="rsa")
    path = _write(pki, crt_dir, "big.pem", old)
    hap = start_haproxy()
    new = pki.leaf("big.test", kind="rsa")
    room = protocol.MAX_COMMAND_BYTES - 300 - len(new.cert_pem)
    chain = pki.intermediate.cert_pem * (room // len(pki.intermediate.cert_pem))
    path.write_bytes(new.cert_pem + new.key_pem + chain)
    path.with_name("big.pem.ocsp").write_bytes(pki.response(new.cert))
    read = certfiles.read(path, now=now())
    steps = certload.plan(Renew(read.files), protocol.parse_address(str(hap.socket))).sets
    sizes = [len(step.command.encode(protocol.parse_address(str(hap.socket)))) for step in steps]
    assert sizes[0] > protocol.MAX_COMMAND_BYTES - 600 and steps[1].command.line.endswith(".key")
    results = await load([str(hap.socket)], [Wanted(read.files)])
    [outcome] = results[str(hap.socket)]
    assert (outcome.ok, outcome.stapled, outcome.error) == (True, True, None)
    with Loop(hap.port, "big.test") as loop:
        seen = loop.wait_for(lambda s: s.serial is not None)
    assert seen.serial == new.cert.serial_number and seen.stapled


async def test_renewal_through_the_master_cli(pki, crt_dir, start_haproxy):
    """The same transaction through the master CLI's worker selector (master.sock@1)."""
    old = pki.leaf("master.test")
    path = _write(pki, crt_dir, "master.pem", old)
    hap = start_haproxy(master=True)
    pid = hap.pid
    new = pki.leaf("master.test")
    with Loop(hap.port, "master.test") as loop:
        loop.wait_count(3)
        _write(pki, crt_dir, "master.pem", new)
        read = certfiles.read(path, now=now())
        master = f"{hap.workdir / 'master.sock'}@1"
        results = await load([master, str(hap.socket)], [Wanted(read.files)])
        seen = await loop.until(lambda s: s.serial == new.cert.serial_number)
    [outcome] = results[master]
    assert (outcome.ok, outcome.stapled, outcome.error) == (True, True, None)
    assert results[str(hap.socket)] == f"alias of {master}"  # one transaction per process
    assert seen.stapled
    _no_unstapled(loop, new.cert.serial_number)
    assert hap.pid == pid


async def test_a_failed_addition_leaves_no_empty_certificate(pki, crt_dir, start_haproxy, tmp_path):
    """The crt-list does not exist: nothing is added, and the store made for it is deleted."""
    _write(pki, crt_dir, "a.pem", pki.leaf("a.test"))
    hap = start_haproxy()
    path = _write(pki, crt_dir, "b.pem", pki.leaf("b.test"))
    read = certfiles.read(path, now=now())
    wanted = Wanted(read.files, crt_list=str(tmp_path / "no-such-list.txt"), line="b.test")
    [outcome] = (await load([str(hap.socket)], [wanted]))[str(hap.socket)]
    assert not outcome.ok and "does not exist" in (outcome.error or ""), outcome
    assert str(path) not in hap.command("show ssl cert")
