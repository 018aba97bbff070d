"""
The daemon's loop on a simulated clock, with no sleeping.

Real pipeline, real files, a real ``Fetcher`` asking a real responder on
loopback that signs with the test PKI at the simulated time; only time is
simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from hastaple import config as cfgmod
from hastaple.daemon import eventlog as events
from hastaple.daemon import metrics, service
from hastaple.daemon import scheduler as daemonmod
from hastaple.daemon.state import State
from hastaple.engine.fetch import Fetcher
from hastaple.sources import pem
from hastaple.testing.clock import SimClock
from hastaple.testing.pki import now as real_now
from hastaple.testing.responders import FaultResponder, Sign

WEEK = dt.timedelta(days=7)
DAY = dt.timedelta(days=1)


@dataclasses.dataclass
class World:
    """
    A daemon on a simulated clock over ``crt_dir``, its real ``Fetcher`` asking a real responder.

    The responder (``ca``, a ``responders.Sign``) signs each answer at the
    simulated time, at ``url``.
    """

    clock: SimClock
    ca: Sign
    url: str
    fetcher: Fetcher
    daemon: daemonmod.Daemon
    config: cfgmod.Config
    leaves: list
    crt_dir: Path

    def restart(self) -> daemonmod.Daemon:
        self.daemon.state.close()
        state = State.open(self.config.state_dir)
        self.daemon = daemonmod.Daemon(
            self.config, fetcher=self.fetcher, state=state, clock=self.clock,
            rng=random.Random(1),  # noqa: S311 - jitter
        )  # fmt: skip
        return self.daemon

    async def run_until(self, end: dt.datetime, check=None) -> None:
        """Refresh what is due, jump to the next planned time, until ``end``."""
        while True:
            await self.daemon.refresh_due()
            if check:
                check(self)
            wakeup = self.daemon.next_wakeup()
            if wakeup is None or wakeup > end:
                self.clock.t = end
                return
            self.clock.t = max(wakeup, self.clock.t)


async def _world(pki, tmp_path: Path, n: int, stack: contextlib.AsyncExitStack) -> World:
    crt_dir = tmp_path / "crt"
    crt_dir.mkdir()
    clock = SimClock(real_now())
    server = await stack.enter_async_context(FaultResponder())
    ca = Sign(pki, clock.now)
    url = server.on("ca", ca)
    leaves = [pki.leaf(f"c{i}.test", ocsp_url=url) for i in range(n)]
    for i, leaf in enumerate(leaves):
        pki.write(crt_dir, f"c{i}.pem", leaf)
        ca.add(leaf.cert)
    fetcher = await stack.enter_async_context(Fetcher())
    config = cfgmod.Config(state_dir=tmp_path / "state", paths=(crt_dir,), metrics_address=None)
    daemon = daemonmod.Daemon(
        config, fetcher=fetcher, state=State.open(config.state_dir), clock=clock,
        rng=random.Random(0),  # noqa: S311 - jitter
    )  # fmt: skip
    stack.callback(daemon.state.close)
    daemon.rediscover()
    return World(clock, ca, url, fetcher, daemon, config, leaves, crt_dir)


@pytest.fixture(name="make_world")
async def _make_world(pki, tmp_path) -> AsyncIterator[Callable[..., Awaitable[World]]]:
    """``await make_world(n[, directory])``: a World of ``n`` certificates, torn down after."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(n: int, where: Path | None = None) -> World:
            return await _world(pki, where or tmp_path, n, stack)

        yield make


def _never_expired(world: World) -> None:
    for rec in world.daemon.records.values():
        assert rec.next_update is not None, rec
        assert rec.next_update > world.clock.now(), rec


async def test_thirty_days_of_weekly_responses(pki, tmp_path, make_world):
    """Over 30 simulated days each certificate is fetched <= 10 times and never expires."""
    world = await make_world(12)
    start = world.clock.now()
    await world.daemon.refresh_due()  # nothing due before the startup spread
    world.clock.t = start + dt.timedelta(seconds=11)
    await world.run_until(start + dt.timedelta(days=30), _never_expired)
    counts = [world.ca.asked[leaf.cert.serial_number] for leaf in world.leaves]
    assert all(5 <= c <= 10 for c in counts), counts
    for leaf in world.leaves:
        path = world.crt_dir / f"c{world.leaves.index(leaf)}.pem.ocsp"
        staple = ocsp.load_der_ocsp_response(path.read_bytes())
        assert staple.serial_number == leaf.cert.serial_number
    assert world.daemon.health().ok


