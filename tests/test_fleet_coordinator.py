"""
The coordinator against a real redis-server and the real validator.

What a node takes from the fleet, what it refuses, and when it asks the CA.

The "CA" here is a counting function handing out responses the test PKI signs:
the coordinator's contract is about whether and how often it is called.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging

import pytest

import redis_proc
from hastaple.core.model import Status
from hastaple.core.ocsp import request
from hastaple.core.ocsp.validate import validate
from hastaple.engine.fetch import OCSPReply
from hastaple.errors import FetchError
from hastaple.stores import redis_url
from hastaple.stores.coordinator import Coordinator, key_of
from hastaple.stores.fleet import Fleet, Publication

pytestmark = pytest.mark.skipif(not redis_proc.available(), reason="redis-server not installed")


@pytest.fixture(name="server")
def _server(tmp_path):
    srv = redis_proc.Redis(tmp_path / "redis").start()
    yield srv
    srv.stop()


class CA:
    """Counts requests; answers each with a fresh response for the leaf asked."""

    def __init__(self, pki, leaves, *, delay: float = 0.0, fail: bool = False) -> None:
        self.pki, self.leaves, self.delay, self.fail = pki, leaves, delay, fail
        self.asked = 0

    async def __call__(self, leaf) -> OCSPReply:
        self.asked += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise FetchError("http://ca.test/", "connection refused")
        return OCSPReply(self.pki.response(leaf.cert), "http://ca.test/", None, self.delay)


def job(pki, leaf, ca, now=None, **kw):
    """The keyword arguments of obtain() for ``leaf``, as the pipeline passes them."""
    when = now or dt.datetime.now(dt.UTC)
    check = functools.partial(validate, cert=leaf.cert, issuer=pki.intermediate.cert, now=when)
    req = request.build(leaf.cert, pki.intermediate.cert)
    return {"request_der": req, "check": check, "ask_ca": functools.partial(ca, leaf),
            "now": when, **kw}  # fmt: skip


async def put(fleet, pki, leaf, der, this_update="2026-01-01T00:00:00Z"):
    key = key_of(request.build(leaf.cert, pki.intermediate.cert))
    await fleet.publish(key, Publication(der, this_update, "2099-01-01T00:00:00Z", 4102444800, "u"))


async def test_a_fresh_valid_entry_is_used_without_asking_the_ca(pki, server):
    leaf = pki.leaf("hit.test")
    ca = CA(pki, [leaf])
    async with Fleet(redis_url.parse(server.url), node="a") as a:
        first = await Coordinator(a).obtain(**job(pki, leaf, ca))
        assert (first.source, ca.asked) == ("ca", 1)
    async with Fleet(redis_url.parse(server.url), node="b") as b:
        second = await Coordinator(b).obtain(**job(pki, leaf, ca))
        assert (second.source, second.node, ca.asked) == ("fleet", "a", 1)
        assert second.der == first.der and b.stats.fetched_by == {"a": 1}


async def test_a_due_entry_is_refreshed_and_replaced(pki, server):
    leaf = pki.leaf("due.test")
    ca = CA(pki, [leaf])
    now = dt.datetime.now(dt.UTC)
    old = pki.response(leaf.cert, this_update=now - dt.timedelta(days=5),
                       next_update=now + dt.timedelta(days=2))  # fmt: skip
    async with Fleet(redis_url.parse(server.url)) as fleet:
        await put(fleet, pki, leaf, old, "2099-12-31T00:00:00Z")  # and it lies about its age
        got = await Coordinator(fleet).obtain(**job(pki, leaf, ca))
        assert (got.source, ca.asked) == ("ca", 1)
        assert (await fleet.read(key_of(job(pki, leaf, ca)["request_der"]))).der == got.der


async def test_an_entry_older_than_the_staple_held_is_refused_once(pki, server, caplog):
    leaf = pki.leaf("older.test")
    ca = CA(pki, [leaf])
    now = dt.datetime.now(dt.UTC)
    older = pki.response(leaf.cert, this_update=now - dt.timedelta(hours=2))
    held = validate(pki.response(leaf.cert), cert=leaf.cert, issuer=pki.intermediate.cert, now=now)
    caplog.set_level(logging.WARNING)
    async with Fleet(redis_url.parse(server.url)) as fleet:
        coordinator = Coordinator(fleet)
        for _ in range(2):
            await put(fleet, pki, leaf, older, "2099-12-31T00:00:00Z")  # over the CA's answer
            got = await coordinator.obtain(**job(pki, leaf, ca, held=held))
            assert got.source == "ca"
    assert ca.asked == 2 and fleet.stats.rejected == 2
    assert sum("is older" in r.getMessage() for r in caplog.records) == 1  # logged once


@pytest.mark.parametrize("forgery", ["other", "garbage", "truncated", "unrelated", "unknown"])
async def test_forged_entries_are_refused(pki, server, forgery):
    leaf = pki.leaf("forged.test")
    other = pki.leaf("other.test")
    ca = CA(pki, [leaf])
    good = pki.response(leaf.cert)
    der = {
        "other": pki.response(other.cert),
        "garbage": b"\x30\x03\x0a\x01\x00",
        "truncated": good[: len(good) // 2],
        "unrelated": pki.response(leaf.cert, signer=pki.other_ca),
        "unknown": pki.response(leaf.cert, status="unknown"),
    }[forgery]
    async with Fleet(redis_url.parse(server.url)) as fleet:
        await put(fleet, pki, leaf, der, "2099-12-31T00:00:00Z")
        got = await Coordinator(fleet).obtain(**job(pki, leaf, ca))
        assert got.source == "ca" and ca.asked == 1 and fleet.stats.rejected == 1
        assert got.verdict.status is Status.GOOD
        # The forgery is gone: the next node takes the CA's answer.
        assert (await Coordinator(fleet).obtain(**job(pki, leaf, ca))).source == "fleet"


async def test_a_revoked_entry_counts_as_the_cas_word(pki, server):
    leaf = pki.leaf("revoked.test")
    ca = CA(pki, [leaf])
    async with Fleet(redis_url.parse(server.url)) as fleet:
        await put(fleet, pki, leaf, pki.response(leaf.cert, status="revoked"))
        got = await Coordinator(fleet).obtain(**job(pki, leaf, ca))
    assert (got.source, got.verdict.status, ca.asked) == ("fleet", Status.REVOKED, 0)


async def test_many_nodes_at_once_ask_the_ca_once_per_certificate(pki, server):
    leaves = [pki.leaf(f"m{i}.test") for i in range(40)]
    ca = CA(pki, leaves, delay=0.02)
    url = redis_url.parse(server.url)
    async with Fleet(url, node="a") as a, Fleet(url, node="b") as b, Fleet(url, node="c") as c:
        nodes = [Coordinator(f) for f in (a, b, c)]
        got = await asyncio.gather(
            *(n.obtain(**job(pki, leaf, ca)) for leaf in leaves for n in nodes)
        )
    assert ca.asked == 40
    assert sum(g.source == "fleet" for g in got) == 80
    trips = sum(f.stats.round_trips for f in (a, b, c)) / 40
    assert trips < 12  # per certificate, all three nodes together (heartbeats included)


async def test_a_failed_fetch_releases_the_lease_and_the_waiters_go_on(pki, server):
    leaf = pki.leaf("fails.test")
    url = redis_url.parse(server.url)
    failing = CA(pki, [leaf], delay=0.2, fail=True)
    working = CA(pki, [leaf])
    async with Fleet(url, node="a") as a, Fleet(url, node="b") as b:
        first = asyncio.create_task(Coordinator(a, lease=30).obtain(**job(pki, leaf, failing)))
        await asyncio.sleep(0.05)  # a holds the lease
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await Coordinator(b, lease=30).obtain(**job(pki, leaf, working))
        with pytest.raises(FetchError):
            await first
    assert got.source == "ca" and working.asked == 1
    assert loop.time() - started < 2  # woken by the release, not after the 30 s lease


async def test_redis_down_means_standalone(pki, tmp_path):
    leaf = pki.leaf("down.test")
    ca = CA(pki, [leaf])
    dead = redis_url.parse(f"redis://127.0.0.1:{redis_proc.free_port()}/0")
    async with Fleet(dead, timeout=0.3) as fleet:
        got = await Coordinator(fleet).obtain(**job(pki, leaf, ca))
    assert got.source == "ca" and ca.asked == 1


async def test_adopt_takes_only_a_newer_valid_staple(pki, server):
    leaf = pki.leaf("adopt.test")
    now = dt.datetime.now(dt.UTC)
    mine = validate(pki.response(leaf.cert, this_update=now - dt.timedelta(minutes=5)),
                    cert=leaf.cert, issuer=pki.intermediate.cert, now=now)  # fmt: skip
    check = functools.partial(validate, cert=leaf.cert, issuer=pki.intermediate.cert, now=now)
    req = request.build(leaf.cert, pki.intermediate.cert)
    async with Fleet(redis_url.parse(server.url)) as fleet:
        coordinator = Coordinator(fleet)
        assert await coordinator.adopt(req, check=check, held=mine) is None  # nothing there
        older = pki.response(leaf.cert, this_update=now - dt.timedelta(minutes=10))
        await put(fleet, pki, leaf, older, "2026-01-01T00:00:00Z")
        assert await coordinator.adopt(req, check=check, held=mine) is None
        newer = pki.response(leaf.cert, this_update=now - dt.timedelta(minutes=1))
        await put(fleet, pki, leaf, newer, "2026-01-02T00:00:00Z")
        got = await coordinator.adopt(req, check=check, held=mine)
        assert got is not None and got.der == newer
