"""
The daemon in real time against a real HAProxy 2.6 and 2.8 and ``openssl ocsp``.

What a client sees is checked with ``openssl s_client -status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import pytest

from hastaple.config import Config
from hastaple.core.schedule import Policy
from hastaple.daemon.scheduler import Daemon
from hastaple.daemon.state import State
from hastaple.engine.fetch import Fetcher
from hastaple.testing import haproxy as haproxy_proc

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def _running(tmp_path, crt_dir, *sockets, **settings):
    """
    A daemon over ``crt_dir`` pushing to ``sockets``, polling HAProxy every 0.2 s.

    ``crt_dir`` None: the sources are in ``settings`` (``haproxy_configs=``).
    """
    config = Config(
        state_dir=tmp_path / "state",
        paths=() if crt_dir is None else (crt_dir,),
        sockets=tuple(str(s) for s in sockets),
        metrics_address=None,
        haproxy_poll=dt.timedelta(seconds=0.2),
        policy=Policy(spread=dt.timedelta(0)),
        **settings,
    )
    state = State.open(config.state_dir)
    stop, ready = asyncio.Event(), asyncio.Event()
    async with Fetcher() as fetcher:
        daemon = Daemon(config, fetcher=fetcher, state=state)
        task = asyncio.create_task(daemon.serve(stop, ready=ready))
        await ready.wait()
        try:
            yield daemon
        finally:
            stop.set()
            await task
            state.close()


async def _stapled(hap, servername: str, within: float) -> float:
    """Seconds until s_client sees a good staple for ``servername``; fail after ``within``."""
    start = time.monotonic()
    text = ""
    while time.monotonic() - start < within:
        try:
            text = await asyncio.to_thread(haproxy_proc.staple, hap.port, servername)
        except AssertionError as exc:  # not served yet (reload in progress): no handshake
            text = str(exc)
        if "Cert Status: good" in text:
            return time.monotonic() - start
        await asyncio.sleep(0.05)  # polling what a TLS client sees; there is no event for it
    pytest.fail(f"{servername} not stapled within {within} s:\n{text}")


def _pid(hap: haproxy_proc.HAProxy) -> str | None:
    """The pid of the worker answering on ``hap.socket``, or None while there is none."""
    try:
        info = haproxy_proc.cli(hap.socket, "show info")
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("Pid:")), None)  # fmt: skip


async def test_new_certificate_is_stapled_within_2s(
    pki, crt_dir, tmp_path, start_haproxy, openssl_responder
):
    """A certificate copied into a watched directory (then HAProxy reloaded) is stapled in 2 s."""
    first = pki.leaf("first.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(first.cert)
    pki.write(crt_dir, "first.pem", first)
    hap = start_haproxy(master=True)
    async with _running(tmp_path, crt_dir, hap.socket):
        await _stapled(hap, "first.test", within=5)
        new = pki.leaf("new.test", ocsp_url=openssl_responder.url)
        openssl_responder.add(new.cert)
        start = time.monotonic()
        staging = tmp_path / "new.pem"
        staging.write_bytes(pki.bundle(new))
        staging.replace(crt_dir / "new.pem")
        # The operator's deploy hook reloads HAProxy so that it serves the new certificate.
        old_pid = await asyncio.to_thread(_pid, hap)
        reloading = time.monotonic()
        await asyncio.to_thread(haproxy_proc.cli, hap.workdir / "master.sock", "reload")
        # HAProxy's own reload time is not ours to promise: wait for its new worker.
        while await asyncio.to_thread(_pid, hap) in {old_pid, None}:
            assert time.monotonic() - reloading < 10
            await asyncio.sleep(0.02)
        reload = time.monotonic() - reloading
        await _stapled(hap, "new.test", within=2 + reload - (time.monotonic() - start))
    # The context exit is not part of the promise.
    assert time.monotonic() - start < 2 + reload + 0.5
    assert (crt_dir / "new.pem.ocsp").exists()


async def test_haproxy_restart_restapled_without_ca_request(
    pki, crt_dir, tmp_path, haproxy_binary, openssl_responder
):
    """HAProxy killed and started again serves every staple within 5 s; the CA is not asked."""
    names = ["r1.test", "r2.test", "r3.test"]
    for name in names:
        leaf = pki.leaf(name, ocsp_url=openssl_responder.url)
        openssl_responder.add(leaf.cert)
        pki.write(crt_dir, f"{name}.pem", leaf)
    workdir = tmp_path / "h"
    workdir.mkdir()
    hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir)
    try:
        async with _running(tmp_path, crt_dir, hap.socket) as daemon:
            for name in names:
                await _stapled(hap, name, within=5)
            asked = openssl_responder.requests
            assert asked == len(names)
            hap.stop()
            await asyncio.sleep(0.5)  # let the daemon see HAProxy gone (polls every 0.2 s)
            hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir)
            start = time.monotonic()
            for name in names:
                await _stapled(hap, name, within=5 - (time.monotonic() - start))
            deadline = time.monotonic() + 3
            while not all(v == "update" for r in daemon.records.values() for _, v in r.haproxy):
                assert time.monotonic() < deadline, daemon.records
                await asyncio.sleep(0.05)  # waiting for the daemon's re-push to be recorded
            assert openssl_responder.requests == asked
            # Down for a moment, then a clean re-push: healthy, not failing since the restart.
            assert daemon.sockets_ok() == [(str(hap.socket), True)]
            assert daemon.health().ok
            assert all(r.failures == 0 for r in daemon.records.values())
    finally:
        hap.stop()


async def test_sockets_that_cannot_take_staples_fail_healthz_after_the_grace(  # noqa: PLR0917
    pki, crt_dir, tmp_path, sock_dir, start_haproxy, openssl_responder
):
    """
    A mistyped socket: /healthz 503 naming it, after the grace.

    The admin socket of the same HAProxy staples the certificate and stays
    healthy (metric 1). The `level user` socket reaches the same process, so
    it is an alias of the admin socket and deploys nothing: it is not a
    failure. The mistyped one is 0, the certificate counts a failure, and only
    after ``haproxy_grace`` does /healthz turn 503.
    """
    leaf = pki.leaf("h.test", ocsp_url=openssl_responder.url)
    openssl_responder.add(leaf.cert)
    pki.write(crt_dir, "h.pem", leaf)
    user = sock_dir / "user.sock"
    hap = start_haproxy(global_extra=f"  stats socket {user} level user\n")
    mistyped = sock_dir / "admn.sock"
    grace = dt.timedelta(seconds=6)
    async with _running(tmp_path, crt_dir, hap.socket, mistyped, user, haproxy_grace=grace) as d:
        started = time.monotonic()
        await _stapled(hap, "h.test", within=5)
        assert d.health().ok  # within the grace period
        while not d.health().reasons:
            assert time.monotonic() - started < 10, d.health()
            await asyncio.sleep(0.05)  # waiting for the grace period to pass
        reasons = d.health().reasons
        metrics = d.metrics.render().decode()
        [rec] = d.records.values()
    assert time.monotonic() - started >= grace.total_seconds() - 0.5
    assert [r.split(":")[0] for r in reasons] == [f"haproxy {mistyped}"], reasons
    assert all(r.count("haproxy ") == 1 for r in reasons), reasons  # each about its own socket
    assert f'hastaple_haproxy_ok{{socket="{hap.socket}"}} 1.0' in metrics
    assert f'hastaple_haproxy_ok{{socket="{mistyped}"}} 0.0' in metrics
    assert rec.failures >= 1
    assert dict(rec.haproxy)[str(hap.socket)] != "error"
    assert dict(rec.haproxy)[str(user)] == f"alias of {hap.socket}"  # `status` names it


async def test_renewal_haproxy_does_not_serve_yet_waits_for_its_restart(
    pki, crt_dir, tmp_path, haproxy_binary, openssl_responder
):
    """
    Without --hot-certs, a renewed file is stored, not failed, and retried at HAProxy's restart.

    The daemon fetches the new certificate's staple once; the push finds the
    older certificate served: "stored", no failure, no hourly retry (next
    refresh at the staple's own schedule, the CA not asked again). HAProxy
    restarted serves the new certificate stapled, and the daemon's re-push
    then succeeds.
    """
    old = pki.leaf("later.test", ocsp_url=openssl_responder.url)
    path = pki.write(crt_dir, "later.pem", old)
    # openssl's index takes one certificate per subject: the old one's staple is made here.
    path.with_name("later.pem.ocsp").write_bytes(pki.response(old.cert))
    workdir = tmp_path / "h"
    workdir.mkdir()
    hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir)
    try:
        async with _running(tmp_path, crt_dir, hap.socket) as daemon:
            await _stapled(hap, "later.test", within=5)
            new = pki.leaf("later.test", ocsp_url=openssl_responder.url)
            openssl_responder.add(new.cert)
            staging = tmp_path / "later.pem"
            staging.write_bytes(pki.bundle(new))
            staging.replace(path)
            serial = f"{new.cert.serial_number:x}"
            deadline = time.monotonic() + 5
            while (rec := daemon.records.get(str(path))) is None or dict(rec.haproxy).get(
                str(hap.socket)
            ) != "stored":
                assert time.monotonic() < deadline, daemon.records
                await asyncio.sleep(0.05)  # waiting for the watcher's fetch to be recorded
            assert (rec.result, rec.error, rec.failures) == ("fetched", None, 0), rec
            assert rec.serial is None or rec.serial.lower().lstrip("0") == serial.lstrip("0")
            assert rec.next_refresh is not None
            assert rec.next_refresh - dt.datetime.now(dt.UTC) > dt.timedelta(hours=1)
            assert daemon.sockets_ok() == [(str(hap.socket), True)]
            asked = openssl_responder.requests
            await asyncio.sleep(1)
            assert openssl_responder.requests == asked

            hap.stop()
            await asyncio.sleep(0.5)
            hap = haproxy_proc.start(haproxy_binary, workdir, crt_dir)
            await _stapled(hap, "later.test", within=5)
            text = await asyncio.to_thread(haproxy_proc.staple, hap.port, "later.test")
            assert f"Serial Number: {new.cert.serial_number:X}" in text, text
            deadline = time.monotonic() + 5
            while dict(daemon.records[str(path)].haproxy).get(str(hap.socket)) != "update":
                assert time.monotonic() < deadline, daemon.records[str(path)]
                await asyncio.sleep(0.05)  # waiting for the re-push after the restart
            assert openssl_responder.requests == asked
    finally:
        hap.stop()
