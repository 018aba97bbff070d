"""
A week of steady state: the daemon on a simulated clock, a real responder, the real Fetcher.

    python bench/week.py -n 2000 --max-age next_update     # what CAs commonly send
    python bench/week.py -n 200 --max-age 3600             # a short max-age (1 h)

What one run does, everything on 127.0.0.1 in a temp directory:

1. builds N ECDSA P-256 leaves (the test PKI: root -> intermediate, a
   delegated OCSP signer), each in its own PEM with the chain;
2. starts the tests' fault-injecting responder (``hastaple/testing/responders.py``,
   ``Sign``) in a thread of its own, with its own event loop: it signs a
   fresh 7-day answer for each request at the *simulated* time, and sends
   ``Cache-Control: max-age`` as asked (``next_update``: the seconds left
   until nextUpdate; or a number of seconds);
3. runs the real ``Daemon`` (the real ``Fetcher`` over HTTP, the real
   pipeline, state database, index and ``.ocsp`` files) with an injected
   clock: it refreshes what is due, then the clock jumps to the next planned
   refresh, as the daemon's loop would sleep until then;
4. warms up for ``--warmup`` simulated days (the cold start, then the
   refreshes settle), then measures ``--days`` simulated days.

Reports CA requests per certificate per week (measured days only) and the
daemon's CPU seconds per simulated day: the process's CPU minus the
responder thread's own (``pthread_getcpuclockid``), so signing costs the
daemon nothing. The log goes, formatted, to /dev/null, as a real daemon's
would go to journald. A staple that ever expires fails the run (exit 3).

Batches: simulated time does not pass while a batch runs, so a batch holds
only the certificates due at exactly that instant; a real daemon's batches
are at least as large (what becomes due while one runs joins the next), so
the CPU figure is an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import random
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from hastaple import config as cfgmod
from hastaple.daemon import eventlog as events
from hastaple.daemon import loop
from hastaple.daemon import scheduler as daemonmod
from hastaple.daemon.state import State
from hastaple.engine.fetch import Fetcher
from hastaple.testing.clock import SimClock
from hastaple.testing.pki import PKI
from hastaple.testing.responders import FaultResponder, Sign

DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)


@dataclasses.dataclass
class Result:
    """What one simulated run measured."""

    n: int
    max_age: str
    warmup_days: float
    days: float
    requests: int  # CA requests in the measured days
    requests_per_cert_week: float
    cpu_s_per_day: float  # the daemon's CPU seconds per simulated day
    cpu_ms_per_cert_day: float
    batches: int  # refresh batches in the measured days
    wall_s: float
    cold_requests: int  # the start-up's requests (in the warm-up)
    expired: int  # staples seen expired at a daily check (must be 0)

    def line(self) -> str:
        return (
            f"n={self.n} max-age={self.max_age} days={self.days:g} (after {self.warmup_days:g}"
            f" warm-up): {self.requests_per_cert_week:.2f} CA requests/cert/week,"
            f" {self.cpu_s_per_day:.2f} CPU s/day ({self.cpu_ms_per_cert_day:.3f} ms/cert/day),"
            f" {self.batches} batches, expired={self.expired}, wall {self.wall_s:.0f} s"
        )


class _ThreadedResponder:
    """A ``FaultResponder`` with ``behaviour`` in a thread of its own; ``cpu()`` is its CPU."""

    def __init__(self, behaviour: Sign) -> None:
        self.behaviour = behaviour
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="responder", daemon=True)
        self._clock: int | None = None

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._clock = time.pthread_getcpuclockid(threading.get_ident())
        async with FaultResponder() as server:
            self.url = server.on("ca", self.behaviour)
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            msg = "the responder did not start"
            raise RuntimeError(msg)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def cpu(self) -> float:
        """CPU seconds the responder's thread has used."""
        assert self._clock is not None  # noqa: S101 - set before __enter__ returns
        return time.clock_gettime(self._clock)


