"""
Several hastaple nodes on one machine sharing staples through one real redis-server.

Each node is its own process (``fetch --fleet`` or the ``run --fleet`` daemon)
with its own copy of the certificates and state directory, and, for the
daemons, its own real HAProxy. The CA is one counting responder (``Sign``):
``asked`` says how many OCSP requests reached it, per serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import redis_proc
from hastaple.core.ocsp.validate import validate
from hastaple.stores import redis_url
from hastaple.stores.fleet import Fleet
from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.behaviours import Sign
from hastaple.testing.pki import PKI, Issued

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not redis_proc.available(), reason="redis-server not installed"),
]


@dataclass
class Node:
    name: str
    root: Path
    env: dict[str, str]
    hap: haproxy_proc.HAProxy | None = None
    proc: asyncio.subprocess.Process | None = None
    popen: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def crt(self) -> Path:
        return self.root / "crt"

    @property
    def state(self) -> Path:
        return self.root / "state"


@pytest.fixture(name="redis_server")
def _redis_server(sock_dir):
    srv = redis_proc.Redis(sock_dir / "redis").start()
    yield srv
    srv.stop()


@pytest.fixture(name="ca")
async def _ca(pki, fault_responder):
    sign = Sign(pki, clock=lambda: dt.datetime.now(dt.UTC))
    fault_responder.on("ca", sign)
    return sign


def leaves(pki: PKI, ca: Sign, url: str, count: int, tag: str = "c") -> list[Issued]:
    issued = [pki.leaf(f"{tag}{i}.fleet.test", ocsp_url=url) for i in range(count)]
    ca.add(*(leaf.cert for leaf in issued))
    return issued


def nodes(tmp: Path, count: int, fleet_url: str, certs: list[Issued], pki: PKI) -> list[Node]:
    made = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("HASTAPLE_")}
    for n in range(count):
        node = Node(f"node{n}", tmp / f"n{n}", {**base, "HASTAPLE_FLEET_NODE": f"node{n}"})
        node.env["HASTAPLE_FLEET"] = fleet_url
        node.crt.mkdir(parents=True)
        for i, leaf in enumerate(certs):
            pki.write(node.crt, f"{leaf.cert.subject.rfc4514_string()[3:]}.pem", leaf)
            del i
        made.append(node)
    return made


async def fetch(node: Node, *extra: str, timeout: float = 120) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hastaple", "fetch", str(node.crt),
        "--state-dir", str(node.state), "--json", *extra,
        env=node.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    node.proc = proc
    async with asyncio.timeout(timeout):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def staples_ok(node: Node, pki: PKI, certs: list[Issued]) -> int:
    """How many of ``certs`` have a valid, good staple file in ``node``'s directory."""
    now = dt.datetime.now(dt.UTC)
    good = 0
    for leaf in certs:
        path = node.crt / f"{leaf.cert.subject.rfc4514_string()[3:]}.pem.ocsp"
        if path.exists() and path.stat().st_size:
            verdict = validate(
                path.read_bytes(), cert=leaf.cert, issuer=pki.intermediate.cert, now=now
            )
            good += verdict.status.value == "good"
    return good


# -- fetch --fleet ------------------------------------------------------------------


async def test_three_nodes_two_hundred_certificates_cold_ask_the_ca_once_each(
    pki, tmp_path, fault_responder, ca, redis_server
):
    """3 nodes x 200 certificates at the same moment: 200 OCSP requests, not 600."""
    certs = leaves(pki, ca, fault_responder.url_for("ca"), 200)
    fleet = nodes(tmp_path, 3, redis_server.url, certs, pki)
    results = await asyncio.gather(*(fetch(n) for n in fleet))
    for code, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    assert sum(ca.asked.values()) == 200, ca.asked.most_common(3)
    assert set(ca.asked.values()) == {1}
    for node in fleet:
        assert staples_ok(node, pki, certs) == 200
    # The documented layout: one entry per certificate, expiring at nextUpdate.
    assert int(redis_server.cli("EVAL", "return #redis.call('KEYS', ARGV[1])", "0",
                                "hastaple:staple:*").strip()) == 200  # fmt: skip


async def test_without_fleet_each_node_asks_for_itself(pki, tmp_path, fault_responder, ca):
    """The control: the same 3 x 20 with no --fleet is 60 requests."""
    certs = leaves(pki, ca, fault_responder.url_for("ca"), 20)
    fleet = nodes(tmp_path, 3, "", certs, pki)
    for node in fleet:
        del node.env["HASTAPLE_FLEET"]
    results = await asyncio.gather(*(fetch(n) for n in fleet))
    assert [code for code, _ in results] == [0, 0, 0]
    assert sum(ca.asked.values()) == 60


