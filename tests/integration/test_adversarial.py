"""
Adversarial responders against `hastaple fetch` and a real HAProxy 2.6 and 2.8.

One HAProxy per version serves one certificate per fault, each with a good
(due) staple loaded at start; one `hastaple fetch` run asks every certificate's
own misbehaving responder. Each fault must be rejected with its reason, the
old ``.ocsp`` must stay byte-identical and HAProxy must still staple the old
response (``openssl s_client -status``). HAProxy itself would have taken most
of these (docs/haproxy.md): hastaple is the only check.

Run with ``-rP`` to see the counts (bad inputs tried, rejected, staples lost).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from faults import DAY, FAULTS, Case
from hastaple.testing import haproxy as haproxy_proc
from hastaple.testing.pki import now
from hastaple.testing.responders import FaultResponder, Serve

pytestmark = pytest.mark.integration


class _ResponderThread:
    """A FaultResponder on its own event loop, so module-scoped sync fixtures can use it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.responder = self._call(FaultResponder().start())

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self._call(self.responder.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class World:
    """What one fetch run over every fault did, for one HAProxy version."""

    faults: dict[str, tuple[object, str]]
    rows: dict[str, dict[str, object]]
    old: dict[str, bytes]
    served_before: dict[str, str]
    crt_dir: Path
    hap: haproxy_proc.HAProxy
    exit_code: int
    stderr: str


def _this_update(hap: haproxy_proc.HAProxy, name: str) -> str:
    text = haproxy_proc.staple(hap.port, f"{name}.example.test")
    if "Cert Status: good" not in text:
        return f"no good staple: {text[:80]}"
    return text.split("This Update: ", 1)[1].splitlines()[0].strip()


@pytest.fixture(name="world", scope="module", params=haproxy_proc.VERSIONS)
def _world(request, pki):
    binary = haproxy_proc.require(request.param)
    base = Path(tempfile.mkdtemp(prefix="adv"))
    crt_dir, workdir = base / "crt", base / "w"
    crt_dir.mkdir()
    workdir.mkdir()
    server = _ResponderThread()
    responder = server.responder
    hap = None
    try:
        faults: dict[str, tuple[object, str]] = {}
        old: dict[str, bytes] = {}
        for name in ["control", *FAULTS]:
            leaf = pki.leaf(f"{name}.example.test", ocsp_url=responder.url_for(name))
            if name == "control":
                faults[name] = (Serve(pki.response(leaf.cert)), "")
            else:
                faults[name] = FAULTS[name](Case(pki, leaf, responder.url_for(name)))
            responder.on(name, faults[name][0])
            pki.write(crt_dir, f"{name}.pem", leaf)
            this = now() - 5 * DAY  # due: past half of its validity, so fetch asks
            old[name] = pki.response(leaf.cert, this_update=this, next_update=this + 7 * DAY)
            (crt_dir / f"{name}.pem.ocsp").write_bytes(old[name])
        hap = haproxy_proc.start(binary, workdir, crt_dir)
        served_before = {name: _this_update(hap, name) for name in faults}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "hastaple",
                "fetch",
                "--json",
                # Bounds the stalls; long enough that the redirect loop's four
                # round trips finish on a loaded CI machine (2 s did not, once).
                "--timeout",
                "6",
                "--haproxy",
                str(hap.socket),
                str(crt_dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        rows = {Path(str(r["cert"])).name.removesuffix(".pem"): r for r in json.loads(proc.stdout)}
        yield World(faults, rows, old, served_before, crt_dir, hap, proc.returncode, proc.stderr)
    finally:
        if hap is not None:
            hap.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_rejected_and_old_staple_kept(world, fault):
    """The fault is refused with its reason; the old .ocsp and HAProxy's staple are untouched."""
    row = world.rows[fault]
    words = world.faults[fault][1]
    assert row["action"] == "failed", row
    assert words.lower() in str(row["error"]).lower(), row["error"]
    assert (world.crt_dir / f"{fault}.pem.ocsp").read_bytes() == world.old[fault]
    assert not world.served_before[fault].startswith("no good staple")
    assert _this_update(world.hap, fault) == world.served_before[fault]


def test_control_is_deployed(world):
    """The negative: the one honest responder's staple is stored and served, exit 1 overall."""
    row = world.rows["control"]
    assert (row["status"], row["action"]) == ("good", "deployed"), row
    assert _this_update(world.hap, "control") != world.served_before["control"]
    assert world.exit_code == 1
    assert "Traceback" not in world.stderr
    assert not list(world.crt_dir.glob(".*"))  # no temp file left behind


def test_summary(world):
    """The closing note's counts: every bad input rejected, no staple lost."""
    tried = len(FAULTS)
    rejected = sum(world.rows[f]["action"] == "failed" for f in FAULTS)
    kept = sum(
        (world.crt_dir / f"{f}.pem.ocsp").read_bytes() == world.old[f]
        and _this_update(world.hap, f) == world.served_before[f]
        for f in FAULTS
    )
    print(
        f"\nadversarial ({world.hap.binary}): {tried} bad responders tried, {rejected} "
        f"rejected, {tried - kept} staples lost (file or HAProxy)"
    )
    assert (rejected, kept) == (tried, tried)
