"""
kill -9 while `hastaple fetch` writes many staples: no staple is ever damaged.

One real `python -m hastaple fetch --force` process per round over a directory
of certificates, killed with SIGKILL at a random moment inside the window in
which it writes (a random delay after its first responder request, up to the
span an uninterrupted run takes from that request to its exit). After every round,
each ``<crt>.ocsp`` must be byte-identical to the staple it had before the
round or to the one the responder served in it, and valid; a leftover dot
temp file (``.<crt>.ocsp.<hex>.tmp``) is counted: HAProxy skips dot-files
(docs/haproxy.md), so it is litter, not damage.

Run with ``-rP`` (or ``-s``) to see the counts this module proves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hastaple.core.model import Status
from hastaple.core.ocsp.validate import validate
from hastaple.testing.pki import PKI, Issued, now
from hastaple.testing.responders import Serve

ROUNDS = 100
# Kills that must land inside the writes; on a loaded machine more rounds than
# ROUNDS may be needed to get them (the window's aim drifts), up to MAX_ROUNDS.
MID_BATCH_KILLS = ROUNDS // 4
MAX_ROUNDS = 3 * ROUNDS
CERTS = 16


@dataclass
class Tally:
    rounds: int = 0
    interrupted_mid_batch: int = 0  # some staples already new, others not yet
    before_any_write: int = 0
    after_all_writes: int = 0
    files_checked: int = 0
    files_damaged: int = 0
    temp_files_left: int = 0
    damaged: list[str] = field(default_factory=list)


@dataclass
class Trigger:
    """Set ``reached`` when the ``target``-th request of a round arrives."""

    target: int
    seen: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Counted:
    """A responder behaviour that counts requests for a ``Trigger``, then answers."""

    inner: Serve
    trigger: Trigger

    async def __call__(self, request, server):
        self.trigger.seen += 1
        if self.trigger.seen >= self.trigger.target:
            self.trigger.reached.set()
        return await self.inner(request, server)


async def _spawn(crt_dir, state_dir) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hastaple", "fetch", "--force", "--json",
        "--state-dir", str(state_dir), str(crt_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


@dataclass
class Lane:
    """One certificate directory and its own sequence of rounds."""

    name: str
    crt_dir: Path
    leaves: list[Issued]
    generation: int = 0

    @property
    def paths(self) -> list[Path]:
        return [self.crt_dir / f"c{i}.pem.ocsp" for i in range(len(self.leaves))]

    def serve(self, pki: PKI, responder, trigger: Trigger) -> list[bytes]:
        """
        Serve a newer valid staple for every certificate: every write shows.

        Newer, because fetch keeps the staple on disk when a responder (or a
        cache in front of it) answers with an older one.
        """
        self.generation += 1
        this = BASE + dt.timedelta(seconds=self.generation)
        served = [pki.response(leaf.cert, this_update=this) for leaf in self.leaves]
        for i, der in enumerate(served):
            responder.on(f"{self.name}c{i}", Counted(Serve(der), trigger))
        return served


BASE = now() - dt.timedelta(hours=1)


@dataclass
class Window:
    """
    How long after the first request kills are aimed, steered toward the writes.

    A calibration run on a loaded machine can be several times slower or faster
    than the rounds that follow, so each round nudges the window: shorter after a
    kill that came too late (every staple already new), longer after one that
    came too early.
    """

    seconds: float

    def adjust(self, outcome: str) -> None:
        if outcome == "after":
            self.seconds *= 0.8
        elif outcome == "before":
            self.seconds *= 1.25


async def _round(pki, responder, lane: Lane, tally: Tally | None, kill_after: float) -> float | str:
    """
    Run fetch once on ``lane``; kill it ``kill_after`` s after its first request.

    Without a tally (the first, uninterrupted run) it returns the seconds from
    the first request to the last staple written: the window kills aim at.
    """
    before = [p.read_bytes() if p.exists() else b"" for p in lane.paths]
    # Anchored on the first request, not on the start: Python's start-up time
    # varies more than the whole writing phase lasts.
    trigger = Trigger(1)
    served = lane.serve(pki, responder, trigger)
    proc = await _spawn(lane.crt_dir, lane.crt_dir.parent / f"state-{lane.name}")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(trigger.reached.wait(), 30)
    first_request = time.time()
    if tally is None:
        assert await proc.wait() == 0
        assert [p.read_bytes() for p in lane.paths] == served
        return max(p.stat().st_mtime for p in lane.paths) - first_request
    await asyncio.sleep(kill_after)
    with contextlib.suppress(ProcessLookupError):  # it may just have finished
        os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    tally.rounds += 1
    changed = 0
    for i, path in enumerate(lane.paths):
        data = path.read_bytes()
        tally.files_checked += 1
        leaf = lane.leaves[i].cert
        ok = data in {before[i], served[i]} and (
            validate(data, cert=leaf, issuer=pki.intermediate.cert, now=now()).status is Status.GOOD
        )
        if not ok:
            tally.files_damaged += 1
            tally.damaged.append(f"{lane.name} round {tally.rounds}: {path.name} ({len(data)} B)")
        changed += data != before[i]
    if changed == 0:
        tally.before_any_write += 1
        outcome = "before"
    elif changed == len(lane.paths):
        tally.after_all_writes += 1
        outcome = "after"
    else:
        tally.interrupted_mid_batch += 1
        outcome = "mid"
    for leftover in lane.crt_dir.glob(".*.tmp"):
        tally.temp_files_left += 1
        leftover.unlink()
    names = {p.name for p in lane.crt_dir.iterdir() if not p.name.startswith(".")}
    assert names == {f"c{i}.pem" for i in range(CERTS)} | {p.name for p in lane.paths}
    return outcome


@pytest.mark.timeout(400)
async def test_sigkill_never_damages_a_staple(pki, fault_responder, tmp_path):
    """100+ rounds of kill -9, 25 of them mid-batch: every .ocsp is the old or the new valid one."""
    lanes = []
    for name in ("a", "b"):  # two directories killed in parallel: half the wall time
        crt_dir = tmp_path / name
        crt_dir.mkdir()
        leaves = []
        for i in range(CERTS):
            url = fault_responder.url_for(f"{name}c{i}")
            leaves.append(pki.leaf(f"c{i}.{name}.example.test", ocsp_url=url))
            pki.write(crt_dir, f"c{i}.pem", leaves[-1])
        lanes.append(Lane(name, crt_dir, leaves))
    spans = await asyncio.gather(*(_round(pki, fault_responder, ln, None, 0) for ln in lanes))
    window = Window(max(float(s) for s in spans) * 1.2)
    rng = random.Random(20261129)  # noqa: S311 - reproducible test timing, not crypto
    tally = Tally()

    def more() -> bool:
        if tally.rounds < ROUNDS:
            return True
        return tally.interrupted_mid_batch < MID_BATCH_KILLS and tally.rounds < MAX_ROUNDS

    async def run_lane(lane: Lane) -> None:
        while more():
            outcome = await _round(
                pki, fault_responder, lane, tally, rng.uniform(0, window.seconds)
            )
            window.adjust(str(outcome))

    await asyncio.gather(*(run_lane(lane) for lane in lanes))

    print(  # quoted by the closing note: run with -rP
        f"\ncrash-safety: {tally.rounds} SIGKILL rounds over {CERTS} staples each; "
        f"{tally.interrupted_mid_batch} killed mid-batch, {tally.before_any_write} before "
        f"any write, {tally.after_all_writes} after the last; {tally.files_checked} files "
        f"checked, {tally.files_damaged} damaged; {tally.temp_files_left} dot temp files left "
        f"(kill window at the end: {window.seconds:.2f} s after the first request)"
    )
    assert tally.rounds >= ROUNDS
    assert tally.files_damaged == 0, tally.damaged
    assert tally.interrupted_mid_batch >= MID_BATCH_KILLS  # the kills did land inside the writes