async def test_outage_keeps_staple_warns_and_recovers(pki, tmp_path, caplog, make_world):
    """A 3-day responder outage: staple kept, warning, metric and 503 before expiry; recovery."""
    caplog.set_level(logging.WARNING, logger="hastaple.daemon")
    world = await make_world(3)
    start = world.clock.now()
    world.clock.t = start + dt.timedelta(seconds=11)
    await world.run_until(start + 3 * DAY, _never_expired)
    staples = {p: p.read_bytes() for p in world.crt_dir.glob("*.ocsp")}
    expiry = {r.cert: r.next_update for r in world.daemon.records.values()}
    world.ca.down = True
    await world.run_until(start + 6 * DAY, _never_expired)
    assert {p: p.read_bytes() for p in world.crt_dir.glob("*.ocsp")} == staples
    warnings = [r for r in caplog.records if "event=expiring" in r.getMessage()]
    assert {w.getMessage().split("cert=")[1].split()[0] for w in warnings} == set(expiry)
    health = world.daemon.health()
    assert not health.ok
    assert "without a successful refresh" in health.reasons[0]
    metrics = world.daemon.metrics.render().decode()
    assert 'hastaple_fetches_total{result="error"}' in metrics
    for line in metrics.splitlines():
        if line.startswith("hastaple_staple_expiry_seconds{"):
            assert 0 < float(line.split()[-1]) < 2 * 86400
    failed_attempts = sum(world.ca.asked.values())
    world.ca.down = False
    await world.run_until(start + 6 * DAY + dt.timedelta(hours=1), _never_expired)
    assert sum(world.ca.asked.values()) > failed_attempts
    for rec in world.daemon.records.values():
        assert rec.failures == 0
        assert rec.next_update > expiry[rec.cert]
    assert world.daemon.health().ok


async def test_one_failed_refresh_with_days_left_keeps_healthz_green(pki, tmp_path, make_world):
    """
    /healthz fails for what needs an operator, not for one failure the backoff will retry.

    Before the fix any ``failures > 0`` said "no staple yet" (503) while a
    valid staple had days left.
    """
    world = await make_world(2)
    world.clock.t += dt.timedelta(seconds=11)
    await world.daemon.refresh_due()
    world.ca.down = True
    world.clock.t = max(r.next_refresh for r in world.daemon.records.values())
    await world.daemon.refresh_due()
    assert all(r.failures == 1 for r in world.daemon.records.values())
    assert all(r.next_update - world.clock.now() > 2 * DAY for r in world.daemon.records.values())
    assert world.daemon.health() == metrics.Health(True, ())
    pki.write(world.crt_dir, "new.pem", pki.leaf("new.test", ocsp_url=world.url))
    world.daemon.rediscover()
    world.clock.t += dt.timedelta(seconds=11)
    await world.daemon.refresh_due()  # the new certificate's first fetch fails: no staple
    health = world.daemon.health()
    assert not health.ok
    assert health.reasons == (
        f"{world.crt_dir / 'new.pem'}: no valid staple: {world.url}: HTTP 503 from responder",
    )


async def test_restart_asks_no_ca_for_fresh_staples(pki, tmp_path, make_world):
    """A restarted daemon (state kept, or even lost) makes zero CA requests for fresh staples."""
    world = await make_world(4)
    start = world.clock.now()
    world.clock.t = start + dt.timedelta(seconds=11)
    await world.run_until(start + DAY)
    asked = sum(world.ca.asked.values())
    assert asked == 4
    daemon = world.restart()
    daemon.rediscover()
    assert daemon.next_wakeup() > world.clock.now() + DAY
    assert await daemon.refresh_due() == []
    (world.config.state_dir / "state.sqlite3").unlink()
    daemon = world.restart()
    daemon.rediscover()
    world.clock.t += dt.timedelta(seconds=11)
    outcomes = await daemon.refresh_due()
    assert [o.row.action.value for o in outcomes] == ["fresh"] * 4
    assert sum(world.ca.asked.values()) == asked
    assert all(r.next_refresh > world.clock.now() + DAY for r in daemon.records.values())


