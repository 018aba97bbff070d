"""
Certificates into a running HAProxy without a reload: what to send, and what the replies mean.

Sans-IO: ``plan`` turns a change (a renewed file, a new file, a removed
one) into runtime API commands, ``check`` judges each reply, and
``read_back`` / ``judge_read_back`` say whether HAProxy now serves what a
reload would load. ``certpush`` moves the bytes.

Why it looks the way it does (docs/haproxy.md, "Loading a staple without a
reload"):

- ``set ssl cert <crt> <<PEM`` empties the certificate's OCSP response, SCT
  list and issuer (HAProxy's PEM loader resets them), so a commit of the PEM
  alone serves the new certificate with no staple and leaves it out of
  HAProxy's OCSP tree. The PEM therefore goes first, then the separate
  ``.key``, the ``.issuer`` of a chainless PEM and the ``.ocsp``, all in one
  transaction with one commit: no handshake ever sees the new certificate
  without its staple.
- A must-staple certificate (RFC 7633) promises a staple: without a valid
  one it is not loaded at all, and the old certificate stays served.
- One command, payload included, must fit tune.bufsize. A PEM too big for
  one command is sent as the certificate with its chain, then the key as
  ``<crt>.key`` (HAProxy takes the key from either); larger than that cannot
  be loaded at runtime and is refused before anything is sent.
- A removal deletes the crt-list entry, then the certificate, but never the
  last entry of a crt-list or directory: a bind left with no certificate
  would refuse every handshake, where a reload keeps serving.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from cryptography.x509 import ocsp

from hastaple.errors import HAProxyCommandFailed
from hastaple.haproxy import protocol
from hastaple.haproxy.protocol import Command, Reply

_KEY_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?-----END \1-----\r?\n?", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class CertFiles:
    """
    One certificate as it is on disk, ready to load.

    ``crt`` is the name HAProxy knows (or will know) the file by; ``staple``
    a response already validated for this certificate, ``cert_id`` its DER
    CertID (HAProxy's ``OCSP Response Key``); ``key`` the separate
    ``<crt>.key`` file, ``issuer_pem`` the ``<crt>.issuer`` of a chainless PEM.
    """

    crt: str
    pem: bytes
    serial: int
    key: bytes | None = None
    issuer_pem: bytes | None = None
    staple: bytes | None = None
    cert_id: bytes | None = None
    must_staple: bool = False


@dataclass(frozen=True, slots=True)
class Renew:
    """A file HAProxy serves now holds another certificate (same path, new serial)."""

    files: CertFiles


@dataclass(frozen=True, slots=True)
class Add:
    """
    A new file to serve from ``crt_list`` (a crt-list file, or a ``crt`` directory).

    ``line`` is the rest of its crt-list line, options and SNI filters as
    written (``[alpn h2] www.example.test``); "" for a directory, which
    takes neither.
    """

    files: CertFiles
    crt_list: str
    line: str = ""


@dataclass(frozen=True, slots=True)
class Remove:
    """A file (or crt-list line) that is gone: stop serving ``crt`` from ``crt_list``."""

    crt: str
    crt_list: str


Change = Renew | Add | Remove


class Kind(enum.Enum):
    """What a step's reply must say."""

    NEW = "new"
    SET = "set"
    COMMIT = "commit"
    ADD = "add"
    DEL_ENTRY = "del-entry"
    DEL_CERT = "del-cert"


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a plan and the reply it needs."""

    command: Command
    kind: Kind


@dataclass(frozen=True, slots=True)
class Plan:
    """
    The commands for one change, in order; ``refused`` says why none may be sent.

    ``sets`` open the transaction (``new ssl cert`` first for an Add), then
    ``commit`` ends it; ``after`` runs once the commit succeeded (``add ssl
    crt-list``), or, for a Remove, is the whole plan.
    """

    change: Change
    sets: tuple[Step, ...] = ()
    commit: Step | None = None
    after: tuple[Step, ...] = ()
    refused: str | None = None

    @property
    def crt(self) -> str:
        """The certificate this plan is about."""
        return self.change.crt if isinstance(self.change, Remove) else self.change.files.crt


def plan(change: Change, address: protocol.Address) -> Plan:
    """The commands that apply ``change``, or why it must not be applied."""
    if isinstance(change, Remove):
        steps = (
            Step(Command(f"del ssl crt-list {_arg(change.crt_list)} {_arg(change.crt)}"),
                 Kind.DEL_ENTRY),
            Step(Command(f"del ssl cert {_arg(change.crt)}"), Kind.DEL_CERT),
        )  # fmt: skip
        return _sized(Plan(change, after=steps), address)
    files = change.files
    if files.must_staple and files.staple is None:
        why = (
            f"{files.crt} is must-staple and has no valid staple: not loaded, HAProxy keeps "
            "serving what it served (a must-staple certificate without one is refused by clients)"
        )
        return Plan(change, refused=why)
    sets = (
        [Step(Command(f"new ssl cert {_arg(files.crt)}"), Kind.NEW)]
        if isinstance(change, Add)
        else []
    )
    sets += [Step(cmd, Kind.SET) for cmd in _transaction(files, address)]
    after: tuple[Step, ...] = ()
    if isinstance(change, Add):
        after = (Step(_add_entry(change), Kind.ADD),)
    commit = Step(protocol.commit_cert(files.crt), Kind.COMMIT)
    return _sized(Plan(change, tuple(sets), commit, after), address)


def _transaction(files: CertFiles, address: protocol.Address) -> list[Command]:
    """PEM first (it empties the rest), then key, issuer and staple."""
    name = _arg(files.crt)
    pem = Command(f"set ssl cert {name}", _payload(files.pem))
    key = files.key
    if key is None and not _fits(pem, address) and _KEY_BLOCK.search(files.pem):
        # Too big as one command: the key goes on its own, as a .key file would.
        key = b"".join(m[0] for m in _KEY_BLOCK.finditer(files.pem))
        pem = Command(f"set ssl cert {name}", _payload(_KEY_BLOCK.sub(b"", files.pem)))
    cmds = [pem]
    if key is not None:
        cmds.append(Command(f"set ssl cert {_arg(files.crt + '.key')}", _payload(key)))
    if files.issuer_pem is not None:
        cmds.append(protocol.set_cert_issuer(files.crt, files.issuer_pem))
    if files.staple is not None:
        cmds.append(protocol.set_cert_ocsp(files.crt, files.staple))
    return cmds


def _add_entry(change: Add) -> Command:
    """``add ssl crt-list``: one-line for a bare path, payload for options and filters."""
    line = change.line.strip()
    if not line:
        return Command(f"add ssl crt-list {_arg(change.crt_list)} {_arg(change.files.crt)}")
    return Command(f"add ssl crt-list {_arg(change.crt_list)}", f"{change.files.crt} {line}")


def _sized(result: Plan, address: protocol.Address) -> Plan:
    """``result``, or refused when a command cannot be sent (too big, control characters)."""
    steps = [*result.sets, *([result.commit] if result.commit else []), *result.after]
    for step in steps:
        try:
            step.command.encode(address)
        except HAProxyCommandFailed as exc:
            why = f"cannot be loaded at runtime: {exc.problem}; a reload loads it"
            return Plan(result.change, refused=f"{result.crt}: {why}")
    if isinstance(result.change, Add) and any(c.isspace() for c in result.crt):
        why = "a crt-list line cannot name a file with blanks at runtime; a reload loads it"
        return Plan(result.change, refused=f"{result.crt}: {why}")
    return result


def _fits(cmd: Command, address: protocol.Address) -> bool:
    try:
        cmd.encode(address)
    except HAProxyCommandFailed:
        return False
    return True


def _payload(pem: bytes) -> str:
    """PEM text without empty lines: an empty line would end the payload early."""
    return "\n".join(line for line in pem.decode("ascii").splitlines() if line.strip())


def _arg(text: str) -> str:
    return protocol.escape_arg(text)


_REPLIES = {
    Kind.NEW: re.compile(r"New empty certificate store '.*'!"),
    Kind.SET: re.compile(r"Transaction (created|updated) for certificate .*!"),
    Kind.DEL_ENTRY: re.compile(r"Entry '.*' deleted in crtlist '.*'!"),
    Kind.DEL_CERT: re.compile(r"Certificate '.*' deleted!"),
}


def check(socket: str, step: Step, reply: Reply, crt: str) -> str | None:
    """
    Why ``reply`` is not the success of ``step`` (about ``crt``), or None.

    A commit or crt-list insertion must end in ``Success!``; a commit that
    says ``Content will be ignored`` (2.8: the staple was not loaded) fails,
    as does a set filed into another certificate's transaction (2.6).
    """
    try:
        if step.kind is Kind.COMMIT:
            protocol.parse_commit(socket, step.command, reply)
            return None
        lines = [line.strip() for line in reply.text.splitlines() if line.strip()]
        if step.kind is Kind.ADD:
            ok = bool(lines) and lines[-1] == "Success!" and not reply.closed
        else:
            ok = not reply.closed and _REPLIES[step.kind].fullmatch(" ".join(lines)) is not None
        if step.kind is Kind.SET and ok and not reply.text.strip().endswith(f" {crt}!"):
            return f"{step.command}: filed under another open transaction ({reply.text.strip()})"
        if not ok:
            raise protocol.command_failed(socket, step.command, reply)
    except HAProxyCommandFailed as exc:
        return exc.problem
    return None


def read_back(crt: str, cert_id: bytes | None, *, der: bool) -> list[Command]:
    """``show ssl cert <crt>``, and the served response for ``cert_id`` (2.8: ``der``)."""
    cmds = [protocol.show_cert(crt)]
    if cert_id is not None:
        key = cert_id.hex()
        cmds.append(
            protocol.show_ocsp_response_der(key) if der else protocol.show_ocsp_response(key)
        )
    return cmds


def judge_read_back(
    socket: str, files: CertFiles, cmds: list[Command], replies: list[Reply], *, der: bool
) -> str | None:
    """Why HAProxy does not serve ``files`` (serial, OCSP key, staple), or None."""
    try:
        info = protocol.parse_show_cert(socket, cmds[0], replies[0])
        if info is None:
            return f"HAProxy does not know {files.crt} after the commit"
        if info.serial is None or int(info.serial, 16) != files.serial:
            return (
                f"HAProxy serves serial {info.serial} for {files.crt}, not the new {files.serial:X}"
            )
        if files.staple is None or files.cert_id is None:
            return None
        if info.ocsp_key != files.cert_id.hex():
            return f"HAProxy has no OCSP entry for the new {files.crt} (staple not loaded)"
        return _served_error(socket, files, cmds[1], replies[1], der=der)
    except HAProxyCommandFailed as exc:
        return f"read-back failed: {exc.problem}"


def _served_error(
    socket: str, files: CertFiles, cmd: Command, reply: Reply, *, der: bool
) -> str | None:
    staple = files.staple or b""
    if der:
        served = protocol.parse_ocsp_response_der(socket, cmd, reply)
        return None if served == staple else f"HAProxy serves another staple for {files.crt}"
    text = protocol.parse_ocsp_response(socket, cmd, reply)
    single = ocsp.load_der_ocsp_response(staple)
    nxt = single.next_update_utc
    want = (single.this_update_utc.replace(microsecond=0), nxt and nxt.replace(microsecond=0))
    if (text.this_update, text.next_update) != want or text.cert_status != "good":
        return f"HAProxy serves another staple for {files.crt} ({text.cert_status})"
    return None


def crt_list_entries(text: str) -> list[str]:
    """
    The certificate paths of ``show ssl crt-list <list>``, in order.

    The reply starts with ``# <list>``, then one entry a line: the path,
    then options in brackets and SNI filters.
    """
    return [line.split()[0] for line in text.splitlines() if line.strip() and line[0] != "#"]


def removal_refused(crt: str, crt_list: str, entries: list[str]) -> str | None:
    """Why ``crt`` must not be removed from ``crt_list`` holding ``entries``, or None."""
    if crt not in entries:
        return None  # nothing to delete from the list; the certificate itself may go
    if len(entries) <= 1:
        return (
            f"{crt} is the last certificate of {crt_list}: not removed, a bind with no "
            "certificate refuses every handshake (a reload would fail the same way)"
        )
    return None
