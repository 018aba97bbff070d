"""
The doctor's checks of the HAProxy side: configuration, runtime sockets, buffer size.

Pure functions from gathered ``Facts`` to ``Finding``s (no I/O). Must not
gather facts (``facts``) nor decide the order of the checklist (``checks``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from hastaple.app.doctor.facts import Facts
from hastaple.app.doctor.finding import (
    COMMAND,
    DEFAULT_BUFSIZE,
    TYPICAL_RESPONSE_BYTES,
    Finding,
)


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
    return len(COMMAND) + 4 * math.ceil(der_bytes / 3) + 1


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
