"""
Push stored staples to every HAProxy socket while the rest are still being fetched.

The pipeline hands each staple over as soon as it is on disk; whenever a round
of ``ROUND`` certificates is waiting, it goes to every socket at once
(one ``deploy.Session`` per socket, one connection each). Deploying thus
overlaps fetching, and a run holds at most a few rounds of staples in memory
instead of all of them until the end. Each certificate's row then says what
every socket did with every name it is known by.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence

from hastaple.errors import HAProxyError
from hastaple.haproxy.deploy import CHUNK, DeployItem, DeployOutcome, Session
from hastaple.model import Action, ResultRow

# Certificates per round: deploy's own chunk, one pipelined exchange each.
ROUND = CHUNK
# Rounds waiting while one is pushed before producers are held back: bounds
# memory when HAProxy answers more slowly than responders do.
ROUNDS_WAITING = 4


@dataclasses.dataclass(frozen=True, slots=True)
class _Waiting:
    key: int
    row: ResultRow
    items: tuple[DeployItem, ...]


class Pusher:
    """Rounds of staples to every socket; ``done(key, row)`` gets each certificate's final row."""

    def __init__(self, sockets: Sequence[str], done: Callable[[int, ResultRow], None]) -> None:
        """
        Sessions for ``sockets``; nothing connects before the first round.

        Raises:
            ConfigError: a socket is not an address (before anything is fetched).
        """
        self._sessions = [(s, Session(s)) for s in sockets]
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
        per_socket = await asyncio.gather(*(_push_one(s, items) for _, s in self._sessions))
        for w in round_:
            results = {
                socket: [outcomes.get(item.crt) for item in w.items]
                for (socket, _), outcomes in zip(self._sessions, per_socket, strict=True)
            }
            self._done(w.key, _merge(w.row, results))


async def _push_one(session: Session, items: list[DeployItem]) -> dict[str, DeployOutcome | str]:
    try:
        outcomes = await session.push(items)
    except HAProxyError as exc:
        return {item.crt: str(exc) for item in items}
    return {o.crt: o for o in outcomes}


def _merge(row: ResultRow, results: dict[str, list[DeployOutcome | str | None]]) -> ResultRow:
    """One row from the outcomes of every name on every socket: any failure fails it."""
    haproxy: dict[str, str] = {}
    errors = []
    for sock, outcomes in results.items():
        methods = []
        for result in outcomes:
            if isinstance(result, str):
                errors.append(result)
            elif result is None or not result.ok:
                why = result.error if result else "no outcome"
                errors.append(f"haproxy {sock}: {why}")
            else:
                methods.append(result.method)
        ok = len(methods) == len(outcomes)
        haproxy[sock] = "+".join(dict.fromkeys(methods)) if ok else "error"
    if errors:
        error = "; ".join(dict.fromkeys(errors))
        return dataclasses.replace(row, action=Action.FAILED, error=error, haproxy=haproxy)
    action = Action.DEPLOYED if row.action is Action.FETCHED else row.action
    return dataclasses.replace(row, action=action, haproxy=haproxy)
