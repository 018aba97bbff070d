"""
The shipped Prometheus files, checked by the real tools.

- ``promtool`` checks the alert rules and the example configuration, and runs
  the rules' unit tests (contrib/prometheus/hastaple-alerts.test.yml).
- A real Prometheus scrapes a real ``hastaple run`` (real HAProxy 2.6, a
  responder on loopback): every metric contrib/README.md documents arrives
  with the documented labels, and the shipped rules, loaded unchanged, go
  active when a staple crosses the threshold in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import prometheus_proc
from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.pki import now as pki_now
from hastaple.testing.responders import OCSP_TYPE, FaultResponder, Serve

pytestmark = pytest.mark.integration

CONTRIB = Path(__file__).parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "hastaple-alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "hastaple-alerts.test.yml"
EXAMPLE_CONFIG = CONTRIB / "prometheus" / "prometheus.yml"
TWO_DAYS = 2 * 86400  # HastapleStapleExpiringSoon's threshold
CROSSING = 15.0  # seconds after its first fetch until the short staple crosses it
COPY_GROUP = "hastaple-for-0s"  # the test-only copy of the rules, without `for:`


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    promtool = prometheus_proc.require("promtool")
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_rules_and_example_config():
    """`promtool check rules` and `check config` accept the shipped files."""
    for args in (("check", "rules", RULES), ("check", "config", EXAMPLE_CONFIG)):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in _promtool("check", "rules", RULES).stdout


def test_promtool_rule_unit_tests_pass():
    """`promtool test rules`: each alert fires on its series and stays quiet on the other."""
    result = _promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alerts(text: str) -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", text, re.MULTILINE)


def test_every_alert_has_a_severity_a_runbook_and_a_firing_unit_test():
    """No rule ships without severity, summary, description and a test where it fires."""
    rules = RULES.read_text()
    tests = RULE_TESTS.read_text()
    blocks = re.split(r"^\s*- alert: ", rules, flags=re.MULTILINE)[1:]
    assert len(blocks) == len(_alerts(rules)) == 8
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"severity: (warning|critical)\n", block), name
        assert "summary:" in block and "description:" in block, name
        firing = rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:"
        quiet = rf"alertname: {name}\n\s+exp_alerts: \[\]"
        assert re.search(firing, tests), f"{name}: no unit test where it fires"
        assert re.search(quiet, tests), f"{name}: no unit test where it stays quiet"


# -- a real scrape --------------------------------------------------------------


def _documented_metrics() -> dict[str, set[str]]:
    """The metric list of contrib/README.md: ``- `name{label, ...}`: ...``."""
    text = (CONTRIB / "README.md").read_text()
    found = {
        name: {label.strip() for label in labels.split(",") if label.strip()}
        for name, labels in re.findall(r"^- `(hastaple_\w+)\{([\w, ]*)\}`", text, re.MULTILINE)
    }
    assert len(found) >= 5, f"contrib/README.md's metric list not found: {found}"
    return found


@dataclass
class FirstThenDown:
    """The CA answers once with ``body``, then fails: the staple held ages for real."""

    body: Callable[[], bytes]
    answered: list[float] = field(default_factory=list)

    async def __call__(self, request: web.Request, server: FaultResponder) -> web.StreamResponse:  # noqa: ARG002
        if self.answered:
            return web.Response(status=503, text="down for the test")
        self.answered.append(time.monotonic())
        return web.Response(body=self.body(), headers={"Content-Type": OCSP_TYPE})


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    port: int
    lines: list[str]


@contextlib.asynccontextmanager
async def _hastaple_run(tmp_path: Path, crt_dir: Path, *sockets: str) -> AsyncIterator[Daemon]:
    """``hastaple run`` as a process, metrics on 127.0.0.1:<port it chose>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASTAPLE_")}
    haproxy = [arg for sock in sockets for arg in ("--haproxy", sock)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hastaple", "run", "--paths", str(crt_dir), *haproxy,
        "--state-dir", str(tmp_path / "state"), "--metrics-address", "127.0.0.1:0",
        "--refresh-spread", "0", "--haproxy-poll", "0.5s",
        # Retries after 1, 2, 4, 8 s instead of 30 s ...: failures pile up within the test.
        "--refresh-backoff-base", "1s",
        env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if (
                m := re.search(r"event=metrics address=127\.0\.0\.1:(\d+)", line)
            ) and not port.done():
                port.set_result(int(m.group(1)))
        if not port.done():
            port.set_exception(AssertionError("hastaple run exited:\n" + "\n".join(lines)))

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(20):
            bound = await port
        yield Daemon(proc, bound, lines)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await reader


def _config(target: str, rule_files: list[str]) -> dict[str, Any]:
    """The shipped example configuration, scraping ``target`` every second."""
    text = EXAMPLE_CONFIG.read_text()
    # The example's only target and job; a 1 s interval instead of 30 s.
    assert '- targets: ["127.0.0.1:9877"]' in text and "job_name: hastaple" in text
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [{"job_name": "hastaple", "static_configs": [{"targets": [target]}]}],
    }