async def test_renewed_certificate_gets_its_own_staple_at_once(pki, tmp_path, make_world):
    """A new serial under the same name is fetched at once; the old staple is not kept for it."""
    world = await make_world(2)
    world.clock.t += dt.timedelta(seconds=11)
    await world.daemon.refresh_due()
    renewed = pki.leaf("c0.test", ocsp_url=world.url)
    world.ca.add(renewed.cert)
    path = pki.write(world.crt_dir, "c0.pem", renewed)
    world.daemon.rediscover({path}, at_once=True)
    rec = world.daemon.records[str(path)]
    assert rec.this_update is None
    assert rec.next_refresh == world.clock.now()
    outcomes = await world.daemon.refresh_due()
    assert [o.row.cert for o in outcomes] == [str(path)]
    staple = ocsp.load_der_ocsp_response((world.crt_dir / "c0.pem.ocsp").read_bytes())
    assert staple.serial_number == renewed.cert.serial_number
    assert world.daemon.records[str(path)].serial == format(renewed.cert.serial_number, "x")


async def test_removed_certificate_is_forgotten(pki, tmp_path, make_world):
    """A certificate whose file is gone disappears from memory and from the database."""
    world = await make_world(2)
    world.clock.t += dt.timedelta(seconds=11)
    await world.daemon.refresh_due()
    gone = world.crt_dir / "c1.pem"
    gone.unlink()
    world.daemon.rediscover({gone}, at_once=True)
    assert str(gone) not in world.daemon.records
    assert world.daemon.state.get(str(gone)) is None
    assert world.daemon.state.history(str(gone)) == []


async def _hold_batch(world: World) -> asyncio.Task:
    """Start ``refresh_due`` and return once its requests are in flight (held at the gate)."""
    world.ca.gate = asyncio.Event()
    batch = asyncio.create_task(world.daemon.refresh_due())
    async with asyncio.timeout(10):
        await world.ca.entered.wait()
    return batch


async def test_certificate_removed_mid_batch_leaves_nothing_and_no_spin(pki, tmp_path, make_world):
    """
    A file removed while its fetch is in flight stays removed: memory, SQLite, /metrics.

    Before the fix the batch's outcome re-created the record; its refresh (a
    backoff after the failure) came and ``refresh_due`` skipped it, so
    ``next_wakeup`` stayed in the past: the loop slept 0 s for ever.
    """
    world = await make_world(2)
    world.ca.failing.add(world.leaves[1].cert.serial_number)
    world.clock.t += dt.timedelta(seconds=11)
    batch = await _hold_batch(world)
    gone = world.crt_dir / "c1.pem"
    gone.unlink()
    world.daemon.on_change({gone})
    world.ca.gate.set()
    await batch
    d = world.daemon
    assert str(gone) not in d.records
    assert d.state.get(str(gone)) is None
    assert d.state.history(str(gone)) == []
    assert [r.cert for r in d.state.all()] == [str(world.crt_dir / "c0.pem")]
    assert str(gone) not in d.metrics.render().decode()
    assert str(gone) not in "".join(d.health().reasons)
    world.clock.t += dt.timedelta(minutes=5)  # past any backoff of the removed certificate
    assert await d.refresh_due() == []
    wakeup = d.next_wakeup()
    assert wakeup is not None
    assert wakeup > world.clock.now()  # the loop sleeps until the survivor's refresh


async def test_certificate_renewed_mid_batch_is_fetched_for_its_new_serial(
    pki, tmp_path, make_world
):
    """A renewal landing while the old certificate's fetch is in flight is not overwritten."""
    world = await make_world(1)
    world.clock.t += dt.timedelta(seconds=11)
    batch = await _hold_batch(world)
    renewed = pki.leaf("c0.test", ocsp_url=world.url)
    world.ca.add(renewed.cert)
    path = pki.write(world.crt_dir, "c0.pem", renewed)
    world.daemon.on_change({path})
    world.ca.gate.set()
    await batch
    rec = world.daemon.records[str(path)]
    assert rec.serial == format(renewed.cert.serial_number, "x")
    assert rec.this_update is None  # the old certificate's staple is not this one's
    assert rec.next_refresh <= world.clock.now()  # still due at once
    assert world.daemon.state.get(str(path)) == rec
    world.ca.gate = None
    await world.daemon.refresh_due()
    staple = ocsp.load_der_ocsp_response((world.crt_dir / "c0.pem.ocsp").read_bytes())
    assert staple.serial_number == renewed.cert.serial_number


