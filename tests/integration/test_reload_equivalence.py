"""
After a sequence of hot changes, HAProxy serves what a real reload of the same files serves.

One bind takes a ``crt`` directory and a crt-list. Renewals, new files, a
new crt-list line with an SNI filter and a removal are applied at runtime;
then ``show ssl cert``, ``show ssl crt-list`` (every list) and a handshake
per name are taken, HAProxy is reloaded through its master CLI, and the same
is taken again: they must be equal.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from handshakes import handshake
from hastaple.haproxy.certload import Remove
from hastaple.haproxy.certpush import Wanted, load, open_loader
from hastaple.sources import certfiles
from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.pki import now

pytestmark = pytest.mark.integration

NAMES = ["a.test", "b.test", "c.test", "d.test", "x.test", "alias.test", "e.test"]


def _snapshot(hap: haproxy_proc.HAProxy) -> dict[str, object]:
    certs = sorted(
        line
        for line in hap.command("show ssl cert").splitlines()
        if line.strip() and not line.startswith(("#", "*"))
    )
    details = {}
    for crt in certs:
        fields = dict(
            line.split(":", 1) for line in hap.command(f"show ssl cert {crt}").splitlines()[:20]
            if ":" in line
        )  # fmt: skip
        details[crt] = (
            fields.get("Serial", "").strip(),
            fields.get("OCSP Response Key", "").strip(),
        )
    lists = sorted(x for x in hap.command("show ssl crt-list").splitlines() if x.strip())
    # Entries as sets: lines added at runtime come last, a reload reads them in file order
    # (the order of a directory is its sorted names either way).
    entries = {
        name: sorted(x for x in hap.command(f"show ssl crt-list {name}").splitlines()[1:] if x)
        for name in lists
    }
    served = {}
    for name in NAMES:
        seen = handshake(hap.port, name)
        served[name] = (seen.serial, seen.stapled)
    return {"certs": certs, "details": details, "lists": lists, "entries": entries,
            "served": served}  # fmt: skip


def _reload(hap: haproxy_proc.HAProxy) -> None:
    old = hap.pid
    master = hap.workdir / "master.sock"
    for _ in range(50):
        try:
            haproxy_proc.cli(master, "reload")
            break
        except OSError:
            time.sleep(0.1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if hap.pid != old:
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    msg = f"HAProxy did not reload:\n{hap.log}"
    raise AssertionError(msg)


def _put(pki, directory: Path, name: str, leaf) -> Path:
    path = pki.write(directory, name, leaf)
    path.with_name(name + ".ocsp").write_bytes(pki.response(leaf.cert))
    return path


async def test_hot_changes_equal_a_reload(pki, crt_dir, start_haproxy, tmp_path):
    listed = tmp_path / "listed"
    listed.mkdir()
    for name in ("a", "b", "c"):
        _put(pki, crt_dir, f"{name}.pem", pki.leaf(f"{name}.test"))
    x = _put(pki, listed, "x.pem", pki.leaf("x.test"))
    crt_list = tmp_path / "list.txt"
    crt_list.write_text(f"{x} x.test\n")
    hap = start_haproxy(master=True, certs=f"crt {crt_dir} crt-list {crt_list}")
    sock = str(hap.socket)

    # On disk: a renewed, d new in the directory, c removed, x renewed, e a new line
    # of the crt-list served for its filter's name, b untouched.
    a = _put(pki, crt_dir, "a.pem", pki.leaf("a.test"))
    d = _put(pki, crt_dir, "d.pem", pki.leaf("d.test"))
    c = crt_dir / "c.pem"
    for suffix in ("", ".ocsp"):
        Path(f"{c}{suffix}").unlink()
    x = _put(pki, listed, "x.pem", pki.leaf("x.test"))
    e = _put(pki, listed, "e.pem", pki.leaf("e.test"))
    with crt_list.open("a") as f:
        f.write(f"{e} [alpn h2] alias.test e.test\n")

    wanted = [
        Wanted(certfiles.read(a, now=now()).files),
        Wanted(certfiles.read(d, now=now()).files, crt_list=str(crt_dir)),
        Wanted(certfiles.read(x, now=now()).files),
        Wanted(certfiles.read(e, now=now()).files, crt_list=str(crt_list),
               line="[alpn h2] alias.test e.test"),
    ]  # fmt: skip
    results = await load([sock], wanted)
    outcomes = results[sock]
    assert not isinstance(outcomes, str)
    assert [(o.ok, o.stapled) for o in outcomes] == [(True, True)] * 4, outcomes
    async with open_loader(sock) as loader:
        removed = await loader.apply(Remove(str(c), str(crt_dir)))
    assert removed.ok, removed

    hot = _snapshot(hap)
    _reload(hap)
    reloaded = _snapshot(hap)
    assert hot == reloaded
    assert hot["served"]["c.test"] == (None, False)  # gone, strict-sni refuses it
    assert all(hot["served"][n][1] for n in NAMES if n != "c.test")
