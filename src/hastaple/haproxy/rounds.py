"""
One connection's deployment: the fast path, transactions one at a time, the read-back.

``Run.chunk`` sends one round of pipelined commands and decides each item's
outcome; HAProxy's certificate lock is waited out within a budget.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hastaple.errors import (
    HAProxyCommandFailed,
    HAProxyUnreachable,
)
from hastaple.haproxy import client, protocol
from hastaple.haproxy.deployitem import STORED, DeployItem, DeployOutcome, Process
from hastaple.haproxy.readback import (
    NOT_SERVED,
    READ_BACK_FAILED,
    older_certificate,
    process_cwd,
    same_file,
    served_error,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


# Seconds to wait out HAProxy's certificate lock when no timeout is set.
LOCK_BUDGET = 10.0
# Aborts sent again while the lock holds, before a transaction is begun anew.
_ABORT_TRIES = 20


class Stale(Exception):  # noqa: N818 - a signal to deploy.Session, never leaves haproxy/
    """A reused connection was closed before HAProxy read the first command of a chunk."""


class Run:
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
            Stale: on a connection idle since its last chunk, HAProxy's idle
                timeout (``stats timeout``) closed it before reading any of
                this: the write failed, or the first reply is an empty close.
                The chunk holds only sets and shows (commits come later), so
                it is safe to send again.
        """
        try:
            replies = await self.conn.run(cmds)
        except HAProxyUnreachable as exc:
            if self._used and isinstance(exc.__cause__, BrokenPipeError | ConnectionResetError):
                raise Stale from exc
            raise
        if self._used and replies and replies[0].closed and not replies[0].text:
            raise Stale
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
            error = NOT_SERVED.format(item.crt)
        elif (older := older_certificate(item, info)) is not None:
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
                error = READ_BACK_FAILED.format(exc.problem)
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
                errors.append((i, READ_BACK_FAILED.format(refused)))
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
                error = READ_BACK_FAILED.format(exc.problem)
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
        unknown = [i for i, o in outcomes.items() if o.error == NOT_SERVED.format(items[i].crt)]
        if not unknown:
            return
        reply = await self.conn.run_one(protocol.SHOW_CERTS)
        names = protocol.parse_cert_names(reply)
        cwd = process_cwd(self.process)
        for i in unknown:
            crt = items[i].crt
            if same := same_file(crt, names, cwd):
                error = (
                    f"{NOT_SERVED.format(crt)} under that name; it serves that file as "
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
        return served_error(self.socket, item, cmd, reply, exact=self._der_read_back)


@dataclass(slots=True)
class _Open:
    """A certificate whose transaction parts were sent; ``replies`` once they are in."""

    index: int
    item: DeployItem
    parts: list[protocol.Command]
    replies: list[protocol.Reply] = field(default_factory=list)


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
