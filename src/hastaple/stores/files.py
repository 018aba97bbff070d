"""
The file-system staple store: ``<crt>.ocsp`` next to each certificate, as HAProxy reads it.

``get`` reads the staple kept for a file; ``put`` replaces it atomically and
durably, in group commits: each staple is written as soon as it is validated,
and whatever arrives while one batch is being flushed (in a thread, so
fetches go on) goes into the next one, so 10,000 staples cost a handful of
``syncfs`` calls instead of 10,000 ``fsync``s and a single staple is not kept
waiting for the others (``store.write_many``). The atomic writer itself is
``hastaple.stores.store``. Must not decide whether a staple is better than
the one kept (the pipeline does, before ``put``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hastaple.stores import store


class FileStore:
    """The staples of one run, kept as files; implements ``StapleStore``."""

    def __init__(self) -> None:
        self._pending: list[tuple[store.Write, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def get(self, path: Path) -> bytes | None:
        """The staple kept at ``path``, or None when there is none or it cannot be read."""
        return store.read(path)

    async def put(self, path: Path, data: bytes, *, owner_of: Path) -> None:
        """
        Replace ``path`` atomically and durably, batched with its neighbours.

        Raises:
            StoreError: ``path`` was left unchanged.
        """
        done = asyncio.get_running_loop().create_future()
        self._pending.append((store.Write(path, data, owner_of), done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                results: list[BaseException | None]
                try:
                    results = list(await asyncio.to_thread(store.write_many, [w for w, _ in batch]))
                except Exception as exc:  # noqa: BLE001 - a bug: each row reports it, none hangs
                    results = [exc] * len(batch)
                for (_, done), error in zip(batch, results, strict=True):
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
        finally:
            self._flusher = None
