"""
The doctor's checks: pure functions from gathered ``Facts`` to ``Finding``s (no I/O).

Each check has a stable id (``CHECKS``); the README's findings table lists
them. Severity ``error`` means stapling is blocked (or a certificate will
break clients), so ``doctor`` exits 1; ``warning`` and ``info`` do not.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from hastaple.app.doctor.facts import Facts
from hastaple.core.ocsp.validate import CLOCK_SKEW

Severity = Literal["error", "warning", "info"]

EXPIRING = dt.timedelta(days=30)
DELEGATE_EXPIRING = dt.timedelta(days=7)
SLOW = 2.0  # seconds
SKEW_WARNING = dt.timedelta(seconds=60)
DEFAULT_BUFSIZE = 16384
# A large real response (0.5-4 KB is usual): the runtime command must fit it.
TYPICAL_RESPONSE_BYTES = 4096
_COMMAND = "set ssl ocsp-response "


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the checklist."""

    check: str
    severity: Severity
    message: str
    fix: str
    file: str | None = None
    line: int | None = None

    @classmethod
    def at(
        cls, check: str, severity: Severity, source: str | None, message: str, fix: str
    ) -> Finding:
        """A finding located at ``source`` ("file:line", a file, or None)."""
        file, line = split_source(source)
        return cls(check, severity, message, fix, file, line)


def split_source(source: str | None) -> tuple[str | None, int | None]:
    """``"cfg:12"`` -> ("cfg", 12); "argument" and None -> (None, None)."""
    if not source or source == "argument":
        return None, None
    file, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return file, int(line)
    return source, None


Check = Callable[[Facts], Iterator[Finding]]


# ---------------------------------------------------------------- configuration


def config_invalid(facts: Facts) -> Iterator[Finding]:
    """A reference HAProxy would refuse, or a missing certificate file."""
    for error in facts.config_errors:
        yield Finding.at(
            "config-invalid",
            "error",
            error.split(": ", 1)[0] if ": " in error else None,
            f"hastaple cannot read the configuration: {error}",
            "fix the line named (HAProxy would refuse it too: check with `haproxy -c -f <cfg>`)",
        )


def extra_files_hide_ocsp(facts: Facts) -> Iterator[Finding]:
    """``ssl-load-extra-files`` without ``ocsp`` (or ``all``): staples vanish at restart."""
    setting = facts.settings.extra_files
    if setting is None or {"all", "ocsp"} & set(setting.words):
        return
    words = " ".join(setting.words)
    yield Finding.at(
        "extra-files-hide-ocsp",
        "warning",
        setting.source,
        f"`ssl-load-extra-files {words}` does not load .ocsp files: staples work until "
        "HAProxy restarts, then vanish until the next push",
        f"add `ocsp` to it: `ssl-load-extra-files {words} ocsp` (or remove the line)",
    )


def command_bytes(der_bytes: int) -> int:
    """Bytes of ``set ssl ocsp-response <base64>`` for a DER of ``der_bytes``, with newline."""
    return len(_COMMAND) + 4 * math.ceil(der_bytes / 3) + 1


def bufsize_too_small(facts: Facts) -> Iterator[Finding]:
    """``tune.bufsize`` too small for the largest staple on disk, or a typical one."""
    setting = facts.settings.bufsize
    try:
        bufsize = int(setting.words[0]) if setting and setting.words else DEFAULT_BUFSIZE
    except ValueError:
        return
    staples = [(c.staple_bytes, c) for c in facts.certs if c.staple_bytes is not None]
    largest = max(staples, key=lambda s: s[0], default=None)
    source = setting.source if setting else (facts.configs[0] if facts.configs else None)
    fix = f"set `tune.bufsize {DEFAULT_BUFSIZE}` (the default) or more in the global section"
    if largest is not None and command_bytes(largest[0]) > bufsize:
        yield Finding.at(
            "bufsize-too-small",
            "error",
            source,
            f"tune.bufsize {bufsize} is too small to load the {largest[0]}-byte staple of "
            f"{largest[1].path} ({command_bytes(largest[0])} bytes as a runtime command)",
            fix,
        )
    elif command_bytes(TYPICAL_RESPONSE_BYTES) > bufsize:
        yield Finding.at(
            "bufsize-too-small",
            "warning",
            source,
            f"tune.bufsize {bufsize} cannot carry a {TYPICAL_RESPONSE_BYTES}-byte response "
            f"({command_bytes(TYPICAL_RESPONSE_BYTES)} bytes as a runtime command); "
            "responders that include certificates send that much",
            fix,
        )


