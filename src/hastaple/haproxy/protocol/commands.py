"""
Runtime-API commands as bytes: socket addresses, escaping, payloads, the size limit.

Sans-IO: nothing here opens a socket. ``Command.encode`` refuses what HAProxy
would mis-read or die on before anything is sent.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

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

    @property
    def abstract(self) -> bool:
        """Whether ``path`` is in Linux's abstract namespace (no file on disk)."""
        return self.path is not None and self.path.startswith("\0")


_WORKER = re.compile(r"@(!?\d+)\Z")
_HOST_PORT = re.compile(r"([^:@\[\]]+|\[[^\]]+\]):(\d{1,5})\Z")


def parse_address(text: str) -> Address:
    """
    Parse a socket address as HAProxy's configuration spells it.

    Accepts ``/run/haproxy.sock``, ``unix@/run/haproxy.sock``, ``abns@name``,
    ``127.0.0.1:9999``, ``ipv4@127.0.0.1:9999``, each optionally followed by a master-CLI worker
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
    if rest.startswith(("abns@", "abnsz@")):
        return _abstract(text, rest, prefix)
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


_SUN_PATH = 108  # bytes in a Linux sockaddr_un's sun_path


def _abstract(text: str, rest: str, prefix: str) -> Address:
    """
    ``abns@<name>``: HAProxy binds the whole ``sun_path``, the name padded with zero bytes.

    So a client must connect with the same padded name (socat's
    ``unix-tightsocklen=0``); ``abnsz@<name>`` (HAProxy 3.1) binds the name alone.
    """
    kind, name = rest.split("@", 1)
    path = "\0" + name
    if not name or len(path.encode()) > _SUN_PATH:
        raise ConfigError(f"HAProxy socket {text!r}: expected a name of 1 to 107 bytes")
    if kind == "abns":
        path = path.ljust(_SUN_PATH, "\0")
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


def escape_arg(text: str) -> str:
    """Escape one argument (a path) so HAProxy's CLI reads it back as exactly one word."""
    return _arg(text)
