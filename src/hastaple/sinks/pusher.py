"""
Push stored staples to every HAProxy socket while the rest are still being fetched.

The pipeline hands each staple over as soon as it is on disk; whenever a round
of ``ROUND`` certificates is waiting, it goes to every socket at once
(one ``deploy.Session`` per socket, one connection each). Deploying thus
overlaps fetching, and a run holds at most a few rounds of staples in memory
instead of all of them until the end. Each certificate's row then says what
every socket did with every name it is known by.

Two sockets may reach one process (a unix and an ``ipv4@`` socket, a worker
socket and a master CLI's ``@1``). HAProxy holds one certificate transaction
at a time per process, so two sessions pushing to it would break each other's
transactions and leave certificates unstapled. Before every round each
socket's process is looked up (its ``show info``, read once per connection,
so a reload is noticed) and only the first socket of each process deploys;
the others are reported as its aliases. A socket below ``level admin`` never
deploys: it is an alias when it reaches a process an admin socket reaches, and
otherwise every row fails for it, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence

from hastaple.core.model import Action, ResultRow
from hastaple.errors import HAProxyError
from hastaple.haproxy.deploy import CHUNK, STORED, DeployItem, DeployOutcome, Process, Session

# Certificates per round: deploy's own chunk, one pipelined exchange each.
ROUND = CHUNK
# Rounds waiting while one is pushed before producers are held back: bounds
# memory when HAProxy answers more slowly than responders do.
ROUNDS_WAITING = 4
# The ``haproxy`` value of a socket that reaches a process another socket deployed to.
ALIAS = "alias"


@dataclasses.dataclass(frozen=True, slots=True)
class _Waiting:
    key: int
    row: ResultRow
    items: tuple[DeployItem, ...]


class Pusher:
    """Rounds of staples to every socket; ``done(key, row)`` gets each certificate's final row."""

    def __init__(
        self,
        sockets: Sequence[str],
        done: Callable[[int, ResultRow], None],
        *,
        below_admin: Mapping[str, str] | None = None,
    ) -> None:
        """
        Sessions for ``sockets``; nothing connects before the first round.

        ``below_admin`` maps sockets that cannot deploy to the reason.

        Raises:
            ConfigError: a socket is not an address (before anything is fetched).
        """
        self._below = {s: why for s, why in (below_admin or {}).items() if s not in sockets}
        self._sessions = [(s, Session(s)) for s in (*sockets, *self._below)]
        self._done = done
        self._waiting: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._finishing = False
        self._failure: BaseException | None = None  # a bug in a round: raised by finish

    async def add(self, key: int, row: ResultRow, items: tuple[DeployItem, ...]) -> None:
        """Queue one certificate's items; waits while too many are queued."""
        if self._failure is not None:
            raise self._failure
        self._waiting.append(_Waiting(key, row, items))
        self._start()
        while len(self._waiting) > ROUNDS_WAITING * ROUND and self._failure is None:
            self._room.clear()
            await self._room.wait()

    async def finish(self) -> None:
        """Push whatever is still waiting, then close every connection."""
        self._finishing = True
        try:
            self._start()
            if self._flusher is not None:
                await self._flusher
            if self._failure is not None:
                raise self._failure
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop pushing and close every connection (also after a failure or cancellation)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for _, session in self._sessions:
            await session.close()

    def _start(self) -> None:
        full = len(self._waiting) >= ROUND or (self._finishing and self._waiting)
        if full and self._flusher is None and self._failure is None:
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while len(self._waiting) >= ROUND or (self._finishing and self._waiting):
                round_, self._waiting = self._waiting[:ROUND], self._waiting[ROUND:]
                self._room.set()
                await self._push(round_)
        except Exception as exc:  # noqa: BLE001 - a bug: finish() raises it, producers stop
            self._failure = exc
            self._room.set()
        finally:
            self._flusher = None

    async def _push(self, round_: list[_Waiting]) -> None:
        items = [item for w in round_ for item in w.items]
        through = await _through(self._sessions, self._below)
        pushing = [
            (sock, session)
            for sock, session in self._sessions
            if through[sock] == sock and sock not in self._below
        ]
        done = await asyncio.gather(*(_push_one(session, items) for _, session in pushing))
        per_socket: dict[str, dict[str, DeployOutcome | str]] = dict(
            zip((sock for sock, _ in pushing), done, strict=True)
        )
        for sock, why in self._below.items():  # reaching no admin socket's process
            if through[sock] == sock:
                per_socket[sock] = {item.crt: f"haproxy {sock}: {why}" for item in items}
        aliases = {sock: first for sock, first in through.items() if first != sock}
        for w in round_:
            results = {
                sock: [outcomes.get(item.crt) for item in w.items]
                for sock, outcomes in per_socket.items()
            }
            self._done(w.key, _merge(w.row, results, aliases))


async def _through(
    sessions: Sequence[tuple[str, Session]], below_admin: Mapping[str, str]
) -> dict[str, str]:
    """
    Each socket -> the socket that deploys to its process (itself, or the first one).

    Only admin sockets deploy: one below admin is either an alias or on its
    own. A socket whose process is unknown (it cannot connect, or ``show
    info`` failed) stands for itself: its push then says what is wrong.
    """
    processes = await asyncio.gather(*(_process(session) for _, session in sessions))
    through: dict[str, str] = {}
    seen: list[tuple[Process, str]] = []
    for (sock, _), process in zip(sessions, processes, strict=True):
        first = None
        if process is not None:
            first = next((s for p, s in seen if p.same(process)), None)
            if first is None and sock not in below_admin:
                seen.append((process, sock))
        through[sock] = first or sock
    return through


async def _process(session: Session) -> Process | None:
    try:
        return await session.process()
    except HAProxyError:  # the push through this session fails with it, once
        return None


async def _push_one(session: Session, items: list[DeployItem]) -> dict[str, DeployOutcome | str]:
    try:
        outcomes = await session.push(items)
    except HAProxyError as exc:
        return {item.crt: str(exc) for item in items}
    return {o.crt: o for o in outcomes}


def _merge(
    row: ResultRow,
    results: dict[str, list[DeployOutcome | str | None]],
    aliases: dict[str, str],
) -> ResultRow:
    """One row from the outcomes of every name on every socket: any failure fails it."""
    haproxy: dict[str, str] = {}
    errors = []
    notes = []
    for sock, outcomes in results.items():
        methods = []
        for result in outcomes:
            if isinstance(result, str):  # the whole socket failed: the error names it
                errors.append(result)
            elif result is not None and result.method == STORED:
                # Renewed on disk, not loaded yet: the staple waits for the reload.
                notes.append(f"haproxy {sock}: {result.error}")
                methods.append(STORED)
            elif result is None or not result.ok:
                why = result.error if result else "no outcome"
                errors.append(f"haproxy {sock}: {why}")
            else:
                methods.append(result.method)
        ok = len(methods) == len(outcomes)
        haproxy[sock] = "+".join(dict.fromkeys(methods)) if ok else "error"
    haproxy.update(dict.fromkeys(aliases, ALIAS))
    if errors:
        error = "; ".join(dict.fromkeys(errors))
        return dataclasses.replace(
            row, action=Action.FAILED, error=error, haproxy=haproxy, aliases=aliases
        )
    action = Action.DEPLOYED if row.action is Action.FETCHED else row.action
    if notes:
        note = "; ".join(dict.fromkeys([*([row.note] if row.note else []), *notes]))
        return dataclasses.replace(
            row, action=Action.STORED, note=note, haproxy=haproxy, aliases=aliases
        )
    return dataclasses.replace(row, action=action, haproxy=haproxy, aliases=aliases)