def _for_zero_copy(directory: Path) -> Path:
    """The rules with every `for:` at 0s, in their own group: pending becomes firing at once."""
    text = RULES.read_text()
    copy, n = re.subn(r"^(\s+)for: \S+$", r"\1for: 0s", text, flags=re.MULTILINE)
    assert n >= 4, "the rules file's `for:` lines changed shape"
    copy = copy.replace("  - name: hastaple\n", f"  - name: {COPY_GROUP}\n", 1)
    path = directory / "for-0s.yml"
    path.write_text(copy)
    return path


async def _until(what: str, check: Callable[[], Any], within: float) -> Any:
    """Poll ``check`` (in a thread: Prometheus's API is blocking) until truthy."""
    deadline = time.monotonic() + within
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.2)  # polling Prometheus: its rule evaluations are not pushed


def _active(rule: dict[str, Any], **labels: str) -> list[dict[str, Any]]:
    return [a for a in rule["alerts"] if labels.items() <= a["labels"].items()]


async def test_real_prometheus_scrapes_metrics_and_fires_alerts(pki, tmp_path, sock_dir, crt_dir):
    """
    Prometheus scrapes `hastaple run`; the README's metrics arrive, the rules fire.

    Four certificates: `long` (a fresh 7-day staple), `short` (a staple that
    crosses 2 days left CROSSING s after its fetch, the CA down after that),
    `revoked`, and `must` (must-staple, its CA down from the start). Two
    sockets: a real HAProxy 2.6 and one nobody listens on.
    """
    prometheus = prometheus_proc.require("prometheus")
    hap_binary = haproxy_proc.binary("2.6")
    if hap_binary is None:
        if os.environ.get("CI"):
            pytest.fail("HAProxy 2.6 binary not found")
        pytest.skip("HAProxy 2.6 binary not found")

    async with FaultResponder() as ca:
        leaves = {
            n: pki.leaf(f"{n}.test", ocsp_url=ca.url_for(n)) for n in ("long", "short", "revoked")
        }
        leaves["must"] = pki.leaf("must.test", ocsp_url=ca.url_for("must"), must_staple=True)
        certs = {n: str(pki.write(crt_dir, f"{n}.pem", leaf)) for n, leaf in leaves.items()}
        ca.on("long", Serve(pki.response(leaves["long"].cert)))
        ca.on("must", Serve(b"down", 503))
        ca.on("revoked", Serve(pki.response(leaves["revoked"].cert, status="revoked")))

        def short_staple() -> bytes:  # signed when asked: its clock starts at the fetch
            at = pki_now()
            return pki.response(
                leaves["short"].cert,
                this_update=at - dt.timedelta(days=5),
                next_update=at + dt.timedelta(seconds=TWO_DAYS + CROSSING),
            )

        short = FirstThenDown(short_staple)
        ca.on("short", short)

        hap_dir = sock_dir / "hap"
        hap_dir.mkdir()
        hap = haproxy_proc.start(hap_binary, hap_dir, crt_dir)
        prom: prometheus_proc.Prometheus | None = None
        try:
            async with _hastaple_run(
                tmp_path, crt_dir, str(hap.socket), str(sock_dir / "nobody.sock")
            ) as daemon:
                workdir = tmp_path / "prometheus"
                workdir.mkdir()
                rule_files = [str(RULES), str(_for_zero_copy(workdir))]
                config = _config(f"127.0.0.1:{daemon.port}", rule_files)
                prom = await asyncio.to_thread(prometheus_proc.start, prometheus, workdir, config)
                await _scraped(prom, daemon, certs)
                await _documented_metrics_arrive(prom, certs)
                await _short_staple_crosses_the_threshold(prom, short, certs)
                await _revoked_and_haproxy_alerts_fire(prom, certs, sock_dir / "nobody.sock")
                await _refresh_failing_and_must_staple_fire(prom, certs)
                daemon.proc.send_signal(signal.SIGTERM)
                await daemon.proc.wait()
                await _down_alert_fires(prom, daemon)
        finally:
            if prom is not None:
                prom.stop()
            hap.stop()