async def test_one_missing_staple_is_fetched_at_once(pki, tmp_path, make_world):
    """
    With the default policy, one certificate without a staple is due within 10 ms.

    Before the fix it waited a random share of the whole 10 s spread (8.4 s here).
    """
    world = await make_world(1)
    [rec] = world.daemon.records.values()
    assert rec.next_refresh - world.clock.now() <= dt.timedelta(milliseconds=10)
    (tmp_path / "many").mkdir()
    many = await make_world(40, tmp_path / "many")  # 40 missing: spread over 0.4 s
    due = [r.next_refresh - many.clock.now() for r in many.daemon.records.values()]
    assert max(due) <= dt.timedelta(seconds=0.4)
    assert max(due) > dt.timedelta(seconds=0.1)  # still spread, not all in one instant


def _behind_an_operator_socket(world, tmp_path: Path) -> Path:
    """Switch ``world``'s daemon to a haproxy.cfg whose only socket is level operator."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"global\n  stats socket {tmp_path}/op.sock level operator\n"
        f"frontend f\n  bind :443 ssl crt {world.crt_dir}\n"
    )
    world.daemon.apply(
        world.daemon.prepare(dataclasses.replace(world.config, paths=(), haproxy_configs=(cfg,)))
    )
    return cfg


async def test_discovery_warning_is_logged_once_not_at_every_event(
    pki, tmp_path, caplog, make_world
):
    """The same warning about the sources is logged when it appears, not at every file event."""
    caplog.set_level(logging.INFO, logger="hastaple.daemon")
    world = await make_world(1)
    cfg = _behind_an_operator_socket(world, tmp_path)
    for _ in range(3):
        world.daemon.on_change({cfg})
    lines = [r for r in caplog.records if "event=discover " in r.getMessage()]
    assert len(lines) == 1
    assert "op.sock" in lines[0].getMessage()


async def test_only_sockets_below_admin_fail_every_certificate(pki, tmp_path, make_world):
    """A configuration whose only socket is below admin: the staple is stored, the row fails."""
    world = await make_world(1)
    _behind_an_operator_socket(world, tmp_path)
    world.clock.t += dt.timedelta(seconds=11)
    [outcome] = await world.daemon.refresh_due()
    rec = world.daemon.records[outcome.row.cert]
    assert rec.failures == 1, rec
    assert "level admin" in (rec.error or ""), rec.error
    assert (world.crt_dir / "c0.pem.ocsp").stat().st_size > 0  # stored, only not deployed


async def test_max_age_brings_refresh_forward(pki, tmp_path, make_world):
    """Cache-Control max-age=1h: the next fetch comes after about an hour, not 3.5 days."""
    world = await make_world(1)
    world.ca.max_age = 3600
    start = world.clock.now()
    world.clock.t = start + dt.timedelta(seconds=11)
    await world.run_until(start + dt.timedelta(hours=1, minutes=30))
    assert world.ca.asked[world.leaves[0].cert.serial_number] == 2


async def test_no_ocsp_url_is_skipped_not_error(pki, tmp_path, make_world):
    """A certificate without an OCSP URL is re-checked later and keeps /healthz green."""
    world = await make_world(0)
    pki.write(world.crt_dir, "plain.pem", pki.leaf("plain.test", ocsp_url=None))
    world.daemon.rediscover()
    world.clock.t += dt.timedelta(seconds=11)
    [outcome] = await world.daemon.refresh_due()
    rec = world.daemon.records[outcome.row.cert]
    assert (rec.status, rec.result, rec.failures) == ("no-ocsp", "skipped", 0)
    assert rec.next_refresh >= world.clock.now() + dt.timedelta(hours=11)
    assert world.daemon.health().ok


@pytest.mark.parametrize("fmt", ["keyvalue", "json"])
def test_log_formats(fmt, capsys):
    """One line per event, key=value or JSON, with the event's fields."""
    events.configure(fmt)
    events.log_event(logging.WARNING, "expiring", cert="/c/a b.pem", failures=3)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    if fmt == "json":
        data = json.loads(line)
        assert (data["event"], data["cert"], data["failures"]) == ("expiring", "/c/a b.pem", 3)
    else:
        assert 'event=expiring cert="/c/a b.pem" failures=3' in line
        assert "level=warning" in line
    logging.getLogger().handlers.clear()


