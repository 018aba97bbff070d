"""
Runtime-API replies as values: framing by the prompt, and one ``parse_*`` per command.

Every ``parse_*`` function takes a ``Reply`` and returns a value, or raises
``HAProxyCommandFailed``; anything else is a bug.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from hastaple.errors import HAProxyCommandFailed
from hastaple.haproxy.protocol.commands import Command

_PROMPT = re.compile(rb"(?:\A|\n)(?:master(?:\[[^\]\n]*\])?)?> ")
_TOO_BIG = "The command is too big for the buffer size"
_IGNORED = "Content will be ignored"
_NO_WORKER = "Can't find the target PID matching the prefix"
# Another client's commit holds the certificate lock (every version since 2.2;
# seen from 3.0 when two sockets of one process are used at once). The command
# was not run: it can be sent again.
LOCKED = "Operations on certificates are currently locked!"
MASTER_WITHOUT_WORKER = (
    "this is HAProxy's master CLI, which serves no certificates itself: "
    "add a worker selector such as @1 (<master socket>@1)"
)
PITFALL = "Certificate ID does not match any certificate or issuer"


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One reply; ``closed`` means the connection ended before the prompt came.

    ``prompt`` is the prompt that ended it: ``>`` on a worker socket,
    ``master>`` on a master CLI, whether the master or a worker answered.
    """

    text: str
    closed: bool = False
    prompt: str = ""

    @property
    def on_master(self) -> bool:
        """Whether the connection is to a master CLI."""
        return self.prompt.startswith("master")


class ReplyReader:
    """Split the byte stream of a prompt-mode connection into replies (sans-IO)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Add bytes received from HAProxy."""
        self._buf += data

    def feed_eof(self) -> None:
        """Note that HAProxy closed the connection."""
        self._eof = True

    @property
    def at_eof(self) -> bool:
        """HAProxy closed the connection: every later reply is ``closed``."""
        return self._eof

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None until more bytes arrive."""
        match = _PROMPT.search(self._buf)
        if match is not None:
            body, prompt = bytes(self._buf[: match.start()]), match[0].decode("ascii").strip()
            del self._buf[: match.end()]  # after reading the match: it views the buffer
            return Reply(_clean(body), prompt=prompt)
        if self._eof:
            body = bytes(self._buf)
            self._buf.clear()
            return Reply(_clean(body), closed=True)
        return None


def _clean(body: bytes) -> str:
    """Drop the payload continuation prompts and the empty line ending a reply."""
    text = body.decode("utf-8", errors="replace")
    while text.startswith("+ "):
        text = text[2:]
    return text.rstrip("\n")


def locked(reply: Reply) -> bool:
    """Whether HAProxy refused the command because the certificates are locked (retry it)."""
    return LOCKED in reply.text


def _fail(
    socket: str, command: Command, reply: Reply, why: str | None = None
) -> HAProxyCommandFailed:
    if reply.closed and not reply.text:
        why = (
            "HAProxy closed the connection without a reply "
            "(HAProxy 2.6 does this when a command is too big for tune.bufsize)"
        )
    return HAProxyCommandFailed(socket, str(command), why or _summary(reply.text))


def _summary(text: str) -> str:
    """
    One line saying why: drop ``Committing <crt>.`` and join the rest.

    A failed commit's reason is on the line after ``Committing`` (docs/haproxy.md,
    "Loading a staple without a reload"), and
    ``HAProxyCommandFailed`` shows only a reply's first line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("Committing "))


def _check_common(socket: str, command: Command, reply: Reply) -> None:
    if reply.closed or _TOO_BIG in reply.text or _IGNORED in reply.text:
        raise _fail(socket, command, reply)


def parse_set_ocsp_response(socket: str, command: Command, reply: Reply) -> None:
    """
    Accept ``OCSP Response updated!``; the pitfall text and the rest fail.

    docs/haproxy.md, "Loading a staple without a reload" and "The pitfall: unregistered
    certificates".
    """
    _check_common(socket, command, reply)
    if reply.text.strip() != "OCSP Response updated!":
        raise _fail(socket, command, reply)


def parse_set_cert(socket: str, command: Command, reply: Reply) -> None:
    """
    Accept ``Transaction created|updated for certificate <crt>!``.

    docs/haproxy.md, "Loading a staple without a reload".
    """
    _check_common(socket, command, reply)
    if not re.fullmatch(r"Transaction (created|updated) for certificate .*!", reply.text.strip()):
        raise _fail(socket, command, reply)


def parse_commit(socket: str, command: Command, reply: Reply) -> None:
    """
    Accept a commit ending in ``Success!`` that does not mention ignored content.

    2.8 says ``Loading: <reason>. Content will be ignored.`` before ``Success!``
    when the ``.ocsp`` was invalid (docs/haproxy.md, "What HAProxy checks, and what
    it does not"); that is a failure for us.
    """
    _check_common(socket, command, reply)
    lines = [line.strip() for line in reply.text.splitlines() if line.strip()]
    if not lines or lines[-1] != "Success!":
        raise _fail(socket, command, reply)


