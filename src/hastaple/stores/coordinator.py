"""
One CA request per certificate per refresh, fleet-wide, and no trust in Redis.

The pipeline asks ``Coordinator.obtain`` where it would ask the CA. In order:

1. a fresh, valid entry in the fleet is used as it is: no CA request;
2. otherwise the node takes the lease (``SET NX PX``, only while the entry
   still claims what the node read: a staple stored in between is read, not
   fetched again) and asks the CA; the validated answer is stored (never over
   a newer one) and announced, and the lease is released in the same step;
3. a node that finds the lease held waits for the announcement, at most
   ``wait`` seconds, reads again, and on a miss tries the lease again (its
   holder may have died: the lease expired meanwhile), three rounds in all,
   before asking the CA itself.

Every entry goes through the same ``check`` the pipeline uses on a CA's answer
(signature, signer, CertID, times, HAProxy's margins), with the node's own
certificate and issuer. One that fails, or is older than the staple the node
holds, is logged once and ignored, and the node asks the CA; its answer then
replaces the bad entry. So whoever can write to Redis can make nodes ask the
CA (what they do without a fleet), never get a bad staple served. Redis being
down, slow or refusing is the same: ``obtain`` asks the CA, as standalone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.x509 import ocsp

from hastaple.core import schedule
from hastaple.core.model import Status, Verdict, rfc3339
from hastaple.errors import HastapleError
from hastaple.stores import redis_url
from hastaple.stores.fleet import Entry, Fleet, Lease, Publication, StapleKey

logger = logging.getLogger(__name__)

LEASE_SECONDS = 30.0  # two fetch timeouts: a live holder keeps it, a dead one frees it soon
_USABLE = frozenset({Status.GOOD, Status.REVOKED})  # a signed revocation is news for everyone
_LOGGED_MAX = 100_000  # rejected entries remembered for "log once"
# Lease attempts before asking the CA regardless: a changed entry, a wait for a
# live holder, a wait for a dead one's lease to expire.
_ROUNDS = 3


class Reply(Protocol):
    """A CA's answer as the fetcher gives it (``engine.fetch.OCSPReply``), not yet validated."""

    @property
    def der(self) -> bytes: ...  # noqa: D102
    @property
    def url(self) -> str: ...  # noqa: D102
    @property
    def max_age(self) -> int | None: ...  # noqa: D102
    @property
    def elapsed(self) -> float: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class Obtained:
    """A validated response, where it came from, and the CA exchange's hints (if any)."""

    der: bytes
    verdict: Verdict
    source: str  # "fleet" or "ca"
    node: str = ""  # who fetched it, for a fleet entry
    max_age: int | None = None
    elapsed: float | None = None