# ---------------------------------------------------------------------- sockets


def no_admin_socket(facts: Facts) -> Iterator[Finding]:
    """No socket answers at ``level admin``: nothing can be loaded."""
    if any(s.level == "admin" for s in facts.sockets):
        return
    if not facts.configs and not facts.sockets:
        return  # certificate paths only: staples on disk, loaded at HAProxy's next start
    where = facts.configs[0] if facts.configs else None
    tried = ", ".join(s.address for s in facts.sockets) or "none configured or given"
    yield Finding.at(
        "no-admin-socket",
        "error",
        where,
        f"no runtime socket at level admin answers (sockets: {tried}); "
        "hastaple cannot load staples into HAProxy",
        "add to the global section: `stats socket /run/haproxy/admin.sock mode 660 level admin`"
        " and reload HAProxy (or pass a working one with --haproxy)",
    )


def socket_unreachable(facts: Facts) -> Iterator[Finding]:
    """A socket that is missing, refuses, or does not answer."""
    for sock in facts.sockets:
        if sock.error is not None:
            yield Finding.at(
                "socket-unreachable",
                "error",
                sock.source,
                f"runtime socket {sock.address}: {sock.error}",
                "start HAProxy, correct the address, or check that this user may open the socket"
                " (unix sockets need write permission)",
            )


def socket_not_admin(facts: Facts) -> Iterator[Finding]:
    """A reachable socket below ``level admin``."""
    for sock in facts.sockets:
        if sock.error is None and sock.level != "admin":
            yield Finding.at(
                "socket-not-admin",
                "warning",
                sock.source,
                f"runtime socket {sock.address} is at level {sock.level}, not admin; "
                "hastaple cannot use it",
                f"append `level admin` to the `stats socket {sock.address}` line and reload",
            )


def socket_alias(facts: Facts) -> Iterator[Finding]:
    """Several admin sockets that reach one process (the same pid)."""
    by_pid: dict[int, list[str]] = {}
    sources: dict[int, str | None] = {}
    for sock in facts.sockets:
        if sock.pid is not None and sock.level == "admin":
            by_pid.setdefault(sock.pid, []).append(sock.address)
            sources.setdefault(sock.pid, sock.source)
    for pid, addresses in by_pid.items():
        if len(addresses) > 1:
            yield Finding.at(
                "socket-alias",
                "warning",
                sources[pid],
                f"sockets {', '.join(addresses)} all reach HAProxy process {pid}: loading "
                "through several at once races HAProxy's certificate transactions",
                f"give hastaple one of them (--haproxy {addresses[0]}), or lower the others "
                "below `level admin`",
            )


def _served(facts: Facts) -> set[str] | None:
    lists = [s.served for s in facts.sockets if s.served is not None]
    if not lists:
        return None
    return {name for served in lists for name in served}


def cert_not_served(facts: Facts) -> Iterator[Finding]:
    """A certificate of the configuration that HAProxy does not serve."""
    served = _served(facts)
    if served is None:
        return
    for cert in facts.certs:
        if not served & set(cert.names):
            yield Finding.at(
                "cert-not-served",
                "warning",
                cert.source,
                f"{cert.path} is in the configuration but HAProxy does not serve it "
                "(added after HAProxy started?)",
                "reload HAProxy so it loads the certificate, or remove the file",
            )


def cert_not_on_disk(facts: Facts) -> Iterator[Finding]:
    """A certificate HAProxy serves that the configuration on disk does not name."""
    served = _served(facts)
    if served is None or not facts.configs or facts.config_errors:
        return
    known = {name for cert in facts.certs for name in cert.names}
    known |= {str(cert.path) for cert in facts.certs}
    for name in sorted(served - known):
        yield Finding.at(
            "cert-not-on-disk",
            "warning",
            facts.configs[0],
            f"HAProxy serves {name}, which the configuration on disk no longer names "
            "or which was removed: hastaple will not staple it",
            "reload HAProxy to match the files on disk, or restore the certificate file",
        )


