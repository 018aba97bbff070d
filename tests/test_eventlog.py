"""
The daemon's log lines, exactly: what an operator's log shipper parses.

Pinned byte for byte (but the time stamp) in both formats, so that making
``log_event`` cheaper cannot change a field, its quoting or its order.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hastaple.daemon import eventlog as events

WHEN = dt.datetime(2026, 12, 6, 7, 0, 30, 123456, tzinfo=dt.UTC)
PARIS = dt.timezone(dt.timedelta(hours=1))


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.handlers.clear()
    root.setLevel(level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def _emit_all() -> None:
    events.log_event(
        logging.INFO, "fetched", cert="/crt/a.pem", responder="http://ocsp.test/", status="good",
        action="fetched", next_update=WHEN, next_refresh=WHEN.astimezone(PARIS), failures=0,
        error=None,
    )  # fmt: skip
    events.log_event(
        logging.ERROR, "error", cert="/crt/a b.pem", error='said "no" = refused\nbye',
        failures=2, must=True, ratio=0.5, empty="", path=Path("/x/y"),
    )  # fmt: skip
    events.log_event(logging.INFO, "added", cert="/crt/c.pem", serial="3e8")
    events.log_event(logging.DEBUG, "discarded", cert="/crt/c.pem", result="fetched")
    events.log_event(logging.INFO, "stopped")


KEYVALUE = [
    (
        "level=info logger=hastaple.daemon event=fetched cert=/crt/a.pem"
        " responder=http://ocsp.test/ status=good action=fetched"
        " next_update=2026-12-06T07:00:30Z next_refresh=2026-12-06T07:00:30Z failures=0"
    ),
    (
        "level=error logger=hastaple.daemon event=error"
        ' cert="/crt/a b.pem" error="said \\"no\\" = refused\\nbye" failures=2 must=True'
        ' ratio=0.5 empty="" path=/x/y'
    ),
    "level=info logger=hastaple.daemon event=added cert=/crt/c.pem serial=3e8",
    "level=info logger=hastaple.daemon event=stopped",
]
JSON: list[dict[str, object]] = [
    {
        "level": "info", "logger": "hastaple.daemon", "event": "fetched", "cert": "/crt/a.pem",
        "responder": "http://ocsp.test/", "status": "good", "action": "fetched",
        "next_update": "2026-12-06T07:00:30Z", "next_refresh": "2026-12-06T07:00:30Z",
        "failures": 0,
    },
    {
        "level": "error", "logger": "hastaple.daemon", "event": "error", "cert": "/crt/a b.pem",
        "error": 'said "no" = refused\nbye', "failures": 2, "must": True, "ratio": 0.5,
        "empty": "", "path": "/x/y",
    },
    {
        "level": "info", "logger": "hastaple.daemon", "event": "added", "cert": "/crt/c.pem",
        "serial": "3e8",
    },
    {"level": "info", "logger": "hastaple.daemon", "event": "stopped"},
]  # fmt: skip


def test_keyvalue_lines_exactly(configured: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Fields in call order, None left out, quoted only when needed, times in RFC 3339 UTC."""
    events.configure("keyvalue")
    _emit_all()
    lines = _lines(capsys)
    for line in lines:
        assert re.match(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ", line), line
    assert [line.split(" ", 1)[1] for line in lines] == KEYVALUE


def test_json_lines_exactly(configured: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The same events as JSON objects: key order kept, values typed, DEBUG left out."""
    events.configure("json")
    _emit_all()
    objects = [json.loads(line) for line in _lines(capsys)]
    for obj in objects:
        dt.datetime.fromisoformat(obj.pop("ts"))
    assert objects == JSON
    assert [list(o) for o in objects] == [list(o) for o in JSON]


@pytest.mark.parametrize("fmt", ["keyvalue", "json"])
def test_debug_events_when_debug_is_on(
    fmt: str, configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DEBUG event is written once the level lets it through, in the same form."""
    events.configure(fmt, logging.DEBUG)
    events.log_event(logging.DEBUG, "discarded", cert="/crt/c.pem", result="fetched")
    [line] = _lines(capsys)
    if fmt == "json":
        assert json.loads(line)["event"] == "discarded"
    else:
        assert line.endswith("level=debug logger=hastaple.daemon event=discarded "
                             "cert=/crt/c.pem result=fetched")  # fmt: skip


@pytest.mark.parametrize("fmt", ["keyvalue", "json"])
def test_plain_records_and_exceptions(
    fmt: str, configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record that is no event (a traceback from a bug) keeps its message and exception."""
    events.configure(fmt)
    try:
        raise ValueError("boom")  # noqa: TRY301 - the traceback is the point
    except ValueError:
        logging.getLogger("hastaple.daemon.loop").exception("internal error in %s", "the loop")
    [line] = _lines(capsys)
    if fmt == "json":
        obj = json.loads(line)
        assert obj["message"] == "internal error in the loop"
        assert "event" not in obj
        assert obj["exc"].endswith("ValueError: boom")
    else:
        assert " level=error logger=hastaple.daemon.loop internal error in the loop exc=" in line
        assert json.loads(line.split(" exc=", 1)[1]).endswith("ValueError: boom")


def test_other_handlers_see_the_line_and_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    """``getMessage`` is the key=value line; the fields travel on the record."""
    caplog.set_level(logging.INFO, logger="hastaple.daemon")
    events.log_event(logging.WARNING, "expiring", cert="/c/a b.pem", next_update=WHEN, failures=3)
    [record] = caplog.records
    assert record.getMessage() == (
        'event=expiring cert="/c/a b.pem" next_update=2026-12-06T07:00:30Z failures=3'
    )
    assert record.levelno == logging.WARNING
    assert (record.funcName, record.pathname) == ("log_event", events.__file__)
    assert record.event == "expiring"  # type: ignore[attr-defined]
    assert record.fields == {  # type: ignore[attr-defined]
        "cert": "/c/a b.pem", "next_update": "2026-12-06T07:00:30Z", "failures": 3,
    }  # fmt: skip


def test_time_stamps_as_datetime_writes_them() -> None:
    """The cached per-second stamp gives ``fromtimestamp``'s text, rounding included."""
    stamps = events._Stamps()
    base = dt.datetime(2026, 12, 6, 7, 0, 59, tzinfo=dt.UTC).timestamp()
    created = [base, base + 0.5, base + 0.9999994, base + 0.9999996, base + 1.0000004,
               base + 0.123456, base + 0.1234565, base + 3600.25, 1.5, 0.0]  # fmt: skip
    rng = random.Random(16)  # noqa: S311 - test data
    created += [base + rng.uniform(0, 86400 * 30) for _ in range(20_000)]
    for when in created:
        expected = dt.datetime.fromtimestamp(when, dt.UTC)
        second, micro = stamps.split(when)
        assert f"{second}.{micro:06d}Z" == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), when
        assert stamps.isoformat(when) == expected.isoformat(), when
