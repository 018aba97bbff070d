"""The SQLite state: records survive a reopen, history is bounded, removal forgets."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from hastaple.app.cli import cli
from hastaple.core.schedule import Window
from hastaple.daemon import state as st
from hastaple.errors import ConfigError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _record(**kwargs) -> st.Record:
    base = {
        "cert": "/c/a.pem",
        "ocsp_url": "http://ocsp.test/",
        "serial": "1001",
        "status": "good",
        "result": "fetched",
        "last_attempt": T0,
        "last_success": T0,
        "this_update": T0,
        "next_update": T0 + dt.timedelta(days=7),
        "fetched_at": T0,
        "max_age": 3600,
        "next_refresh": T0 + dt.timedelta(days=4),
        "haproxy": (("/run/a.sock", "update"),),
    }
    return st.Record(**{**base, **kwargs})


def test_round_trip_across_reopen(tmp_path):
    """What is put is what a new process reads back, times included."""
    state = st.State.open(tmp_path / "state")
    record = _record()
    state.put(record, event="fetched")
    state.close()
    again = st.State.open(tmp_path / "state")
    assert again.get("/c/a.pem") == record
    assert again.all() == [record]
    assert record.window() == Window(T0, T0 + dt.timedelta(days=7), T0, 3600)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_history_is_bounded_and_ordered(tmp_path):
    """Only the latest HISTORY_PER_CERT events are kept per certificate, oldest first."""
    state = st.State.open(tmp_path)
    for i in range(st.HISTORY_PER_CERT + 10):
        at = T0 + dt.timedelta(minutes=i)
        state.put(_record(last_attempt=at, error=f"e{i}"), event="failed")
    state.put(_record(cert="/c/b.pem"), event="fetched")
    events = state.history("/c/a.pem")
    assert len(events) == st.HISTORY_PER_CERT
    assert events[0].error == "e10"
    assert events[-1].at == T0 + dt.timedelta(minutes=st.HISTORY_PER_CERT + 9)
    assert len(state.history("/c/b.pem")) == 1


def test_forget_removes_record_and_history(tmp_path):
    """A removed certificate is forgotten entirely."""
    state = st.State.open(tmp_path)
    state.put(_record(), event="fetched")
    state.forget("/c/a.pem")
    assert state.get("/c/a.pem") is None
    assert state.history("/c/a.pem") == []


def test_forget_several_at_once_keeps_the_others(tmp_path):
    """Removing a directory forgets its certificates together; the rest stay."""
    state = st.State.open(tmp_path)
    for cert in ("/c/a.pem", "/c/b.pem", "/c/c.pem"):
        state.put(_record(cert=cert), event="fetched")
    state.forget("/c/a.pem", "/c/c.pem")
    assert [state.get(c) is None for c in ("/c/a.pem", "/c/b.pem", "/c/c.pem")] == [
        True,
        False,
        True,
    ]
    assert len(state.history("/c/b.pem")) == 1


def test_readonly_reader_sees_writer(tmp_path):
    """`status` reads while the daemon holds the database open."""
    writer = st.State.open(tmp_path)
    writer.put(_record())
    reader = st.State.open_readonly(tmp_path)
    assert [r.cert for r in reader.all()] == ["/c/a.pem"]
    writer.put(dataclasses.replace(_record(), error="boom"))
    assert reader.get("/c/a.pem").error == "boom"


def test_readonly_without_database_is_config_error(tmp_path):
    """No database yet: a sentence saying so, not a traceback."""
    with pytest.raises(ConfigError, match="no state yet"):
        st.State.open_readonly(tmp_path)


def test_corrupt_database_is_config_error(tmp_path):
    """A file that is not SQLite is reported by name."""
    (tmp_path / st.DB_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match=st.DB_NAME):
        st.State.open(tmp_path)


def test_to_json_shape():
    """The `status --json` objects carry RFC 3339 UTC times and the haproxy map."""
    out = _record().to_json()
    assert out["this_update"] == "2026-01-01T00:00:00Z"
    assert out["haproxy"] == {"/run/a.sock": "update"}
    assert out["failures"] == 0


def test_readonly_relative_state_dir(tmp_path, monkeypatch):
    """A relative state directory opens read-only (SQLite's URI needs an absolute path)."""
    monkeypatch.chdir(tmp_path)
    writer = st.State.open(Path("st"))
    writer.put(_record())
    reader = st.State.open_readonly(Path("st"))
    assert [r.cert for r in reader.all()] == ["/c/a.pem"]
    reader.close()
    writer.close()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_status_with_relative_state_dir(tmp_path, monkeypatch, how):
    """`status --state-dir st` and HASTAPLE_STATE_DIR=st answer, no ValueError traceback."""
    monkeypatch.chdir(tmp_path)
    writer = st.State.open(Path("st"))
    writer.put(_record())
    writer.close()
    args, env = (["--state-dir", "st"], {}) if how == "flag" else ([], {"HASTAPLE_STATE_DIR": "st"})
    result = CliRunner().invoke(cli, ["status", "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    assert [row["cert"] for row in json.loads(result.stdout)] == ["/c/a.pem"]


_CONTRACT = {"cert", "ocsp_url", "status", "action", "this_update", "next_update", "error"}
_STATUSES = {"good", "revoked", "unknown", "no-ocsp", "managed", "error"}
_ACTIONS = {"fetched", "fresh", "deployed", "skipped", "failed"}


@pytest.mark.parametrize(
    ("changes", "status", "action"),
    [
        ({"haproxy": ()}, "good", "fetched"),
        ({}, "good", "deployed"),  # fetched, then loaded into HAProxy
        ({"haproxy": (("/run/a.sock", "error"),), "error": "haproxy /run/a.sock: refused"},
         "good", "failed"),
        ({"result": "fresh"}, "good", "fresh"),
        ({"result": "error", "error": "timed out", "failures": 2}, "good", "failed"),
        ({"result": "revoked", "status": "revoked"}, "revoked", "failed"),
        ({"result": "unknown", "status": "unknown"}, "unknown", "failed"),
        ({"result": "skipped", "status": "no-ocsp"}, "no-ocsp", "skipped"),
        ({"result": "skipped", "status": "managed"}, "managed", "skipped"),
        ({"result": "error", "status": "error", "error": "refused"}, "error", "failed"),
    ],
)  # fmt: skip
def test_to_json_action_from_last_result(changes, status, action):
    """`status --json` carries the contract's `action`, derived from the last result."""
    out = _record(**changes).to_json()
    assert (out["status"], out["action"]) == (status, action)
    assert set(out) >= _CONTRACT


def test_to_json_before_first_attempt_is_never_null_status():
    """A certificate not yet checked is status `error`, action `skipped`, with a sentence."""
    out = st.Record("/c/new.pem", serial="1002").to_json()
    assert set(out) >= _CONTRACT
    assert (out["status"], out["action"]) == ("error", "skipped")
    assert out["error"] == "not checked yet"
    assert out["status"] in _STATUSES
    assert out["action"] in _ACTIONS


def test_a_batch_of_many_records_and_events_reads_back_whole(tmp_path):
    """
    One ``put_many``: every row as put, each time exact, history bounded within the batch.

    The rows are written with ``executemany`` and each time's text is
    remembered for a few records: more distinct times than it remembers,
    times shared by many records, the same instant in another zone, and a
    certificate with more events in one batch than its history keeps.
    """
    state = st.State.open(tmp_path)
    paris = dt.timezone(dt.timedelta(hours=1))
    records = [
        _record(
            cert=f"/c/{i:03d}.pem", next_refresh=T0 + dt.timedelta(seconds=i, microseconds=i),
            last_attempt=(T0 + dt.timedelta(hours=i % 3)).astimezone(paris),
            haproxy=() if i % 2 else (("/run/a.sock", "error"), ("/run/b.sock", "update")),
        )
        for i in range(300)
    ]  # fmt: skip
    burst = [_record(error=f"e{i}") for i in range(st.HISTORY_PER_CERT + 5)]
    state.put_many([(r, "fetched", None) for r in records] + [(r, "failed", T0) for r in burst])
    state.close()
    again = st.State.open(tmp_path)
    assert again.all() == sorted([*records, burst[-1]], key=lambda r: r.cert)
    assert [e.error for e in again.history("/c/a.pem")] == [f"e{i}" for i in range(5, 55)]
    [event] = again.history("/c/001.pem")
    assert (event.at, event.event) == (T0 + dt.timedelta(hours=1), "fetched")
