"""
The fleet as ``hastaple status`` shows it: a small file the daemon keeps.

``status`` asks neither a CA nor HAProxy nor Redis, so the daemon writes what
it knows of the fleet to ``<state dir>/fleet.json`` after each batch
(atomically): the Redis URL without credentials, whether it answers, the
nodes seen in the last minute, this node's hits, misses, lease waits and
fallbacks, and which node fetched each certificate's staple.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hastaple.errors import StoreError
from hastaple.stores import store

if TYPE_CHECKING:  # ``status`` reads the file without importing redis-py
    from hastaple.stores.coordinator import Coordinator

FILE = "fleet.json"
_COUNTS = ("hits", "misses", "rejected", "lease_waits", "fallbacks", "published", "outages")


def snapshot(coordinator: Coordinator) -> dict[str, Any]:
    """What the daemon knows of the fleet now."""
    fleet = coordinator.fleet
    now = time.time()
    return {
        "url": fleet.address.display,
        "node": fleet.node,
        "up": fleet.up,
        "written_at": now,
        "nodes_seen": [{"node": n, "seconds_ago": round(now - at, 1)} for n, at in fleet.seen],
        **{name: getattr(fleet.stats, name) for name in _COUNTS},
        "staples_from": dict(fleet.stats.fetched_by),
        "fetched_by": dict(coordinator.fetched_by),
    }


def write(state_dir: Path, coordinator: Coordinator) -> None:
    """Replace ``<state dir>/fleet.json``; a failure costs only the ``status`` view."""
    with contextlib.suppress(OSError, StoreError):
        store.write_atomic(state_dir / FILE, json.dumps(snapshot(coordinator)).encode())


def read(state_dir: Path) -> dict[str, Any] | None:
    """The daemon's last ``fleet.json``, or None without fleet mode (or when unreadable)."""
    try:
        data = json.loads((state_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summary(data: dict[str, Any]) -> str:
    """Two lines for a person: the fleet's state and this node's figures."""
    seen = ", ".join(str(n.get("node")) for n in data.get("nodes_seen", [])) or "none"
    state = "up" if data.get("up") else "DOWN (stapling alone)"
    counts = ", ".join(f"{name.replace('_', ' ')} {data.get(name, 0)}" for name in _COUNTS[:5])
    return (
        f"fleet {data.get('url')} {state}; node {data.get('node')}; "
        f"nodes seen in the last minute: {seen}\n"
        f"fleet figures of this node: {counts}"
    )
