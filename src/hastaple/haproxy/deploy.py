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
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

from cryptography.x509 import ocsp

from hastaple.core.ocsp import der
from hastaple.errors import (
    HAProxyCommandFailed,
    HAProxyError,
    HAProxyUnreachable,
    InvalidResponse,
)
from hastaple.haproxy import client, protocol

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


# A restarting HAProxy removes and recreates its socket, and 2.6's master CLI
# refuses connections for a moment during a reload (docs/haproxy.md): worth a
# few quick retries. A timeout or "permission denied" is not retried.
RETRY_DELAYS = (0.2, 0.5, 1.0)  # seconds
_TRANSIENT = (ConnectionRefusedError, FileNotFoundError)
# Certificates per pipelined round: bounds the commands and replies held at
# once (10,000 certificates held about 40 MB of read-back text in one batch).
CHUNK = 256
_READ_BACK_FAILED = "HAProxy answered 'updated' but the read-back failed: {}"
_NOT_SERVED = "HAProxy does not serve {}"
# Seconds to end the transactions of a round broken off by a cancellation.
ABANDON_TIMEOUT = 2.0
# Seconds to wait out HAProxy's certificate lock when no timeout is set.
LOCK_BUDGET = 10.0
# Aborts sent again while the lock holds, before a transaction is begun anew.
_ABORT_TRIES = 20


@dataclass(frozen=True, slots=True)
class DeployItem:
    """
    One validated response to load for one certificate.

    ``crt`` is the path as HAProxy names it; ``cert_id`` the DER CertID
    (``hastaple.core.ocsp.request.cert_id``); ``issuer_pem`` is sent as
    ``<crt>.issuer`` when the PEM has no chain.
    """

    crt: str
    der: bytes
    cert_id: bytes
    issuer_pem: bytes | None
    this_update: datetime
    next_update: datetime


@dataclass(frozen=True, slots=True)
class Process:
    """
    The HAProxy process behind a socket, from its ``show info``.

    Two sockets reach one process when node (the host name unless set), pid
    and start time agree: a unix and an ``ipv4@`` socket of one worker, or a
    worker socket and a master CLI's ``@1``. The start time is ours (now less
    ``Uptime_sec``), so it is compared within a few seconds; a pid is reused
    only by a later process, and containers' pids differ by node or start.
    """

    node: str
    pid: int
    started: float  # seconds since the epoch, as estimated here

    def same(self, other: Process) -> bool:
        """Whether ``other`` is this process."""
        return (self.node, self.pid) == (other.node, other.pid) and abs(
            self.started - other.started
        ) <= _START_SLACK


# Seconds two estimates of one process's start may differ by: Uptime_sec is
# whole seconds, read at two moments.
_START_SLACK = 2.5


# The method of an outcome whose file HAProxy serves in an older version: the
# staple is stored for the reload (or restart) that loads the new certificate.
STORED = "stored"


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """
    What happened to one item: ``method`` is "update" (fast path) or "commit".

    ``STORED`` (not ok): HAProxy serves another certificate from that file,
    an older one until its next reload; nothing was loaded.

    ``error`` is the problem alone; the caller names the socket.
    """

    crt: str
    ok: bool
    method: str
    error: str | None = None


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
        self._run: _Run | None = None
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
                except _Stale:  # closed while idle, just before this chunk: once more
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

    async def _connection(self) -> _Run:
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

    async def _connect(self) -> _Run:
        stack = contextlib.AsyncExitStack()
        async with stack:
            conn = await stack.enter_async_context(
                client.connect(self._address, timeout=None, idle_timeout=self._timeout)
            )
            info = await _show_info(conn)
            self._stack, self._run = stack.pop_all(), _Run(conn, self._address, info)
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


class _Stale(Exception):  # noqa: N818 - internal signal, never leaves this module
    """A reused connection was closed before HAProxy read the first command of a chunk."""


