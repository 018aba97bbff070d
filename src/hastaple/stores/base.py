"""
The seam for where staples are kept: what the pipeline needs of a store.

A staple is kept under the path HAProxy reads it from (``<crt>.ocsp``, or a
crt-store's ``ocsp <file>``), the one name every HAProxy of a fleet shares.
``FileStore`` (``hastaple.stores.files``) keeps it in that file; a shared
store (Redis, for a fleet) implements the same two methods.

Invariant for every implementation: ``put`` either keeps ``data`` whole or
raises ``StoreError`` and leaves the previous staple as it was; it never
exposes a partial staple. Deciding whether a new staple is better than the
kept one is the pipeline's job, done before ``put``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StapleStore(Protocol):
    """Where validated staples are kept and read back."""

    def get(self, path: Path) -> bytes | None:
        """The staple kept for ``path``, or None when there is none or it cannot be read."""
        ...

    async def put(self, path: Path, data: bytes, *, owner_of: Path) -> None:
        """
        Keep ``data`` as the staple for ``path``, durably; ``owner_of`` lends its owner.

        Raises:
            StoreError: nothing changed.
        """
        ...
