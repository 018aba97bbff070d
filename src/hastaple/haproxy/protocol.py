"""
HAProxy's runtime API as bytes in and values out: no sockets (sans-IO, like h11).

Theory of operation (docs/haproxy.md). The client opens one connection
and sends ``prompt`` first: in prompt mode HAProxy keeps the connection open and
ends every reply with a prompt at the start of a line (``> `` on a worker
socket, ``master> `` on the master CLI), so replies can be split exactly and
commands pipelined, whatever their size. Non-interactive mode ends replies
with an empty line, which the OCSP text dump can also contain, and closes the
connection as soon as its input buffer is empty, so it is not used.

In payload mode (``<<``) HAProxy echoes ``+ `` for every payload line before
the reply: ``ReplyReader`` strips these. A command longer than tune.bufsize
gets "The command is too big ..." on 2.8 and a silently closed connection on
2.6; ``Command`` refuses such commands before they are sent.

Every ``parse_*`` function takes a ``Reply`` and returns a value, or raises
``HAProxyCommandFailed``; anything else is a bug.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from hastaple.errors import ConfigError, HAProxyCommandFailed

# One command, payload included, must fit tune.bufsize (16384 by default) less
# the byte HAProxy keeps for its terminating NUL. Measured on 2.6.12 and 2.8.25:
# a payload command of 16,383 bytes is answered, one of exactly 16,384 bytes
# kills HAProxy (2.6: SIGSEGV; 2.8: its spinning-applet watchdog aborts).
MAX_COMMAND_BYTES = 16383
# base64 line width of payloads, as `base64 -w 64` (HAProxy accepts any width).
PAYLOAD_LINE_CHARS = 64

# A newline would end a command early (and start another), a NUL cut it: never sent.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# How HAProxy's CLI reads a line (src/cli.c, the same in 2.6, 2.8 and 3.0): a
# command ends at a '\n' or ';' that no backslash escapes; words split on
# spaces and tabs; a backslash makes the next byte literal and is dropped
# (quotes, '#' and '@' inside an argument mean nothing). But the payload mode
# is detected on the raw line, escapes ignored: a line ending in "<<" (2.6,
# 2.8), a last blank-separated word starting with "<<" (3.0's "<<PATTERN"),
# and, on the master CLI of 2.6 and 2.8, the first "<<" anywhere in the line
# being at its end. So '<' is escaped too: an escaped name never holds "<<".
_SPECIAL = re.compile(r"([\\; <])")
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
class Address:
    """
    Where a runtime API listens, and which worker to address through a master CLI.

    ``prefix`` is "" for a worker socket, or "@1 " / "@!<pid> " for a master CLI.
    """

    text: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    prefix: str = ""


_WORKER = re.compile(r"@(!?\d+)\Z")
_HOST_PORT = re.compile(r"([^:@\[\]]+|\[[^\]]+\]):(\d{1,5})\Z")


def parse_address(text: str) -> Address:
    """
    Parse a socket address as HAProxy's configuration spells it.

    Accepts ``/run/haproxy.sock``, ``unix@/run/haproxy.sock``, ``127.0.0.1:9999``,
    ``ipv4@127.0.0.1:9999``, each optionally followed by a master-CLI worker
    selector ``@1`` or ``@!<pid>`` (``/run/haproxy-master.sock@1``).

    Raises:
        ConfigError: the text is not an address.
    """
    rest, prefix = text.strip(), ""
    worker = _WORKER.search(rest)
    if worker and worker.start() > 0:
        rest, prefix = rest[: worker.start()], f"@{worker.group(1)} "
    if rest.startswith("unix@"):
        return _unix(text, rest[len("unix@") :], prefix)
    tcp = rest.startswith(("ipv4@", "ipv6@"))
    if tcp:
        rest = rest[len("ipv4@") :]
    match = _HOST_PORT.fullmatch(rest)
    if match and not rest.startswith(("/", ".")):
        port = int(match.group(2))
        if not 0 < port < 65536:  # noqa: PLR2004 - TCP port range
            raise ConfigError(f"HAProxy socket {text!r}: port {port} is out of range")
        return Address(text, host=match.group(1).strip("[]"), port=port, prefix=prefix)
    if tcp or (":" in rest and not rest.startswith(("/", "."))):
        raise ConfigError(f"HAProxy socket {text!r}: expected host:port")
    return _unix(text, rest, prefix)


def _unix(text: str, path: str, prefix: str) -> Address:
    if not path:
        raise ConfigError(f"HAProxy socket {text!r}: empty path")
    return Address(text, path=path, prefix=prefix)


@dataclass(frozen=True, slots=True)
class Command:
    """
    One runtime API command: ``line`` names it in messages, ``payload`` follows ``<<``.

    Payload lines must not be empty: an empty line ends the payload.
    ``for_worker`` False sends it to a master CLI itself, without ``@1``.
    """

    line: str
    payload: str | None = None
    for_worker: bool = True

    def encode(self, address: Address) -> bytes:
        """
        Return the bytes to send, prefixed for a master CLI worker.

        Raises:
            HAProxyCommandFailed: the command does not fit tune.bufsize (it is
                refused here because 2.6 would just close the connection:
                docs/haproxy.md, "Commands, connections and buffer size"),
                or it holds a control character.
        """
        prefix = address.prefix if self.for_worker else ""
        if (char := _CONTROL.search(self.line)) is not None:
            why = (
                f"not sent: it holds the control character {char[0]!r}, which HAProxy's "
                "CLI cannot take inside an argument (it would end or split the command)"
            )
            raise HAProxyCommandFailed(address.text, repr(self.line), why)
        if self.payload is None:
            data = f"{prefix}{self.line}\n"
        else:
            data = f"{prefix}{self.line} <<\n{self.payload.rstrip(chr(10))}\n\n"
        # A file name goes as its bytes on disk (surrogateescape), not only ASCII.
        raw = data.encode("utf-8", "surrogateescape")
        if len(raw) > MAX_COMMAND_BYTES:
            why = (
                f"not sent: the command is {len(raw)} bytes, over HAProxy's "
                f"tune.bufsize limit of {MAX_COMMAND_BYTES} bytes"
            )
            raise HAProxyCommandFailed(address.text, str(self), why)
        return raw

    def __str__(self) -> str:
        return self.line + (" <<" if self.payload is not None else "")


def _arg(text: str) -> str:
    """Escape one argument (a certificate path): HAProxy reads it back as exactly one word."""
    return _SPECIAL.sub(r"\\\1", text)


def _b64_lines(der: bytes) -> str:
    text = base64.b64encode(der).decode("ascii")
    return "\n".join(
        text[i : i + PAYLOAD_LINE_CHARS] for i in range(0, len(text), PAYLOAD_LINE_CHARS)
    )


# The master CLI has its own prompt mode: it must not go to the worker.
PROMPT = Command("prompt", for_worker=False)
SHOW_INFO = Command("show info")
SHOW_CERTS = Command("show ssl cert")


def set_ocsp_response(der: bytes, *, payload: bool = False) -> Command:
    """``set ssl ocsp-response``: the fast path, for registered certificates only."""
    if payload:
        return Command("set ssl ocsp-response", _b64_lines(der))
    return Command(f"set ssl ocsp-response {base64.b64encode(der).decode('ascii')}")


def set_cert_ocsp(crt: str, der: bytes) -> Command:
    """
    ``set ssl cert <crt>.ocsp <<``: payload form only; the one-line form is refused.

    docs/haproxy.md, "Loading a staple without a reload".
    """
    return Command(f"set ssl cert {_arg(crt + '.ocsp')}", _b64_lines(der))


def set_cert_issuer(crt: str, pem: bytes) -> Command:
    """
    ``set ssl cert <crt>.issuer <<``: the issuer for a PEM without chain.

    docs/haproxy.md, "Loading a staple without a reload".
    """
    lines = [line for line in pem.decode("ascii").splitlines() if line.strip()]
    return Command(f"set ssl cert {_arg(crt + '.issuer')}", "\n".join(lines))


def commit_cert(crt: str) -> Command:
    """``commit ssl cert <crt>``."""
    return Command(f"commit ssl cert {_arg(crt)}")


def abort_cert(crt: str) -> Command:
    """``abort ssl cert <crt>``."""
    return Command(f"abort ssl cert {_arg(crt)}")


def show_cert(crt: str) -> Command:
    """``show ssl cert <crt>``: the ``OCSP Response Key`` tells if the cert is registered."""
    return Command(f"show ssl cert {_arg(crt)}")


def show_ocsp_response(key_hex: str) -> Command:
    """``show ssl ocsp-response <key>``: the response HAProxy serves, as text (2.6 and 2.8)."""
    return Command(f"show ssl ocsp-response {key_hex}")


def show_ocsp_response_der(key_hex: str) -> Command:
    """
    ``show ssl ocsp-response base64 <key>``: the served DER itself (2.8 on).

    docs/haproxy.md, "Versions".

    Exact to compare, and about 40 times cheaper for HAProxy than the text
    dump, which prints the whole response with its signer certificate
    (measured on 2.8.25: 0.005-0.01 against 0.2 ms of HAProxy CPU each).
    """
    return Command(f"show ssl ocsp-response base64 {key_hex}")


_VERSION = re.compile(r"(\d+)\.(\d+)")


def shows_der(version: str) -> bool:
    """
    Whether an HAProxy of ``version`` (``show info``'s Version) has the base64 form.

    2.6 answers ``show ssl ocsp-response base64 <key>`` with "Certificate ID
    does not match any certificate." (measured); 2.8 has it; 2.7 was not
    measured, so it keeps the text dump.
    """
    match = _VERSION.match(version.strip())
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (2, 8)


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


def escape_arg(text: str) -> str:
    """Escape one argument (a path) so HAProxy's CLI reads it back as exactly one word."""
    return _arg(text)


def command_failed(socket: str, command: Command, reply: Reply) -> HAProxyCommandFailed:
    """The error for ``command`` answered with ``reply``: its text, or the closed connection."""
    return _fail(socket, command, reply)
