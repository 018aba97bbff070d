"""
Load validated OCSP responses into a running HAProxy, without a reload.

For each certificate (docs/haproxy.md), in one pipelined round: the fast
path ``set ssl ocsp-response``, then ``show ssl cert`` (is this file
registered, under our CertID?) and the read-back of the served response, on
2.8 ``show ssl ocsp-response base64 <key>`` compared byte for byte, on older
versions (``show info``'s Version) the text dump compared on status and
times; neither "updated" nor "Success!" proves a staple (docs/haproxy.md,
"What HAProxy checks, and what it does not"). A file
HAProxy loaded without ``.ocsp`` (the pitfall) has no OCSP key: it then takes
``set ssl cert <crt>.ocsp <<`` (+ ``.issuer`` for a chainless PEM) and
``commit ssl cert`` in one transaction, committed only when every part was
accepted, and is read back the same way.

All of a socket's commands share one connection (``Session``), CHUNK
certificates per round; the transactions go one certificate after the other
(HAProxy holds only one at a time), each write closing one and opening the
next. One certificate's failure, a name that cannot be sent included, never
stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Self

from hastaple.errors import (
    HAProxyCommandFailed,
    HAProxyError,
    HAProxyUnreachable,
)
from hastaple.haproxy import client, protocol
from hastaple.haproxy.deployitem import CHUNK, STORED, DeployItem, DeployOutcome, Process
from hastaple.haproxy.readback import cert_id_serial, process_cwd, same_file
from hastaple.haproxy.rounds import LOCK_BUDGET, Run, Stale

if TYPE_CHECKING:
    from collections.abc import Sequence


# A restarting HAProxy removes and recreates its socket, and 2.6's master CLI
# refuses connections for a moment during a reload (docs/haproxy.md): worth a
# few quick retries. A timeout or "permission denied" is not retried.
RETRY_DELAYS = (0.2, 0.5, 1.0)  # seconds
_TRANSIENT = (ConnectionRefusedError, FileNotFoundError)
# Seconds to end the transactions of a round broken off by a cancellation.
ABANDON_TIMEOUT = 2.0

__all__ = [
    "ABANDON_TIMEOUT",
    "CHUNK",
    "LOCK_BUDGET",
    "RETRY_DELAYS",
    "STORED",
    "DeployItem",
    "DeployOutcome",
    "Process",
    "Session",
    "cert_id_serial",
    "deploy",
    "process_cwd",
    "same_file",
]


async def deploy(
    socket: str,
    items: Sequence[DeployItem],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - an idle limit per wait, not a budget
) -> list[DeployOutcome]:
    """
    Load every item into the HAProxy at ``socket``; one outcome per item, in order.

    ``timeout`` bounds each wait for HAProxy (connecting, every read of a
    reply), not the whole socket: thousands of certificates to commit on a
    first run take longer than any fixed budget while HAProxy keeps answering,
    and a budget hit half-way would fail every row after partial commits.

    Raises:
        ConfigError: ``socket`` is not an address.
        HAProxyUnreachable: the socket cannot be used at all (after retries
            when it is missing or refusing, as while HAProxy restarts); the
            caller turns it into one row per certificate.
    """
    async with Session(socket, timeout=timeout) as session:
        await session.open()
        return await session.push(items)


class Session:
    """
    One socket for a whole run: batches are pushed as they become ready.

    The pipeline pushes each group of staples as soon as it is stored, so
    deploying overlaps fetching and no run holds every staple until the end.
    All pushes share one connection. One HAProxy closed while it was idle
    (``stats timeout``) is replaced, and a round it lost unread is sent
    again. When HAProxy drops it during a round, that round fails and the
    next one reconnects; when connecting fails, after the retries, every
    later push fails at once with the same error instead of waiting out the
    retries again.
    """

    def __init__(self, socket: str, *, timeout: float = 10.0) -> None:
        """
        A session with the HAProxy at ``socket``; ``timeout`` as in ``deploy``.

        Raises:
            ConfigError: ``socket`` is not an address.
        """
        self._address = protocol.parse_address(socket)
        self._timeout = timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._run: Run | None = None
        self._dead: HAProxyUnreachable | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """
        Connect now (a push connects when needed).

        Raises:
            HAProxyUnreachable: as ``push``.
        """
        await self._connection()

    async def process(self) -> Process | None:
        """
        The process behind the socket now (connecting if needed); None if ``show info`` failed.

        Raises:
            HAProxyUnreachable: as ``push``.
        """
        return (await self._connection()).process

    async def push(self, items: Sequence[DeployItem]) -> list[DeployOutcome]:
        """
        Load ``items``, CHUNK certificates per pipelined round; one outcome per item.

        Raises:
            HAProxyUnreachable: the socket cannot be used, or the connection
                was lost during this push (outcomes of this push unknown).
        """
        if not items:
            return []
        outcomes: list[DeployOutcome] = []
        try:
            for start in range(0, len(items), CHUNK):
                chunk = items[start : start + CHUNK]
                run = await self._connection()
                try:
                    outcomes += await run.chunk(chunk)
                except Stale:  # closed while idle, just before this chunk: once more
                    await self.close()
                    outcomes += await (await self._connection()).chunk(chunk)
        except BaseException:
            # Replies may still be in flight: never reuse the connection, and
            # end any transaction a cancelled round left open (HAProxy holds
            # one at a time: it would block every later commit). Shielded: a
            # second cancellation propagates from here at once, and the
            # clean-up finishes by itself within its time limit.
            await asyncio.shield(asyncio.ensure_future(self._abandon()))
            raise
        return outcomes

    async def _abandon(self) -> None:
        """Abort the transactions a broken-off round may have left open, then close."""
        # Detached first: a push made meanwhile opens its own connection.
        stack, run, self._stack, self._run = self._stack, self._run, None, None
        try:
            if run is not None and run.maybe_open and not run.conn.closed_by_peer:
                aborts = [protocol.abort_cert(crt) for crt in run.maybe_open]
                with contextlib.suppress(HAProxyError, TimeoutError):
                    async with asyncio.timeout(ABANDON_TIMEOUT):
                        await run.conn.run_after_unanswered(aborts)
        finally:
            if stack is not None:
                await stack.aclose()

    async def close(self) -> None:
        """Close the connection, if any; a later push opens a new one."""
        stack, self._stack, self._run = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _connection(self) -> Run:
        if self._run is not None and self._run.conn.closed_by_peer:
            # HAProxy ends a connection idle for its ``stats timeout`` (10 s by
            # default): fetching the next round can take longer than that.
            await self.close()
        if self._run is not None:
            return self._run
        if self._dead is not None:
            raise self._dead
        try:
            for delay in RETRY_DELAYS:
                try:
                    return await self._connect()
                except HAProxyUnreachable as exc:
                    if not isinstance(exc.__cause__, _TRANSIENT):
                        raise
                await asyncio.sleep(delay)
            return await self._connect()
        except HAProxyUnreachable as exc:
            self._dead = exc
            raise

    async def _connect(self) -> Run:
        stack = contextlib.AsyncExitStack()
        async with stack:
            conn = await stack.enter_async_context(
                client.connect(self._address, timeout=None, idle_timeout=self._timeout)
            )
            info = await _show_info(conn)
            self._stack, self._run = stack.pop_all(), Run(conn, self._address, info)
        return self._run


async def _show_info(conn: client.Connection) -> protocol.Info | None:
    """
    ``show info`` of a new connection: who answers, and its version.

    Raises:
        HAProxyUnreachable: a master CLI whose worker selector names no worker
            (or that answers with its help): nothing on it can deploy.
    """
    reply = await conn.run_one(protocol.SHOW_INFO)
    if (why := protocol.master_refusal(reply)) is not None:
        raise HAProxyUnreachable(conn.address.text, why)
    try:
        return protocol.parse_info(conn.address.text, protocol.SHOW_INFO, reply)
    except HAProxyCommandFailed:
        return None  # any other failure shows up in the replies that follow
