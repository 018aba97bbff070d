"""
One run at a time per state directory (issue 10, item 4), with real processes.

certbot's hook runs ``fetch --force`` next to a running daemon on the same
state directory. Each run reads the index when it starts and writes it when
it ends, so without a lock the last writer wins: a ``revoked`` mark is lost
and an older good staple counts as fresh again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from hastaple import config as cfgmod
from hastaple.daemon import scheduler as daemonmod
from hastaple.daemon.state import State
from hastaple.engine.fetch import Fetcher
from hastaple.stores import index, lock
from hastaple.testing.behaviours import OCSP_TYPE
from hastaple.testing.responders import Serve

HOLD = 60.0  # at most this long a held answer waits for its gate (a test gone wrong)


@dataclass
class Held:
    """
    Answer ``body`` once ``gate`` is set: the run that asked stays in its batch.

    The gate opens when the second run has said it waits for the lock (or
    ended), whatever time its Python took to start on a loaded machine.
    """

    body: bytes
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: web.Request, server: object) -> web.StreamResponse:  # noqa: ARG002
        await request.read()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD):
                await self.gate.wait()
        return web.Response(body=self.body, headers={"Content-Type": OCSP_TYPE})


async def _start(*args: str | Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hastaple", "fetch", "--json", "--timeout", "10", *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _finish(
    proc: asyncio.subprocess.Process, read: bytes = b""
) -> tuple[int, list[dict[str, object]], str]:
    """Its exit code, JSON rows and stderr (``read``: the stderr already read)."""
    out, err = await proc.communicate()
    err = read + err
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, json.loads(out) if out.strip() else [], err.decode()


async def _waiting(proc: asyncio.subprocess.Process, held: Held) -> bytes:
    """Read ``proc``'s stderr until it waits for the lock (or ends), then let ``held`` answer."""
    assert proc.stderr is not None
    read = b""
    async with asyncio.timeout(HOLD):
        while b"held by" not in read and (line := await proc.stderr.readline()):
            read += line
    held.gate.set()
    return read


async def _until_asked(responder, name: str) -> None:
    """Wait until the first run is inside its slow exchange (it has read the index)."""
    for _ in range(400):
        if responder.seen_under(name):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"nobody asked /{name}/")


async def test_a_concurrent_fetch_cannot_lose_a_revoked_mark(pki, fault_responder, tmp_path):
    """
    A ``fetch --force`` that learns "revoked" during a long run is not undone by it.

    Run A (two certificates, one responder slow) is in flight when run B
    (certbot's ``--force``) hears "revoked" for the other. Unlocked, A wrote
    back the index it had read before B, without B's mark: run C then counted
    the older good staple as fresh, asked no CA and exited 0. Now B waits for
    A (saying who holds the state directory), and C still reports the revocation.
    """
    state = tmp_path / "state"
    slow = pki.leaf("slow.example.test", ocsp_url=fault_responder.url_for("slow"))
    rev = pki.leaf("rev.example.test", ocsp_url=fault_responder.url_for("rev"))
    held = Held(pki.response(slow.cert))
    fault_responder.on("slow", held)
    fault_responder.on("rev", Serve(pki.response(rev.cert)))
    slow_pem, rev_pem = pki.write(tmp_path, "slow.pem", slow), pki.write(tmp_path, "rev.pem", rev)
    code, rows, _ = await _finish(await _start(rev_pem, "--state-dir", state))
    assert (code, rows[0]["action"]) == (0, "fetched")

    run_a = await _start(slow_pem, rev_pem, "--state-dir", state)
    await _until_asked(fault_responder, "slow")
    fault_responder.on("rev", Serve(pki.response(rev.cert, status="revoked")))
    run_b = await _start("--force", rev_pem, "--state-dir", state)
    code_b, rows_b, err_b = await _finish(run_b, await _waiting(run_b, held))
    code_a, _, _ = await _finish(run_a)
    assert (code_a, code_b) == (0, 1)
    assert rows_b[0]["status"] == "revoked"
    assert f"held by pid {run_a.pid} (hastaple fetch" in err_b  # why it waited

    asked = len(fault_responder.seen_under("rev"))
    code_c, rows_c, _ = await _finish(await _start(rev_pem, "--state-dir", state))
    assert code_c == 1
    assert (rows_c[0]["status"], rows_c[0]["action"]) == ("revoked", "failed")
    assert len(fault_responder.seen_under("rev")) == asked + 1  # not "fresh" from the index


