"""
Apply certificate changes to running HAProxy processes: the I/O around ``certload``.

One connection per process (two sockets into one process would fight over
HAProxy's single certificate transaction), one change after the other on
it. Each change is its own transaction: the parts are sent pipelined, the
commit only when every part was accepted (else the transaction is
aborted, and HAProxy keeps serving what it served), then the read-back of
what is now served. A reply "Operations on certificates are currently
locked!" (another client's commit) did nothing: the change is aborted and
sent again for up to ``LOCK_BUDGET`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hastaple.errors import HAProxyCommandFailed, HAProxyUnreachable
from hastaple.haproxy import certload, client, deploy, protocol
from hastaple.haproxy.certload import Add, CertFiles, Plan, Remove, Renew
from hastaple.haproxy.deploy import Process

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

LOCK_BUDGET = 10.0  # seconds
_LOCK_WAIT = 0.1  # seconds between tries while another client holds the lock


@dataclass(frozen=True, slots=True)
class Wanted:
    """
    A certificate file HAProxy should serve as it is on disk.

    ``crt_list`` and ``line`` say where a process that does not know the file
    yet inserts it (a crt-list file, or a ``crt`` directory, and the rest of
    its line); without them only processes serving it already are renewed.
    """

    files: CertFiles
    crt_list: str | None = None
    line: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    What one change did in one process: ``action`` "renewed", "added" or "removed".

    ``stapled`` says the read-back found our staple served with it.
    """

    crt: str
    action: str
    ok: bool
    stapled: bool = False
    error: str | None = None


class Loader:
    """One process's connection (``open_loader``): changes go one after the other."""

    def __init__(self, conn: client.Connection, info: protocol.Info | None) -> None:
        self.conn = conn
        self.socket = conn.address.text
        self._der = info is not None and protocol.shows_der(info.version)
        self.process = (
            None if info is None else Process(info.node, info.pid, time.time() - info.uptime_sec)
        )

    async def want(self, wanted: Wanted, *, again: bool = True) -> Outcome:
        """
        Renew ``wanted`` where it is served, else add it to its crt-list.

        ``again`` False leaves a file alone that HAProxy already serves in
        this version (same serial) with our staple's OCSP entry: "current".
        """
        crt = wanted.files.crt
        cmd = protocol.show_cert(crt)
        try:
            info = protocol.parse_show_cert(self.socket, cmd, await self.conn.run_one(cmd))
        except HAProxyCommandFailed as exc:
            return Outcome(crt, "renewed", ok=False, error=exc.problem)
        if info is not None and not again and _current(info, wanted.files):
            return Outcome(crt, "current", ok=True, stapled=wanted.files.staple is not None)
        if info is not None:
            return await self.apply(Renew(wanted.files))
        if wanted.crt_list is None:
            why = f"HAProxy does not serve {crt}, and no crt-list or directory names it"
            return Outcome(crt, "added", ok=False, error=why)
        crt_list = await self._crt_list_name(wanted.crt_list)
        return await self.apply(Add(wanted.files, crt_list, wanted.line))

    async def _crt_list_name(self, path: str) -> str:
        """
        How HAProxy names the crt-list file or directory ``path`` (``show ssl crt-list``).

        HAProxy keys a crt-list by the path its configuration wrote, relative
        to its working directory or not; ``add ssl crt-list`` needs that key.
        """
        reply = await self.conn.run_one(protocol.Command("show ssl crt-list"))
        names = [line.strip() for line in reply.text.splitlines() if line.strip()]
        same = deploy.same_file(path, names, deploy.process_cwd(self.process))
        return same[0] if same else path

    async def apply(self, change: certload.Change) -> Outcome:
        """Apply one change; retried while HAProxy's certificate lock is held elsewhere."""
        action = {Renew: "renewed", Add: "added", Remove: "removed"}[type(change)]
        plan = certload.plan(change, self.conn.address)
        if plan.refused is not None:
            return Outcome(plan.crt, action, ok=False, error=plan.refused)
        deadline = time.monotonic() + LOCK_BUDGET
        while True:
            error, locked = await (
                self._remove(plan) if isinstance(change, Remove) else self._commit(plan)
            )
            if error is not None and isinstance(change, Add):
                # A reload would not have the empty store ``new ssl cert`` made (nor
                # would a second try be able to make it): delete it while unused.
                await self.conn.run_one(
                    protocol.Command(f"del ssl cert {protocol.escape_arg(plan.crt)}")
                )
            if not locked or time.monotonic() > deadline:
                break
            await asyncio.sleep(_LOCK_WAIT)
        if error is not None or isinstance(change, Remove):
            return Outcome(plan.crt, action, ok=error is None, error=error)
        error = await self._read_back(change.files)
        stapled = error is None and change.files.staple is not None
        return Outcome(plan.crt, action, ok=error is None, stapled=stapled, error=error)

    async def _commit(self, plan: Plan) -> tuple[str | None, bool]:
        """Sets, then commit (+ abort: ends a failed commit's transaction), then ``after``."""
        crt = plan.crt
        replies = await self.conn.run([step.command for step in plan.sets])
        if any(protocol.locked(r) for r in replies):
            await self._abort(crt)
            return protocol.LOCKED, True
        for step, reply in zip(plan.sets, replies, strict=True):
            if (error := certload.check(self.socket, step, reply, crt)) is not None:
                await self._abort(crt)
                return error, False
        assert plan.commit is not None  # noqa: S101 - plan() gives every Renew/Add one
        commit, _ = await self.conn.run([plan.commit.command, protocol.abort_cert(crt)])
        if protocol.locked(commit):
            return protocol.LOCKED, True
        if (error := certload.check(self.socket, plan.commit, commit, crt)) is not None:
            return error, False
        return await self._steps(plan.after, crt)

    async def _remove(self, plan: Plan) -> tuple[str | None, bool]:
        """Refuse to empty a crt-list; delete its entry (if any), then the certificate."""
        assert isinstance(plan.change, Remove)  # noqa: S101 - only called for removals
        crt_list = plan.change.crt_list
        listing = await self.conn.run_one(
            protocol.Command(f"show ssl crt-list {protocol.escape_arg(crt_list)}")
        )
        entries = certload.crt_list_entries(listing.text)
        if (why := certload.removal_refused(plan.crt, crt_list, entries)) is not None:
            return why, False
        steps = plan.after if plan.crt in entries else plan.after[1:]
        return await self._steps(steps, plan.crt)

    async def _steps(self, steps: Sequence[certload.Step], crt: str) -> tuple[str | None, bool]:
        for step in steps:
            reply = await self.conn.run_one(step.command)
            if protocol.locked(reply):
                return protocol.LOCKED, True
            if (error := certload.check(self.socket, step, reply, crt)) is not None:
                return error, False
        return None, False

    async def _abort(self, crt: str) -> None:
        await self.conn.run_one(protocol.abort_cert(crt))

    async def _read_back(self, files: CertFiles) -> str | None:
        cmds = certload.read_back(files.crt, files.cert_id if files.staple else None, der=self._der)
        replies = await self.conn.run(cmds)
        return certload.judge_read_back(self.socket, files, cmds, replies, der=self._der)


