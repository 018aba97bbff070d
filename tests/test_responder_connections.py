"""
Connections per responder host: configurable, and a stalled host holds up no other.

Two fault-injecting responders on two ports are two hosts to the fetcher: one
never answers, the other answers at once. The second's certificates must be
done long before the first one's requests even time out.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from hastaple.core.model import Action, CertEntry
from hastaple.core.ocsp import request
from hastaple.engine import pipeline
from hastaple.engine.fetch import Fetcher, Limits
from hastaple.testing.pki import now
from hastaple.testing.responders import FaultResponder, Serve, Stall
from test_fetch_command import hastaple


async def test_a_stalled_host_holds_up_no_other(pki, fault_responder):
    """
    64 connections stalled on one host; a request to another answers at once.

    aiohttp's connector used to share a pool of 64 connections among all hosts:
    with 64 per host, one stalled host took them all and the other host's
    request waited in that pool (and its wait counted against its timeout).
    """
    leaf = pki.leaf()
    der = request.build(leaf.cert, pki.intermediate.cert)
    stalled = fault_responder.on("stall", Stall(30))
    limits = Limits(per_host=64, timeout=5)
    body = pki.response(leaf.cert)
    async with FaultResponder() as other, Fetcher(limits) as fetcher:
        answering = other.on("ok", Serve(body))
        stuck = [asyncio.create_task(fetcher.ocsp(stalled, der)) for _ in range(80)]
        while fault_responder.in_flight < 64:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        reply = await asyncio.wait_for(fetcher.ocsp(answering, der), 4)
        took = time.monotonic() - started
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
    assert reply.der == body
    assert took < 1.0, f"the answering host took {took:.2f} s behind the stalled one"
    assert fault_responder.max_in_flight == 64  # and the stalled host got its 64, no more


async def test_the_answering_hosts_certificates_complete_first(
    pki, fault_responder, tmp_path, monkeypatch
):
    """
    A whole run: 6 certificates on a stalled host first, then 3 on an answering one.

    4 certificates in flight (256 in production), 2 connections per host, a
    2 s timeout. Before, the 2 workers queued behind the stalled host's 2
    connections waited for them to time out, then took the next stalled
    certificates: the answering host's turn came after two rounds of timeouts
    (4 s). Now a host with every connection busy and no answer for
    ``stalled_after`` (0.3 s) is stalled; certificates waiting for it are set
    aside until the rest are done.
    """
    monkeypatch.setattr(pipeline, "MAX_IN_FLIGHT", 4)
    stalled = fault_responder.on("stall", Stall(30))
    entries, good = [], []
    async with FaultResponder() as other:
        for i in range(6):
            leaf = pki.leaf(f"stuck{i}.example.test", ocsp_url=stalled)
            entries.append(CertEntry(str(pki.write(tmp_path, f"a{i}.pem", leaf))))
        for i in range(3):
            leaf = pki.leaf(f"ok{i}.example.test", ocsp_url=other.url_for(f"b{i}"))
            other.on(f"b{i}", Serve(pki.response(leaf.cert)))
            entries.append(CertEntry(str(pki.write(tmp_path, f"b{i}.pem", leaf))))
            good.append(tmp_path / f"b{i}.pem.ocsp")
        options = pipeline.Options(state_dir=tmp_path / "state")
        limits = Limits(per_host=2, timeout=2, stalled_after=0.3)
        async with Fetcher(limits) as fetcher:
            started = time.time()
            rows = await pipeline.run(entries, options, fetcher=fetcher, now=now())
    by_name = {r.cert.rsplit("/", 1)[-1]: r for r in rows}
    assert [by_name[f"b{i}.pem"].action for i in range(3)] == [Action.FETCHED] * 3
    for i in range(6):  # every stalled certificate was still asked, and failed on its own
        assert by_name[f"a{i}.pem"].error == f"{stalled}: no complete answer within 2 s"
    assert fault_responder.requests == 6
    done = max(p.stat().st_mtime for p in good) - started
    assert done < 1.5, f"the answering host's staples took {done:.2f} s"


async def test_fetch_flag_and_environment_set_the_connections(pki, fault_responder, tmp_path):
    """`--responder-connections` and HASTAPLE_RESPONDER_CONNECTIONS bound requests in flight."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for i in range(10):
        leaf = pki.leaf(f"c{i}.example.test", ocsp_url=fault_responder.url_for(f"c{i}"))
        fault_responder.on(f"c{i}", Serve(pki.response(leaf.cert), delay=0.3))
        pki.write(certs, f"c{i}.pem", leaf)
    state = tmp_path / "state"
    runs = [
        ((), {}, 8),  # the default
        (("--responder-connections", "3"), {}, 3),
        ((), {"HASTAPLE_RESPONDER_CONNECTIONS": "2"}, 2),
    ]
    for flags, env, expected in runs:
        fault_responder.max_in_flight = 0
        code, out, err = await hastaple(
            "fetch", certs, "--json", "--force", "--state-dir", state, *flags,
            env={**os.environ, **env},
        )  # fmt: skip
        assert code == 0, err
        assert [r["action"] for r in json.loads(out)] == ["fetched"] * 10
        assert fault_responder.max_in_flight == expected, (flags, env)


async def test_fetch_refuses_a_bad_count(pki, tmp_path):
    """0 connections, or more than could ever be used, is a usage error (exit 2)."""
    cert = pki.write(tmp_path, "site.pem", pki.leaf())
    for value in ("0", "257", "many"):
        code, _, err = await hastaple("fetch", cert, "--responder-connections", value)
        assert code == 2, value
        assert "--responder-connections" in err
    # From the environment, the message names the variable the operator set.
    env = {**os.environ, "HASTAPLE_RESPONDER_CONNECTIONS": "many"}
    code, _, err = await hastaple("fetch", cert, env=env)
    assert code == 2
    assert "HASTAPLE_RESPONDER_CONNECTIONS (from the environment)" in err, err
    assert "'many'" in err
