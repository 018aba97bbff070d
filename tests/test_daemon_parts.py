"""
The daemon's parts, each on its own: no event loop, no pipeline, no HAProxy.

``restarts.Tracker`` (HAProxy restart tracking), ``scheduling`` (what an
outcome means for a record), ``batching.Records`` (one transaction per
batch), ``discovery.diff`` (the discovery diff), ``watcher.relevant`` and
the configuration swap (one immutable ``View``, validated first).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from pathlib import Path

import pytest
import watchfiles

from hastaple.config import Config
from hastaple.core.model import Action, CertEntry, ResultRow, Status
from hastaple.core.schedule import DEFAULT_POLICY
from hastaple.daemon import scheduling, watcher
from hastaple.daemon.batching import Records
from hastaple.daemon.discovery import View, diff
from hastaple.daemon.restarts import Tracker
from hastaple.daemon.scheduler import Daemon
from hastaple.daemon.state import Record, State
from hastaple.engine.fetch import Fetcher
from hastaple.errors import ConfigError
from hastaple.haproxy.protocol import Info
from hastaple.sources.discover import Discovery

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SOCK = "/run/haproxy/admin.sock"


def _rng() -> random.Random:
    return random.Random(1)  # noqa: S311 - jitter, not secrets


# ------------------------------------------------------------- restarts.Tracker


def test_tracker_sees_a_restart_by_pid_uptime_or_return():
    tracker = Tracker()
    assert tracker.answered(SOCK, Info(pid=10, uptime_sec=5, version="2.8"))  # first sight
    assert not tracker.answered(SOCK, Info(pid=10, uptime_sec=7, version="2.8"))
    assert tracker.answered(SOCK, Info(pid=10, uptime_sec=1, version="2.8"))  # reload, same pid
    assert tracker.answered(SOCK, Info(pid=11, uptime_sec=9, version="2.8"))  # new process
    assert tracker.down(SOCK, "connection refused", T0)  # logged once ...
    assert not tracker.down(SOCK, "connection refused", T0)  # ... not at every poll
    assert tracker.answered(SOCK, Info(pid=11, uptime_sec=20, version="2.8"))  # came back


def test_tracker_backs_off_and_is_late_only_after_the_grace():
    tracker = Tracker()
    rng = _rng()
    tracker.push_failed(SOCK, T0, "haproxy /run/haproxy/admin.sock: refused", rng, DEFAULT_POLICY)
    retry = tracker.retry(SOCK)
    assert retry is not None and retry[0] == 1 and retry[1] > T0
    assert not tracker.retry_due(SOCK, T0)
    assert tracker.retry_due(SOCK, retry[1])
    assert not tracker.ok(SOCK)
    grace = dt.timedelta(seconds=30)
    assert tracker.late(T0 + dt.timedelta(seconds=29), grace) == []
    [late] = tracker.late(T0 + grace, grace)
    assert late.startswith(f"haproxy {SOCK}: refused (failing since ")
    tracker.push_ok(SOCK)
    assert tracker.ok(SOCK) and tracker.retry(SOCK) is None


# ------------------------------------------------------------------ scheduling


def _good_row(**changes):
    row = ResultRow(
        "/c.pem", "http://ca.test/", Status.GOOD, Action.FETCHED,
        this_update=T0 - dt.timedelta(hours=1), next_update=T0 + dt.timedelta(days=7),
    )  # fmt: skip
    return dataclasses.replace(row, **changes)


def test_a_fetched_staple_resets_failures_and_plans_after_the_half_life():
    rec = Record("/c.pem", failures=3)
    new = scheduling.after_refresh(
        rec, _good_row(), asked=True, max_age=None, now=T0, rng=_rng(),
        policy=DEFAULT_POLICY,
    )  # fmt: skip
    assert (new.status, new.result, new.failures, new.last_success) == ("good", "fetched", 0, T0)
    assert new.next_refresh is not None
    assert T0 + dt.timedelta(days=3) < new.next_refresh < T0 + dt.timedelta(days=6)


def test_a_refused_push_counts_as_a_failure_but_keeps_the_staple():
    row = _good_row(haproxy={SOCK: "error"}, action=Action.FAILED, error="refused")
    new = scheduling.after_refresh(
        Record("/c.pem"), row, asked=True, max_age=None, now=T0, rng=_rng(),
        policy=DEFAULT_POLICY,
    )  # fmt: skip
    assert (new.status, new.failures, new.haproxy) == ("good", 1, ((SOCK, "error"),))
    assert scheduling.refused(row) == [SOCK]


def test_a_failed_fetch_keeps_the_status_held_and_backs_off():
    held = Record("/c.pem", status="good", this_update=T0, next_update=T0 + dt.timedelta(days=7))
    row = ResultRow("/c.pem", "http://ca.test/", Status.ERROR, Action.FAILED, error="timeout")
    new = scheduling.after_refresh(
        held, row, asked=True, max_age=None, now=T0, rng=_rng(), policy=DEFAULT_POLICY
    )
    assert (new.status, new.result, new.failures) == ("good", "error", 1)
    assert new.next_refresh is not None and new.next_refresh < T0 + dt.timedelta(hours=2)


# ----------------------------------------------------------- batching.Records


class CountingState(State):
    transactions = 0

    def put_many(self, items, *, forget=()):
        type(self).transactions += 1
        super().put_many(items, forget=forget)


def test_a_batch_is_one_transaction(tmp_path):
    state = CountingState.open(tmp_path)
    records = Records(state)
    with records.batch():
        for i in range(5):
            records.save(Record(f"/c{i}.pem"), event="fetched", at=T0)
        with records.batch():  # nested: the outer one writes
            records.save(Record("/c5.pem"))
    assert CountingState.transactions == 1
    assert sorted(r.cert for r in State.open(tmp_path).all()) == [f"/c{i}.pem" for i in range(6)]
    records.save(Record("/c6.pem"))  # outside a batch: at once
    assert CountingState.transactions == 2


# ------------------------------------------------------------ discovery.diff


def test_the_diff_adds_renews_and_removes(pki, tmp_path):
    config = Config(state_dir=tmp_path / "state", paths=(tmp_path,))
    a = pki.write(tmp_path, "a.pem", pki.leaf("a.test"))
    b = pki.write(tmp_path, "b.pem", pki.leaf("b.test"))
    found = Discovery(certs=(CertEntry(str(a)), CertEntry(str(b))), sockets=(SOCK,), warnings=())
    held = {
        str(b): Record(str(b), serial="1", next_refresh=T0),
        "/gone.pem": Record("/gone.pem", serial="2", next_refresh=T0),
    }
    view = diff(config, found, held, {}, changed=(), at_once=True, now=T0, rng=_rng())
    assert sorted(view.entries) == [str(a), str(b)]
    assert [(Path(name).name, why) for name, _, why in view.news] == [
        ("a.pem", "added"),
        ("b.pem", "renewed"),
    ]
    assert {r.cert: r.next_refresh for r in view.saves} == {str(a): T0, str(b): T0}
    assert view.removed == ("/gone.pem",)
    assert view.sockets == (SOCK,)
    assert view.roots == frozenset({tmp_path})
    assert set(view.serials) == {str(a), str(b)}


# ----------------------------------------------------------- watcher.relevant


@pytest.mark.parametrize(
    ("name", "news"),
    [("site.pem", True), ("site.pem.issuer", True), ("site.pem.ocsp", False), (".tmp1", False)],
)
def test_the_watcher_ignores_our_own_writes(name, news):
    assert watcher.relevant(watchfiles.Change.modified, f"/etc/haproxy/certs/{name}") is news


# ---------------------------------------------------------- configuration swap


def test_a_bad_configuration_changes_nothing(pki, tmp_path):
    """prepare() raises before anything changes; apply() swaps one object in."""
    crt = tmp_path / "crt"
    crt.mkdir()
    pki.write(crt, "a.pem", pki.leaf("a.test"))
    config = Config(state_dir=tmp_path / "state", paths=(crt,))
    daemon = Daemon(config, fetcher=Fetcher(), state=State.open(config.state_dir))
    daemon.rediscover()
    before, records = daemon.view, dict(daemon.records)
    bad = dataclasses.replace(config, paths=(crt, tmp_path / "missing"))
    with pytest.raises(ConfigError):
        daemon.prepare(bad)
    assert daemon.view is before
    assert daemon.records == records
    assert isinstance(daemon.view, View)
    with pytest.raises(dataclasses.FrozenInstanceError):
        daemon.view.config = bad  # type: ignore[misc]
    with pytest.raises(TypeError):
        daemon.view.entries["x"] = CertEntry(str(crt / "x.pem"))  # type: ignore[index]