def _current(info: protocol.CertInfo, files: CertFiles) -> bool:
    """Whether HAProxy serves ``files``' certificate, with an OCSP entry for its staple."""
    try:
        serial = int(info.serial or "", 16)
    except ValueError:
        return False
    if serial != files.serial:
        return False
    return files.cert_id is None or files.staple is None or info.ocsp_key == files.cert_id.hex()


@contextlib.asynccontextmanager
async def open_loader(
    socket: str,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - an idle limit per wait, as deploy's
) -> AsyncIterator[Loader]:
    """
    Connect to ``socket`` and read who answers (``show info``).

    Raises:
        ConfigError: ``socket`` is not an address.
        HAProxyUnreachable: the socket cannot be used.
    """
    async with client.connect(socket, timeout=None, idle_timeout=timeout) as conn:
        reply = await conn.run_one(protocol.SHOW_INFO)
        if (why := protocol.master_refusal(reply)) is not None:
            raise HAProxyUnreachable(socket, why)
        try:
            info: protocol.Info | None = protocol.parse_info(socket, protocol.SHOW_INFO, reply)
        except HAProxyCommandFailed:
            info = None
        yield Loader(conn, info)


async def load(
    sockets: Sequence[str],
    wanted: Sequence[Wanted],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - an idle limit per wait, as deploy's
    again: bool = True,
    removals: Sequence[Remove] = (),
) -> dict[str, list[Outcome] | str]:
    """
    Load every ``wanted`` file into each process behind ``sockets``.

    ``again`` False skips files a process already serves as they are;
    ``removals`` come after, one outcome each.

    Returns, per socket, one outcome per file, or a sentence: why the socket
    could not be used, or ``alias of <socket>`` when it reaches a process
    already handled through an earlier socket.
    """
    results: dict[str, list[Outcome] | str] = {}
    seen: list[tuple[Process, str]] = []
    async with contextlib.AsyncExitStack() as stack:
        loaders: list[Loader] = []
        for socket in sockets:
            try:
                loader = await stack.enter_async_context(open_loader(socket, timeout=timeout))
            except HAProxyUnreachable as exc:
                results[socket] = exc.problem
                continue
            proc = loader.process
            same = next((s for p, s in seen if proc is not None and p.same(proc)), None)
            if same is not None:
                results[socket] = f"alias of {same}"
                continue
            if proc is not None:
                seen.append((proc, socket))
            loaders.append(loader)

        async def one(loader: Loader) -> None:
            try:
                results[loader.socket] = [await loader.want(w, again=again) for w in wanted] + [
                    await loader.apply(r) for r in removals
                ]
            except HAProxyUnreachable as exc:
                results[loader.socket] = exc.problem

        async with asyncio.TaskGroup() as group:
            for loader in loaders:
                group.create_task(one(loader))
    return {socket: results[socket] for socket in sockets}