async def _scraped(prom: prometheus_proc.Prometheus, daemon: Daemon, certs: dict[str, str]) -> None:
    """The target is up, with the scrape URL we gave, and the daemon has fetched all three."""

    def up() -> bool:
        targets = prom.api("targets")["activeTargets"]
        return bool(targets) and targets[0]["health"] == "up"

    await _until("the hastaple target is up", up, within=10)
    [target] = (await asyncio.to_thread(prom.api, "targets"))["activeTargets"]
    assert target["scrapeUrl"] == f"http://127.0.0.1:{daemon.port}/metrics"
    assert target["labels"]["job"] == "hastaple"

    def fetched() -> bool:
        results = prom.query('sum(hastaple_fetches_total{result=~"fetched|revoked"})')
        return bool(results) and float(results[0]["value"][1]) >= 2

    await _until("the daemon's first fetches are scraped", fetched, within=10)


async def _documented_metrics_arrive(
    prom: prometheus_proc.Prometheus, certs: dict[str, str]
) -> None:
    """Each metric of contrib/README.md's list, with exactly its documented labels."""
    scrape_labels = {"job", "instance", "__name__"}
    seen: dict[str, list[dict[str, str]]] = {}
    for name, labels in _documented_metrics().items():
        results = await asyncio.to_thread(prom.query, f"{name} or {name}_count")
        assert results, f"{name} (documented in contrib/README.md) was not scraped"
        seen[name] = [r["metric"] for r in results]
        for metric in seen[name]:
            assert set(metric) - scrape_labels == labels, (name, metric)
    values = {
        name: {v for m in metrics for k, v in m.items() if k not in {"job", "instance", "__name__"}}
        for name, metrics in seen.items()
    }
    assert values["hastaple_staple_expiry_seconds"] == {certs["long"], certs["short"]}
    assert values["hastaple_last_success_timestamp_seconds"] == {certs["long"], certs["short"]}
    # Every documented label value exists from the start (at 0 until its first event).
    assert values["hastaple_fetches_total"] == {
        "fetched", "fresh", "revoked", "unknown", "error", "skipped",
    }  # fmt: skip
    assert values["hastaple_haproxy_pushes_total"] == {"update", "commit", "stored", "error"}
    counted = await asyncio.to_thread(
        prom.query, "hastaple_fetches_total > 0 or hastaple_haproxy_pushes_total > 0"
    )
    seen_rising = {r["metric"].get("result") or r["metric"]["outcome"] for r in counted}
    assert {"fetched", "revoked", "error"} <= seen_rising  # "error": the dead socket too
    [responder] = values["hastaple_responder_latency_seconds"]
    assert responder.startswith("127.0.0.1:")
    # Every certificate, stapled or not: the must-staple one has never had a staple.
    info = {m["cert"]: (m["must_staple"], m["status"]) for m in seen["hastaple_certificate_info"]}
    assert info == {
        certs["long"]: ("false", "good"), certs["short"]: ("false", "good"),
        certs["revoked"]: ("false", "revoked"), certs["must"]: ("true", "error"),
    }  # fmt: skip
    assert {m["cert"] for m in seen["hastaple_consecutive_failures"]} == set(certs.values())


async def _short_staple_crosses_the_threshold(
    prom: prometheus_proc.Prometheus, short: FirstThenDown, certs: dict[str, str]
) -> None:
    """Before the crossing no expiry alert; after it, pending (real rules) and firing (copy)."""
    [fetched_at] = short.answered
    expr = f'hastaple_staple_expiry_seconds{{cert="{certs["short"]}"}}'
    [sample] = await asyncio.to_thread(prom.query, expr)
    left = float(sample["value"][1])
    assert left > TWO_DAYS, (
        f"the first scrape came after the crossing ({left} s left): machine too slow?"
    )
    rules = await asyncio.to_thread(prom.alerting_rules)
    for group in ("hastaple", COPY_GROUP):
        assert rules[group, "HastapleStapleExpiringSoon"]["alerts"] == [], rules[
            group, "HastapleStapleExpiringSoon"
        ]

    def expiring() -> dict[tuple[str, str], dict[str, Any]] | None:
        rules = prom.alerting_rules()
        real = _active(rules["hastaple", "HastapleStapleExpiringSoon"], cert=certs["short"])
        copy = _active(rules[COPY_GROUP, "HastapleStapleExpiringSoon"], cert=certs["short"])
        return rules if real and copy and copy[0]["state"] == "firing" else None

    rules = await _until("the staple-expiring alert", expiring, within=CROSSING + 10)
    elapsed = time.monotonic() - fetched_at
    assert elapsed >= CROSSING - 1, f"fired {elapsed:.1f} s after the fetch, before the crossing"
    [real] = rules["hastaple", "HastapleStapleExpiringSoon"]["alerts"]
    assert real["state"] == "pending"  # `for: 15m` in the shipped file
    assert real["labels"] == {
        "alertname": "HastapleStapleExpiringSoon", "severity": "warning", "cert": certs["short"],
        "job": "hastaple", "instance": real["labels"]["instance"],
    }  # fmt: skip
    assert real["annotations"]["summary"].startswith(
        f"OCSP staple for {certs['short']} expires in 1d 23h 59m"
    )
    assert f"hastaple fetch --force {certs['short']}" in real["annotations"]["description"]
    # The fresh staple never alerts; nor does the critical rule, 2 days out.
    for group in ("hastaple", COPY_GROUP):
        assert _active(rules[group, "HastapleStapleExpiringSoon"], cert=certs["long"]) == []
        assert rules[group, "HastapleStapleExpiring"]["alerts"] == []
    fired = await asyncio.to_thread(prom.api, "alerts")
    names = {
        (a["labels"]["alertname"], a["labels"].get("cert"), a["state"]) for a in fired["alerts"]
    }
    assert ("HastapleStapleExpiringSoon", certs["short"], "firing") in names
    assert ("HastapleStapleExpiringSoon", certs["short"], "pending") in names