class _Run:
    """One connection's deployment; outcomes are decided item by item."""

    def __init__(
        self, conn: client.Connection, address: protocol.Address, info: protocol.Info | None
    ) -> None:
        self.conn = conn
        self.socket = address.text
        # The read-back form: base64 DER from 2.8 on (``show info``'s Version),
        # else, or when ``show info`` failed, the text dump.
        self._der_read_back = info is not None and protocol.shows_der(info.version)
        self.process = (
            None if info is None else Process(info.node, info.pid, time.time() - info.uptime_sec)
        )
        self._used = False  # a chunk went through: the connection has been idle since
        # Certificates whose transaction this run may have left open in HAProxy
        # while a round is in flight (HAProxy keeps it after the connection).
        self.maybe_open: list[str] = []

    async def chunk(self, items: Sequence[DeployItem]) -> list[DeployOutcome]:
        """
        Up to CHUNK items: the fast path and its read-back in one pipelined round.

        Per certificate ``set ssl ocsp-response``, then ``show ssl cert`` (is
        this file registered under our CertID? (docs/haproxy.md, "The pitfall:
        unregistered certificates"): registration is per
        file) and the read-back of what is served. A file that is not
        registered (the pitfall) takes the transaction path afterwards, and
        its own read-back. Chunks bound what is held at once (commands,
        replies, dumps) to a few hundred certificates.
        """
        outcomes: dict[int, DeployOutcome] = {}
        sent: list[tuple[int, list[protocol.Command]]] = []
        for i, item in enumerate(items):
            cmds = [
                protocol.set_ocsp_response(item.der),
                protocol.show_cert(item.crt),
                self._show_served(item),
            ]
            if (refused := self._refused(cmds)) is not None:
                outcomes[i] = DeployOutcome(item.crt, ok=False, method="update", error=refused)
            else:
                sent.append((i, cmds))
        replies = await self._send_fast([cmd for _, cmds in sent for cmd in cmds])
        replies = await self._unlocked([cmds for _, cmds in sent], replies)
        bare: list[tuple[int, DeployItem]] = []
        for n, (i, cmds) in enumerate(sent):
            item = items[i]
            try:
                outcome = self._updated(item, cmds, replies[3 * n : 3 * n + 3])
            except HAProxyCommandFailed as exc:
                outcome = DeployOutcome(item.crt, ok=False, method="update", error=exc.problem)
            if outcome is None:
                bare.append((i, item))
            else:
                outcomes[i] = outcome
        await self._name_served(items, outcomes)
        committed = await self._commit_unlocked(bare)
        outcomes.update(committed)
        done = [(i, items[i]) for i in sorted(committed) if committed[i].ok]
        for i, error in await self._read_back(done):
            outcomes[i] = DeployOutcome(items[i].crt, ok=False, method="commit", error=error)
        self._used = True
        return [outcomes[i] for i in range(len(items))]

    async def _send_fast(self, cmds: list[protocol.Command]) -> list[protocol.Reply]:
        """
        Send a chunk's sets and shows.

        Raises:
            _Stale: on a connection idle since its last chunk, HAProxy's idle
                timeout (``stats timeout``) closed it before reading any of
                this: the write failed, or the first reply is an empty close.
                The chunk holds only sets and shows (commits come later), so
                it is safe to send again.
        """
        try:
            replies = await self.conn.run(cmds)
        except HAProxyUnreachable as exc:
            if self._used and isinstance(exc.__cause__, BrokenPipeError | ConnectionResetError):
                raise _Stale from exc
            raise
        if self._used and replies and replies[0].closed and not replies[0].text:
            raise _Stale
        return replies

    def _updated(
        self, item: DeployItem, cmds: list[protocol.Command], replies: list[protocol.Reply]
    ) -> DeployOutcome | None:
        """
        The fast path's outcome from its three replies; None: not registered, commit it.

        A file HAProxy loaded without ``.ocsp`` answers the set with the
        pitfall text, or with "updated" when another file shares the CertID,
        and has no OCSP key either way.
        """
        info = protocol.parse_show_cert(self.socket, cmds[1], replies[1])
        error = None
        if info is None:
            error = _NOT_SERVED.format(item.crt)
        elif (older := _older_certificate(item, info)) is not None:
            return DeployOutcome(item.crt, ok=False, method=STORED, error=older)
        elif info.ocsp_key is None:
            return None
        elif info.ocsp_key != item.cert_id.hex():
            error = (
                f"HAProxy's OCSP key for {item.crt} is {info.ocsp_key}, not the response's "
                f"CertID {item.cert_id.hex()} (another issuer?)"
            )
        else:
            protocol.parse_set_ocsp_response(self.socket, cmds[0], replies[0])
            try:
                error = self._served_error(item, cmds[2], replies[2])
            except HAProxyCommandFailed as exc:
                error = _READ_BACK_FAILED.format(exc.problem)
        if error is not None:
            return DeployOutcome(item.crt, ok=False, method="update", error=error)
        return DeployOutcome(item.crt, ok=True, method="update")

    def _refused(self, cmds: Sequence[protocol.Command]) -> str | None:
        """
        Why one of ``cmds`` cannot be sent (too big, control character), or None.

        Checked per item, so that one bad name fails only its own certificate,
        not the batch (``Connection.run`` refuses a whole batch).
        """
        for cmd in cmds:
            try:
                cmd.encode(self.conn.address)
            except HAProxyCommandFailed as exc:
                return exc.problem
        return None

    async def _unlocked(
        self, groups: list[list[protocol.Command]], replies: list[protocol.Reply]
    ) -> list[protocol.Reply]:
        """
        ``replies`` to the flattened ``groups``, with every group that met the lock sent again.

        HAProxy refuses a certificate command with "Operations on certificates
        are currently locked!" while another client's commit holds the lock,
        having done nothing: the group (a set and the shows that read it back,
        no transaction) is sent again after a short pause, for up to the
        timeout; then the lock reply stands and fails its item.
        """
        replies = list(replies)
        starts = [sum(map(len, groups[:n])) for n in range(len(groups))]
        waits = _lock_waits(self.conn.idle_timeout)
        while locked := [
            n
            for n, cmds in enumerate(groups)
            if any(protocol.locked(r) for r in replies[starts[n] : starts[n] + len(cmds)])
        ]:
            if (wait := next(waits, None)) is None:
                break
            await asyncio.sleep(wait)
            again = await self.conn.run([cmd for n in locked for cmd in groups[n]])
            for n in locked:
                replies[starts[n] : starts[n] + len(groups[n])] = again[: len(groups[n])]
                again = again[len(groups[n]) :]
        return replies

    async def _commit_unlocked(
        self, todo: list[tuple[int, DeployItem]]
    ) -> dict[int, DeployOutcome]:
        """
        ``_commit``, with the certificates whose transaction met the lock done again.

        A locked ``set ssl cert`` or ``commit`` did nothing, but the rest of
        the pipelined transaction went on (an abort, the next certificate's
        parts, which may then find the first one's transaction still open):
        those certificates are aborted (until the lock lets go) and committed
        again, within the timeout.
        """
        outcomes = await self._commit(todo)
        waits = _lock_waits(self.conn.idle_timeout)
        while again := [(i, item) for i, item in todo if _met_lock(outcomes[i], todo)]:
            if (wait := next(waits, None)) is None:
                break
            await asyncio.sleep(wait)
            for _ in range(_ABORT_TRIES):
                aborts = await self.conn.run([protocol.abort_cert(item.crt) for _, item in again])
                if not any(protocol.locked(reply) for reply in aborts):
                    break
                await asyncio.sleep(wait)
            outcomes.update(await self._commit(again))
        return outcomes

    async def _commit(self, todo: list[tuple[int, DeployItem]]) -> dict[int, DeployOutcome]:
        """
        The transaction path, one certificate after the other, pipelined.

        HAProxy holds one transaction at a time: 2.8 refuses a ``set ssl cert``
        for a second certificate, and 2.6 files it into the open transaction
        of the first (both measured). So each write ends the previous
        certificate's transaction (commit when every part was accepted, else
        abort) and then opens the next one's: n certificates take n + 1 round
        trips, not 2-3 each. Every commit is followed by an abort of the same
        certificate, which answers "No ongoing transaction!" after a commit
        that consumed it, and otherwise keeps a failed commit's transaction
        from swallowing the next certificate's parts.
        """
        outcomes: dict[int, DeployOutcome] = {}
        queue: list[_Open] = []
        for i, item in todo:
            parts = [protocol.set_cert_ocsp(item.crt, item.der)]
            if item.issuer_pem is not None:
                parts.append(protocol.set_cert_issuer(item.crt, item.issuer_pem))
            if (refused := self._refused(parts)) is not None:  # before opening a transaction
                outcomes[i] = DeployOutcome(item.crt, ok=False, method="commit", error=refused)
            else:
                queue.append(_Open(i, item, parts))
        previous: _Open | None = None
        for current in [*queue, None]:
            ending = self._ending(previous) if previous is not None else []
            opening = current.parts if current is not None else []
            self.maybe_open = [t.item.crt for t in (previous, current) if t is not None]
            replies = await self.conn.run([*ending, *opening])
            if previous is not None:
                outcomes[previous.index] = self._ended(previous, ending, replies[: len(ending)])
            if current is not None:
                current.replies = replies[len(ending) :]
            previous = current
        self.maybe_open = []
        return outcomes

    def _ending(self, txn: _Open) -> list[protocol.Command]:
        """Commit + abort when every part of ``txn`` was accepted, else only abort."""
        abort = protocol.abort_cert(txn.item.crt)
        if self._part_error(txn) is not None:
            return [abort]
        return [protocol.commit_cert(txn.item.crt), abort]

    def _ended(
        self, txn: _Open, ending: list[protocol.Command], replies: list[protocol.Reply]
    ) -> DeployOutcome:
        """The outcome of ``txn`` once its ending's replies are in (abort replies are moot)."""
        crt = txn.item.crt
        error = self._part_error(txn)
        if error is None:
            try:
                protocol.parse_commit(self.socket, ending[0], replies[0])
            except HAProxyCommandFailed as exc:
                error = exc.problem
        if error is not None:
            return DeployOutcome(crt, ok=False, method="commit", error=error)
        return DeployOutcome(crt, ok=True, method="commit")

    def _part_error(self, txn: _Open) -> str | None:
        """Why a ``set ssl cert`` part of ``txn`` was not accepted for its own certificate."""
        for cmd, reply in zip(txn.parts, txn.replies, strict=True):
            try:
                protocol.parse_set_cert(self.socket, cmd, reply)
            except HAProxyCommandFailed as exc:
                return exc.problem
            if not reply.text.strip().endswith(f" for certificate {txn.item.crt}!"):
                # HAProxy 2.6 puts it into another certificate's open transaction.
                why = (
                    f"HAProxy filed it under another open transaction ({reply.text.strip()}); "
                    "abort that transaction ('abort ssl cert <crt>') if it is stale"
                )
                return HAProxyCommandFailed(self.socket, str(cmd), why).problem
        return None

    async def _read_back(self, done: list[tuple[int, DeployItem]]) -> list[tuple[int, str]]:
        """
        Check what HAProxy serves for each committed item: registered, ours.

        docs/haproxy.md, "What HAProxy checks, and what it does not".
        """
        errors: list[tuple[int, str]] = []
        checks: list[tuple[int, DeployItem, list[protocol.Command]]] = []
        for i, item in done:
            cmds = [protocol.show_cert(item.crt), self._show_served(item)]
            if (refused := self._refused(cmds)) is not None:
                errors.append((i, _READ_BACK_FAILED.format(refused)))
            else:
                checks.append((i, item, cmds))
        replies = await self.conn.run([cmd for _, _, cmds in checks for cmd in cmds])
        replies = await self._unlocked([cmds for _, _, cmds in checks], replies)
        for n, (i, item, cmds) in enumerate(checks):
            try:
                info = protocol.parse_show_cert(self.socket, cmds[0], replies[2 * n])
                if info is None or info.ocsp_key != item.cert_id.hex():
                    error: str | None = (
                        f"HAProxy answered 'updated' but {item.crt} has no OCSP entry "
                        "(not registered)"
                    )
                else:
                    error = self._served_error(item, cmds[1], replies[2 * n + 1])
            except HAProxyCommandFailed as exc:
                error = _READ_BACK_FAILED.format(exc.problem)
            if error is not None:
                errors.append((i, error))
        return errors

    async def _name_served(
        self, items: Sequence[DeployItem], outcomes: dict[int, DeployOutcome]
    ) -> None:
        """
        For a name HAProxy does not know, say under which name it serves that file.

        HAProxy names a certificate by the path as its configuration wrote it
        (``crt/site.pem`` relative to its working directory, or with a
        crt-base), so an absolute path given by hand (a certbot hook) may be
        the same file under another name.
        """
        unknown = [i for i, o in outcomes.items() if o.error == _NOT_SERVED.format(items[i].crt)]
        if not unknown:
            return
        reply = await self.conn.run_one(protocol.SHOW_CERTS)
        names = protocol.parse_cert_names(reply)
        cwd = process_cwd(self.process)
        for i in unknown:
            crt = items[i].crt
            if same := same_file(crt, names, cwd):
                error = (
                    f"{_NOT_SERVED.format(crt)} under that name; it serves that file as "
                    f"{' and '.join(same)}: give that path"
                )
                outcomes[i] = DeployOutcome(crt, ok=False, method="update", error=error)

    def _show_served(self, item: DeployItem) -> protocol.Command:
        """The read-back of the response served for ``item``'s CertID (2.8: base64 DER)."""
        if self._der_read_back:
            return protocol.show_ocsp_response_der(item.cert_id.hex())
        return protocol.show_ocsp_response(item.cert_id.hex())

    def _served_error(
        self, item: DeployItem, cmd: protocol.Command, reply: protocol.Reply
    ) -> str | None:
        """Why what HAProxy serves for ``item``'s CertID is not ``item``, or None."""
        if self._der_read_back:  # 2.8: the exact bytes
            return _compare_der(item, protocol.parse_ocsp_response_der(self.socket, cmd, reply))
        served = protocol.parse_ocsp_response(self.socket, cmd, reply)
        want = (_seconds(item.this_update), _seconds(item.next_update))
        got = (served.this_update, served.next_update)
        if served.cert_status != "good" or got != want:
            next_update = served.next_update.isoformat() if served.next_update else "none"
            return (
                f"HAProxy answered 'updated' but serves status {served.cert_status}, "
                f"thisUpdate {served.this_update.isoformat()}, nextUpdate {next_update} "
                f"for {item.crt} (expected good, {want[0].isoformat()}, {want[1].isoformat()})"
            )
        return None