async def test_a_run_that_cannot_wait_says_who_holds_the_lock(pki, fault_responder, tmp_path):
    """``--wait`` over: exit 1, one line naming the holder's pid and command; nothing asked."""
    state = tmp_path / "state"
    slow = pki.leaf("slow.example.test", ocsp_url=fault_responder.url_for("slow"))
    other = pki.leaf("other.example.test", ocsp_url=fault_responder.url_for("other"))
    held = Held(pki.response(slow.cert))
    fault_responder.on("slow", held)
    fault_responder.on("other", Serve(pki.response(other.cert)))
    slow_pem, other_pem = pki.write(tmp_path, "s.pem", slow), pki.write(tmp_path, "o.pem", other)

    run_a = await _start(slow_pem, "--state-dir", state)
    await _until_asked(fault_responder, "slow")
    code, rows, err = await _finish(await _start("--wait", "0.3", other_pem, "--state-dir", state))
    held.gate.set()  # only now: A must still hold the lock when B gives up
    assert (code, rows) == (1, [])
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: {state}: in use by pid {run_a.pid} (hastaple fetch --json")
    assert "gave up after waiting 0.3 s" in line
    assert not fault_responder.seen_under("other")
    assert not Path(f"{other_pem}.ocsp").exists()
    assert (await _finish(run_a))[0] == 0
    # The holder is gone: the kernel released its lock, the next run needs no wait.
    code, rows, _ = await _finish(await _start("--wait", "0", other_pem, "--state-dir", state))
    assert (code, rows[0]["action"]) == (0, "fetched")


async def test_the_daemon_holds_the_lock_per_batch_only(pki, fault_responder, tmp_path):
    """
    A ``fetch`` waits for the daemon's batch in flight, and not at all between batches.

    The daemon takes the lock for one batch (index, fetch, write, deploy), so
    certbot's hook is delayed by at most one batch and never blocked by an idle daemon.
    """
    crt = tmp_path / "crt"
    crt.mkdir()
    slow = pki.leaf("d.example.test", ocsp_url=fault_responder.url_for("slow"))
    held = Held(pki.response(slow.cert))
    fault_responder.on("slow", held)
    pem = pki.write(crt, "d.pem", slow)
    config = cfgmod.Config(state_dir=tmp_path / "state", paths=(crt,), metrics_address=None)
    async with Fetcher() as fetcher:
        daemon = daemonmod.Daemon(
            config, fetcher=fetcher, state=State.open(config.state_dir),
            rng=random.Random(0),  # noqa: S311 - jitter
        )  # fmt: skip
        daemon.rediscover([pem], at_once=True)
        batch = asyncio.create_task(daemon.refresh_due())
        await _until_asked(fault_responder, "slow")
        other = pki.leaf("e.example.test", ocsp_url=fault_responder.url_for("e"))
        fault_responder.on("e", Serve(pki.response(other.cert)))
        other_pem = pki.write(tmp_path, "e.pem", other)
        fetch = await _start(other_pem, "--state-dir", config.state_dir)
        code, rows, err = await _finish(fetch, await _waiting(fetch, held))
        assert batch.done()  # the fetch got the lock only after the batch
        assert (await batch)[0].row.action.value == "fetched"
        assert (code, rows[0]["action"]) == (0, "fetched")
        assert "held by pid" in err
        # Between batches the daemon holds nothing: a fetch that will not wait runs.
        code, rows, _ = await _finish(
            await _start("--force", "--wait", "0", other_pem, "--state-dir", config.state_dir)
        )
        assert (code, rows[0]["action"]) == (0, "fetched")
        # And the daemon's kept index saw what the fetches wrote, without reading it whole.
        daemon.index.sync()
        assert daemon.index.lookup(other_pem, index.fingerprint(other_pem)) is not None
        daemon.state.close()


async def test_lock_without_a_state_directory_is_a_no_op(tmp_path):
    """No state directory (dry-run): nothing to share, nothing locked, no file created."""
    async with lock.hold(None, wait=0), lock.hold(None, wait=0):
        pass
    assert list(tmp_path.iterdir()) == []
