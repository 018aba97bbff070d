"""
Check what a live TLS endpoint staples: handshake with status_request, then validate.

    target -> TCP connect -> TLS handshake (SNI, status_request) -> staple + served chain
           -> issuer from the chain -> ocsp.validate (the same checks as fetch) -> Check

The standard ``ssl`` module cannot ask for a staple, so the handshake uses
pyOpenSSL's OCSP client callback (DESIGN.md, dependencies). The certificate
chain is not verified against a trust store: what is judged is the staple,
against the certificate the server actually served. ``judge`` is pure (bytes,
certificates and a clock in, a ``Check`` out); ``handshake`` is the thin I/O.

``bind_targets`` takes the TLS ``bind`` lines of an haproxy.cfg and the
certificates behind each from ``discover`` (one parser of HAProxy's rules), so
``verify --haproxy-config`` checks every certificate name on its TLS listeners.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import ipaddress
import json
import os
import select
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from hastaple import discover, pem
from hastaple import issuer as issuers
from hastaple.errors import CertificateError, ConfigError, HastapleError, InvalidResponse
from hastaple.model import Action, ResultRow, Status, Verdict, rfc3339
from hastaple.ocsp.validate import validate

DEFAULT_PORT = 443
TIMEOUT_SECONDS = 10.0
# A served staple is judged as a TLS client would: valid until nextUpdate.
# The 15-minute margin of ``fetch`` is about what is safe to push, not to serve.
SERVED_MARGIN = dt.timedelta(0)


class VerifyError(HastapleError):
    """The endpoint could not be reached or the TLS handshake failed."""

    def __init__(self, target: str, problem: str) -> None:
        self.target = target
        self.problem = problem
        super().__init__(f"{target}: {problem}")


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to check: where to connect and which name to send as SNI."""

    host: str
    port: int
    servername: str | None = None

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 literal."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def sni(self) -> str | None:
        """The SNI to send: the servername, else the host unless it is an IP literal."""
        if self.servername:
            return self.servername
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return self.host
        return None

    def __str__(self) -> str:
        name = self.servername
        return f"{self.address} ({name})" if name and name != self.host else self.address


@dataclass(frozen=True, slots=True)
class Handshake:
    """What one handshake brought back: the staple (None if none) and the served chain."""

    staple: bytes | None
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome for one target; ``ok`` only for a valid, good staple of the served cert."""

    target: Target
    stapled: bool
    cert: str
    ocsp_url: str | None
    status: Status
    verdict: Verdict | None = None
    error: str | None = None
    seconds_left: int | None = None

    @property
    def ok(self) -> bool:
        """Whether this check passes (exit code 0)."""
        return self.error is None and self.verdict is not None and self.status is Status.GOOD

    def to_row(self) -> ResultRow:
        """The DESIGN.md result row: ``fresh`` for a valid staple, ``failed`` otherwise."""
        v = self.verdict
        return ResultRow(
            cert=self.cert,
            ocsp_url=self.ocsp_url,
            status=self.status,
            action=Action.FRESH if self.ok else Action.FAILED,
            this_update=v.this_update if v else None,
            next_update=v.next_update if v else None,
            error=self.error,
        )

    def to_json(self) -> dict[str, Any]:
        """The row's JSON plus what only verify knows."""
        out = self.to_row().to_json()
        out.pop("haproxy", None)
        out.update(
            target=self.target.address,
            servername=self.target.sni,
            stapled=self.stapled,
            signer=self.verdict.signer if self.verdict else None,
            seconds_left=self.seconds_left,
        )
        return out