async def _revoked_and_haproxy_alerts_fire(
    prom: prometheus_proc.Prometheus, certs: dict[str, str], dead: Path
) -> None:
    """The revoked answer fires at once; the dead socket's alert goes active (copy: firing)."""
    rules = await asyncio.to_thread(prom.alerting_rules)
    revoked = rules["hastaple", "HastapleCertificateRevoked"]
    assert [a["state"] for a in revoked["alerts"]] == ["firing"], revoked
    assert revoked["alerts"][0]["labels"]["severity"] == "critical"
    assert revoked["alerts"][0]["labels"]["cert"] == certs["revoked"]

    def unreachable() -> dict[tuple[str, str], dict[str, Any]] | None:
        rules = prom.alerting_rules()
        copy = rules[COPY_GROUP, "HastapleHAProxyUnreachable"]["alerts"]
        return rules if [a["state"] for a in copy] == ["firing"] else None

    rules = await _until("HastapleHAProxyUnreachable", unreachable, within=10)
    [real] = rules["hastaple", "HastapleHAProxyUnreachable"]["alerts"]
    assert real["state"] == "pending"  # `for: 2m` in the shipped file
    assert real["labels"]["socket"] == str(dead)  # not the live HAProxy's socket
    # The daemon is scraped: the "not scraped" alerts stay quiet.
    for group in ("hastaple", COPY_GROUP):
        assert rules[group, "HastapleDown"]["alerts"] == []
        assert rules[group, "HastapleMetricsAbsent"]["alerts"] == []


async def _refresh_failing_and_must_staple_fire(
    prom: prometheus_proc.Prometheus, certs: dict[str, str]
) -> None:
    """
    Failures in a row fire per certificate; the must-staple one without a staple pages.

    `short` (its CA down after the first answer) and `must` (down from the
    start) fail again and again; `revoked` fails too but has its own alert;
    `long` is fine.
    """

    def failing() -> dict[tuple[str, str], dict[str, Any]] | None:
        rules = prom.alerting_rules()
        copy = {a["labels"]["cert"] for a in rules[COPY_GROUP, "HastapleRefreshFailing"]["alerts"]}
        return rules if copy == {certs["short"], certs["must"]} else None

    rules = await _until("HastapleRefreshFailing for short and must", failing, within=20)
    real = rules["hastaple", "HastapleRefreshFailing"]["alerts"]
    assert {a["state"] for a in real} == {"pending"}  # `for: 5m` in the shipped file
    for alert in real:
        assert alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) >= 3  # the daemon's count in a row
    [must] = _active(rules[COPY_GROUP, "HastapleMustStapleUnstapled"])
    assert (must["state"], must["labels"]["cert"]) == ("firing", certs["must"])
    assert must["labels"]["severity"] == "critical"
    [real_must] = rules["hastaple", "HastapleMustStapleUnstapled"]["alerts"]
    assert real_must["state"] == "pending"  # `for: 5m`


async def _down_alert_fires(prom: prometheus_proc.Prometheus, daemon: Daemon) -> None:
    """The daemon stopped: up == 0, and HastapleDown goes pending (firing in the copy)."""
    assert daemon.proc.returncode == 0, "\n".join(daemon.lines)

    def down() -> dict[tuple[str, str], dict[str, Any]] | None:
        rules = prom.alerting_rules()
        real, copy = rules["hastaple", "HastapleDown"], rules[COPY_GROUP, "HastapleDown"]
        if [a["state"] for a in copy["alerts"]] == ["firing"] and real["alerts"]:
            return rules
        return None

    rules = await _until("HastapleDown after the daemon stopped", down, within=10)
    assert [a["state"] for a in rules["hastaple", "HastapleDown"]["alerts"]] == ["pending"]
    [sample] = await asyncio.to_thread(prom.query, 'up{job="hastaple"}')
    assert sample["value"][1] == "0"
