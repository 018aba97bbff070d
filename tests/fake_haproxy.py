"""
A fault-injecting stand-in for HAProxy's runtime API on a unix socket.

It speaks what hastaple uses of the real thing (docs/haproxy.md):
prompt mode, ``<<`` payloads ended by an empty line, ``show ssl cert``,
``set ssl ocsp-response``, ``set ssl cert <crt>.ocsp``/``commit ssl cert`` and
``show ssl ocsp-response <key>``, for certificates registered with
``register()``. What a real HAProxy will not do on demand is the point:
``fault`` garbles replies, stalls, drops the connection after N commands
(a restart mid-batch) or answers "command too big".

Everything runs on the test's event loop; the socket lives in a directory of
the test's choosing (the path of a unix socket must fit 107 bytes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from hastaple.core.ocsp.request import cert_id_of
from hastaple.haproxy.deploy import cert_id_serial
from hastaple.testing.haproxy import openssl_time

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

TOO_BIG = (
    "The command is too big for the buffer size. Please change tune.bufsize in the "
    "configuration to use a bigger command.\n"
)
PITFALL = "OCSP single response: Certificate ID does not match any certificate or issuer.\n"

# 3.0's first line of the lock reply, by command (src/ssl_ckch.c).
_LOCKED = {
    "show ssl cert": "Can't show!",
    "set ssl cert": "Can't update the certificate!",
    "commit ssl cert": "Can't commit the certificate!",
    "abort ssl cert": "Can't abort!",
}

Fault = Literal["none", "garble", "garble-no-prompt", "stall", "close-after", "too-big", "slow"]


@dataclass
class Cert:
    """One certificate as the fake HAProxy knows it: its OCSP key and served response."""

    crt: str
    key_hex: str | None  # None: loaded without .ocsp (the pitfall state)
    der: bytes | None = None
    commit_key: str | None = None  # the key a commit with a .ocsp registers


@dataclass
class Transaction:
    """The one open ``set ssl cert`` transaction (HAProxy holds one at a time)."""

    crt: str
    der: bytes | None = None


@dataclass
class FakeHAProxy:
    """
    A runtime API server; ``fault`` decides how it misbehaves.

    ``garble``: every reply after ``prompt`` is ``garbage`` then the prompt.
    ``garble-no-prompt``: ``garbage`` and then silence (the client must time out).
    ``stall``: no reply at all after ``prompt``.
    ``close-after``: the connection is dropped after ``after`` commands.
    ``too-big``: commands longer than ``bufsize`` get 2.8's "too big" reply.
    ``slow``: every reply waits ``delay`` seconds.
    Besides any fault: ``idle_close`` closes a connection idle for that many
    seconds (HAProxy's ``stats timeout``), ``stall_on`` never answers commands
    starting with it, ``locked`` answers that many certificate commands (show,
    set, commit, abort ssl cert) with the lock reply of HAProxy 3.0, as while
    another client commits, doing nothing.

    Transactions behave as HAProxy 2.8's (one at a time; ``set ssl cert`` for
    another certificate is refused), or as 2.6's with ``merge_transactions``
    (filed into the open transaction, measured). ``fail_commit`` names
    certificates whose commit says ``Failed!`` and leaves the transaction open.
    """

    path: Path
    fault: Fault = "none"
    garbage: bytes = b"\x00\xff garbled \xfe\n"
    after: int = 0
    bufsize: int = 16384
    delay: float = 0.0
    certs: dict[str, Cert] = field(default_factory=dict)
    merge_transactions: bool = False
    fail_commit: set[str] = field(default_factory=set)
    transaction: Transaction | None = None
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    idle_close: float | None = None
    stall_on: str = ""
    locked: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def register(
        self, crt: str, key_hex: str | None, der: bytes | None = None, *, commit_key: str = ""
    ) -> None:
        """
        Serve ``crt``; ``key_hex`` None means it had no ``.ocsp`` at load time.

        ``commit_key`` is the key a later commit of ``<crt>.ocsp`` registers
        (HAProxy computes it from the certificate and its issuer).
        """
        self.certs[crt] = Cert(crt, key_hex, der, commit_key or None)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1)
        # Python 3.11's Server.close() leaves open connections' handlers
        # running: end them here, or they die pending when the test's loop closes.
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.connections += 1
        served = 0
        commands = CommandReader()
        try:
            while (command := await self._next_command(reader, commands)) is not None:
                raw, raw_payload, size = command
                line = raw.decode("utf-8", "surrogateescape")
                payload = None if raw_payload is None else raw_payload.decode("ascii", "replace")
                self.commands.append(line if payload is None else line.removesuffix(" <<"))
                if words(raw) == [b"prompt"]:
                    writer.write(b"\n> ")
                    await writer.drain()
                    continue
                if self.fault == "close-after" and served >= self.after:
                    return
                served += 1
                reply = await self._reply(line, payload, size)
                if reply is None:
                    continue
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Stopped by __aexit__: end normally, or asyncio's stream callback
            # logs the cancelled handler as an error.
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _next_command(
        self, reader: asyncio.StreamReader, commands: CommandReader
    ) -> tuple[bytes, bytes | None, int] | None:
        try:
            return await asyncio.wait_for(_read_command(reader, commands), self.idle_close)
        except TimeoutError:
            return None  # idle for too long: hang up, as 'stats timeout' does

    async def _reply(self, line: str, payload: str | None, size: int) -> bytes | None:
        if self.stall_on and line.startswith(self.stall_on):
            await asyncio.Event().wait()  # until the client or the server goes away
        if self.fault == "stall":
            await asyncio.Event().wait()  # until the client or the server goes away
        if self.fault == "slow":
            await asyncio.sleep(self.delay)
        if self.fault == "garble":
            return self.garbage + b"\n> "
        if self.fault == "garble-no-prompt":
            return self.garbage
        if self.fault == "too-big" and size > self.bufsize:
            return TOO_BIG.encode() + b"\n> "
        echo = "+ " * len(payload.splitlines()) if payload is not None else ""
        if self.locked and (why := _LOCKED.get(" ".join(line.split()[:3]))):
            self.locked -= 1
            return f"{echo}{why}\nOperations on certificates are currently locked!\n\n> ".encode()
        return (echo + self.answer(line, payload)).encode() + b"\n> "

    def answer(self, line: str, payload: str | None) -> str:  # noqa: PLR0911 - one branch per command
        """What a healthy HAProxy answers (its measured texts), to the line's exact words."""
        args = [
            w.decode("utf-8", "surrogateescape")
            for w in words(line.encode("utf-8", "surrogateescape"))
        ]
        command, arg = " ".join(args[:3]), (args[3] if len(args) > 3 else "")
        if command == "show ssl cert" and len(args) == 4:
            cert = self.certs.get(arg)
            if cert is None:
                return "Can't display the certificate: Not found or the certificate is a bundle!\n"
            key = (cert.key_hex or "").upper()
            # The serial of the certificate the CertID is for: the file's own.
            serial = cert_id_serial(bytes.fromhex(cert.key_hex or cert.commit_key or ""))
            shown = f"{serial:X}" if serial is not None else "1001"
            return (
                f"Filename: {cert.crt}\nStatus: Used\nSerial: {shown}\nOCSP Response Key: {key}\n"
            )
        if args[:3] == ["set", "ssl", "ocsp-response"]:
            der = base64.b64decode(payload if payload is not None else arg)
            routed = [c for c in self.certs.values() if c.key_hex and _for_key(der, c.key_hex)]
            for cert in routed:  # one OCSP entry per CertID, shared by its certificates
                cert.der = der
            return "OCSP Response updated!\n" if routed else PITFALL
        if command == "set ssl cert" and arg.endswith(".ocsp") and payload is not None:
            return self._set_cert(arg.removesuffix(".ocsp"), payload)
        if command in {"commit ssl cert", "abort ssl cert"} and len(args) == 4:
            return self._end_transaction(args[0], arg)
        if command == "show ssl ocsp-response" and len(args) == 4:
            for cert in self.certs.values():
                if cert.key_hex == arg.lower() and cert.der:
                    return _dump(cert.der)
            return "Certificate ID does not match any certificate.\n"
        return "Unknown command.\n"

    def _set_cert(self, crt: str, payload: str | None) -> str:
        txn = self.transaction
        if txn is not None and txn.crt != crt and not self.merge_transactions:
            return (
                f"The ongoing transaction is about '{txn.crt}' but you are trying to set "
                f"'{crt}'\nCan't update {crt}.ocsp!\n"
            )
        verb = "created" if txn is None else "updated"
        if txn is None:
            txn = self.transaction = Transaction(crt)
        txn.der = base64.b64decode(payload or "")
        return f"Transaction {verb} for certificate {txn.crt}!\n"

    def _end_transaction(self, verb: str, crt: str) -> str:
        txn = self.transaction
        if txn is None:
            return "No ongoing transaction!\n"
        if txn.crt != crt:
            return f"The ongoing transaction is about '{txn.crt}' but you want to {verb} '{crt}'\n"
        if verb == "abort":
            self.transaction = None
            return f"Transaction aborted for certificate '{crt}'!\n"
        if crt in self.fail_commit:
            return f"Committing {crt}.\nFailed!\n"  # and the transaction stays open
        self.transaction = None
        cert = self.certs.setdefault(crt, Cert(crt, None))
        cert.key_hex = cert.key_hex or cert.commit_key
        cert.der = txn.der
        return f"Committing {crt}.\nSuccess!\n"