class Coordinator:
    """Decide, per certificate, whether to take the fleet's staple, fetch it, or wait."""

    def __init__(
        self, fleet: Fleet, *, lease: float = LEASE_SECONDS, wait: float | None = None
    ) -> None:
        self.fleet = fleet
        self.lease = lease
        self.wait = lease if wait is None else wait
        self._logged: set[tuple[str, bytes]] = set()
        # Certificate name -> the node that fetched the staple it has now
        # (the pipeline notes it; ``status`` shows it).
        self.fetched_by: dict[str, str] = {}

    async def obtain(
        self,
        request_der: bytes,
        *,
        check: Callable[[bytes], Verdict],
        ask_ca: Callable[[], Awaitable[Reply]],
        now: dt.datetime,
        held: Verdict | None = None,
        force: bool = False,
    ) -> Obtained:
        """
        A validated response for the certificate of ``request_der``.

        Args:
            request_der: the OCSP request the CA would be sent (its CertID names the entry).
            check: the pipeline's validator for this certificate; raises on a bad response.
            ask_ca: sends the request to the CA.
            now: the time entries are judged at.
            held: the staple the node has now, if valid: an older entry is refused.
            force: ask the CA now (``fetch --force``), then share the answer.

        Raises:
            Whatever ``ask_ca`` and ``check`` raise for the CA's own answer.
        """
        key = key_of(request_der)
        if force:
            return await self._from_ca(key, ask_ca, check, token="", unusable="")
        fleet = self.fleet
        unusable = ""  # what an entry found unusable claimed: ours may replace it
        waited = False
        rounds = 0
        announced = fleet.expect(key)  # before the lease is asked for: no announcement missed
        try:
            state, token, entry = await fleet.read_or_lease(key, self.lease)
            while True:
                if entry is not None:
                    if (hit := self._judge(key, entry, check, now, held)) is not None:
                        return hit
                    unusable = entry.this_update
                    state, token = await fleet.lease(key, self.lease, seen=entry.this_update)
                if state is Lease.ACQUIRED:
                    return await self._from_ca(key, ask_ca, check, token=token, unusable=unusable)
                if state is Lease.DOWN or rounds == _ROUNDS:
                    break
                rounds += 1
                if state is Lease.HELD:
                    fleet.stats.lease_waits += 1
                    waited = True
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.wait):
                            await announced
                fleet.forget(key, announced)
                announced = fleet.expect(key)
                state, token, entry = await fleet.read_or_lease(key, self.lease)
        finally:
            fleet.forget(key, announced)
        if waited:
            fleet.stats.fallbacks += 1
        return await self._from_ca(key, ask_ca, check, token="", unusable=unusable)

    def _judge(
        self,
        key: StapleKey,
        entry: Entry,
        check: Callable[[bytes], Verdict],
        now: dt.datetime,
        held: Verdict | None,
    ) -> Obtained | None:
        """The entry as a hit, or None: rejected (logged once) or merely due."""
        try:
            verdict = check(entry.der)
        except HastapleError as exc:
            self._reject(key, entry, str(exc))
            return None
        if verdict.status not in _USABLE:
            self._reject(key, entry, f"its status is {verdict.status.value}")
            return None
        if held is not None and verdict.this_update < held.this_update:
            self._reject(
                key, entry, f"it is older (thisUpdate {rfc3339(verdict.this_update)}) than "
                f"the staple held ({rfc3339(held.this_update)})",
            )  # fmt: skip
            return None
        if not schedule.is_fresh(verdict.this_update, verdict.next_update, now):
            return None  # valid but due: this refresh fetches a newer one
        self._count_hit(entry)
        return Obtained(entry.der, verdict, "fleet", entry.node)

    def _count_hit(self, entry: Entry) -> None:
        stats = self.fleet.stats
        stats.hits += 1
        stats.fetched_by[entry.node] = stats.fetched_by.get(entry.node, 0) + 1

    async def adopt(
        self,
        request_der: bytes,
        *,
        check: Callable[[bytes], Verdict],
        held: Verdict,
    ) -> Obtained | None:
        """
        The fleet's staple if it is valid and newer than ``held``; never asks the CA.

        For a staple another node announced while this node's own is still
        fresh: the node serves the newer one within a second, as the others do.
        """
        key = key_of(request_der)
        entry = await self.fleet.read(key)
        if entry is None:
            return None
        try:
            verdict = check(entry.der)
        except HastapleError as exc:
            self._reject(key, entry, str(exc))
            return None
        if verdict.status not in _USABLE or verdict.this_update <= held.this_update:
            return None
        self._count_hit(entry)
        return Obtained(entry.der, verdict, "fleet", entry.node)

    def _reject(self, key: StapleKey, entry: Entry, why: str) -> None:
        self.fleet.stats.rejected += 1
        seen = (key.suffix, hashlib.sha256(entry.der).digest()[:16])
        if seen in self._logged:
            return
        if len(self._logged) >= _LOGGED_MAX:
            self._logged.clear()
        self._logged.add(seen)
        logger.warning(
            "fleet: ignored the entry for serial %s (issuer key %s) said to come from node %r: "
            "%s; asking the CA instead",
            key.serial, key.issuer_key_hash[:12], entry.node, why,
        )  # fmt: skip

    async def _from_ca(
        self,
        key: StapleKey,
        ask_ca: Callable[[], Awaitable[Reply]],
        check: Callable[[bytes], Verdict],
        *,
        token: str,
        unusable: str,
    ) -> Obtained:
        """Ask the CA; share a validated answer, release the lease either way."""
        self.fleet.stats.misses += 1
        try:
            reply = await ask_ca()
            verdict = check(reply.der)
        except Exception:
            if token:
                await self.fleet.release(key, token)
            raise
        if verdict.status in _USABLE:
            staple = Publication(
                der=reply.der,
                this_update=rfc3339(verdict.this_update),
                next_update=rfc3339(verdict.next_update),
                expire_at=int(verdict.next_update.timestamp()),
                url=reply.url,
            )
            await self.fleet.publish(key, staple, token=token, unusable=unusable)
        elif token:
            await self.fleet.release(key, token)
        return Obtained(
            reply.der, verdict, "ca", self.fleet.node, max_age=reply.max_age, elapsed=reply.elapsed
        )


@contextlib.asynccontextmanager
async def connected(
    url: str,
    *,
    prefix: str,
    lease: float = LEASE_SECONDS,
    on_published: Callable[[StapleKey], None] | None = None,
    on_resync: Callable[[], None] | None = None,
) -> AsyncIterator[Coordinator]:
    """
    A coordinator on the fleet at ``url``, for the length of the block.

    The node's name is the host name, or ``HASTAPLE_FLEET_NODE`` (several
    nodes on one machine, as in the tests). A Redis that is down now is a
    warning, not an error: the block runs, every staple from the CA.

    Raises:
        ConfigError: ``url`` is not a fleet URL.
    """
    fleet = Fleet(
        redis_url.parse(url), prefix=prefix, node=os.environ.get("HASTAPLE_FLEET_NODE") or None,
        on_published=on_published, on_resync=on_resync,
    )  # fmt: skip
    async with fleet:
        yield Coordinator(fleet, lease=lease)


def key_of(request_der: bytes) -> StapleKey:
    """The fleet key of the (one-certificate) OCSP request ``request_der``."""
    req = ocsp.load_der_ocsp_request(request_der)
    return StapleKey.of(req.issuer_key_hash, req.serial_number)