async def test_source_briefly_broken_is_a_warning_not_an_internal_error(
    pki, tmp_path, caplog, make_world
):
    """A crt-list naming a certificate that is missing mid-renewal: a WARNING, no traceback."""
    caplog.set_level(logging.INFO, logger="hastaple")
    world = await make_world(2)
    listed = tmp_path / "list.txt"
    listed.write_text(f"{world.crt_dir / 'c0.pem'}\n{world.crt_dir / 'c1.pem'}\n")
    world.daemon.apply(
        world.daemon.prepare(dataclasses.replace(world.config, paths=(), crt_lists=(listed,)))
    )
    before = dict(world.daemon.records)
    gone = world.crt_dir / "c1.pem"
    gone.unlink()
    world.daemon.on_change({gone})
    [line] = [r for r in caplog.records if "event=discover_failed" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "c1.pem: No such file or directory" in line.getMessage()
    assert not [r for r in caplog.records if r.exc_info or "internal error" in r.getMessage()]
    assert world.daemon.records == before  # the last good view is kept
    pki.write(world.crt_dir, "c1.pem", world.leaves[1])  # the renewal completes
    world.daemon.on_change({gone})
    assert set(world.daemon.entries) == set(before)
    assert len([r for r in caplog.records if "event=discover_failed" in r.getMessage()]) == 1


async def test_file_event_reparses_only_changed_certificates(
    pki, tmp_path, monkeypatch, make_world
):
    """One changed file among many: only it is parsed again, the others by file identity."""
    world = await make_world(6)
    parsed: list[str] = []
    real = pem.parse_leaf_file

    def counting(path):
        parsed.append(path.name)
        return real(path)

    monkeypatch.setattr(pem, "parse_leaf_file", counting)
    world.daemon.rediscover()
    assert parsed == []  # nothing changed since the first discovery
    renewed = pki.leaf("c3.test", ocsp_url=world.url)
    path = pki.write(world.crt_dir, "c3.pem", renewed)
    world.daemon.on_change({path})
    assert parsed == ["c3.pem"]
    assert world.daemon.records[str(path)].serial == format(renewed.cert.serial_number, "x")
    parsed.clear()
    staging = tmp_path / "c5.pem"  # changed without an event naming it (e.g. SIGHUP)
    staging.write_bytes(pki.bundle(pki.leaf("c5.test", ocsp_url=world.url)))
    staging.replace(world.crt_dir / "c5.pem")
    world.daemon.rediscover()
    assert parsed == ["c5.pem"]


async def test_reload_without_proxy_restores_the_started_environment(pki, tmp_path, make_world):
    """SIGHUP dropping `proxy` puts back the HTTP(S)_PROXY the daemon started with."""
    world = await make_world(1)
    environ = {"HTTPS_PROXY": "http://corp.test:3128", "HOME": "/home/h"}
    started = dict(environ)
    configs = [world.config, dataclasses.replace(world.config, proxy="http://cfg.test:8080")]
    fetcher = service.ConfiguredFetcher(configs.pop(), environ=environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert environ[name] == "http://cfg.test:8080"  # lower case too: urllib prefers it
    try:
        service._reload(world.daemon, fetcher, configs.pop)
    finally:
        logging.getLogger().handlers.clear()  # the reload installs its log handler
    assert environ == started
    assert fetcher.config.proxy is None


async def test_repush_after_restart_skips_a_revoked_certificate(pki, tmp_path, caplog, make_world):
    """After a signed REVOKED, an HAProxy restart does not get the older good staple pushed."""
    caplog.set_level(logging.INFO, logger="hastaple.daemon")
    world = await make_world(2)
    world.clock.t += dt.timedelta(seconds=11)
    await world.daemon.refresh_due()
    revoked, good = (str(world.crt_dir / f"c{i}.pem") for i in range(2))
    world.ca.revoked.add(world.leaves[0].cert.serial_number)
    world.clock.t = world.daemon.records[revoked].next_refresh
    await world.daemon.refresh_due()
    assert world.daemon.records[revoked].status == "revoked"
    assert (world.crt_dir / "c0.pem.ocsp").exists()  # the older good staple is still on disk
    sock = str(tmp_path / "restarted.sock")  # nobody listens: every push attempted fails
    await world.daemon.repush(sock)
    assert dict(world.daemon.records[revoked].haproxy) == {}  # not even attempted
    assert dict(world.daemon.records[good].haproxy) == {sock: "error"}  # the negative
    messages = [r.getMessage() for r in caplog.records]
    assert any("event=repush_skipped" in m and f"cert={revoked}" in m for m in messages)
    assert any(f"event=repushed socket={sock} certs=1" in m for m in messages)