# -- HAProxy's CLI reader and tokenizer (src/cli.c), as strict as the real one ----------

PAYLOAD = b"<<"
_BLANKS = b" \t"


def next_line(buf: bytes | bytearray) -> tuple[bytes, int] | None:
    r"""
    The next command line of ``buf`` and the bytes it used, or None until it is complete.

    A command ends at a ``\n`` or ``;`` that no backslash escapes (``co_getdelim``
    with ``\`` as escape); a ``\r`` before the end is dropped.
    """
    escaped = False
    for i, byte in enumerate(buf):
        if escaped:
            escaped = False
        elif byte == ord("\\"):
            escaped = True
        elif byte in b"\n;":
            line = bytes(buf[:i])
            return line.removesuffix(b"\r"), i + 1
    return None


def payload_pattern(line: bytes) -> bytes | None:
    """
    The line that ends this command's payload, or None when the line has no payload.

    Any version's rule switches to payload mode, escapes ignored: the line
    ends in ``<<`` (2.6, 2.8), its last blank-separated word starts with ``<<``
    and at most 7 more bytes (3.0's ``<<PATTERN``), or, on a master CLI line
    (``@...``) of 2.6 and 2.8, the first ``<<`` in the line is at its end.
    """
    last = line[max(line.rfind(b" "), line.rfind(b"\t")) + 1 :]
    if line.endswith(PAYLOAD):
        return b"" if last == PAYLOAD or not last.startswith(PAYLOAD) else last[2:]
    if last.startswith(PAYLOAD) and len(last) - len(PAYLOAD) < 8:  # 3.0: at most 7 bytes of pattern
        return last[2:]
    if line.startswith(b"@") and (at := line.find(PAYLOAD)) >= 0 and at + 2 == len(line):
        return b""
    return None