# ------------------------------------------------------------------ certificates


def cert_unreadable(facts: Facts) -> Iterator[Finding]:
    """A certificate file that cannot be read as PEM."""
    for cert in facts.certs:
        if cert.error is not None:
            yield Finding.at(
                "cert-unreadable",
                "error",
                cert.source,
                f"{cert.path}: {cert.error}",
                "replace it with a PEM file: the certificate first, then its key and chain",
            )


def chainless_no_issuer(facts: Facts) -> Iterator[Finding]:
    """A PEM without chain and without ``.issuer``: no CertID for HAProxy."""
    for cert in facts.certs:
        if cert.error is None and cert.ocsp_url and not cert.has_local_issuer:
            yield Finding.at(
                "chainless-no-issuer",
                "error",
                cert.source,
                f"{cert.path} has no chain and no {cert.path.name}.issuer: HAProxy cannot "
                "compute its OCSP certificate ID, so hastaple will not write its .ocsp",
                f"append the issuing CA certificate to {cert.path}, or write it to "
                f"{cert.path}.issuer",
            )


def no_ocsp_url(facts: Facts) -> Iterator[Finding]:
    """A certificate whose CA names no OCSP responder."""
    for cert in facts.certs:
        if cert.error is None and not cert.ocsp_url:
            yield Finding.at(
                "no-ocsp-url",
                "info",
                cert.source,
                f"{cert.path} names no OCSP responder: there is nothing to staple",
                "nothing to do (its CA does not offer OCSP)",
            )


def managed_by_haproxy(facts: Facts) -> Iterator[Finding]:
    """A certificate left to HAProxy's updater (``ocsp-update on``)."""
    for cert in facts.certs:
        if cert.managed:
            yield Finding.at(
                "managed-by-haproxy",
                "info",
                cert.source,
                f"{cert.path} has `ocsp-update on`: HAProxy's own updater keeps its staple; "
                "hastaple leaves it alone",
                "nothing to do; to let hastaple manage it, remove `ocsp-update on` from that line",
            )


def must_staple_unstapled(facts: Facts) -> Iterator[Finding]:
    """A must-staple certificate without a fresh staple on disk."""
    for cert in facts.certs:
        if cert.must_staple and not cert.managed and cert.staple_problem is not None:
            yield Finding.at(
                "must-staple-unstapled",
                "error",
                cert.source,
                f"{cert.path} is must-staple and has no fresh staple ({cert.staple_problem}): "
                "browsers that honour must-staple refuse the site",
                f"run `hastaple fetch {cert.path}` (with --haproxy) and keep `hastaple run` going",
            )


def cert_expiry(facts: Facts) -> Iterator[Finding]:
    """An expired certificate, or one expiring within 30 days."""
    for cert in facts.certs:
        if cert.not_after is None:
            continue
        left = cert.not_after - facts.now
        if left <= dt.timedelta(0):
            yield Finding.at(
                "cert-expired",
                "error",
                cert.source,
                f"{cert.path} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC",
                "renew the certificate and reload HAProxy",
            )
        elif left < EXPIRING:
            yield Finding.at(
                "cert-expiring",
                "warning",
                cert.source,
                f"{cert.path} expires on {cert.not_after:%Y-%m-%d %H:%M} UTC (in {left.days} days)",
                "renew the certificate (check that automatic renewal runs)",
            )


def cert_dir_not_writable(facts: Facts) -> Iterator[Finding]:
    """A certificate directory this user cannot write ``.ocsp`` files into."""
    for directory in facts.dirs:
        if not directory.writable:
            yield Finding(
                "cert-dir-not-writable",
                "error",
                f"{facts.user} cannot write {directory.path}, where the .ocsp of "
                f"{directory.certs[0]} goes: staples are lost at HAProxy's next restart",
                f"run hastaple as a user that can write {directory.path}, or grant it: "
                f"`chgrp <hastaple-group> {directory.path} && chmod g+wx {directory.path}`",
                str(directory.path),
            )