@dataclass(slots=True)
class _Open:
    """A certificate whose transaction parts were sent; ``replies`` once they are in."""

    index: int
    item: DeployItem
    parts: list[protocol.Command]
    replies: list[protocol.Reply] = field(default_factory=list)


def _compare_der(item: DeployItem, served_der: bytes) -> str | None:
    """Why what HAProxy 2.8 serves (base64 read-back) is not ``item``, or None."""
    if served_der != item.der:
        return (
            f"HAProxy answered 'updated' but serves another response for {item.crt} "
            f"({len(served_der)} bytes, not the {len(item.der)} bytes sent)"
        )
    # Ours, byte for byte: the times are ours too, but a staple must be good.
    try:
        status = ocsp.load_der_ocsp_response(served_der).certificate_status
    except ValueError as exc:
        return f"HAProxy answered 'updated' but serves an unreadable response: {exc}"
    if status is not ocsp.OCSPCertStatus.GOOD:
        return (
            f"HAProxy answered 'updated' but serves status {status.name.lower()} "
            f"for {item.crt} (expected good)"
        )
    return None


def _lock_waits(budget: float | None) -> Iterator[float]:
    """Pauses before sending again what met the lock: 50 ms doubling to 1 s, within ``budget``."""
    left, wait = LOCK_BUDGET if budget is None else budget, 0.05
    while left > 0:
        yield min(wait, left)
        left -= wait
        wait = min(2 * wait, 1.0)