def words(line: bytes) -> list[bytes]:
    r"""
    Split a command line into arguments as ``cli_parse_request`` does.

    Words split on spaces and tabs; a backslash makes the next byte part of
    the word and is dropped (``\\`` gives one backslash); quotes, ``#`` and
    ``@`` mean nothing. The last raw word, when it is the ``<<PATTERN`` that
    opened a payload, is not an argument.
    """
    pattern = payload_pattern(line)
    args: list[bytes] = []
    i, end = 0, len(line)
    while i < end:
        while i < end and line[i] in _BLANKS:
            i += 1
        if i == end:
            break
        start, word = i, bytearray()
        while i < end and line[i] not in _BLANKS:
            if line[i] == ord("\\"):
                i += 1
                if i == end:  # a backslash ending the line escapes nothing: dropped
                    break
            word.append(line[i])
            i += 1
        if pattern is not None and i == end and line[start:] == PAYLOAD + pattern:
            break
        args.append(bytes(word))
    return args


class CommandReader:
    """Commands out of a byte stream: (raw line, payload or None, size in bytes)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def next_command(self) -> tuple[bytes, bytes | None, int] | None:
        """The next complete command, or None until more bytes arrive."""
        found = next_line(self.buf)
        if found is None:
            return None
        line, used = found
        pattern = payload_pattern(line)
        if pattern is None:
            del self.buf[:used]
            return line, None, used
        lines: list[bytes] = []
        pos = used
        while (nl := self.buf.find(b"\n", pos)) >= 0:
            part = bytes(self.buf[pos:nl]).removesuffix(b"\r")
            pos = nl + 1
            if part == pattern:
                del self.buf[:pos]
                return line, b"\n".join(lines), pos
            lines.append(part)
        return None


async def _read_command(
    reader: asyncio.StreamReader, commands: CommandReader
) -> tuple[bytes, bytes | None, int] | None:
    """One command, read as HAProxy reads it: its raw line, its payload and its size."""
    while (command := commands.next_command()) is None:
        chunk = await reader.read(65536)
        if not chunk:
            return None
        commands.buf += chunk
    return command


def _for_key(der: bytes, key_hex: str) -> bool:
    """Whether response ``der``'s CertID is exactly ``key_hex``, as HAProxy routes it."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
        req = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            resp.issuer_name_hash, resp.issuer_key_hash, resp.serial_number, resp.hash_algorithm
        )
    except ValueError:
        return False
    return cert_id_of(req.build().public_bytes(serialization.Encoding.DER)).hex() == key_hex