def state_dir_permissions(facts: Facts) -> Iterator[Finding]:
    """A state directory that is world-writable, or that we cannot write or create."""
    state = facts.state_dir
    if state is None:
        return
    if state.exists and state.mode is not None and state.mode & 0o002:
        yield Finding(
            "state-dir-permissions",
            "warning",
            f"state directory {state.path} is world-writable (mode {state.mode:04o}): "
            "anyone can plant issuers and state",
            f"chmod 700 {state.path}",
            str(state.path),
        )
    if not state.writable:
        what = "write" if state.exists else "create"
        yield Finding(
            "state-dir-permissions",
            "error",
            f"{facts.user} cannot {what} the state directory {state.path}",
            f"create it for that user: `install -d -m 700 -o <user> {state.path}`, "
            "or choose another with --state-dir",
            str(state.path),
        )


# -------------------------------------------------------------------- responders


def responder_down(facts: Facts) -> Iterator[Finding]:
    """A responder that does not answer with a valid response."""
    for resp in facts.responders:
        if resp.error is not None:
            yield Finding(
                "responder-down",
                "error",
                f"responder {resp.url} (asked for {resp.cert}): {resp.error}",
                "check that this host can reach it (firewall, HTTP proxy via HTTP_PROXY); "
                "if it is the CA's outage, existing staples last until their nextUpdate",
            )


def responder_slow(facts: Facts) -> Iterator[Finding]:
    """A responder that takes more than 2 s."""
    for resp in facts.responders:
        if resp.elapsed is not None and resp.elapsed > SLOW:
            yield Finding(
                "responder-slow",
                "warning",
                f"responder {resp.url} took {resp.elapsed:.1f} s to answer (more than {SLOW:g} s)",
                "check the network path to it; raise --timeout if it stays this slow",
            )


def delegate_expiring(facts: Facts) -> Iterator[Finding]:
    """A delegated responder certificate expiring within 7 days."""
    for resp in facts.responders:
        if resp.delegate_not_after is None:
            continue
        left = resp.delegate_not_after - facts.now
        if left < DELEGATE_EXPIRING:
            yield Finding(
                "responder-delegate-expiring",
                "warning",
                f"responder {resp.url} signs with delegated certificate {resp.delegate}, "
                f"which expires on {resp.delegate_not_after:%Y-%m-%d %H:%M} UTC",
                "nothing to do here if the CA rotates it in time; if not, tell the CA",
            )


def clock_skew(facts: Facts) -> Iterator[Finding]:
    """This host's clock against the responder's (HTTP Date, else thisUpdate)."""
    for resp in facts.responders:
        if resp.local_time is None:
            continue
        skew: dt.timedelta | None = None
        if resp.date is not None:
            skew = resp.date - resp.local_time
        elif resp.this_update is not None and resp.this_update > resp.local_time:
            skew = resp.this_update - resp.local_time
        if skew is None or abs(skew) <= SKEW_WARNING:
            continue
        ahead = "behind" if skew > dt.timedelta(0) else "ahead of"
        severity: Severity = "error" if abs(skew) > CLOCK_SKEW else "warning"
        yield Finding(
            "clock-skew",
            severity,
            f"this host's clock is {abs(skew).total_seconds():.0f} s {ahead} responder "
            f"{resp.url}'s: responses may be judged not yet valid or expired",
            "synchronise the clock (e.g. `timedatectl set-ntp true`, chrony or systemd-timesyncd)",
        )


CHECKS: tuple[Check, ...] = (
    config_invalid,
    no_admin_socket,
    socket_unreachable,
    socket_not_admin,
    socket_alias,
    cert_unreadable,
    chainless_no_issuer,
    must_staple_unstapled,
    cert_expiry,
    cert_dir_not_writable,
    bufsize_too_small,
    extra_files_hide_ocsp,
    cert_not_served,
    cert_not_on_disk,
    state_dir_permissions,
    responder_down,
    responder_slow,
    delegate_expiring,
    clock_skew,
    no_ocsp_url,
    managed_by_haproxy,
)

_ORDER = {"error": 0, "warning": 1, "info": 2}


def judge(facts: Facts) -> list[Finding]:
    """Every finding, errors first, then warnings, then infos (stable within each)."""
    findings = [finding for check in CHECKS for finding in check(facts)]
    return sorted(findings, key=lambda f: _ORDER[f.severity])


def blocks_stapling(findings: list[Finding]) -> bool:
    """Whether any finding is an error: ``doctor`` exits 1."""
    return any(f.severity == "error" for f in findings)
