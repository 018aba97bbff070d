"""
Load validated OCSP responses into a running HAProxy, without a reload.

For each certificate (HAPROXY.md §0, §6): ``show ssl cert`` tells whether
HAProxy registered an OCSP entry for it. Registered: the fast path ``set ssl
ocsp-response``. Not registered (no ``.ocsp`` when HAProxy loaded it, the
pitfall): ``set ssl cert <crt>.ocsp <<`` (+ ``.issuer`` for a chainless PEM)
and ``commit ssl cert`` in one transaction, committed only when every part was
accepted. Then, because neither "updated" nor "Success!" proves a staple
(§0.5, §5.3), read back ``show ssl ocsp-response <key>`` and compare.

All of a socket's commands share one connection; one certificate's failure
never stops the others.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from hastaple.errors import HAProxyCommandFailed, HAProxyUnreachable
from hastaple.haproxy import client, protocol

if TYPE_CHECKING:
    from collections.abc import Sequence


# A restarting HAProxy removes and recreates its socket, and 2.6's master CLI
# refuses connections for a moment during a reload (HAPROXY.md §3g): worth a
# few quick retries. A timeout or "permission denied" is not retried.
RETRY_DELAYS = (0.2, 0.5, 1.0)  # seconds
_TRANSIENT = (ConnectionRefusedError, FileNotFoundError)


@dataclass(frozen=True, slots=True)
class DeployItem:
    """
    One validated response to load for one certificate.

    ``crt`` is the path as HAProxy names it; ``cert_id`` the DER CertID
    (``hastaple.ocsp.request.cert_id``); ``issuer_pem`` is sent as
    ``<crt>.issuer`` when the PEM has no chain.
    """

    crt: str
    der: bytes
    cert_id: bytes
    issuer_pem: bytes | None
    this_update: datetime
    next_update: datetime


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """What happened to one item: ``method`` is "update" (fast path) or "commit"."""

    crt: str
    ok: bool
    method: str
    error: str | None = None


async def deploy(
    socket: str,
    items: Sequence[DeployItem],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - one budget for the whole socket, per DESIGN
) -> list[DeployOutcome]:
    """
    Load every item into the HAProxy at ``socket``; one outcome per item, in order.

    Raises:
        ConfigError: ``socket`` is not an address.
        HAProxyUnreachable: the socket cannot be used at all (after retries
            when it is missing or refusing, as while HAProxy restarts); the
            caller turns it into one row per certificate.
    """
    address = protocol.parse_address(socket)
    for delay in RETRY_DELAYS:
        try:
            return await _deploy_once(address, items, timeout)
        except HAProxyUnreachable as exc:
            if not isinstance(exc.__cause__, _TRANSIENT):
                raise
        await asyncio.sleep(delay)
    return await _deploy_once(address, items, timeout)


async def _deploy_once(
    address: protocol.Address,
    items: Sequence[DeployItem],
    timeout: float,  # noqa: ASYNC109 - passed on to client.connect, as in deploy()
) -> list[DeployOutcome]:
    async with client.connect(address, timeout=timeout) as conn:
        return await _Run(conn, address).deploy(items)


class _Run:
    """One socket's deployment; outcomes are decided item by item."""

    def __init__(self, conn: client.Connection, address: protocol.Address) -> None:
        self.conn = conn
        self.socket = address.text

    async def deploy(self, items: Sequence[DeployItem]) -> list[DeployOutcome]:
        shows = [protocol.show_cert(item.crt) for item in items]
        replies = await self.conn.run(shows)
        outcomes: dict[int, DeployOutcome] = {}
        fast: list[int] = []
        for i, (item, cmd, reply) in enumerate(zip(items, shows, replies, strict=True)):
            try:
                info = protocol.parse_show_cert(self.socket, cmd, reply)
            except HAProxyCommandFailed as exc:
                outcomes[i] = DeployOutcome(item.crt, ok=False, method="update", error=str(exc))
                continue
            if info is None:
                error = f"HAProxy does not serve {item.crt}"
                outcomes[i] = DeployOutcome(item.crt, ok=False, method="update", error=error)
            elif info.ocsp_key is None:
                outcomes[i] = await self._commit(item)
            elif info.ocsp_key != item.cert_id.hex():
                error = (
                    f"HAProxy's OCSP key for {item.crt} is {info.ocsp_key}, not the response's "
                    f"CertID {item.cert_id.hex()} (another issuer?)"
                )
                outcomes[i] = DeployOutcome(item.crt, ok=False, method="update", error=error)
            else:
                fast.append(i)
        outcomes.update(await self._update([(i, items[i]) for i in fast]))
        done = [(i, items[i]) for i in sorted(outcomes) if outcomes[i].ok]
        for i, error in await self._read_back(done):
            outcomes[i] = DeployOutcome(
                items[i].crt, ok=False, method=outcomes[i].method, error=error
            )
        return [outcomes[i] for i in range(len(items))]

    async def _update(self, todo: list[tuple[int, DeployItem]]) -> dict[int, DeployOutcome]:
        """The fast path, pipelined: every item is independent of the others."""
        outcomes: dict[int, DeployOutcome] = {}
        cmds: list[tuple[int, DeployItem, protocol.Command]] = []
        for i, item in todo:
            try:
                cmd = protocol.set_ocsp_response(item.der)
                cmd.encode(self.conn.address)
            except HAProxyCommandFailed as exc:
                outcomes[i] = DeployOutcome(item.crt, ok=False, method="update", error=str(exc))
            else:
                cmds.append((i, item, cmd))
        replies = await self.conn.run([cmd for _, _, cmd in cmds])
        for (i, item, cmd), reply in zip(cmds, replies, strict=True):
            try:
                protocol.parse_set_ocsp_response(self.socket, cmd, reply)
            except HAProxyCommandFailed as exc:
                outcomes[i] = DeployOutcome(item.crt, ok=False, method="update", error=str(exc))
            else:
                outcomes[i] = DeployOutcome(item.crt, ok=True, method="update")
        return outcomes

    async def _commit(self, item: DeployItem) -> DeployOutcome:
        """The transaction path; commit only when every part was accepted, else abort."""
        parts = [protocol.set_cert_ocsp(item.crt, item.der)]
        if item.issuer_pem is not None:
            parts.append(protocol.set_cert_issuer(item.crt, item.issuer_pem))
        try:
            for cmd in parts:
                cmd.encode(self.conn.address)  # refuse before opening a transaction
            replies = await self.conn.run(parts)
            try:
                for cmd, reply in zip(parts, replies, strict=True):
                    protocol.parse_set_cert(self.socket, cmd, reply)
            except HAProxyCommandFailed:
                await self._abort(item.crt)
                raise
            commit = protocol.commit_cert(item.crt)
            protocol.parse_commit(self.socket, commit, await self.conn.run_one(commit))
        except HAProxyCommandFailed as exc:
            return DeployOutcome(item.crt, ok=False, method="commit", error=str(exc))
        return DeployOutcome(item.crt, ok=True, method="commit")

    async def _abort(self, crt: str) -> None:
        """
        Abort our own transaction on ``crt``; another one's is left alone.

        HAProxy refuses to abort a transaction on another certificate, so a
        failed ``set ssl cert`` because someone else's transaction is open
        cannot hurt it.
        """
        cmd = protocol.abort_cert(crt)
        try:
            protocol.parse_abort(self.socket, cmd, await self.conn.run_one(cmd))
        except HAProxyCommandFailed:
            return

    async def _read_back(self, done: list[tuple[int, DeployItem]]) -> list[tuple[int, str]]:
        """Check what HAProxy serves for each deployed item (§0.5): registered, same times."""
        cmds: list[protocol.Command] = []
        for _, item in done:
            cmds += [protocol.show_cert(item.crt), protocol.show_ocsp_response(item.cert_id.hex())]
        replies = await self.conn.run(cmds)
        errors: list[tuple[int, str]] = []
        for n, (i, item) in enumerate(done):
            try:
                error = self._compare(item, cmds[2 * n : 2 * n + 2], replies[2 * n : 2 * n + 2])
            except HAProxyCommandFailed as exc:
                error = f"HAProxy answered 'updated' but the read-back failed: {exc}"
            if error is not None:
                errors.append((i, error))
        return errors

    def _compare(
        self,
        item: DeployItem,
        cmds: list[protocol.Command],
        replies: list[protocol.Reply],
    ) -> str | None:
        info = protocol.parse_show_cert(self.socket, cmds[0], replies[0])
        if info is None or info.ocsp_key != item.cert_id.hex():
            return f"HAProxy answered 'updated' but {item.crt} has no OCSP entry (not registered)"
        served = protocol.parse_ocsp_response(self.socket, cmds[1], replies[1])
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


def _seconds(when: datetime) -> datetime:
    """OpenSSL prints whole seconds; compare at that precision."""
    return when.replace(microsecond=0)