def _dump(der: bytes) -> str:
    """The bits of ``show ssl ocsp-response <key>`` that hastaple reads back."""
    single = ocsp.load_der_ocsp_response(der)
    return (
        "OCSP Response Data:\n"
        f"    Cert Status: {single.certificate_status.name.lower()}\n"
        f"    This Update: {_openssl_time(single.this_update_utc)}\n"
        f"    Next Update: {_openssl_time(single.next_update_utc)}\n"
    )


def _openssl_time(when: dt.datetime | None) -> str:
    return openssl_time(when) if when is not None else ""


class Threaded:
    """Run a ``FakeHAProxy`` on its own event loop in a thread (for sync and forked tests)."""

    def __init__(self, hap: FakeHAProxy) -> None:
        self.hap = hap
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeHAProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.hap.__aenter__(), self._loop).result(5)
        return self.hap

    def __exit__(self, *exc_info: object) -> None:
        coro = self.hap.__aexit__(None, None, None)
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


NOBODY, NOGROUP = 65534, 65534


def as_nobody(fn: Callable[[], str], *, timeout: float = 20.0) -> str:
    """
    Run ``fn`` in a forked child that dropped root for nobody:nogroup; return its string.

    A fork rather than ``setpriv python ...``: the interpreter may live where
    nobody cannot read it (/root/.pyenv), yet the kernel's permission checks on
    sockets and files are exactly those of an unprivileged process. An
    exception in ``fn`` comes back as ``"raised <type>: <message>"``.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOGROUP)
            os.setuid(NOBODY)
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which asserts
                result = f"raised {type(exc).__name__}: {exc}"
            os.write(write_end, result.encode("utf-8", "replace"))
        except BaseException:  # noqa: BLE001 - a child must never unwind into pytest
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the child has closed its pipe: it is exiting
    if waited[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        msg = "the unprivileged child did not finish"
        raise TimeoutError(msg)
    return b"".join(chunks).decode()
