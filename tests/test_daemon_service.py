"""
The daemon's outside: /metrics, /healthz, ``status --json`` and SIGTERM.

SIGTERM is sent to a real ``hastaple run`` process in the middle of a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import sys
import time

import aiohttp
import pytest
from click.testing import CliRunner

from hastaple.app.cli import cli
from hastaple.config import Config
from hastaple.core.schedule import Policy
from hastaple.daemon import eventlog as events
from hastaple.daemon import metrics, service
from hastaple.daemon import scheduler as daemonmod
from hastaple.daemon.state import Record, State
from hastaple.engine.fetch import Fetcher
from hastaple.errors import ConfigError
from hastaple.testing.responders import FaultResponder, Serve, Sign
from test_daemon_sim import _make_world  # noqa: F401 - the make_world fixture

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def test_metrics_and_healthz_over_http(pki, tmp_path, make_world):
    """/metrics: expiry, outcomes, latency, pushes; /healthz goes 200 -> 503 with a reason."""
    world = await make_world(2)
    world.clock.t += dt.timedelta(seconds=11)
    await world.daemon.refresh_due()
    d = world.daemon
    runner, port = await metrics.serve(metrics.app(d.metrics, d.health), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert (resp.status, await resp.text()) == (200, "ok\n")
            world.clock.t += dt.timedelta(days=6)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 503
                body = await resp.text()
    finally:
        await runner.cleanup()
    cert = str(world.crt_dir / "c0.pem")
    assert f'hastaple_staple_expiry_seconds{{cert="{cert}"}}' in text
    assert f'hastaple_last_success_timestamp_seconds{{cert="{cert}"}}' in text
    assert 'hastaple_fetches_total{result="fetched"} 2.0' in text
    host = world.url.split("/")[2]
    assert f'hastaple_responder_latency_seconds_count{{responder="{host}"}} 2.0' in text
    assert "hastaple_haproxy_pushes_total" in text
    assert f"{cert}: staple expires in" in body
    assert "c1.pem" in body


def _records(state: State) -> None:
    state.put(
        Record(
            cert="/crt/a.pem", ocsp_url="http://ocsp.test/", status="good", result="fetched",
            this_update=T0, next_update=T0 + dt.timedelta(days=7), last_success=T0,
            next_refresh=T0 + dt.timedelta(days=4), haproxy=(("/run/h.sock", "update"),),
        )
    )  # fmt: skip
    state.put(
        Record(
            cert="/crt/b.pem", ocsp_url="http://ocsp.test/", status="error", result="error",
            error="http://ocsp.test/: connection refused", failures=3,
            next_refresh=T0 + dt.timedelta(minutes=4),
        )
    )  # fmt: skip


def test_status_json(tmp_path):
    """`status --json` lists every certificate with the contract's fields; exit 1 on a failure."""
    state = State.open(tmp_path)
    _records(state)
    result = CliRunner().invoke(cli, ["status", "--json", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout)
    assert [r["cert"] for r in rows] == ["/crt/a.pem", "/crt/b.pem"]
    good, bad = rows
    assert good["ocsp_url"] == "http://ocsp.test/"
    assert (good["status"], good["this_update"], good["next_update"]) == (
        "good", "2026-01-01T00:00:00Z", "2026-01-08T00:00:00Z",
    )  # fmt: skip
    assert good["next_refresh"] == "2026-01-05T00:00:00Z"
    assert good["haproxy"] == {"/run/h.sock": "update"}
    assert good["error"] is None
    assert (bad["status"], bad["failures"]) == ("error", 3)
    assert "connection refused" in bad["error"]


def test_status_plain_and_missing_state(tmp_path):
    """Plain lines on a pipe; no database yet is exit 2 with one sentence."""
    state = State.open(tmp_path / "s")
    _records(state)
    state.put(Record("/crt/b.pem", status="good"))
    result = CliRunner().invoke(cli, ["status", "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("/crt/a.pem\thttp://ocsp.test/\tgood")
    missing = CliRunner().invoke(cli, ["status", "--state-dir", str(tmp_path / "none")])
    assert missing.exit_code == 2
    assert "no state yet" in missing.stderr


def test_run_bad_config_exits_2(tmp_path):
    """`run` with nothing to watch, or a bad key, exits 2 before starting."""
    result = CliRunner().invoke(cli, ["run", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "nothing to watch" in result.stderr
    toml = tmp_path / "c.toml"
    toml.write_text("paths = ['/x']\nfrobnicate = 1\n")
    result = CliRunner().invoke(cli, ["run", "--config", str(toml)])
    assert result.exit_code == 2
    assert "unknown key 'frobnicate'" in result.stderr


async def test_sigterm_during_batch_leaves_no_partial_file(pki, tmp_path, fault_responder):
    """SIGTERM while responders are answering: the batch completes, exit 0, no temp file."""
    crt = tmp_path / "crt"
    crt.mkdir()
    bodies = {}
    for i in range(3):
        url = fault_responder.url_for(f"r{i}")
        leaf = pki.leaf(f"s{i}.test", ocsp_url=url)
        pki.write(crt, f"s{i}.pem", leaf)
        bodies[f"s{i}.pem.ocsp"] = pki.response(leaf.cert)
        fault_responder.on(f"r{i}", Serve(bodies[f"s{i}.pem.ocsp"], delay=1.0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASTAPLE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hastaple", "run", "--paths", str(crt),
        "--state-dir", str(tmp_path / "state"), "--metrics-address", "127.0.0.1:0",
        "--refresh-spread", "0",
        env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            while fault_responder.in_flight < 3:
                await asyncio.sleep(0.02)  # polling the real responder for in-flight requests
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = err.decode()
    assert proc.returncode == 0, log
    assert "event=stopping signal=SIGTERM" in log
    assert "event=stopped" in log
    assert sorted(p.name for p in crt.iterdir() if p.name.startswith(".")) == []
    for name, body in bodies.items():
        assert (crt / name).read_bytes() == body


async def test_haproxy_down_is_retried_not_fatal(pki, tmp_path, caplog, make_world):
    """A socket nobody listens on: logged once as haproxy_down, no exception, staples kept."""
    caplog.set_level(logging.INFO, logger="hastaple.daemon")
    world = await make_world(1)
    world.daemon.apply(
        world.daemon.prepare(
            dataclasses.replace(world.config, sockets=(str(tmp_path / "nobody.sock"),))
        )
    )
    world.clock.t += dt.timedelta(seconds=11)
    [outcome] = await world.daemon.refresh_due()
    assert outcome.row.haproxy == {str(tmp_path / "nobody.sock"): "error"}
    rec = world.daemon.records[outcome.row.cert]
    assert rec.status == "good"  # the staple is stored ...
    assert rec.next_refresh > world.clock.now() + dt.timedelta(days=3)  # ... and the CA not asked
    retry = world.daemon.haproxy.retry(str(tmp_path / "nobody.sock"))
    assert retry is not None
    failures, retry_at = retry
    assert failures == 1
    assert retry_at > world.clock.now()  # retried with backoff, not at every poll
    for _ in range(3):
        await world.daemon.check_haproxy()
    downs = [r for r in caplog.records if "event=haproxy_down" in r.getMessage()]
    assert len(downs) == 1
    assert (world.crt_dir / "c0.pem.ocsp").exists()


async def test_a_push_failure_is_a_failure_and_a_dead_socket_fails_healthz(
    pki, tmp_path, caplog, make_world
):
    """
    A staple HAProxy did not take: WARNING, failures=1, metric 0; /healthz 503 after the grace.

    Before the fix the push failure was logged at INFO with failures=0, and a
    mistyped socket that never came up left /healthz at 200 for ever.
    """
    caplog.set_level(logging.INFO, logger="hastaple.daemon")
    world = await make_world(1)
    sock = str(tmp_path / "mistyped.sock")
    world.daemon.apply(world.daemon.prepare(dataclasses.replace(world.config, sockets=(sock,))))
    world.clock.t += dt.timedelta(seconds=11)
    [outcome] = await world.daemon.refresh_due()
    rec = world.daemon.records[outcome.row.cert]
    assert (rec.status, rec.failures, rec.action()) == ("good", 1, "failed")
    [line] = [r for r in caplog.records if "event=fetched" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "failures=1" in line.getMessage()
    assert f'hastaple_haproxy_ok{{socket="{sock}"}} 0.0' in world.daemon.metrics.render().decode()
    await world.daemon.check_haproxy()
    assert world.daemon.health().ok  # within the grace period: HAProxy may be restarting
    world.clock.t += world.config.haproxy_grace
    await world.daemon.check_haproxy()
    health = world.daemon.health()
    assert not health.ok
    [reason] = health.reasons
    assert reason.startswith(f"haproxy {sock}: ")
    assert "failing since" in reason


async def test_sighup_reload_applies_new_sources_and_keeps_old_on_error(
    pki, tmp_path, capsys, make_world
):
    """SIGHUP: new sources are read at once; a broken configuration is logged and ignored."""
    world = await make_world(1)
    extra = tmp_path / "extra"
    extra.mkdir()
    pki.write(extra, "x.pem", pki.leaf("x.test", ocsp_url=world.url))
    configs = [dataclasses.replace(world.config, paths=(world.crt_dir, extra))]

    def load():
        if not configs:
            raise ConfigError("hastaple.toml: unknown key 'frobnicate'")
        return configs.pop()

    fetcher = service.ConfiguredFetcher(world.config)
    service._reload(world.daemon, fetcher, load)
    assert str(extra / "x.pem") in world.daemon.entries
    assert fetcher.config.paths == (world.crt_dir, extra)
    service._reload(world.daemon, fetcher, load)
    assert world.daemon.config.paths == (world.crt_dir, extra)
    err = capsys.readouterr().err  # the reload installs the configured log format on stderr
    assert "event=reloaded certs=2" in err
    assert "event=reload_failed" in err
    assert "frobnicate" in err
    logging.getLogger().handlers.clear()


async def test_sighup_with_a_broken_source_keeps_the_whole_old_configuration(
    pki, tmp_path, capsys, make_world
):
    """
    A reload whose sources cannot be read changes nothing: not even the log format or proxy.

    Before the fix the fetcher settings, ``daemon.config`` and the log format
    were switched before the sources were read, so "old configuration kept"
    was half false.
    """
    world = await make_world(1)
    environ: dict[str, str] = {}
    fetcher = service.ConfiguredFetcher(world.config, environ=environ)
    events.configure("keyvalue")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{tmp_path / 'missing.pem'}\n")
    new = dataclasses.replace(
        world.config, crt_lists=(listed,), proxy="http://proxy.test:3128", log_format="json",
        responder_overrides=(("http://ocsp.test/", "http://other.test/"),),
        policy=Policy(backoff_base=dt.timedelta(seconds=1)),
    )  # fmt: skip
    entries, records = dict(world.daemon.entries), dict(world.daemon.records)
    try:
        service._reload(world.daemon, fetcher, lambda: new)
        [handler] = logging.getLogger().handlers
        assert isinstance(handler.formatter, events.KeyValueFormatter)
    finally:
        logging.getLogger().handlers.clear()
    assert world.daemon.config is world.config
    assert fetcher.config is world.config
    assert environ == {}
    assert (world.daemon.entries, world.daemon.records) == (entries, records)
    assert world.daemon.watch_roots == frozenset({world.crt_dir})
    err = capsys.readouterr().err
    assert "event=reload_failed" in err
    assert "missing.pem" in err
    assert "event=reloaded" not in err


async def _serving(daemon):
    """Start ``daemon.serve``; return the stop event and the task."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(daemon.serve(stop, ready=ready))
    await ready.wait()
    return stop, task


@pytest.fixture(name="real_time_ca")
async def _real_time_ca(pki):
    """(CA, its URL, a real Fetcher): a responder signing on the real clock."""
    async with FaultResponder() as server, Fetcher() as fetcher:
        ca = Sign(pki, daemonmod.SystemClock().now)
        yield ca, server.on("ca", ca), fetcher


def _real_time_daemon(fetcher, tmp_path, **config):
    """A daemon on the real clock over ``tmp_path/crt``, asking through ``fetcher``."""
    clock = daemonmod.SystemClock()
    cfg = Config(state_dir=tmp_path / "state", metrics_address=None, **config)
    return daemonmod.Daemon(cfg, fetcher=fetcher, state=State.open(cfg.state_dir), clock=clock)


async def test_directory_added_by_sighup_is_watched_at_once(pki, tmp_path, real_time_ca):
    """
    A certificate dropped into a directory SIGHUP just added is stapled within 2 s.

    Before the fix the new directory was watched only after the next event
    from the old ones: here, never.
    """
    crt, extra = tmp_path / "crt", tmp_path / "extra"
    crt.mkdir()
    extra.mkdir()
    ca, url, fetcher = real_time_ca
    first = pki.leaf("first.test", ocsp_url=url)
    new = pki.leaf("new.test", ocsp_url=url)
    ca.add(first.cert, new.cert)
    pki.write(crt, "first.pem", first)
    daemon = _real_time_daemon(fetcher, tmp_path, paths=(crt,))
    stop, task = await _serving(daemon)
    try:
        reloaded = dataclasses.replace(daemon.config, paths=(crt, extra))
        service._reload(
            daemon, service.ConfiguredFetcher(daemon.config, environ={}), lambda: reloaded
        )
        start = time.monotonic()
        staging = tmp_path / "new.pem"
        staging.write_bytes(pki.bundle(new))
        staging.replace(extra / "new.pem")
        while not (extra / "new.pem.ocsp").exists():
            assert time.monotonic() - start < 2, "not stapled within 2 s"
            await asyncio.sleep(0.02)  # polling the file system: the outcome has no event
    finally:
        logging.getLogger().handlers.clear()  # the reload installs its log handler
        stop.set()
        await task
        daemon.state.close()
    assert daemon.records[str(extra / "new.pem")].status == "good"


async def test_a_log_file_in_watched_directories_costs_no_log_line(
    pki, tmp_path, caplog, real_time_ca
):
    """
    Writing a file hastaple does not need (next to a crt-list, or in a crt directory) logs nothing.

    Before the fix watchfiles said "1 change detected" at INFO for every
    write, and a non-certificate in a crt directory was fetched (and failed)
    again at every write: a log file there logged for ever.
    """
    caplog.set_level(logging.INFO)
    crt, conf = tmp_path / "crt", tmp_path / "conf"
    crt.mkdir()
    conf.mkdir()
    ca, url, fetcher = real_time_ca
    leaf = pki.leaf("a.test", ocsp_url=url)
    ca.add(leaf.cert)
    pki.write(crt, "a.pem", leaf)
    listed = conf / "list.txt"
    listed.write_text(f"{crt / 'a.pem'}\n")
    daemon = _real_time_daemon(fetcher, tmp_path, paths=(crt,), crt_lists=(listed,))
    stop, task = await _serving(daemon)
    try:
        deadline = time.monotonic() + 5
        while not (crt / "a.pem.ocsp").exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)  # polling the file system: the outcome has no event
        with (crt / "app.log").open("a") as log:  # HAProxy would load it: hastaple says so once
            log.write("started\n")
        await asyncio.sleep(1)
        seen = len(caplog.records)
        for i in range(4):
            for path in (crt / "app.log", conf / "app.log"):
                with path.open("a") as log:
                    log.write(f"line {i}\n")
            await asyncio.sleep(0.3)  # one watcher event per write (its step is 50 ms)
        await asyncio.sleep(1)
    finally:
        stop.set()
        await task
        daemon.state.close()
    assert [r.getMessage() for r in caplog.records[seen:]] == []
    assert not [r for r in caplog.records if r.name.startswith("watchfiles")]