def parse_target(text: str, *, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """
    Split ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6) into host and port.

    Raises:
        ConfigError: the text is not a host with an optional port 1-65535.
    """
    host, port_text = text.strip(), ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not host[end + 1 :].startswith(":")):
            raise ConfigError(f"{text!r}: not HOST[:PORT]")
        host, port_text = host[1:end], host[end + 2 :]
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    elif ":" in host:
        try:
            ipaddress.IPv6Address(host)  # a bare IPv6 literal has no port
        except ValueError:
            raise ConfigError(f"{text!r}: not HOST[:PORT] (write IPv6 as [ADDRESS]:PORT)") from None
    if not host or any(c in host for c in "/ @"):
        raise ConfigError(f"{text!r}: not HOST[:PORT]")
    if not _is_host_name(host):
        raise ConfigError(f"{text!r}: not a host name (DNS labels are 1-63 characters)")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:  # noqa: PLR2004 - TCP port range
        raise ConfigError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def _is_host_name(host: str) -> bool:
    """Whether the resolver can be asked for ``host``: an IP literal, or a name IDNA encodes."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        host.encode("idna")  # what getaddrinfo() does first; it refuses labels over 63 octets
    except UnicodeError:
        return False
    return True


def judge(target: Target, result: Handshake, *, now: dt.datetime) -> Check:
    """
    Validate the staple in ``result`` for the certificate the server served.

    Pure: no I/O, ``now`` is given. The issuer must be in the served chain,
    which is how HAProxy is normally set up (the PEM holds the chain).
    """
    if not result.chain:
        return _failed(target, "the server sent no certificate")
    leaf = result.chain[0]
    name = _subject(leaf)
    url = issuers.ocsp_url(leaf)
    if result.staple is None:
        why = "no OCSP staple: the server did not answer status_request"
        return Check(target, stapled=False, cert=name, ocsp_url=url, status=Status.ERROR, error=why)
    issuer = issuers.choose(leaf, result.chain[1:])
    if issuer is None:
        why = "stapled, but the served chain lacks the issuer, so the staple cannot be checked"
        return Check(target, stapled=True, cert=name, ocsp_url=url, status=Status.ERROR, error=why)
    try:
        verdict = validate(result.staple, cert=leaf, issuer=issuer, now=now, margin=SERVED_MARGIN)
    except InvalidResponse as exc:
        return Check(
            target, stapled=True, cert=name, ocsp_url=url, status=Status.ERROR,
            error=f"invalid staple: {exc.reason}",
        )  # fmt: skip
    left = int((verdict.next_update - now).total_seconds())
    error = None
    if verdict.status is Status.REVOKED:
        error = f"the staple says this certificate is {verdict.revocation()}"
    elif verdict.status is not Status.GOOD:
        error = f"the staple says this certificate's status is {verdict.status.value}"
    return Check(target, True, name, url, verdict.status, verdict, error, left)  # noqa: FBT003


def handshake(target: Target, *, timeout: float = TIMEOUT_SECONDS) -> Handshake:
    """
    Connect, send SNI and status_request, and return the staple and served chain.

    Raises:
        VerifyError: connection refused, name not resolved, timeout or handshake failure.
    """
    deadline = time.monotonic() + timeout
    staples: list[bytes] = []

    def on_ocsp(_conn: SSL.Connection, data: bytes, _arg: object) -> bool:
        staples.append(data)
        return True  # judge() decides; the handshake must finish to get the chain

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)  # the staple is what is checked, not the chain's trust
    ctx.set_ocsp_client_callback(on_ocsp)
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except UnicodeError as exc:  # IDNA refused the name (a label over 63 octets, an empty one)
        why = f"could not connect: {target.host!r} is not a host name"
        raise VerifyError(target.address, why) from exc
    except TimeoutError as exc:
        raise VerifyError(
            target.address, f"could not connect: timed out after {timeout:g} s"
        ) from exc
    except OSError as exc:
        raise VerifyError(target.address, f"could not connect: {_os_reason(exc)}") from exc
    with sock:
        sock.setblocking(False)  # noqa: FBT003 - socket API
        conn = SSL.Connection(ctx, sock)
        if target.sni:
            try:
                conn.set_tlsext_host_name(target.sni.encode("idna"))
            except UnicodeError as exc:
                raise VerifyError(target.address, f"{target.sni!r} is not a host name") from exc
        conn.request_ocsp()
        conn.set_connect_state()
        _drive(conn, sock, deadline, target)
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
    data = staples[-1] if staples else b""
    return Handshake(staple=data or None, chain=tuple(chain))


def _drive(conn: SSL.Connection, sock: socket.socket, deadline: float, target: Target) -> None:
    """Run the non-blocking handshake to its end or the deadline."""
    while True:
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            _wait(sock, deadline, target, write=False)
        except SSL.WantWriteError:
            _wait(sock, deadline, target, write=True)
        except SSL.Error as exc:  # SysCallError too: _ssl_reason tells them apart
            raise VerifyError(target.address, f"TLS handshake failed: {_ssl_reason(exc)}") from exc
        else:
            return


def _wait(sock: socket.socket, deadline: float, target: Target, *, write: bool) -> None:
    reads, writes = ([], [sock]) if write else ([sock], [])
    readable, writable, _ = select.select(reads, writes, [], max(deadline - time.monotonic(), 0))
    if not (readable or writable):
        raise VerifyError(target.address, "TLS handshake timed out")


def _ssl_reason(exc: SSL.Error) -> str:
    if isinstance(exc, SSL.SysCallError):
        code, text = ((*exc.args, None, None))[:2]
        return "the server closed the connection" if code in (-1, 0) else f"{text} ({code})"
    details = [str(e[2]) for e in (exc.args[0] if exc.args else []) if isinstance(e, tuple)]
    return "; ".join(details) or str(exc) or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    return (exc.strerror or str(exc)).lower()


def check(
    targets: Sequence[Target], *, timeout: float = TIMEOUT_SECONDS, at: dt.datetime | None = None
) -> list[Check]:
    """
    Handshake with every target concurrently and judge each; one Check per target, in order.

    ``at`` judges the staples as of another time ("still valid tomorrow?"); default now.
    """

    def one(target: Target) -> Check:
        try:
            result = handshake(target, timeout=timeout)
        except VerifyError as exc:
            return _failed(target, exc.problem)
        return judge(target, result, now=at or dt.datetime.now(dt.UTC))

    if len(targets) == 1:
        return [one(targets[0])]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(targets) or 1)) as pool:
        return list(pool.map(one, targets))


def _failed(target: Target, problem: str) -> Check:
    return Check(
        target, stapled=False, cert=target.sni or target.address, ocsp_url=None,
        status=Status.ERROR, error=problem,
    )  # fmt: skip


def _subject(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


# --- haproxy.cfg: TLS binds and the names behind them -------------------------------------


def bind_addresses(address: str) -> list[tuple[str, int]]:
    """
    Where to connect for a ``bind`` line's address argument (``discover.Bind.address``).

    Pure. Addresses like ``:443``, ``*:443`` and ``0.0.0.0:443`` mean "every
    address", checked on 127.0.0.1; ``ipv4@``/``ipv6@`` prefixes are dropped;
    unix sockets, ``fd@``, QUIC and port ranges are skipped.
    """
    return [a for part in address.split(",") if (a := _bind_address(part))]


def _bind_address(text: str) -> tuple[str, int] | None:
    for prefix in ("ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"):
        text = text.removeprefix(prefix)
    if "@" in text or text.startswith("/"):
        return None
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0"):  # noqa: S104 - a bind address, not ours
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def names(cert: x509.Certificate) -> list[str]:
    """The DNS names to send as SNI for ``cert``: its SANs (``*.`` made concrete), else CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if not dns:
        dns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return list(dict.fromkeys(n.replace("*.", "hastaple-verify.", 1) for n in dns))


