"""
The StapleStore seam: the pipeline keeps and reads staples only through it.

A shared store (Redis, for a fleet) plugs in where ``FileStore`` does; these
tests hold the pipeline to that promise with a store that keeps staples in
memory, and hold ``FileStore`` to the protocol.
"""

from __future__ import annotations

from pathlib import Path

from hastaple.core.model import Action, CertEntry, Status
from hastaple.engine import pipeline
from hastaple.engine.fetch import Fetcher
from hastaple.stores.base import StapleStore
from hastaple.stores.files import FileStore
from hastaple.testing.pki import now
from hastaple.testing.responders import Serve


class MemoryStore:
    """Staples in a dict, keyed by the path HAProxy reads them from."""

    def __init__(self) -> None:
        self.kept: dict[Path, bytes] = {}
        self.asked: list[Path] = []

    def get(self, path: Path) -> bytes | None:
        self.asked.append(path)
        return self.kept.get(path)

    async def put(self, path: Path, data: bytes, *, owner_of: Path) -> None:  # noqa: ARG002
        self.kept[path] = data


async def test_file_store_keeps_what_it_is_given(tmp_path):
    staples: StapleStore = FileStore()
    cert = tmp_path / "a.pem"
    cert.write_bytes(b"pem")
    target = tmp_path / "a.pem.ocsp"
    assert staples.get(target) is None
    await staples.put(target, b"\x30\x03der", owner_of=cert)
    assert staples.get(target) == b"\x30\x03der"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


async def test_the_pipeline_keeps_and_reads_staples_through_the_store(
    pki, fault_responder, tmp_path
):
    """Fetched staples go to the store, not to <crt>.ocsp; the next run reads them back."""
    leaf = pki.leaf("mem.example.test", ocsp_url=fault_responder.url_for("mem"))
    fault_responder.on("mem", Serve(pki.response(leaf.cert)))
    path = pki.write(tmp_path, "mem.pem", leaf)
    staples = MemoryStore()
    options = pipeline.Options(state_dir=tmp_path / "state")
    async with Fetcher() as fetcher:
        [first] = await pipeline.run(
            [CertEntry(str(path))], options, fetcher=fetcher, now=now(), staples=staples
        )
        assert (first.status, first.action) == (Status.GOOD, Action.FETCHED)
        assert list(staples.kept) == [tmp_path / "mem.pem.ocsp"]
        assert not (tmp_path / "mem.pem.ocsp").exists()
        [second] = await pipeline.run(
            [CertEntry(str(path))], options, fetcher=fetcher, now=now(), staples=staples
        )
    assert (second.status, second.action) == (Status.GOOD, Action.FRESH)
    assert staples.asked == [tmp_path / "mem.pem.ocsp"] * 2
    assert fault_responder.requests == 1
