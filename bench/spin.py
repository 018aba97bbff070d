"""
CPU of an idle ``hastaple run`` after a certificate is removed mid-batch.

    python bench/spin.py                      # this checkout
    python bench/spin.py --src /tmp/old/src   # another tree's hastaple (PYTHONPATH)

Two certificates, each asked from the test responder (hastaple/testing/responders.py)
with a delay so the batch is in flight; ``gone.pem``'s answer is an HTTP 500
(a failure: its next try is a backoff of about two seconds). While both
requests wait, ``gone.pem`` is deleted. Once the batch has ended and the
backoff has passed, the daemon has nothing to do for days: its user+system
CPU is read from /proc/<pid>/stat over ``--seconds`` (60). Then /metrics and
``status --json`` say whether the removed certificate is still there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hastaple.testing.pki import PKI
from hastaple.testing.responders import FaultResponder, Serve


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _get(url: str) -> str:
    with urllib.request.urlopen(url) as resp:  # noqa: S310 - our own loopback URL
        return str(resp.read().decode())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="PYTHONPATH for the hastaple to measure")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    pki = PKI.build()
    tmp = Path(tempfile.mkdtemp(prefix="spin-"))
    crt = tmp / "crt"
    crt.mkdir()
    async with FaultResponder() as responder:
        keep = pki.leaf("keep.test", ocsp_url=responder.url_for("keep"))
        gone = pki.leaf("gone.test", ocsp_url=responder.url_for("gone"))
        responder.on("keep", Serve(pki.response(keep.cert), delay=1.0))
        responder.on("gone", Serve(b"busy", status=500, delay=2.0))
        pki.write(crt, "keep.pem", keep)
        gone_path = pki.write(crt, "gone.pem", gone)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HASTAPLE_")}
        if args.src:
            env["PYTHONPATH"] = args.src
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, never waited on here
            [sys.executable, "-m", "hastaple", "run", "--paths", str(crt),
             "--state-dir", str(tmp / "state"), "--metrics-address", f"127.0.0.1:{port}",
             "--refresh-spread", "0", "--refresh-backoff-base", "2s"],
            env=env, stderr=(tmp / "daemon.log").open("w"),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while responder.in_flight < 2:
                if time.monotonic() > deadline:
                    raise SystemExit("the batch never started")
                await asyncio.sleep(0.02)
            gone_path.unlink()  # both requests are waiting on the responder
            while responder.in_flight:  # noqa: ASYNC110 - the responder has no event
                await asyncio.sleep(0.02)
            await asyncio.sleep(5)  # the batch is recorded; the 1-2 s backoff has passed
            before, t0 = _cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            used, elapsed = _cpu_seconds(proc.pid) - before, time.monotonic() - t0
            metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            status = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "hastaple", "status", "--json",
                 "--state-dir", str(tmp / "state")],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    rows = [r["cert"] for r in json.loads(status.stdout)]
    print(f"hastaple from: {args.src or 'this checkout'}")
    print(f"idle CPU over {elapsed:.1f} s: {used:.2f} s user+sys = {100 * used / elapsed:.1f} %")
    print(f"removed certificate in /metrics: {str(gone_path) in metrics}")
    print(f"removed certificate in status:   {str(gone_path) in rows}  ({len(rows)} rows)")
    print(f"daemon log: {tmp / 'daemon.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