async def test_lease_holder_killed_another_node_fetches_after_the_lease_expires(
    pki, tmp_path, fault_responder, ca, redis_server
):
    """Kill -9 of the node fetching: the others wait, the lease expires, one of them fetches."""
    certs = leaves(pki, ca, fault_responder.url_for("ca"), 1)
    a, b, c = nodes(tmp_path, 3, redis_server.url, certs, pki)
    ca.gate = asyncio.Event()
    holder = asyncio.create_task(fetch(a, "--fleet-lease", "3"))
    async with asyncio.timeout(30):
        await ca.entered.wait()  # a holds the lease and its request is at the CA
    others = [asyncio.create_task(fetch(n, "--fleet-lease", "3")) for n in (b, c)]
    await asyncio.sleep(1.0)  # b and c found the lease held and wait
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    code, _ = await holder
    assert code == -signal.SIGKILL
    assert sum(ca.asked.values()) == 1  # nobody else asked while the lease lived
    ca.gate.set()
    results = await asyncio.gather(*others)
    for code, err in results:
        assert code == 0, err
    assert sum(ca.asked.values()) == 2  # one more: b or c, not both
    assert staples_ok(b, pki, certs) == staples_ok(c, pki, certs) == 1


async def test_redis_unreachable_fetch_still_exits_0_and_says_so(
    pki, tmp_path, fault_responder, ca
):
    certs = leaves(pki, ca, fault_responder.url_for("ca"), 3)
    [node] = nodes(tmp_path, 1, f"redis://127.0.0.1:{haproxy_proc.free_port()}/0", certs, pki)
    code, err = await fetch(node)
    assert code == 0, err
    assert "was unreachable; this node fetched its staples by itself" in err
    assert err.count("does not answer") == 1  # one warning, not one per certificate
    assert staples_ok(node, pki, certs) == 3


async def test_a_node_that_cannot_reach_the_ca_gets_its_staples_from_the_fleet(
    pki, tmp_path, fault_responder, ca, redis_server
):
    certs = leaves(pki, ca, fault_responder.url_for("ca"), 20)
    a, b = nodes(tmp_path, 2, redis_server.url, certs, pki)
    assert (await fetch(a))[0] == 0
    b.env["HTTP_PROXY"] = f"http://127.0.0.1:{haproxy_proc.free_port()}"  # the CA is unreachable
    code, err = await fetch(b)
    assert code == 0, err
    assert sum(ca.asked.values()) == 20
    assert staples_ok(b, pki, certs) == 20
    # The control: without the fleet, b fails every certificate.
    code, _ = await fetch(b, "--force", "--fleet", "")
    assert code == 1


async def test_forged_entries_are_rejected_and_the_right_staple_served(
    pki, tmp_path, fault_responder, ca, redis_server
):
    """Another certificate's response, garbage, an older one, an unrelated signer: all refused."""
    certs = leaves(pki, ca, fault_responder.url_for("ca"), 4)
    other = pki.leaf("other.fleet.test")
    now = dt.datetime.now(dt.UTC)
    forged = [
        pki.response(other.cert),  # valid, but for another certificate
        b"\x30\x82garbage",
        pki.response(
            certs[2].cert,
            this_update=now - dt.timedelta(days=6),
            next_update=now + dt.timedelta(hours=2),
        ),  # older and due
        pki.response(certs[3].cert, signer=pki.other_ca),  # signed by an unrelated key
    ]
    ikh = _issuer_key_hash(pki)
    for leaf, der in zip(certs, forged, strict=True):
        key = f"hastaple:staple:{ikh}:{leaf.cert.serial_number:x}"
        redis_server.cli("HSET", key, "this_update", "2099-01-01T00:00:00Z", "node", "evil")
        _hset_binary(redis_server, key, der)
    [node] = nodes(tmp_path, 1, redis_server.url, certs, pki)
    code, err = await fetch(node)
    assert code == 0, err
    # Three rejected as forged; the old one is valid but due, so not used either.
    assert err.count("fleet: ignored the entry") == 3
    assert sum(ca.asked.values()) == 4  # each one fetched by the node itself
    assert staples_ok(node, pki, certs) == 4
    for leaf in certs:  # and the forged entries were replaced by the CA's answers
        key = f"hastaple:staple:{ikh}:{leaf.cert.serial_number:x}"
        assert redis_server.cli("HGET", key, "node").strip() == "node0"


def _issuer_key_hash(pki: PKI) -> str:
    from cryptography.x509 import ocsp  # noqa: PLC0415

    from hastaple.core.ocsp import request  # noqa: PLC0415

    leaf = pki.leaf("k.fleet.test")
    req = ocsp.load_der_ocsp_request(request.build(leaf.cert, pki.intermediate.cert))
    return req.issuer_key_hash.hex()