def bind_targets(
    config: Path, *, cwd: Path | None = None, environ: Mapping[str, str] | None = None
) -> list[Target]:
    """
    One Target per (address, certificate name) of each TLS bind of an haproxy.cfg.

    The config is read by ``discover`` (HAProxy's quoting, crt-base, crt-lists,
    the files a crt directory loads); ``cwd`` is HAProxy's working directory,
    where relative paths resolve (default: ours), ``environ`` its environment
    for ``"$VAR"`` (default: ours).

    Raises:
        ConfigError: the file or a certificate it names cannot be read, or it
            has no TLS bind with certificates.
    """
    base = Path.cwd() if cwd is None else cwd
    env = os.environ if environ is None else environ
    parsed = discover.read_haproxy_config(config, cwd=base, environ=env)
    seen: dict[Path, list[str]] = {}
    targets: list[Target] = []
    for bind in parsed.binds:
        addresses = bind_addresses(bind.address) if bind.ssl else []
        if not addresses:
            continue
        sni: list[str] = []
        for ref in bind.refs:
            for entry in discover.resolve_ref(ref, cwd=base):
                if entry.path not in seen:
                    seen[entry.path] = _names_in(entry.path)
                sni += seen[entry.path]
        targets += [Target(host, port, n) for host, port in addresses for n in dict.fromkeys(sni)]
    if not targets:
        raise ConfigError(f"{config}: no TLS bind line with certificates found")
    return targets


