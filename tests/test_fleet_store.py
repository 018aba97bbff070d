"""
The fleet client against a real redis-server: layout, leases, announcements, outages.

Every test starts its own server (tests/redis_proc.py) on a free loopback port
with persistence off; no fake Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import pytest
import trustme

import redis_proc
from hastaple.errors import ConfigError
from hastaple.stores import redis_url
from hastaple.stores.fleet import Fleet, Lease, Publication, StapleKey

pytestmark = pytest.mark.skipif(not redis_proc.available(), reason="redis-server not installed")

KEY = StapleKey("ab" * 20, "1f")


@pytest.fixture(name="server")
def _server(tmp_path):
    srv = redis_proc.Redis(tmp_path / "redis").start()
    yield srv
    srv.stop()


def staple(
    der: bytes = b"DER", this: str = "2026-12-06T00:00:00Z", *, days: int = 7
) -> Publication:
    expire = int(time.time()) + days * 86400
    nxt = dt.datetime.fromtimestamp(expire, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Publication(der, this, nxt, expire, "http://ca.test/ocsp")


# -- the URL -----------------------------------------------------------------


def test_url_forms(tmp_path):
    a = redis_url.parse("redis://user:p%40ss@redis.example:6380/3")
    assert (a.host, a.port, a.db, a.username, a.password) == (
        "redis.example",
        6380,
        3,
        "user",
        "p@ss",
    )
    assert a.display == "redis://redis.example:6380/3"  # no credentials in logs
    assert redis_url.parse("redis://10.0.0.1").port == 6379
    assert redis_url.parse("redis://[::1]:7000/1").display == "redis://[::1]:7000/1"
    u = redis_url.parse("unix:///run/redis/redis.sock?db=2")
    assert (u.path, u.db, u.display) == (
        "/run/redis/redis.sock",
        2,
        "unix:///run/redis/redis.sock?db=2",
    )
    assert redis_url.parse("unix://:secret@/run/r.sock").password == "secret"  # noqa: S105 - a test value
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    t = redis_url.parse(f"rediss://h:6379/0?ssl_ca_certs={ca}&ssl_certfile={ca}&ssl_keyfile={ca}")
    kw = t.connection_kwargs()
    assert kw["ssl_ca_certs"] == str(ca) and kw["ssl_certfile"] == str(ca)
    assert kw["ssl_check_hostname"] is True


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h/0", "scheme"),
        ("redis://h/zero", "number"),
        ("redis://h:99999/0", "Port"),
        ("redis://:pw@/0", "no host"),
        ("redis://h/0?ssl_ca_certs=/etc/passwd", "need rediss"),
        ("rediss://h/0?ssl_ca_certs=/nonexistent", "not a readable file"),
        ("rediss://h/0?ssl_cert=/x", "unknown option"),
        ("unix://host/path.sock", "three slashes"),
        ("unix:///s.sock?db=x", "number"),
        ("unix:///s.sock?db=1&db=2", "twice"),
    ],
)
def test_bad_urls_are_configuration_errors(url, says):
    with pytest.raises(ConfigError, match=says):
        redis_url.parse(url)


def test_a_bad_url_never_shows_its_password():
    with pytest.raises(ConfigError) as info:
        redis_url.parse("redis://u:hunter2@h/nope")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


# -- layout, leases, announcements -------------------------------------------------


async def test_the_documented_layout(server):
    async with Fleet(redis_url.parse(server.url), node="n1") as fleet:
        assert fleet.up
        assert await fleet.publish(KEY, staple(b"\x30\x03abc"))
        entry = await fleet.read(KEY)
    assert entry is not None and entry.der == b"\x30\x03abc" and entry.node == "n1"
    name = f"hastaple:staple:{'ab' * 20}:1f"
    fields = server.cli("HGETALL", name).split()
    assert fields[0::2] == ["der", "this_update", "next_update", "fetched_at", "node", "url"]
    assert fields[fields.index("this_update") + 1] == "2026-12-06T00:00:00Z"
    ttl = int(server.cli("TTL", name))
    assert 7 * 86400 - 60 < ttl <= 7 * 86400  # expires at nextUpdate
    assert "n1" in server.cli("ZRANGE", "hastaple:nodes", "0", "-1")


async def test_never_replaces_a_newer_staple(server):
    async with Fleet(redis_url.parse(server.url)) as fleet:
        assert await fleet.publish(KEY, staple(b"new", "2026-12-06T10:00:00Z"))
        assert not await fleet.publish(KEY, staple(b"old", "2026-12-06T09:00:00Z"))
        assert not await fleet.publish(KEY, staple(b"same", "2026-12-06T10:00:00Z"))
        assert (await fleet.read(KEY)).der == b"new"
        # An entry the node found unusable (forged) is overwritten whatever it
        # claims, while it still claims what the node saw ...
        mine = staple(b"mine", "2026-12-06T08:00:00Z")
        assert not await fleet.publish(KEY, mine, unusable="2026-12-06T09:59:59Z")
        assert await fleet.publish(KEY, mine, unusable="2026-12-06T10:00:00Z")
        assert (await fleet.read(KEY)).der == b"mine"


async def test_a_key_of_another_type_is_replaced_not_an_error(server):
    server.cli("SET", f"hastaple:staple:{KEY.suffix}", "garbage")
    async with Fleet(redis_url.parse(server.url)) as fleet:
        assert await fleet.read(KEY) is None  # WRONGTYPE: a failed read, not an outage
        assert fleet.up
        assert await fleet.publish(KEY, staple(b"good"))
        assert (await fleet.read(KEY)).der == b"good"


async def test_one_lease_holder_and_only_it_releases(server):
    url = redis_url.parse(server.url)
    async with Fleet(url, node="a") as a, Fleet(url, node="b") as b:
        state, token = await a.lease(KEY, 30)
        assert state is Lease.ACQUIRED and token
        assert (await b.lease(KEY, 30))[0] is Lease.HELD
        await b.release(KEY, "not-the-token")
        assert (await b.lease(KEY, 30))[0] is Lease.HELD  # still a's
        await a.release(KEY, token)
        assert (await b.lease(KEY, 30))[0] is Lease.ACQUIRED


async def test_a_lease_expires_with_its_holder(server):
    url = redis_url.parse(server.url)
    async with Fleet(url) as a, Fleet(url) as b:
        assert (await a.lease(KEY, 0.2))[0] is Lease.ACQUIRED
        assert (await b.lease(KEY, 30))[0] is Lease.HELD
        await asyncio.sleep(0.3)
        assert (await b.lease(KEY, 30))[0] is Lease.ACQUIRED


async def test_publication_wakes_waiters_and_is_announced(server):
    url = redis_url.parse(server.url)
    seen: list[StapleKey] = []
    async with Fleet(url, node="a") as a, Fleet(url, node="b", on_published=seen.append) as b:
        _, token = await a.lease(KEY, 30)
        waiting = b.expect(KEY)
        started = time.monotonic()
        assert await a.publish(KEY, staple(), token=token)
        await asyncio.wait_for(waiting, 2)
        assert time.monotonic() - started < 1.0
        assert seen == [KEY]
        # b read nothing before: the entry changed since, so no lease (no second fetch) ...
        assert (await b.lease(KEY, 30))[0] is Lease.CHANGED
        # ... and the publish released a's lease.
        assert (await b.lease(KEY, 30, seen="2026-12-06T00:00:00Z"))[0] is Lease.ACQUIRED


async def test_releasing_a_lease_wakes_waiters(server):
    url = redis_url.parse(server.url)
    async with Fleet(url) as a, Fleet(url) as b:
        _, token = await a.lease(KEY, 30)
        waiting = b.expect(KEY)
        await a.release(KEY, token)
        await asyncio.wait_for(waiting, 2)


async def test_nodes_seen(server):
    url = redis_url.parse(server.url)
    async with Fleet(url, node="a") as a, Fleet(url, node="b"):
        names = [n for n, _ in await a.nodes_seen()]
    assert sorted(names) == ["a", "b"]


# -- outages -----------------------------------------------------------------------


async def test_down_at_start_is_one_warning_and_fast_answers(tmp_path, caplog):
    dead = redis_proc.Redis(tmp_path / "r")
    dead.port = redis_proc.free_port()  # nothing listens
    caplog.set_level(logging.WARNING)
    async with Fleet(redis_url.parse(dead.url), timeout=0.5) as fleet:
        assert not fleet.up
        started = time.monotonic()
        for _ in range(50):
            assert await fleet.read(KEY) is None
            assert (await fleet.lease(KEY, 30))[0] is Lease.DOWN
            assert not await fleet.publish(KEY, staple())
        assert time.monotonic() - started < 0.5  # no timeout per call while down
        assert fleet.expect(KEY).done()  # nobody waits for a Redis that is down
    warnings = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(warnings) == 1


async def test_restart_resyncs_and_warns_once_per_outage(server, caplog):
    caplog.set_level(logging.WARNING)
    resyncs: list[int] = []
    fleet = Fleet(redis_url.parse(server.url), timeout=0.5, on_resync=lambda: resyncs.append(1))
    async with fleet:
        assert fleet.up
        server.stop()
        for _ in range(20):  # every certificate of a batch finds it down: one warning
            await fleet.read(KEY)
        assert not fleet.up
        server.start()  # same port, empty (no persistence)
        for _ in range(100):
            if fleet.up:
                break
            await asyncio.sleep(0.1)
        assert fleet.up and resyncs == [1]
        assert await fleet.publish(KEY, staple())  # scripts loaded again after the restart
    messages = [r.getMessage() for r in caplog.records]
    assert sum("does not answer" in m for m in messages) == 1
    assert sum("is back;" in m for m in messages) == 1


async def test_a_hung_redis_costs_one_timeout_then_nothing(server):
    async with Fleet(redis_url.parse(server.url), timeout=0.3) as fleet:
        server.pause()
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(fleet.read(KEY) for _ in range(200)))
            assert results == [None] * 200
            assert time.monotonic() - started < 1.5  # bounded: one timeout, not 200
            assert not fleet.up
        finally:
            server.resume()
        for _ in range(100):
            if fleet.up:
                break
            await asyncio.sleep(0.1)
        assert fleet.up


async def test_refused_auth_is_an_outage_not_an_error(tmp_path, caplog):
    srv = redis_proc.Redis(tmp_path / "r", password="right").start()  # noqa: S106 - a test value
    try:
        wrong = srv.url.replace(":right@", ":wrong@")
        async with Fleet(redis_url.parse(wrong), timeout=0.5) as fleet:
            assert not fleet.up
            assert await fleet.read(KEY) is None
        async with Fleet(redis_url.parse(srv.url)) as fleet:
            assert fleet.up and await fleet.publish(KEY, staple())
    finally:
        srv.stop()


# -- transports --------------------------------------------------------------------


async def test_unix_socket(sock_dir):
    srv = redis_proc.Redis(sock_dir / "r", unix=True).start()
    try:
        async with Fleet(redis_url.parse(f"unix://{srv.socket_path}?db=1")) as fleet:
            assert fleet.up and await fleet.publish(KEY, staple())
        assert "der" in srv.cli("-n", "1", "HKEYS", f"hastaple:staple:{KEY.suffix}")
    finally:
        srv.stop()


async def test_tls_with_a_ca_file_and_a_client_certificate(tmp_path):
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("hastaple-node")
    files = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem),
        ("server.pem", server_cert.cert_chain_pems[0]),
        ("server.key", server_cert.private_key_pem),
        ("client.pem", client_cert.cert_chain_pems[0]),
        ("client.key", client_cert.private_key_pem),
    ):
        blob.write_to_path(str(tmp_path / name))
        files[name] = tmp_path / name
    srv = redis_proc.Redis(
        tmp_path / "r", tls_cert=files["server.pem"], tls_key=files["server.key"],
        tls_client_ca=files["ca.pem"],
    ).start()  # fmt: skip
    try:
        base = f"rediss://127.0.0.1:{srv.port}/0?ssl_ca_certs={files['ca.pem']}"
        good = f"{base}&ssl_certfile={files['client.pem']}&ssl_keyfile={files['client.key']}"
        async with Fleet(redis_url.parse(good)) as fleet:
            assert fleet.up and await fleet.publish(KEY, staple())
            assert (await fleet.read(KEY)).der == b"DER"
        async with Fleet(redis_url.parse(base), timeout=0.5) as fleet:
            assert not fleet.up  # no client certificate: refused, stapling goes on alone
        other = trustme.CA()
        other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
        wrong_ca = good.replace(str(files["ca.pem"]), str(tmp_path / "other.pem"))
        async with Fleet(redis_url.parse(wrong_ca), timeout=0.5) as fleet:
            assert not fleet.up  # the server's certificate is not trusted
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--fleet", "mysql://h/0"], "fleet URL 'mysql://h/0': the scheme must be"),
        (["--fleet", "redis://h/0", "--fleet-prefix", "a b"], "--fleet-prefix"),
    ],
)
def test_fetch_refuses_a_bad_fleet_before_any_work(tmp_path, flags, says):
    from click.testing import CliRunner  # noqa: PLC0415

    from hastaple.app.cli import cli  # noqa: PLC0415

    result = CliRunner().invoke(cli, ["fetch", str(tmp_path), *flags])
    assert result.exit_code == 2
    assert says in result.stderr