def _met_lock(outcome: DeployOutcome, todo: Sequence[tuple[int, DeployItem]]) -> bool:
    """
    Whether a transaction failed only because of the lock.

    It met the lock itself, or it found another of these certificates'
    transactions still open (2.8: "is about '<crt>'", 2.6: filed under
    "... for certificate <crt>!"), whose abort met the lock.
    """
    error = outcome.error or ""
    if outcome.ok:
        return False
    if protocol.LOCKED in error:
        return True
    others = [item.crt for _, item in todo if item.crt != outcome.crt]
    return any(f"is about '{crt}'" in error or f"for certificate {crt}!" in error for crt in others)


def process_cwd(process: Process | None) -> Path | None:
    """HAProxy's working directory, when it runs on this host and we may look."""
    if process is None:
        return None
    try:
        return Path(f"/proc/{process.pid}/cwd").readlink()
    except OSError:
        return None


def same_file(crt: str, names: Sequence[str], cwd: Path | None) -> list[str]:
    """
    The names in ``names`` that are the file ``crt``.

    A relative name is HAProxy's working directory's: with it known (same
    host) the files are compared; without it, a relative name matches when
    it ends ``crt``'s path.
    """
    want = Path(crt).resolve()
    same = []
    for name in names:
        if Path(name).is_absolute() or cwd is not None:
            if (Path(cwd or "/") / name).resolve() == want:
                same.append(name)
        elif str(want).endswith(os.sep + os.path.normpath(name)):
            same.append(name)
    return same