def _process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextlib.contextmanager
def _quiet_log() -> Iterator[None]:
    """The daemon's log lines, formatted as in production, written to /dev/null."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    with Path("/dev/null").open("w") as sink:
        events.configure("keyvalue")
        for handler in root.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sink)
        try:
            yield
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])


def _parse_max_age(text: str) -> int | str | None:
    if text in {"none", ""}:
        return None
    return text if text == "next_update" else int(text)


async def simulate(
    n: int,
    workdir: Path,
    *,
    max_age: int | str | None = "next_update",
    days: float = 7.0,
    warmup_days: float = 7.0,
    validity: dt.timedelta = WEEK,
    seed: int = 0,
) -> Result:
    """Build ``n`` certificates in ``workdir``, warm up, then measure ``days`` simulated days."""
    pki = PKI.build()
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = SimClock(start)
    ca = Sign(pki, clock.now, validity=validity, max_age=max_age)  # type: ignore[arg-type]
    crt_dir = workdir / "crt"
    crt_dir.mkdir(parents=True)
    wall = time.monotonic()
    with _ThreadedResponder(ca) as responder, _quiet_log():
        for i in range(n):
            leaf = pki.leaf(f"c{i}.test", ocsp_url=responder.url)
            pki.write(crt_dir, f"c{i}.pem", leaf)
            ca.add(leaf.cert)
        config = cfgmod.Config(state_dir=workdir / "state", paths=(crt_dir,), metrics_address=None)
        state = State.open(config.state_dir)
        async with Fetcher() as fetcher:
            daemon = daemonmod.Daemon(
                config, fetcher=fetcher, state=state, clock=clock,
                rng=random.Random(seed),  # noqa: S311 - jitter
            )  # fmt: skip
            daemon.rediscover()
            expired = 0

            async def run(until: dt.datetime) -> int:
                """The daemon's loop until ``until``; checks every staple once a day."""
                nonlocal expired
                batches = 0
                check_at = clock.now() + DAY
                while True:
                    if await daemon.refresh_due():
                        batches += 1
                        loop.trim_heap()  # as the daemon's loop does
                    wakeup = daemon.next_wakeup()
                    nxt = until if wakeup is None else min(wakeup, until)
                    while check_at <= nxt:
                        clock.t = check_at
                        expired += sum(
                            1
                            for r in daemon.records.values()
                            if r.next_update is not None and r.next_update <= check_at
                        )
                        check_at += DAY
                    if wakeup is None or wakeup > until:
                        clock.t = until
                        return batches
                    clock.t = max(wakeup, clock.t)

            await run(start + dt.timedelta(days=warmup_days))
            cold = sum(ca.asked.values()) if warmup_days else 0
            asked_before = sum(ca.asked.values())
            cpu_before = _process_cpu() - responder.cpu()
            batches = await run(clock.now() + dt.timedelta(days=days))
            cpu = _process_cpu() - responder.cpu() - cpu_before
            requests = sum(ca.asked.values()) - asked_before
        state.close()
    per_week = requests / n / days * 7 if n else 0.0
    return Result(
        n=n, max_age=str(max_age), warmup_days=warmup_days, days=days, requests=requests,
        requests_per_cert_week=per_week, cpu_s_per_day=cpu / days,
        cpu_ms_per_cert_day=cpu / days / n * 1000 if n else 0.0, batches=batches,
        wall_s=time.monotonic() - wall, cold_requests=cold, expired=expired,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The command line: one run, one line (and ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="certificates (default 2000)")
    parser.add_argument(
        "--max-age", default="next_update",
        help="Cache-Control max-age: seconds, 'next_update' (default) or 'none'",
    )  # fmt: skip
    parser.add_argument("--days", type=float, default=7.0, help="measured days (default 7)")
    parser.add_argument("--warmup", type=float, default=7.0, help="warm-up days (default 7)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hastaple-week-") as tmp:
        result = asyncio.run(
            simulate(
                args.n, Path(tmp), max_age=_parse_max_age(args.max_age), days=args.days,
                warmup_days=args.warmup,
            )
        )  # fmt: skip
    print(result.line())
    if args.json:
        data: dict[str, Any] = dataclasses.asdict(result)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 3 if result.expired else 0


if __name__ == "__main__":
    sys.exit(main())
