"""The metrics server's edge: an address that cannot be bound is a configuration error."""

from __future__ import annotations

import logging
import socket

import pytest
from aiohttp import web
from click.testing import CliRunner

from hastaple.app.cli import cli
from hastaple.daemon import metrics
from hastaple.daemon.state import Record
from hastaple.errors import ConfigError


@pytest.fixture(name="busy_port")
def _busy_port():
    """A 127.0.0.1 port some other listener holds for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _app() -> web.Application:
    return metrics.app(metrics.Metrics(lambda: (None, [])), lambda: metrics.Health(True, ()))


async def test_busy_address_is_config_error_and_runner_cleaned_up(busy_port):
    """A port in use raises ConfigError naming the address; the runner is cleaned up first."""
    cleaned: list[web.Application] = []

    async def on_cleanup(app: web.Application) -> None:  # aiohttp's own hook, run by cleanup()
        cleaned.append(app)

    app = _app()
    app.on_cleanup.append(on_cleanup)
    with pytest.raises(ConfigError) as info:
        await metrics.serve(app, "127.0.0.1", busy_port)
    assert str(info.value) == f"metrics_address 127.0.0.1:{busy_port}: address already in use"
    assert len(cleaned) == 1
    runner, port = await metrics.serve(_app(), "127.0.0.1", 0)  # the negative: a free port works
    assert port not in {0, busy_port}
    await runner.cleanup()


def test_run_with_busy_metrics_address_exits_2_one_line(busy_port, tmp_path):
    """`hastaple run --metrics-address <busy>`: exit 2, one error line, no traceback."""
    (tmp_path / "crt").mkdir()
    args = ["run", "--paths", str(tmp_path / "crt"), "--state-dir", str(tmp_path / "state")]
    try:
        result = CliRunner().invoke(cli, [*args, "--metrics-address", f"127.0.0.1:{busy_port}"])
    finally:
        logging.getLogger().handlers.clear()  # `run` installs its log handler on stderr
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: metrics_address 127.0.0.1:{busy_port}: address already in use"]
    assert "Traceback" not in result.stderr


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in the text exposition format."""
    return {
        line.split("{", 1)[1].rsplit("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


def test_counters_start_at_zero_for_every_documented_label():
    """Each documented result and outcome exists at 0 before any event: increase() sees the 1st."""
    text = metrics.Metrics(lambda: (None, [])).render().decode()
    results = _samples(text, "hastaple_fetches_total")
    assert results == {
        f'result="{r}"': 0.0 for r in ("fetched", "fresh", "revoked", "unknown", "error", "skipped")
    }
    outcomes = _samples(text, "hastaple_haproxy_pushes_total")
    assert outcomes == {f'outcome="{o}"': 0.0 for o in ("update", "commit", "stored", "error")}


def test_per_certificate_failures_in_a_row_and_revoked_status():
    """hastaple_consecutive_failures{cert} is the record's count; a revoked one says so."""
    records = [
        Record("/crt/ok.pem", ocsp_url="http://o.test/", status="good"),
        Record("/crt/down.pem", ocsp_url="http://o.test/", status="good", failures=4),
        Record("/crt/gone.pem", ocsp_url="http://o.test/", status="revoked", failures=2),
        Record("/crt/nourl.pem", status="no-ocsp"),
    ]
    text = metrics.Metrics(lambda: (None, records)).render().decode()
    assert _samples(text, "hastaple_consecutive_failures") == {
        'cert="/crt/ok.pem"': 0.0, 'cert="/crt/down.pem"': 4.0, 'cert="/crt/gone.pem"': 2.0,
    }  # fmt: skip
    assert _samples(text, "hastaple_certificate_info") == {
        'cert="/crt/ok.pem",must_staple="false",status="good"': 1.0,
        'cert="/crt/down.pem",must_staple="false",status="good"': 1.0,
        'cert="/crt/gone.pem",must_staple="false",status="revoked"': 1.0,
    }