def _names_in(path: Path) -> list[str]:
    try:
        return names(pem.parse_file(path).leaf)
    except CertificateError as exc:
        raise ConfigError(str(exc)) from exc


def unique(targets: Iterable[Target]) -> list[Target]:
    """Drop repeated targets, keeping the first."""
    return list(dict.fromkeys(targets))


# --- what a person reads ------------------------------------------------------------------


def summary(result: Check) -> str:
    """One line: stapled or not, status, time left, or the reason it failed."""
    if result.ok and result.verdict is not None:
        return f"stapled, good, {duration(result.seconds_left or 0)} left, {result.verdict.signer}"
    if not result.stapled:
        return f"FAILED: {result.error}"
    return f"stapled, FAILED: {result.error}"


def fields(result: Check) -> list[tuple[str, str]]:
    """The labelled details under the summary line, in a fixed order."""
    v = result.verdict
    out = [
        ("certificate", result.cert),
        ("ocsp url", result.ocsp_url or "-"),
        ("stapled", "yes" if result.stapled else "no"),
        ("status", result.status.value),
    ]
    if v is not None:
        out += [
            ("this update", rfc3339(v.this_update)),
            ("next update", rfc3339(v.next_update)),
            ("time left", duration(result.seconds_left or 0)),
            ("signer", v.signer),
        ]
    return out


def duration(seconds: int) -> str:
    """``3d 4h 5m`` style; negative means already past."""
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    return f"{sign}{minutes}m {rest % 60}s"


def targets_from(
    addresses: Sequence[str], servernames: Sequence[str], configs: Sequence[Path]
) -> list[Target]:
    """
    The targets the command line asks for: each address with each servername, and every bind.

    Raises:
        ConfigError: a bad HOST[:PORT], an unreadable config, or nothing to check.
    """
    found: list[Target] = []
    for text in addresses:
        host, port = parse_target(text)
        found += [Target(host, port, n) for n in servernames] or [Target(host, port)]
    for config in configs:
        found += bind_targets(config)
    if not found:
        raise ConfigError("nothing to check: give HOST[:PORT] or --haproxy-config")
    return unique(found)


def report(results: Sequence[Check], *, as_json: bool) -> None:
    """
    Print the checks: one JSON document, or a summary line and details per target.

    Colour comes from ``click.style``; ``click.echo`` drops it when stdout is
    not a terminal, so pipes get plain, stable lines.
    """
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
        for r in results:
            if r.error:
                click.echo(f"error: {r.target}: {r.error}", err=True)
        return
    for r in results:
        colour = "green" if r.ok else "red"
        click.echo(f"{click.style(str(r.target), bold=True)}: {click.style(summary(r), fg=colour)}")
        for label, value in fields(r):
            click.echo(f"  {label + ':':<13}{value}")