def parse_abort(socket: str, command: Command, reply: Reply) -> bool:
    """Return True when a transaction was aborted, False when there was none."""
    _check_common(socket, command, reply)
    if reply.text.strip() == "No ongoing transaction!":
        return False
    if not reply.text.startswith("Transaction aborted for certificate"):
        raise _fail(socket, command, reply)
    return True


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What ``show ssl cert <crt>`` says; ``ocsp_key`` None is the pitfall state."""

    filename: str
    serial: str | None
    ocsp_key: str | None

    @property
    def registered(self) -> bool:
        """
        Whether ``set ssl ocsp-response`` can work for this certificate.

        docs/haproxy.md, "The pitfall: unregistered certificates".
        """
        return self.ocsp_key is not None


# The three lines of ``show ssl cert`` we use, found without splitting the
# whole dump (the leaf's and every chain certificate's details) into fields.
_CERT_FIELDS = re.compile(r"^[ \t]*(Filename|Serial|OCSP Response Key)[ \t]*:(.*)$", re.MULTILINE)


def parse_show_cert(socket: str, command: Command, reply: Reply) -> CertInfo | None:
    """Return the certificate's details, or None when HAProxy does not know it."""
    _check_common(socket, command, reply)
    if reply.text.startswith("Can't display the certificate: Not found"):
        return None
    fields: dict[str, str] = {}
    for match in _CERT_FIELDS.finditer(reply.text):  # the chain's dumps follow: first wins
        fields.setdefault(match[1], match[2].strip())
    if "Filename" not in fields or "OCSP Response Key" not in fields:
        raise _fail(socket, command, reply)
    return CertInfo(
        filename=fields["Filename"],
        serial=fields.get("Serial") or None,
        ocsp_key=fields["OCSP Response Key"].lower() or None,
    )


def parse_cert_names(reply: Reply) -> list[str]:
    """
    The certificate names of ``show ssl cert`` (the list form), as HAProxy names them.

    The list starts with ``# filename``; names of an open transaction come
    first, after ``# transaction``, prefixed with ``*``. Any other reply
    gives no names.
    """
    return [
        line
        for line in reply.text.splitlines()
        if line.strip() and not line.startswith(("#", "*")) and not reply.closed
    ]


@dataclass(frozen=True, slots=True)
class Served:
    """The response HAProxy holds for a CertID (``show ssl ocsp-response <key>``)."""

    cert_status: str
    this_update: datetime
    next_update: datetime | None
    serial: str | None


def parse_ocsp_response(socket: str, command: Command, reply: Reply) -> Served:
    """Read Cert Status / This Update / Next Update / Serial from the text dump."""
    _check_common(socket, command, reply)
    fields = _fields(reply.text)
    try:
        return Served(
            cert_status=fields["Cert Status"],
            this_update=_openssl_time(fields["This Update"]),
            next_update=_openssl_time(fields["Next Update"]) if "Next Update" in fields else None,
            serial=fields.get("Serial Number"),
        )
    except (KeyError, ValueError):
        raise _fail(socket, command, reply) from None


def parse_ocsp_response_der(socket: str, command: Command, reply: Reply) -> bytes:
    """Return the DER of ``show ssl ocsp-response base64 <key>`` (one base64 line)."""
    _check_common(socket, command, reply)
    try:
        return base64.b64decode("".join(reply.text.split()), validate=True)
    except ValueError:  # binascii.Error: an error text, or garbage
        raise _fail(socket, command, reply) from None


@dataclass(frozen=True, slots=True)
class Info:
    """The parts of ``show info`` that tell one HAProxy process from the next."""

    pid: int
    uptime_sec: int
    version: str
    node: str = ""


def parse_info(socket: str, command: Command, reply: Reply) -> Info:
    """
    Read Pid, Uptime_sec, Version and node (the host name by default) from ``show info``.

    A master CLI without a worker selector answers with its help, and one
    whose selector names no worker with "Can't find the target PID"; both
    fail with the fix in the message.
    """
    if (why := master_refusal(reply)) is not None:
        raise HAProxyCommandFailed(socket, str(command), why)
    _check_common(socket, command, reply)
    fields = _fields(reply.text)
    try:
        return Info(
            int(fields["Pid"]), int(fields["Uptime_sec"]), fields["Version"], fields.get("node", "")
        )
    except (KeyError, ValueError):
        raise _fail(socket, command, reply) from None


def master_refusal(reply: Reply) -> str | None:
    """
    Why a master CLI answered instead of a worker, or None.

    Without a worker selector the master answers a worker command with its
    help ("Unknown command ..."); with a selector naming no worker (``@2``)
    it says "Can't find the target PID matching the prefix '@2'" (and 2.6
    then closes the connection).
    """
    if _NO_WORKER in reply.text:
        return (
            f"{reply.text.strip()}: the master CLI has no such worker; use @1 for the "
            "current worker, or @!<pid> with a pid its 'show proc' lists"
        )
    if reply.on_master and reply.text.startswith("Unknown command"):
        return MASTER_WITHOUT_WORKER
    return None


def _fields(text: str) -> dict[str, str]:
    """``Key: value`` lines, first occurrence wins (the signer cert repeats some keys)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def _openssl_time(text: str) -> datetime:
    """Parse OpenSSL's ``Nov 29 16:55:52 2026 GMT`` (ASN1_TIME_print) as UTC."""
    return datetime.strptime(" ".join(text.split()), "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)


def command_failed(socket: str, command: Command, reply: Reply) -> HAProxyCommandFailed:
    """The error for ``command`` answered with ``reply``: its text, or the closed connection."""
    return _fail(socket, command, reply)
