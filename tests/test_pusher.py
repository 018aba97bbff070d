"""
Deploying in rounds while fetching (``hastaple.sinks.pusher``).

A stored staple reaches HAProxy while later certificates are still being
fetched, and a slow HAProxy holds the producers back instead of letting
staples pile up in memory. Real responder (the fault-injecting one, which can
wait for HAProxy) and the fake HAProxy (which can be slow on demand).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from cryptography.x509 import ocsp

from fake_haproxy import FakeHAProxy
from hastaple.core.model import Action, CertEntry, ResultRow, Status
from hastaple.core.ocsp.request import cert_id
from hastaple.engine import pipeline
from hastaple.engine.fetch import Fetcher
from hastaple.haproxy.deploy import DeployItem
from hastaple.sinks import pusher
from hastaple.testing.pki import now
from hastaple.testing.responders import OCSP_TYPE, FaultResponder, Serve


@dataclass
class AfterDeploy:
    """Answer only once ``hap`` was sent a staple (or after ``limit`` seconds)."""

    hap: FakeHAProxy
    body: bytes
    limit: float = 3.0
    saw_deploy: bool = field(default=False, init=False)

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:  # noqa: ARG002
        deadline = time.monotonic() + self.limit
        while time.monotonic() < deadline:
            if any(c.startswith("set ssl ocsp-response") for c in self.hap.commands):
                self.saw_deploy = True
                break
            await asyncio.sleep(0.01)
        return web.Response(body=self.body, content_type=OCSP_TYPE)


async def test_a_stored_staple_is_deployed_while_others_are_fetched(
    pki, fault_responder, tmp_path, sock_dir, monkeypatch
):
    """Round size 1: the first staple is in HAProxy before the second responder answers."""
    monkeypatch.setattr(pusher, "ROUND", 1)
    fast = pki.leaf("fast.example.test", ocsp_url=fault_responder.url_for("fast"))
    late = pki.leaf("late.example.test", ocsp_url=fault_responder.url_for("late"))
    hap = FakeHAProxy(sock_dir / "admin.sock")
    entries = []
    for name, leaf in (("fast.pem", fast), ("late.pem", late)):
        path = pki.write(tmp_path, name, leaf)
        hap.register(str(path), cert_id(leaf.cert, pki.intermediate.cert).hex())
        entries.append(CertEntry(str(path), names=(str(path),)))
    fault_responder.on("fast", Serve(pki.response(fast.cert)))
    waiting = AfterDeploy(hap, pki.response(late.cert))
    fault_responder.on("late", waiting)
    options = pipeline.Options(sockets=(str(hap.path),), state_dir=tmp_path / "state")
    async with hap, Fetcher() as fetcher:
        rows = await pipeline.run(entries, options, fetcher=fetcher, now=now())
    assert [(r.status, r.action) for r in rows] == [(Status.GOOD, Action.DEPLOYED)] * 2, rows
    assert waiting.saw_deploy, "the first staple waited for the last fetch"
    assert hap.connections == 1  # both rounds on one connection


async def test_a_bug_outside_the_certificates_ends_the_run_and_its_workers(
    pki, fault_responder, tmp_path, monkeypatch
):
    """
    A bug outside one certificate's handling (here the progress callback) ends the run.

    The other workers are cancelled: none goes on asking CAs and writing
    staples after the caller has seen the error (the daemon's next batch).
    A certificate that fails, even by a bug, does not end the run: see
    test_pipeline.py.
    """
    monkeypatch.setattr(pipeline, "MAX_IN_FLIGHT", 2)
    url = fault_responder.url_for("slow")
    entries = []
    for i in range(8):
        leaf = pki.leaf(f"c{i}.example.test", ocsp_url=url)
        entries.append(CertEntry(str(pki.write(tmp_path, f"c{i}.pem", leaf))))
    fault_responder.on("slow", Serve(pki.response(leaf.cert), delay=0.05))

    calls = []

    def progress() -> None:
        calls.append(1)
        if len(calls) == 1:  # once: the other worker would go on alone
            raise RuntimeError("the terminal went away")

    async with Fetcher() as fetcher:  # open on, as the daemon's is
        with pytest.raises(RuntimeError, match="terminal went away"):
            await pipeline.run(
                entries, pipeline.Options(), fetcher=fetcher, now=now(), progress=progress
            )
        asked = fault_responder.requests
        await asyncio.sleep(0.3)
        assert fault_responder.requests == asked < len(entries)


async def test_a_slow_haproxy_holds_producers_back(pki, sock_dir, monkeypatch):
    """
    HAProxy answering slowly: once ROUNDS_WAITING rounds wait, ``add`` waits too.

    Without that, a run against a slow HAProxy would hold every staple until
    the end (the memory the rounds exist to save).
    """
    monkeypatch.setattr(pusher, "ROUND", 1)
    leaf = pki.leaf("slow.example.test")
    der = pki.response(leaf.cert)
    resp = ocsp.load_der_ocsp_response(der)
    key = cert_id(leaf.cert, pki.intermediate.cert)
    hap = FakeHAProxy(sock_dir / "admin.sock", fault="slow", delay=0.1)
    crts = [f"/certs/{i}.pem" for i in range(pusher.ROUNDS_WAITING + 3)]
    for crt in crts:
        hap.register(crt, key.hex())
    rows: dict[int, ResultRow] = {}
    returned: list[float] = []
    async with hap:
        push = pusher.Pusher([str(hap.path)], rows.__setitem__)
        started = time.monotonic()
        for i, crt in enumerate(crts):
            item = DeployItem(crt, der, key, None, resp.this_update_utc, resp.next_update_utc)
            row = ResultRow(crt, None, Status.GOOD, Action.FETCHED)
            await push.add(i, row, (item,))
            returned.append(time.monotonic() - started)
        await push.finish()
    free = pusher.ROUNDS_WAITING + 1  # one round being pushed, the rest waiting
    assert max(returned[:free]) < 0.1, returned
    assert returned[free] > 0.2, returned  # a round (3+ slow replies) had to finish first
    assert sorted(rows) == list(range(len(crts)))
    assert all(r.action is Action.DEPLOYED for r in rows.values()), rows


def _deploy_item(pki, leaf, crt: str) -> DeployItem:
    der = pki.response(leaf.cert)
    resp = ocsp.load_der_ocsp_response(der)
    return DeployItem(
        crt, der, cert_id(leaf.cert, pki.intermediate.cert), None,
        resp.this_update_utc, resp.next_update_utc,
    )  # fmt: skip


async def _push_rows(sockets: list[str], items: dict[str, DeployItem]) -> dict[int, ResultRow]:
    rows: dict[int, ResultRow] = {}
    push = pusher.Pusher(sockets, rows.__setitem__)
    for key, (crt, item) in enumerate(items.items()):
        await push.add(key, ResultRow(crt, None, Status.GOOD, Action.FETCHED), (item,))
    await push.finish()
    return rows


async def test_a_failure_names_its_socket_once(pki, sock_dir):
    """A failed commit and a refused name each say 'haproxy <socket>:' once, not twice."""
    leaf = pki.leaf("once.example.test")
    hap = FakeHAProxy(sock_dir / "admin.sock", fail_commit={"/c/a.pem"})
    hap.register("/c/a.pem", None, commit_key=cert_id(leaf.cert, pki.intermediate.cert).hex())
    items = {crt: _deploy_item(pki, leaf, crt) for crt in ("/c/a.pem", "/c/t\tab.pem")}
    async with hap:
        rows = await _push_rows([str(hap.path)], items)
    for row in rows.values():
        assert row.action is Action.FAILED
        assert (row.error or "").count(f"haproxy {hap.path}:") == 1, row.error
    assert "Failed!" in (rows[0].error or "")