def _hset_binary(server: redis_proc.Redis, key: str, der: bytes) -> None:
    """HSET key der <bytes> through redis-cli -x (stdin), so any byte goes in."""
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(server.port), "-x", "HSET", key, "der"],
        input=der, check=True, capture_output=True, timeout=10,
    )  # fmt: skip


# -- run --fleet: daemons, each with its own HAProxy ---------------------------------


def start_daemon(node: Node, *extra: str) -> None:
    """``hastaple run --fleet`` for ``node``, its log in ``<node>/daemon.log``."""
    assert node.hap is not None
    log = (node.root / "daemon.log").open("ab")
    node.popen = subprocess.Popen(
        [sys.executable, "-m", "hastaple", "run", "--paths", str(node.crt),
         "--haproxy", str(node.hap.socket), "--state-dir", str(node.state),
         "--metrics-address", "127.0.0.1:0", "--refresh-spread", "0", "--fleet-lease", "3s",
         "--haproxy-poll", "1s", *extra],
        env=node.env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip
    log.close()


def stop_daemon(node: Node) -> int:
    proc = node.popen
    assert proc is not None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def _same_staple(node: Node, other: Node, name: str) -> bool:
    mine, theirs = (n.crt / f"{name}.pem.ocsp" for n in (node, other))
    return theirs.exists() and mine.read_bytes() == theirs.read_bytes()


def _this_update(served: str) -> str:
    found = re.search(r"This Update: (.*)", served)
    return found.group(1).strip() if found else ""


def served(node: Node, name: str, *, newer_than: str = "") -> bool:
    """Whether ``node``'s HAProxy staples a good response for ``name`` (other than one)."""
    assert node.hap is not None
    text = haproxy_proc.staple(node.hap.port, name)
    return "Cert Status: good" in text and _this_update(text) != newer_than


def fleet_up(node: Node) -> str:
    """``hastaple_fleet_up`` on the node's /metrics."""
    address = re.search(r"event=metrics address=(\S+)", daemon_log(node))
    assert address is not None
    with urllib.request.urlopen(f"http://{address.group(1)}/metrics", timeout=10) as resp:
        found = re.search(r"^hastaple_fleet_up (\S+)", resp.read().decode(), re.MULTILINE)
    assert found is not None
    return found.group(1)


def daemon_log(node: Node) -> str:
    return (node.root / "daemon.log").read_text(errors="replace")


async def until(what, timeout: float, step: float = 0.1) -> float:
    """Poll ``what()`` until true; the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not what():
            await asyncio.sleep(step)
    return time.monotonic() - started


@pytest.fixture(name="daemons")
def _daemons(sock_dir):
    started: list[Node] = []
    yield started
    for node in started:
        with contextlib.suppress(Exception):
            stop_daemon(node)
        if node.hap is not None:
            node.hap.stop()


def with_haproxy(fleet: list[Node], sock_dir: Path) -> None:
    binary = haproxy_proc.require("2.6")
    for node in fleet:
        (sock_dir / node.name).mkdir()
        node.hap = haproxy_proc.start(binary, sock_dir / node.name, node.crt)


async def test_three_daemons_share_two_hundred_staples_and_deploy_announced_ones(  # noqa: PLR0917
    pki, tmp_path, sock_dir, fault_responder, ca, redis_server, daemons
):
    """
    3 daemons x 200 certificates, each with its own HAProxy: 200 CA requests.

    Then a staple fetched anew elsewhere (``fetch --force --fleet``) is
    announced: every daemon validates it and loads it into its HAProxy.
    """
    certs = leaves(pki, ca, fault_responder.url_for("ca"), 200)
    fleet = nodes(tmp_path, 3, redis_server.url, certs, pki)
    with_haproxy(fleet, sock_dir)
    for node in fleet:
        start_daemon(node)
        daemons.append(node)
    await until(lambda: all(staples_ok(n, pki, certs) == 200 for n in fleet), 120, step=0.5)
    assert sum(ca.asked.values()) == 200, ca.asked.most_common(3)
    name = "c7.fleet.test"
    for node in fleet:  # the file is written first, then loaded into HAProxy
        await until(lambda n=node: served(n, name), 30, step=0.5)
    # A fourth node refreshes one staple by force: the daemons adopt it.
    [extra] = nodes(tmp_path / "x", 1, redis_server.url, certs[7:8], pki)
    extra.env["HASTAPLE_FLEET_NODE"] = "forcer"
    first_served = _this_update(haproxy_proc.staple(fleet[0].hap.port, name))  # type: ignore[union-attr]
    await asyncio.sleep(1.1)  # a thisUpdate one second newer
    announced: list[float] = []
    listener = Fleet(redis_url.parse(redis_server.url), node="forcer",
                     on_published=lambda _: announced.append(time.monotonic()))  # fmt: skip
    async with listener:
        fetching = asyncio.create_task(fetch(extra, "--force"))
        await until(lambda: bool(announced), 60, step=0.01)
        new_on_disk = await until(
            lambda: all(_same_staple(n, extra, name) for n in fleet), 10, step=0.01
        )
        for node in fleet:
            await until(lambda n=node: served(n, name, newer_than=first_served), 10, step=0.05)
        in_haproxy = time.monotonic() - announced[0]
        code, err = await fetching
    assert code == 0, err
    print(f"announced staple: on every node's disk {new_on_disk:.2f} s after the announcement, "
          f"served by all three HAProxies {in_haproxy:.2f} s after it")  # fmt: skip
    assert new_on_disk < 1.0
    assert sum(ca.asked.values()) == 201
    # status and /metrics show the fleet.
    node0 = fleet[0]

    def status() -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "hastaple", "status", "--state-dir", str(node0.state)]
        return subprocess.run(
            [*argv, "--json"], capture_output=True, env=node0.env, timeout=30, check=False
        )

    def seen() -> set[str]:
        found = re.search(r"nodes seen in the last minute: (.*)", status().stderr.decode())
        return set(found.group(1).split(", ")) if found else set()

    # Every node and the one-off run, within a heartbeat (5 s).
    await until(lambda: seen() >= {"node0", "node1", "node2", "forcer"}, 15, step=0.5)
    rows = json.loads(status().stdout)
    assert {r["fetched_by"] for r in rows} <= {"node0", "node1", "node2", "forcer"}
    assert sum(r["fetched_by"] == "forcer" for r in rows) == 1
    address = re.search(r"event=metrics address=(\S+)", daemon_log(node0))
    assert address is not None
    with urllib.request.urlopen(f"http://{address.group(1)}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert "hastaple_fleet_up 1.0" in metrics
    assert "hastaple_fleet_nodes 4.0" in metrics  # the three daemons and the forcer
    assert re.search(r"^hastaple_fleet_hits_total [1-9]", metrics, re.MULTILINE)
    for node in fleet:
        assert stop_daemon(node) == 0
        log = daemon_log(node)
        assert "Traceback" not in log
        assert "does not answer" not in log


async def test_redis_stopped_and_restarted_mid_run(  # noqa: PLR0917
    pki, tmp_path, sock_dir, fault_responder, ca, redis_server, daemons
):
    """Nodes staple alone while Redis is down (one warning each), and share again after."""
    url = fault_responder.url_for("ca")
    first = leaves(pki, ca, url, 10, tag="a")
    fleet = nodes(tmp_path, 3, redis_server.url, first, pki)
    with_haproxy(fleet, sock_dir)
    for node in fleet:
        start_daemon(node)
        daemons.append(node)
    await until(lambda: all(staples_ok(n, pki, first) == 10 for n in fleet), 60, step=0.3)
    assert sum(ca.asked.values()) == 10
    redis_server.stop()
    during = leaves(pki, ca, url, 8, tag="b")
    for node in fleet:
        for leaf in during:
            pki.write(node.crt, f"{leaf.cert.subject.rfc4514_string()[3:]}.pem", leaf)
    await until(lambda: all(staples_ok(n, pki, during) == 8 for n in fleet), 60, step=0.3)
    assert sum(ca.asked.values()) == 10 + 3 * 8  # each node by itself: nothing lost
    assert all(fleet_up(n) == "0.0" for n in fleet)
    redis_server.start()  # same port, empty
    await until(lambda: all("is back;" in daemon_log(n) for n in fleet), 30, step=0.3)
    assert all(fleet_up(n) == "1.0" for n in fleet)
    after = leaves(pki, ca, url, 4, tag="c")
    for node in fleet:
        for leaf in after:
            pki.write(node.crt, f"{leaf.cert.subject.rfc4514_string()[3:]}.pem", leaf)
    await until(lambda: all(staples_ok(n, pki, after) == 4 for n in fleet), 60, step=0.3)
    assert sum(ca.asked.values()) == 10 + 24 + 4  # the fleet resumed: once each
    for node in fleet:
        assert stop_daemon(node) == 0
        log = daemon_log(node)
        assert "Traceback" not in log, log[-3000:]
        # One warning for the outage, not one per certificate (8 were fetched
        # meanwhile); a second only if a loaded machine delayed a call past its bound.
        assert 1 <= log.count("does not answer") <= 2, log[-3000:]
