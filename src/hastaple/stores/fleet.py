"""
The fleet client: staples, leases and announcements in one Redis (or Valkey).

The keys and the scripts are in ``layout`` (stable and documented). This
module is the connection: every call is bounded by ``timeout`` and answers
``None``/``DOWN`` instead of raising, because Redis is an optimisation, never a
dependency. The first failure logs one warning and marks the fleet down;
until the listener reconnects (backoff from 0.2 s to 5 s) calls return at
once instead of each waiting out a timeout. On reconnecting, ``on_resync``
is called, because pub/sub is lossy: whatever was announced meanwhile was
missed. The listener also beats: ``<prefix>nodes`` says who is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

import redis.asyncio as aredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from hastaple.config import FLEET_PREFIX
from hastaple.stores import layout
from hastaple.stores.layout import Entry, Lease, Publication, StapleKey, Stats
from hastaple.stores.redis_url import Address

__all__ = ["Entry", "Fleet", "Lease", "Publication", "StapleKey", "Stats"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = FLEET_PREFIX
# Seconds for each Redis call. Redis answers in well under a millisecond; the
# bound also covers this node's own event loop being busy (10,000 certificates
# on a loaded machine), which must not pass for an outage.
TIMEOUT = 2.0
HEARTBEAT = 5.0  # seconds between a node's heartbeats
SEEN_WITHIN = 60.0  # a node is "seen recently" when it beat this recently
_NODES_KEPT = 86_400  # heartbeats older than a day are dropped from the set
_BACKOFF = (0.2, 5.0)
_MAX_CONNECTIONS = 32  # commands at once; callers beyond wait (bounded) for a turn
_FAILURES = (RedisError, OSError, TimeoutError)


class Fleet:
    """One node's connection to the fleet; ``async with Fleet(...)`` or start()/close()."""

    def __init__(
        self,
        address: Address,
        *,
        prefix: str = DEFAULT_PREFIX,
        node: str | None = None,
        timeout: float = TIMEOUT,
        on_published: Callable[[StapleKey], None] | None = None,
        on_resync: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.prefix = prefix
        self.node = node or socket.gethostname()
        self.timeout = timeout
        self.on_published = on_published
        self.on_resync = on_resync
        self.on_beat: Callable[[], None] | None = None  # after each heartbeat (``status``)
        self.stats = Stats()
        # Nodes whose heartbeat is at most SEEN_WITHIN old, as of this node's last beat.
        self.seen: tuple[tuple[str, float], ...] = ()
        self.channel = f"{prefix}staples"
        self._up = False
        self._broken = asyncio.Event()  # a call failed: the listener reconnects
        self._ready = asyncio.Event()  # the first connection attempt is over
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        # Concurrency is bounded here rather than by redis-py's
        # BlockingConnectionPool, which deadlocks in 5.0 when a connect fails.
        self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        self._pool = aredis.ConnectionPool(
            connection_class=_connection_class(address),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # type: ignore[no-untyped-call, unused-ignore]  # our own backoff; redis-py 6 retries 3 times by default
            client_name=f"hastaple:{self.node}"[:100].replace(" ", "_"),
            **address.connection_kwargs(),
        )
        self._client = aredis.Redis(connection_pool=self._pool)
        self._publish = self._client.register_script(layout.PUBLISH)
        self._release = self._client.register_script(layout.RELEASE)
        self._lease = self._client.register_script(layout.LEASE)
        self._read_or_lease = self._client.register_script(layout.READ_OR_LEASE)

    @property
    def up(self) -> bool:
        """Whether the last exchange with Redis worked (``hastaple_fleet_up``)."""
        return self._up

    def key(self, kind: str, key: StapleKey) -> str:
        """The Redis key of ``kind`` ("staple" or "lease") for ``key``."""
        return f"{self.prefix}{kind}:{key.suffix}"

    # -- life cycle --------------------------------------------------------

    async def start(self) -> None:
        """Connect (bounded): a Redis that is down now is a warning, not an error."""
        self._listener = asyncio.create_task(self._listen(), name="fleet-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout * 3):
                await self._ready.wait()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._wake_all()
        with contextlib.suppress(*_FAILURES):
            await self._client.aclose()
        with contextlib.suppress(*_FAILURES):
            await self._pool.disconnect()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- staples and leases ----------------------------------------------

    async def read(self, key: StapleKey) -> Entry | None:
        """The entry for ``key``; None when there is none or Redis does not answer."""
        fields = await self._call(lambda r: r.hgetall(self.key("staple", key)))
        if fields is _DOWN or not fields:
            return None
        return _entry(fields.items())

    async def read_or_lease(
        self, key: StapleKey, seconds: float
    ) -> tuple[Lease | None, str, Entry | None]:
        """
        The entry for ``key`` if there is one, else an attempt at the lease: one round trip.

        Returns (None, "", entry) when there is an entry, else (``lease``'s
        answer, its token, None).
        """
        token = secrets.token_hex(16)
        keys = [self.key("staple", key), self.key("lease", key)]
        args: list[str | int] = [token, max(int(seconds * 1000), 1)]
        got = await self._call(lambda r: self._read_or_lease(keys=keys, args=args, client=r))
        if got is _DOWN:
            return Lease.DOWN, "", None
        if got[0] == 0:
            flat = list(got[1])
            return None, "", _entry(zip(flat[0::2], flat[1::2], strict=True))
        return (Lease.ACQUIRED, token, None) if got[0] == 1 else (Lease.HELD, "", None)

    async def lease(self, key: StapleKey, seconds: float, *, seen: str = "") -> tuple[Lease, str]:
        """
        Try to become the one node fetching ``key`` for ``seconds``; the token proves it.

        ``seen``: the ``this_update`` the entry claimed when read ("" for no
        entry); if it claims another now, the answer is ``CHANGED``.
        """
        token = secrets.token_hex(16)
        args: list[str | int] = [token, max(int(seconds * 1000), 1), seen]
        keys = [self.key("staple", key), self.key("lease", key)]
        got = await self._call(lambda r: self._lease(keys=keys, args=args, client=r))
        if got is _DOWN:
            return Lease.DOWN, ""
        return {1: (Lease.ACQUIRED, token), 2: (Lease.CHANGED, "")}.get(got, (Lease.HELD, ""))

    async def publish(
        self, key: StapleKey, staple: Publication, *, token: str = "", unusable: str = ""
    ) -> bool:
        """
        Store ``staple`` unless Redis holds one at least as new; release ``token``'s lease.

        ``unusable``: the ``this_update`` an entry claimed when this node found
        it unusable (forged, garbage, due); if it still claims that, it is
        overwritten whatever the claim. Returns whether the staple was stored
        (and announced).
        """
        args: list[bytes | str | int] = [
            staple.der, staple.this_update, staple.next_update,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), self.node, staple.url,
            staple.expire_at, self.channel, key.suffix, token, unusable,
        ]  # fmt: skip
        keys = [self.key("staple", key), self.key("lease", key)]
        stored = await self._call(lambda r: self._publish(keys=keys, args=args, client=r))
        if stored is _DOWN or not stored:
            return False
        self.stats.published += 1
        return True

    async def release(self, key: StapleKey, token: str) -> None:
        """Give up a lease (a failed fetch) if this node still holds it; waiters wake."""
        args = [token, self.channel, key.suffix]
        keys = [self.key("lease", key)]
        await self._call(lambda r: self._release(keys=keys, args=args, client=r))

    def expect(self, key: StapleKey) -> asyncio.Future[None]:
        """
        A future set when ``key`` is announced, the fleet goes down, or it comes back.

        Register it before asking for the lease, so an announcement that comes
        between that answer and the wait is not missed; ``forget`` it after.
        """
        fut = asyncio.get_running_loop().create_future()
        if not self._up:
            fut.set_result(None)
        self._waiters.setdefault(key.suffix, set()).add(fut)
        return fut

    def forget(self, key: StapleKey, fut: asyncio.Future[None]) -> None:
        """Drop a future from ``expect``."""
        waiting = self._waiters.get(key.suffix)
        if waiting is not None:
            waiting.discard(fut)
            if not waiting:
                del self._waiters[key.suffix]

    async def nodes_seen(self, within: float = SEEN_WITHIN) -> list[tuple[str, float]]:
        """The nodes whose heartbeat is at most ``within`` seconds old, with its time."""
        since = time.time() - within
        rows = await self._call(
            lambda r: r.zrangebyscore(f"{self.prefix}nodes", since, "+inf", withscores=True)
        )
        if rows is _DOWN or not rows:
            return []
        return [(bytes(name).decode(errors="replace"), float(at)) for name, at in rows]

    # -- plumbing ----------------------------------------------------------

    async def _call(self, fn: Callable[[aredis.Redis], Any]) -> Any:  # noqa: ANN401 - redis-py's own
        """
        One bounded Redis call; a failure marks the fleet down and answers ``_DOWN``.

        Typed ``Any`` as redis-py types its commands (``Awaitable[T] | T``);
        each caller checks for ``_DOWN`` before using the answer.
        """
        if not self._up:
            return _DOWN
        self.stats.round_trips += 1
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                return await fn(self._client)
        except ResponseError as exc:
            # Redis answered, but not as asked (a key of another type, an ACL
            # refusal): this call fails, the connection is fine.
            _warn_once(f"fleet: Redis refused a command: {exc}")
            return _DOWN
        except _FAILURES as exc:
            self._lost(exc)
            return _DOWN

    async def _listen(self) -> None:
        """Subscribe, beat, deliver announcements; reconnect with backoff after a failure."""
        delay, first = _BACKOFF[0], True
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self._client.pubsub()
            try:
                async with asyncio.timeout(self.timeout * 2):
                    if not first:
                        # The pool's connections died with the old server: each
                        # would fail once more, and count as a second outage.
                        await self._pool.disconnect()
                    await pubsub.subscribe(self.channel)
                    await self._beat()
                self._back(resync=not first)
                first, delay = False, _BACKOFF[0]
                next_beat = loop.time() + HEARTBEAT
                while not self._broken.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message.get("data"))
                    if loop.time() >= next_beat:
                        async with asyncio.timeout(self.timeout):
                            await self._beat()
                        next_beat = loop.time() + HEARTBEAT
            except _FAILURES as exc:
                self._lost(exc)
            finally:
                self._ready.set()
                with contextlib.suppress(*_FAILURES):
                    async with asyncio.timeout(self.timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            delay = min(delay * 2, _BACKOFF[1])

    async def _beat(self) -> None:
        """Say this node is alive; learn who else is (``seen``), in one round trip."""
        now = time.time()
        nodes = f"{self.prefix}nodes"
        self.stats.round_trips += 1
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(nodes, {self.node: now})
            pipe.zremrangebyscore(nodes, "-inf", now - _NODES_KEPT)
            pipe.zrangebyscore(nodes, now - SEEN_WITHIN, "+inf", withscores=True)
            *_, rows = await pipe.execute()
        self.seen = tuple((bytes(n).decode(errors="replace"), float(at)) for n, at in rows)
        if self.on_beat is not None:
            self.on_beat()

    def _deliver(self, data: object) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        key = StapleKey.parse(text)
        if key is None:
            _warn_once(f"fleet: ignored an announcement that names no staple: {text[:80]!r}")
            return
        for fut in self._waiters.pop(key.suffix, ()):
            if not fut.done():
                fut.set_result(None)
        if self.on_published is not None:
            self.on_published(key)

    def _back(self, *, resync: bool) -> None:
        was_down = not self._up
        self._up = True
        self._broken.clear()
        self._ready.set()
        if was_down and resync:
            logger.warning("fleet: Redis at %s is back; fleet mode resumes", self.address.display)
        if resync:
            self._wake_all()  # they re-read: what they waited for may have been missed
            if self.on_resync is not None:
                self.on_resync()

    def _lost(self, exc: BaseException) -> None:
        self._broken.set()
        if not self._up and self._ready.is_set():
            return  # the same outage: warned already
        self._up = False
        self.stats.outages += 1
        logger.warning(
            "fleet: Redis at %s does not answer (%s); each node staples by itself until it is back",
            self.address.display,
            _one_line(exc),
        )
        self._wake_all()

    def _wake_all(self) -> None:
        for waiting in self._waiters.values():
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()


class _Down:
    """The answer of a call Redis did not answer."""


_DOWN = _Down()
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned and len(_warned) < 1000:  # noqa: PLR2004 - a bound, not a number to tune
        _warned.add(message)
        logger.warning("%s", message)


def _entry(fields: Iterable[tuple[Any, Any]]) -> Entry:
    """An entry from a hash's fields (bytes); what is missing reads as empty."""
    got = {bytes(k).decode(errors="replace"): bytes(v) for k, v in fields}
    return Entry(
        der=got.get("der", b""),
        node=got.get("node", b"").decode(errors="replace")[:200],
        fetched_at=got.get("fetched_at", b"").decode(errors="replace")[:40],
        url=got.get("url", b"").decode(errors="replace")[:500],
        this_update=got.get("this_update", b"").decode(errors="replace")[:40],
    )


def _connection_class(
    address: Address,
) -> type[aredis.Connection | SSLConnection | UnixDomainSocketConnection]:
    if address.scheme == "unix":
        return UnixDomainSocketConnection
    if address.scheme == "rediss":
        return SSLConnection
    return aredis.Connection


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
