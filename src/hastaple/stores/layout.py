"""
The fleet's data in Redis: a stable, documented layout other tools may read.

``<prefix>`` is ``hastaple:`` by default (``--fleet-prefix``); serial is
lowercase hex without leading zeros; issuerKeyHash is the SHA-1 of the
issuer's public key, lowercase hex (the CertID's):

- ``<prefix>staple:<issuerKeyHash>:<serial>``: a hash with ``der`` (the raw
  response), ``this_update``, ``next_update``, ``fetched_at`` (RFC 3339 UTC),
  ``node`` (who fetched it) and ``url`` (the responder); it expires at
  nextUpdate. Keyed by CertID, not path: nodes that keep one certificate
  under different paths share one entry.
- ``<prefix>lease:<issuerKeyHash>:<serial>``: the node fetching that staple
  now; a random token, set with ``SET NX PX`` so it dies with its holder.
- ``<prefix>staples``: the channel announcing ``<issuerKeyHash>:<serial>``
  for every new staple (and for every released lease, so waiters wake).
- ``<prefix>nodes``: a sorted set, node name -> last heartbeat (Unix time).

The scripts keep each step to one round trip and atomic; they use only
TYPE, HGET, HGETALL, HSET, DEL, EXPIREAT, GET, SET and PUBLISH (the README's ACL line).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# Store a staple unless the entry holds one at least as new (thisUpdate, compared
# as fixed-width RFC 3339 text). ARGV[11] is the this_update an entry claimed
# when the caller read it and found it unusable (forged, garbage, due): while
# the entry still claims it, a lie there ("2099-...") cannot keep it in place.
# Then release the caller's lease if it still holds it, and announce.
PUBLISH = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local stored = 0
local cur = redis.call('HGET', KEYS[1], 'this_update')
if not cur or cur < ARGV[2] or (ARGV[11] ~= '' and cur == ARGV[11]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'der', ARGV[1], 'this_update', ARGV[2], 'next_update', ARGV[3],
             'fetched_at', ARGV[4], 'node', ARGV[5], 'url', ARGV[6])
  redis.call('EXPIREAT', KEYS[1], ARGV[7])
  stored = 1
end
local released = 0
if ARGV[10] ~= '' and redis.call('GET', KEYS[2]) == ARGV[10] then
  redis.call('DEL', KEYS[2])
  released = 1
end
if stored == 1 or released == 1 then
  redis.call('PUBLISH', ARGV[8], ARGV[9])
end
return stored
"""
# Read the entry; when there is none, take the lease in the same round trip
# (the cold start: most certificates have nothing in Redis yet). Answers
# {0, HGETALL} (an entry; a key of another type reads as an empty one),
# {1} (no entry, lease taken) or {2} (no entry, lease held by another).
READ_OR_LEASE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
  return {0, redis.call('HGETALL', KEYS[1])}
end
if kind ~= 'none' then
  return {0, {}}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
return {2}
"""
# Take the lease (SET NX PX) only if the staple entry still claims the
# this_update the caller read (ARGV[3], '' for none): a staple stored between
# that read and this call would otherwise be fetched a second time.
LEASE = """
local cur = ''
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  cur = redis.call('HGET', KEYS[1], 'this_update') or ''
end
if cur ~= ARGV[3] then
  return 2
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
# Release a lease only for its owner, and wake those waiting for it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class StapleKey:
    """A certificate as the fleet names it: its issuer's key hash and its serial."""

    issuer_key_hash: str  # SHA-1 of the issuer's public key, lowercase hex
    serial: str  # lowercase hex, no leading zeros

    @classmethod
    def of(cls, issuer_key_hash: bytes, serial: int) -> StapleKey:
        """The key of the CertID (``issuer_key_hash``, ``serial``)."""
        return cls(issuer_key_hash.hex(), format(serial, "x"))

    @classmethod
    def parse(cls, text: str) -> StapleKey | None:
        """``<issuerKeyHash>:<serial>`` as announced; None for anything else."""
        ikh, sep, serial = text.partition(":")
        if not sep or len(ikh) != 40 or not serial or not _is_hex(ikh + serial):  # noqa: PLR2004 - SHA-1 hex
            return None
        return cls(ikh, serial)

    @property
    def suffix(self) -> str:
        """``<issuerKeyHash>:<serial>``."""
        return f"{self.issuer_key_hash}:{self.serial}"


@dataclass(frozen=True, slots=True)
class Entry:
    """A staple as found in Redis: untrusted bytes plus who says they fetched it."""

    der: bytes
    node: str = ""
    fetched_at: str = ""
    url: str = ""
    this_update: str = ""  # as the entry claims it; only the validated response counts


@dataclass(frozen=True, slots=True)
class Publication:
    """A validated staple to announce; times are RFC 3339 UTC text."""

    der: bytes
    this_update: str
    next_update: str
    expire_at: int  # Unix seconds: nextUpdate
    url: str


class Lease(enum.Enum):
    """The answer to "may I fetch this staple?"."""

    ACQUIRED = "acquired"
    HELD = "held"  # another node is fetching it
    CHANGED = "changed"  # the entry changed since it was read: read it again
    DOWN = "down"  # no answer from Redis: fetch by yourself


@dataclass
class Stats:
    """What this node's fleet client did (``status``, ``/metrics``, the benchmark)."""

    hits: int = 0  # a valid fleet entry was used instead of asking the CA
    misses: int = 0  # nothing usable in the fleet: the CA was asked
    rejected: int = 0  # entries that failed validation
    lease_waits: int = 0  # waits for another node's fetch
    fallbacks: int = 0  # waits that ended without a staple: the CA was asked anyway
    published: int = 0  # staples this node stored in the fleet
    outages: int = 0
    round_trips: int = 0  # Redis commands sent (scripts count one)
    fetched_by: dict[str, int] = field(default_factory=dict)  # node -> staples used from it


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
