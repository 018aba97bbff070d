"""
The thin async transport to HAProxy's runtime API (asyncio streams).

One connection in prompt mode carries any number of commands (see
``protocol``); this module only moves bytes and maps socket failures to
``HAProxyUnreachable`` with a sentence naming the socket. Parsing is
``protocol``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from hastaple.errors import HAProxyUnreachable
from hastaple.haproxy import protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

CONNECT_TIMEOUT = 5.0  # seconds
_READ_CHUNK = 65536  # bytes


class Connection:
    """An open prompt-mode connection; use ``connect()`` to get one."""

    def __init__(
        self,
        address: protocol.Address,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        idle_timeout: float | None = None,
    ) -> None:
        self.address = address
        self.idle_timeout = idle_timeout
        self._reader = reader
        self._writer = writer
        self._replies = protocol.ReplyReader()
        self._unanswered = 0  # commands sent whose replies were not read yet

    @property
    def closed_by_peer(self) -> bool:
        """
        HAProxy closed the connection: a restart, 2.6 after an error, or ``stats timeout``.

        Seen even while nothing is being read: an idle connection's end of
        file is delivered to the reader as it arrives.
        """
        reader = self._reader
        return self._replies.at_eof or reader.at_eof() or reader.exception() is not None

    async def run(self, commands: Sequence[protocol.Command]) -> list[protocol.Reply]:
        """
        Send ``commands`` pipelined and return one reply per command, in order.

        Every command is encoded (and size-checked) before anything is sent.
        A connection closed early gives ``Reply(closed=True)`` for the rest.

        Raises:
            HAProxyCommandFailed: a command is too big to send.
            HAProxyUnreachable: the socket failed while talking.
        """
        data = b"".join(cmd.encode(self.address) for cmd in commands)
        self._write(data, len(commands))
        return [await self._next() for _ in commands]

    async def run_one(self, command: protocol.Command) -> protocol.Reply:
        """Send one command and return its reply (see ``run``)."""
        (reply,) = await self.run([command])
        return reply

    async def run_after_unanswered(
        self, commands: Sequence[protocol.Command]
    ) -> list[protocol.Reply]:
        """
        ``run``, after the replies of commands sent earlier and never read (dropped).

        For clean-up after a cancelled ``run``: HAProxy answers in order, so
        ``commands`` are handled after everything sent before them.
        """
        while self._unanswered:
            await self._next()
        return await self.run(commands)

    def _write(self, data: bytes, count: int) -> None:
        # Handed to the transport at once: it buffers what the socket does not
        # take and sends it as HAProxy reads, while we read the replies (no
        # drain to wait on, no deadlock on big batches), and a cancelled run
        # still knows what HAProxy will answer. A write error (EPIPE once
        # HAProxy closed) is handed to the reader: the next read raises it.
        with contextlib.suppress(OSError):
            self._writer.write(data)
        self._unanswered += count

    async def _next(self) -> protocol.Reply:
        while (reply := self._replies.next_reply()) is None:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await self._reader.read(_READ_CHUNK)
            except TimeoutError as exc:
                why = f"no answer within {self.idle_timeout:g} s"
                raise HAProxyUnreachable(self.address.text, why) from exc
            except OSError as exc:
                raise _unreachable(self.address, exc) from exc
            if chunk:
                self._replies.feed(chunk)
            else:
                self._replies.feed_eof()
        self._unanswered = max(0, self._unanswered - 1)
        return reply

    async def close(self) -> None:
        """Close the connection, ignoring errors (HAProxy may be gone)."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(
    socket: str | protocol.Address,
    *,
    timeout: float | None = 10.0,  # noqa: ASYNC109 - one budget for the whole session, per DESIGN
    idle_timeout: float | None = None,
) -> AsyncIterator[Connection]:
    """
    Open a prompt-mode connection; everything inside must finish within ``timeout`` s.

    ``idle_timeout`` bounds each wait for HAProxy instead (connecting, and
    every read of a reply): a batch of thousands of commands may take longer
    than any fixed budget while HAProxy keeps answering. None means no limit.

    Raises:
        ConfigError: ``socket`` is not an address.
        HAProxyUnreachable: no such socket, permission denied, refused, no
            answer in time, or a master CLI without a worker selector.
    """
    address = socket if isinstance(socket, protocol.Address) else protocol.parse_address(socket)
    limits = [t for t in (timeout, idle_timeout) if t is not None]
    try:
        async with asyncio.timeout(timeout):
            conn = await _open(address, min([*limits, CONNECT_TIMEOUT]), idle_timeout)
            try:
                reply = await conn.run_one(protocol.PROMPT)
                if reply.closed:
                    raise HAProxyUnreachable(address.text, "closed the connection at once")
                if reply.on_master and not address.prefix:
                    raise HAProxyUnreachable(address.text, protocol.MASTER_WITHOUT_WORKER)
                yield conn
            finally:
                await conn.close()
    except TimeoutError as exc:
        raise HAProxyUnreachable(address.text, f"no answer within {timeout:g} s") from exc


async def _open(address: protocol.Address, limit: float, idle_timeout: float | None) -> Connection:
    try:
        async with asyncio.timeout(limit):
            if address.abstract:
                reader, writer = await _open_abstract(address.path or "")
            elif address.path is not None:
                reader, writer = await asyncio.open_unix_connection(address.path)
            else:
                reader, writer = await asyncio.open_connection(address.host, address.port)
    except TimeoutError as exc:
        raise HAProxyUnreachable(address.text, f"could not connect within {limit:g} s") from exc
    except OSError as exc:
        raise _unreachable(address, exc) from exc
    return Connection(address, reader, writer, idle_timeout)


async def _open_abstract(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """
    Connect to an abstract unix socket through a socket of our own.

    uvloop refuses a name padded to the whole ``sun_path`` (EINVAL), which is
    how HAProxy binds ``abns@``; the kernel takes it from a plain socket.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)  # noqa: FBT003 - the socket API
        await asyncio.get_running_loop().sock_connect(sock, path)
        return await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


def _unreachable(address: protocol.Address, exc: OSError) -> HAProxyUnreachable:
    """Translate a socket error into one sentence naming the socket."""
    if isinstance(exc, FileNotFoundError):
        problem = "no such socket"
    elif isinstance(exc, PermissionError):
        problem = "permission denied"
    elif isinstance(exc, ConnectionRefusedError):
        problem = "connection refused (is HAProxy running?)"
    elif isinstance(exc, ConnectionResetError):
        problem = "connection reset by HAProxy"
    else:
        problem = exc.strerror or str(exc) or type(exc).__name__
    return HAProxyUnreachable(address.text, problem)
