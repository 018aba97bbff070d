"""
Run a real Prometheus (Debian's ``prometheus`` package) for the tests.

It listens on 127.0.0.1 and a free port, keeps its data in a temp directory
and runs in its own process group, which stop() kills whole. A missing
``prometheus`` or ``promtool`` skips the test locally and fails it under CI
(env ``CI`` set), as for HAProxy: the suite must not pass by skipping.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hastaple.testing.haproxy import free_port, spawn_logged, stop_group

STARTUP_SECONDS = 15.0


def require(name: str) -> str:
    """The path of ``name`` (``prometheus`` or ``promtool``); skip, or fail under CI."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found (Debian package 'prometheus')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@dataclass
class Prometheus:
    """A running Prometheus: its HTTP API on 127.0.0.1:``port``."""

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>?<params>; the ``data`` member of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:  # noqa: S310 - our own http URL
            answer = json.load(resp)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: ``[{"metric": {labels}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def alerting_rules(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every alerting rule by (group, alert name): its state and active alerts."""
        groups = self.api("rules", type="alert")["groups"]
        return {(g["name"], r["name"]): r for g in groups for r in g["rules"]}

    def stop(self) -> None:
        """Kill the whole process group and reap it."""
        stop_group(self.proc, timeout=10)


def start(binary: str, workdir: Path, config: dict[str, Any]) -> Prometheus:
    """
    Start Prometheus with ``config`` (written as JSON, which is YAML); wait until ready.

    Relative ``rule_files`` resolve against ``workdir``. A port taken between
    choosing and binding it is retried on another port.
    """
    cfg = workdir / "prometheus.yml"
    cfg.write_text(json.dumps(config, indent=2))
    last_error = ""
    for _ in range(3):
        port = free_port()
        argv = [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        proc = spawn_logged(argv, workdir, "prometheus.log")
        prom = Prometheus(workdir, port, proc)
        if _wait_ready(prom):
            return prom
        prom.stop()
        last_error = prom.log
        if "address already in use" not in last_error:
            break
    msg = f"Prometheus did not start:\n{last_error}"
    raise RuntimeError(msg)


def _wait_ready(prom: Prometheus) -> bool:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if prom.proc.poll() is not None:
            return False
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp,  # noqa: S310
        ):
            if resp.status == 200:
                return True
        time.sleep(0.05)  # polling /-/ready: Prometheus has no other readiness signal
    return False