def _older_certificate(item: DeployItem, info: protocol.CertInfo) -> str | None:
    """
    Why HAProxy serves another certificate from ``item``'s file (renewed on disk), or None.

    The CertID ends with the certificate's serial; ``show ssl cert`` prints
    the served one. A different serial is the certificate HAProxy loaded
    before the file was renewed: our staple cannot go to it (a commit of the
    new ``.ocsp`` onto the old PEM fails: "Certificate ID does not match").
    """
    if info.serial is None:
        return None
    try:
        served = int(info.serial, 16)
    except ValueError:
        return None
    ours = cert_id_serial(item.cert_id)
    if ours is None or served == ours:
        return None
    return (
        f"HAProxy serves an older certificate from {item.crt} (serial {info.serial}, the file "
        f"now holds {ours:X}) until its next reload, which loads the new one with this staple"
    )


def cert_id_serial(cert_id: bytes) -> int | None:
    """The serial number inside a DER CertID, or None when it does not parse."""
    try:
        _, start, end = der.element(cert_id)
        tag, _, content, stop = der.children(cert_id, start, end)[-1]
    except (InvalidResponse, IndexError):
        return None
    return int.from_bytes(cert_id[content:stop], "big") if tag == _INTEGER else None


_INTEGER = 0x02


def _seconds(when: datetime) -> datetime:
    """OpenSSL prints whole seconds; compare at that precision."""
    return when.replace(microsecond=0)
