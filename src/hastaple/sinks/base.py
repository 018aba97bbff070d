"""
The seam for where staples go once stored: what the pipeline needs of a sink.

The pipeline hands each certificate's stored staple to the sink as soon as it
is ready (``add``), then waits for the rest (``finish``) and always releases
it (``close``); the sink reports each certificate's final row through the
``done`` callback it was made with. ``Pusher`` (``hastaple.sinks.pusher``),
the HAProxy runtime-API sink, implements it; a sink that loads whole
certificates (hot-swap) implements the same three methods.

Invariant for every implementation: a staple reaches a consumer only as the
pipeline handed it over (validated, never worse than the one held), and a
failure of one consumer is that certificate's row, never an exception out of
``add`` for a single certificate.
"""

from __future__ import annotations

from typing import Protocol

from hastaple.core.model import ResultRow
from hastaple.haproxy.deploy import DeployItem


class Sink(Protocol):
    """Where validated, stored staples are delivered."""

    async def add(self, key: int, row: ResultRow, items: tuple[DeployItem, ...]) -> None:
        """Take certificate ``key``'s staple, one item per name it is served under."""
        ...

    async def finish(self) -> None:
        """Deliver everything taken; each certificate's final row has gone to ``done``."""
        ...

    async def close(self) -> None:
        """Release connections; safe after a failure and when called twice."""
        ...
