"""
Benchmark: three hastaple nodes sharing staples through Redis, against three alone.

    python bench/fleet.py                       # 3 nodes x 3,000 certificates
    python bench/fleet.py -n 500 --latency 50   # a CA 50 ms away

One run, everything on 127.0.0.1 in a temp directory: one set of N leaves
(the tests' PKI as ``bench/run.py`` builds them, pre-signed responses, ``bench/responder.py`` as the
CA), copied into a directory per node, and one ``redis-server`` with
persistence off. Three phases, each from a cold start (no staple, empty
state directories, Redis flushed):

1. single: one ``hastaple fetch`` over the N certificates;
2. independent: three ``hastaple fetch`` processes at once, no fleet;
3. fleet: three ``hastaple fetch --fleet`` processes at once.

Reported per phase: CA requests (the goal: N for the fleet, 3N without),
the time until every node has every staple (the slowest of the three
processes, from the moment they were started together; compared with the
single node's time: the goal is at most 1.2x), and for the fleet the Redis
round trips per certificate (the commands a node sends itself, counted by
the server in ``INFO commandstats``: a script counts one, the commands it
runs none).
Every node's staples are checked: each process's ``--json`` rows must all be
``fetched``. The nodes share the machine's CPUs: on a 2-core machine three
processes cannot each run as fast as one alone, fleet or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hastaple.testing.haproxy import free_port
from hastaple.testing.pki import PKI

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Responder, build_leaves  # noqa: E402 - bench/ is not a package

# Commands a node sends itself: its scripts (EVALSHA, and SCRIPT LOAD the first
# time), a heartbeat (one pipeline: counted once, by its ZADD), SUBSCRIBE and a
# new connection's CLIENT SETNAME. Redis counts the commands a script runs too
# (HGETALL, SET, ...): those are not round trips, and ``fetch`` sends none of
# them by itself (its reads are the READ_OR_LEASE script).
_ROUND_TRIPS = ("evalsha", "eval", "script|load", "zadd", "subscribe", "client|setname")


@dataclass
class Phase:
    name: str
    nodes: int
    certs: int
    wall: float  # seconds until the slowest node was done
    ca_requests: int
    fetched: int  # rows with action "fetched", all nodes together
    redis_round_trips: int | None = None

    def row(self) -> str:
        trips = (
            ""
            if self.redis_round_trips is None
            else (f"  redis round trips/cert {self.redis_round_trips / self.certs:.2f}")
        )
        return (
            f"{self.name:12} nodes={self.nodes} wall={self.wall:6.2f} s  "
            f"CA requests={self.ca_requests:6}  fetched={self.fetched}/{self.nodes * self.certs}"
            f"{trips}"
        )


class Redis:
    """``redis-server`` on a free port, persistence off, in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        for _ in range(200):
            if self.cli("PING").strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *words: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *words], capture_output=True, check=False
        )
        return out.stdout.decode()

    def round_trips(self) -> int:
        calls = 0
        for line in self.cli("INFO", "commandstats").splitlines():
            name, _, rest = line.partition(":")
            if name.removeprefix("cmdstat_") in _ROUND_TRIPS:
                calls += int(rest.split(",")[0].removeprefix("calls="))
        return calls

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def run_nodes(
    name: str, dirs: list[Path], work: Path, responder: Responder, fleet: Redis | None
) -> Phase:
    """Start one ``hastaple fetch`` per directory at once; wait for all of them."""
    if fleet is not None:
        fleet.cli("FLUSHALL")
        fleet.cli("CONFIG", "RESETSTAT")
    before = responder.stats()["requests"]
    procs = []
    started = time.monotonic()
    for i, crt in enumerate(dirs):
        for old in crt.glob("*.ocsp"):
            old.unlink()
        state = work / f"state-{name}-{i}"
        shutil.rmtree(state, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HASTAPLE_")}
        env["HASTAPLE_FLEET_NODE"] = f"node{i}"
        cmd = [sys.executable, "-m", "hastaple", "-q", "fetch", str(crt), "--json",
               "--state-dir", str(state)]  # fmt: skip
        if fleet is not None:
            cmd += ["--fleet", fleet.url]
        out = (work / f"{name}-{i}.json").open("wb")
        procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env), out))
    fetched = 0
    for proc, out in procs:
        _, err = proc.communicate()
        out.close()
        if proc.returncode != 0:
            sys.stderr.write(err.decode(errors="replace")[-2000:])
        rows = json.loads(Path(out.name).read_text() or "[]")
        fetched += sum(r["action"] == "fetched" for r in rows)
    wall = time.monotonic() - started
    requests = int(responder.stats()["requests"] - before)
    trips = fleet.round_trips() if fleet is not None else None
    n = len(list(dirs[0].glob("*.pem")))
    return Phase(name, len(dirs), n, wall, requests, fetched, trips)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="certificates per node")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0, help="CA round trip, ms")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hastaple-fleet-bench-"))
    responder = redis = None
    try:
        responder = Responder(work, delay=args.latency / 1000)
        start = dt.datetime.now(dt.UTC)
        pki = PKI.build()
        single = [work / "single"]
        alone = [work / f"alone{i}" for i in range(args.nodes)]
        shared = [work / f"fleet{i}" for i in range(args.nodes)]
        for d in (*single, *alone, *shared):
            d.mkdir()
        print(f"building {args.n} certificates x {1 + 2 * args.nodes} directories ...")
        _, responses = build_leaves(pki, args.n, responder.url, start, [*single, *alone, *shared])
        import pickle  # noqa: PLC0415

        (work / "responses.pickle").write_bytes(pickle.dumps(responses))
        responder.load(work / "responses.pickle")
        redis = Redis(work / "redis")
        phases = [
            run_nodes("single", single, work, responder, None),
            run_nodes("independent", alone, work, responder, None),
            run_nodes("fleet", shared, work, responder, redis),
        ]
        for phase in phases:
            print(phase.row())
        one, indep, fleet = phases
        print(
            f"fleet: CA requests {fleet.ca_requests} vs {indep.ca_requests} independent "
            f"({indep.ca_requests / max(fleet.ca_requests, 1):.2f}x fewer); every node done "
            f"in {fleet.wall / one.wall:.2f}x one node's time "
            f"(independent: {indep.wall / one.wall:.2f}x); Redis round trips per "
            f"certificate {fleet.redis_round_trips / args.n:.2f} (all {args.nodes} nodes)"
        )
        if args.json:
            args.json.write_text(json.dumps([asdict(p) for p in phases], indent=2))
        complete = all(p.fetched == p.nodes * p.certs for p in phases)
        return 0 if complete else 4
    finally:
        if redis is not None:
            redis.stop()
        if responder is not None:
            responder.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
