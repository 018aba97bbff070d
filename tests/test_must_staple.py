"""
Must-staple certificates (RFC 7633 TLS Feature, status_request) are known as such.

Detected from the certificate; shown in `fetch --json`, `status` (JSON and
table), /metrics (``hastaple_certificate_info{must_staple}``); alerted on
earlier (``must_staple_alert_before``: the log warning and /healthz).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3

from click.testing import CliRunner

from hastaple import config as cfgmod
from hastaple.app.cli import cli
from hastaple.core import schedule
from hastaple.daemon import metrics
from hastaple.daemon.state import DB_NAME, Record, State
from test_daemon_sim import _make_world  # noqa: F401 - the make_world fixture
from test_fetch_command import fetch_json

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)
DAY = dt.timedelta(days=1)


def test_must_staple_alert_window_opens_earlier():
    """A 7-day staple: a certificate alerts at 1.75 days left, a must-staple one at 2.625."""
    policy = schedule.DEFAULT_POLICY
    assert schedule.alert_window(T0, T0 + WEEK, policy) == dt.timedelta(days=1.75)
    assert schedule.alert_window(T0, T0 + WEEK, policy, must_staple=True) == WEEK * 3 / 8
    at = T0 + WEEK - dt.timedelta(days=2.5)
    assert not schedule.in_alert_window(T0, T0 + WEEK, at, policy)
    assert schedule.in_alert_window(T0, T0 + WEEK, at, policy, must_staple=True)
    # Still after the latest planned refresh (0.4 of the window left): quiet in normal operation.
    latest = T0 + WEEK * 0.6
    assert not schedule.in_alert_window(T0, T0 + WEEK, latest, policy, must_staple=True)
    # Its own key, capped like the other: 30-day responses alert 4 days out by default.
    assert schedule.alert_window(T0, T0 + 30 * DAY, policy, must_staple=True) == 4 * DAY
    mine = dt.timedelta(days=3)
    custom = schedule.Policy(must_staple_alert_before=mine)
    assert schedule.alert_window(T0, T0 + 30 * DAY, custom, must_staple=True) == mine


def test_must_staple_alert_before_is_a_config_key(tmp_path):
    """[refresh] must_staple_alert_before in TOML, and its environment variable."""
    toml = tmp_path / "c.toml"
    toml.write_text('paths = ["/crt"]\n[refresh]\nmust_staple_alert_before = "3d"\n')
    assert cfgmod.load(toml, {}).policy.must_staple_alert_before == dt.timedelta(days=3)
    env = {"HASTAPLE_REFRESH_MUST_STAPLE_ALERT_BEFORE": "5h", "HASTAPLE_PATHS": "/crt"}
    assert cfgmod.load(None, env).policy.must_staple_alert_before == dt.timedelta(hours=5)


def _rec(cert: str, *, must_staple: bool, left: dt.timedelta) -> Record:
    now = T0 + WEEK - left
    return Record(
        cert, ocsp_url="http://ocsp.test/", status="good", result="fetched",
        this_update=T0, next_update=T0 + WEEK, last_success=now, must_staple=must_staple,
    )  # fmt: skip


def test_healthz_fails_earlier_for_a_must_staple_certificate():
    """2.5 days left of a 7-day staple: a must-staple certificate fails /healthz, others not."""
    now = T0 + WEEK - dt.timedelta(days=2.5)
    plain = _rec("/crt/plain.pem", must_staple=False, left=dt.timedelta(days=2.5))
    must = _rec("/crt/must.pem", must_staple=True, left=dt.timedelta(days=2.5))
    assert metrics.health([plain], now, schedule.DEFAULT_POLICY).ok
    verdict = metrics.health([plain, must], now, schedule.DEFAULT_POLICY)
    assert verdict.reasons == (
        (
            "/crt/must.pem: staple expires in 60h00m without a successful refresh"
            " (must-staple: clients refuse it without a valid staple)"
        ),
    )


def test_metrics_label_every_certificate_with_must_staple():
    """hastaple_certificate_info{cert, must_staple}: one series per certificate needing a staple."""
    records = [
        _rec("/crt/plain.pem", must_staple=False, left=3 * DAY),
        _rec("/crt/must.pem", must_staple=True, left=3 * DAY),
        Record("/crt/never.pem", must_staple=True),  # not fetched yet: listed, no expiry
        Record("/crt/nourl.pem", status="no-ocsp"),
        Record("/crt/nourl-must.pem", status="no-ocsp", must_staple=True),
        Record("/crt/managed.pem", status="managed", must_staple=True),
    ]
    text = metrics.Metrics(lambda: (T0, records)).render().decode()
    info = sorted(
        line for line in text.splitlines() if line.startswith("hastaple_certificate_info")
    )
    assert info == [
        'hastaple_certificate_info{cert="/crt/must.pem",must_staple="true",status="good"} 1.0',
        'hastaple_certificate_info{cert="/crt/never.pem",must_staple="true",status="error"} 1.0',
        (
            'hastaple_certificate_info{cert="/crt/nourl-must.pem",must_staple="true",'
            'status="no-ocsp"} 1.0'
        ),
        'hastaple_certificate_info{cert="/crt/plain.pem",must_staple="false",status="good"} 1.0',
    ]


def test_state_keeps_must_staple_and_upgrades_an_old_database(tmp_path):
    """A database written before the column existed opens (read-only too) and gains it."""
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(
        "CREATE TABLE certs (cert TEXT PRIMARY KEY, ocsp_url TEXT, serial TEXT, status TEXT,"
        " result TEXT, error TEXT, last_attempt TEXT, last_success TEXT, this_update TEXT,"
        " next_update TEXT, fetched_at TEXT, max_age INTEGER,"
        " failures INTEGER NOT NULL DEFAULT 0, next_refresh TEXT,"
        " haproxy TEXT NOT NULL DEFAULT '{}');"
        "INSERT INTO certs (cert, status) VALUES ('/crt/old.pem', 'good');"
    )
    db.commit()
    db.close()
    old = State.open_readonly(tmp_path)
    assert old.get("/crt/old.pem") == Record("/crt/old.pem", status="good")
    old.close()
    state = State.open(tmp_path)
    assert state.get("/crt/old.pem") == Record("/crt/old.pem", status="good")
    state.put(Record("/crt/new.pem", status="good", must_staple=True))
    state.close()
    again = State.open(tmp_path)
    assert again.get("/crt/new.pem").must_staple is True
    assert again.get("/crt/old.pem").must_staple is False


def test_status_shows_must_staple_in_json_and_table(tmp_path):
    """`status --json` has "must_staple"; the table and the plain lines have a column."""
    state = State.open(tmp_path)
    state.put(_rec("/crt/a.pem", must_staple=True, left=3 * DAY))
    state.put(_rec("/crt/b.pem", must_staple=False, left=3 * DAY))
    state.close()
    result = CliRunner().invoke(cli, ["status", "--json", "--state-dir", str(tmp_path)])
    assert [(r["cert"], r["must_staple"]) for r in json.loads(result.stdout)] == [
        ("/crt/a.pem", True), ("/crt/b.pem", False),
    ]  # fmt: skip
    lines = CliRunner().invoke(cli, ["status", "--state-dir", str(tmp_path)]).stdout.splitlines()
    assert [line.split("\t")[:4] for line in lines] == [
        ["/crt/a.pem", "http://ocsp.test/", "good", "yes"],
        ["/crt/b.pem", "http://ocsp.test/", "good", "no"],
    ]


async def test_daemon_knows_must_staple_from_the_certificate(pki, tmp_path, caplog, make_world):
    """Discovery reads it; the `expiring` warning and /healthz come earlier for it."""
    caplog.set_level(logging.WARNING, logger="hastaple.daemon")
    world = await make_world(1)
    leaf = pki.leaf("must.test", ocsp_url=world.url, must_staple=True)
    must = str(pki.write(world.crt_dir, "must.pem", leaf))
    plain = str(world.crt_dir / "c0.pem")
    world.ca.add(leaf.cert)
    world.daemon.rediscover()
    assert world.daemon.records[must].must_staple is True
    assert world.daemon.records[plain].must_staple is False
    world.clock.t += dt.timedelta(seconds=11)
    await world.daemon.refresh_due()
    assert world.daemon.health().ok
    # The CA goes down; 2.5 days before the staples expire both are retried and fail.
    world.ca.down = True
    world.clock.t = world.daemon.records[must].next_update - dt.timedelta(days=2.5)
    await world.daemon.refresh_due()
    assert {r.failures for r in world.daemon.records.values()} == {1}
    warned = [r.getMessage() for r in caplog.records if "event=expiring" in r.getMessage()]
    assert [f"cert={must}" in w for w in warned] == [True]
    health = world.daemon.health()
    assert len(health.reasons) == 1
    assert health.reasons[0].startswith(f"{must}: staple expires in 60h")
    assert health.reasons[0].endswith("(must-staple: clients refuse it without a valid staple)")


async def test_fetch_json_says_must_staple_also_from_the_index(pki, openssl_responder, tmp_path):
    """`fetch --json`: "must_staple" per row, fetched and fresh (the index hit parses nothing)."""
    must = pki.leaf("must.test", ocsp_url=openssl_responder.url, must_staple=True)
    plain = pki.leaf("plain.test", ocsp_url=openssl_responder.url)
    for leaf in (must, plain):
        openssl_responder.add(leaf.cert)
    certs = tmp_path / "certs"
    certs.mkdir()
    pki.write(certs, "must.pem", must)
    pki.write(certs, "plain.pem", plain)
    nourl = pki.write(certs, "nourl.pem", pki.leaf("nourl.test", ocsp_url=None, must_staple=True))
    state = tmp_path / "state"
    for action in ("fetched", "fresh"):
        code, rows, _ = await fetch_json(certs, "--state-dir", state)
        assert code == 0
        found = {r["cert"]: (r["action"], r["must_staple"]) for r in rows}
        assert found == {
            str(certs / "must.pem"): (action, True),
            str(certs / "plain.pem"): (action, False),
            str(nourl): ("skipped", True),
        }
    assert openssl_responder.requests == 2
