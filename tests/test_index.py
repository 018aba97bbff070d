"""index.py and its use by the pipeline: a warm run trusts only unchanged files."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from hastaple.core.model import Action, CertEntry
from hastaple.engine.fetch import Fetcher
from hastaple.engine.pipeline import Options, run
from hastaple.stores import index, index_codec, store
from hastaple.testing.pki import now
from hastaple.testing.responders import Serve


@pytest.fixture(name="setup")
def _setup(pki, fault_responder, tmp_path):
    """One certificate served a good response; a state directory for the index."""
    leaf = pki.leaf("idx.example.test", ocsp_url=fault_responder.url_for("idx"))
    fault_responder.on("idx", Serve(pki.response(leaf.cert)))
    path = pki.write(tmp_path, "idx.pem", leaf)
    return path, tmp_path / "state", fault_responder


async def _run(path, state, when=None, **kw):
    async with Fetcher() as fetcher:
        options = Options(state_dir=state, **kw)
        (row,) = await run([CertEntry(str(path))], options, fetcher=fetcher, now=when or now())
    return row


async def test_fetch_records_what_was_validated(setup, pki):
    """After a fetch the index holds the staple's facts, keyed by the files' identities."""
    path, state, _ = setup
    row = await _run(path, state)
    assert row.action is Action.FETCHED
    entry = index.Index.load(state).lookup(path, index.fingerprint(path))
    assert entry is not None
    assert entry.ocsp == index.fingerprint(store.staple_path(path))
    assert (entry.verdict.this_update, entry.verdict.next_update) == (
        row.this_update,
        row.next_update,
    )
    assert entry.valid_until <= pki.responder.cert.not_valid_after_utc


async def test_warm_run_asks_no_ca_and_matches_a_full_check(setup, tmp_path):
    """A warm run answers FRESH with the same times as a run without the index."""
    path, state, responder = setup
    await _run(path, state)
    asked = responder.requests
    warm = await _run(path, state)
    full = await _run(path, tmp_path / "other-state")  # no index: parses and validates
    assert responder.requests == asked
    assert warm.action is full.action is Action.FRESH
    assert (warm.this_update, warm.next_update, warm.ocsp_url) == (
        full.this_update,
        full.next_update,
        full.ocsp_url,
    )


async def test_a_replaced_staple_is_validated_again(setup):
    """Garbage written over the .ocsp (a new file identity) is a miss: the CA is asked again."""
    path, state, responder = setup
    await _run(path, state)
    store.staple_path(path).write_bytes(b"not a response")
    asked = responder.requests
    assert (await _run(path, state)).action is Action.FETCHED
    assert responder.requests == asked + 1


async def test_a_touched_certificate_is_parsed_again(setup, pki, fault_responder):
    """A renewed PEM (same name, new content) is a miss even when the staple is unchanged."""
    path, state, responder = setup
    await _run(path, state)
    other = pki.leaf("renewed.example.test", ocsp_url=fault_responder.url_for("idx2"))
    fault_responder.on("idx2", Serve(pki.response(other.cert)))
    st = path.stat()
    pki.write(path.parent, path.name, other)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: ctime/inode still differ
    row = await _run(path, state)
    assert row.action is Action.FETCHED
    assert row.ocsp_url == fault_responder.url_for("idx2")
    assert responder.seen_under("idx2")


async def test_an_issuer_file_counts_only_without_the_issuer_in_the_chain(
    pki, fault_responder, tmp_path
):
    """
    A replaced ``.issuer`` is a miss for a chainless PEM, and no matter with a chain.

    HAProxy and hastaple take the issuer from the chain first (docs/haproxy.md),
    so only a chainless certificate's ``.issuer`` can change the verdict.
    """
    state = tmp_path / "state"
    stranger = pki.leaf("stranger.example.test").cert_pem  # issued by someone else
    rows = {}
    for chain in (False, True):
        leaf = pki.leaf(f"c{chain}.example.test", ocsp_url=fault_responder.url_for(f"c{chain}"))
        fault_responder.on(f"c{chain}", Serve(pki.response(leaf.cert)))
        path = pki.write(tmp_path, f"c{chain}.pem", leaf, chain=chain)
        assert (await _run(path, state)).action is Action.FETCHED
        store.issuer_path(path).write_bytes(stranger)  # a new file, another certificate
        rows[chain] = await _run(path, state)
    assert rows[False].action is Action.FAILED
    assert "does not hold the issuer" in (rows[False].error or "")
    assert rows[True].action is Action.FRESH


async def test_the_clock_is_checked_on_a_hit(setup):
    """A recorded staple past its refresh point is fetched again, without re-parsing help."""
    path, state, responder = setup
    first = await _run(path, state)
    later = first.this_update + (first.next_update - first.this_update) * 0.75
    asked = responder.requests
    assert (await _run(path, state, when=later)).action is Action.FETCHED
    assert responder.requests == asked + 1


async def test_force_and_dry_run(setup):
    """--force skips the index (asks the CA); --dry-run neither reads nor writes it."""
    path, state, responder = setup
    assert (await _run(path, state, dry_run=True)).action is Action.FETCHED
    assert not (state / index.INDEX_NAME).exists()
    await _run(path, state)
    asked = responder.requests
    assert (await _run(path, state, force=True)).action is Action.FETCHED
    assert responder.requests == asked + 1


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"version": 99, "certs": {}}',
                                     b'{"version": 1, "certs": {"x": {"pem": 1}}}'])  # fmt: skip
def test_unusable_index_file_is_empty(tmp_path, content):
    """A truncated, foreign or future index is ignored, never an error."""
    (tmp_path / index.INDEX_NAME).write_bytes(content)
    assert len(index.Index.load(tmp_path)) == 0


async def test_a_large_index_reads_back_whole(setup, tmp_path):
    """Written in pieces (hundreds of certificates), the index loads back entry for entry."""
    path, state, _ = setup
    await _run(path, state)
    first = index.Index.load(state)
    entry = first.lookup(path, index.fingerprint(path))
    assert entry is not None
    # More changes than the journal takes: the snapshot is rewritten, in pieces.
    names = [tmp_path / f"copy-{i:04d}.pem" for i in range(index._MIN_JOURNAL + 1)]
    for name in names:
        name.touch()  # a snapshot keeps only certificates that exist
        first.record(name, entry)
    first.mark_revoked(names[7], 1234)
    first.save()
    assert (state / index.INDEX_NAME).stat().st_size > 2 * index_codec._PIECE
    again = index.Index.load(state)
    assert len(again) == len(first) == len(names) + 1
    assert all(again._entries[str(n)] == entry for n in names)
    assert again.is_revoked(names[7], 1234)


async def test_the_snapshot_is_one_json_document_read_line_by_line(setup, tmp_path):
    """index.json stays one JSON document; one written on one line (before) still loads."""
    import json  # noqa: PLC0415

    path, state, _ = setup
    await _run(path, state)
    idx = index.Index.load(state)
    entry = idx.lookup(path, index.fingerprint(path))
    assert entry is not None
    for i in range(3):
        (tmp_path / f"c{i}.pem").touch()
        idx.record(tmp_path / f"c{i}.pem", entry)
    idx.mark_revoked(tmp_path / "c1.pem", 77)
    idx._rewrite = True
    idx.save()
    data = (state / index.INDEX_NAME).read_bytes()
    doc = json.loads(data)
    assert len(doc["certs"]) == 4
    assert data.count(b"\n") == 5  # the head, one line per entry, the close
    # The same document on one line, as versions before this one wrote it.
    (state / index.INDEX_NAME).write_bytes(json.dumps(doc, separators=(",", ":")).encode())
    for again in (index.Index.load(state),):
        assert len(again) == 4
        assert again._entries[str(tmp_path / "c2.pem")] == entry
        assert again.is_revoked(tmp_path / "c1.pem", 77)
    # Cut short (no closing line): unusable, as a torn whole document was.
    (state / index.INDEX_NAME).write_bytes(data[: data.rindex(b"\n}")])
    assert len(index.Index.load(state)) == 0
    # Nothing recorded: still a document that loads (and no entry line).
    empty = index.Index.load(tmp_path / "empty")
    empty.mark_revoked(tmp_path / "x.pem", 5)
    empty.save()
    assert json.loads((tmp_path / "empty" / index.INDEX_NAME).read_bytes())["certs"] == {}
    assert index.Index.load(tmp_path / "empty").is_revoked(tmp_path / "x.pem", 5)


def test_signer_window_is_the_tightest(pki):
    """valid_until is the earlier of nextUpdate and the delegated signer's notAfter."""
    leaf = pki.leaf("w.example.test")
    this = now() - dt.timedelta(minutes=1)
    far = pki.responder.cert.not_valid_after_utc + dt.timedelta(days=30)
    der = pki.response(leaf.cert, this_update=this, next_update=far)
    from hastaple.core.ocsp.validate import signer_window, validate  # noqa: PLC0415

    verdict = validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=now())
    start, end = signer_window(der, verdict)
    assert end == pki.responder.cert.not_valid_after_utc
    assert start <= now()


def test_fingerprint_if_only_for_our_bytes(tmp_path):
    """The identity is taken only when the file holds what we wrote (another writer raced us)."""
    from hastaple.stores.index import fingerprint, fingerprint_if  # noqa: PLC0415

    path = tmp_path / "site.pem.ocsp"
    path.write_bytes(b"ours")
    assert fingerprint_if(path, b"ours") == fingerprint(path)
    path.write_bytes(b"someone else's")
    assert fingerprint_if(path, b"ours") is None
    assert fingerprint_if(tmp_path / "missing", b"ours") is None


async def _recorded(setup, tmp_path, n: int):
    """The state directory with ``n`` copies of one real entry; returns (state, entry, names)."""
    path, state, _ = setup
    await _run(path, state)
    idx = index.Index.load(state)
    entry = idx.lookup(path, index.fingerprint(path))
    assert entry is not None
    names = [tmp_path / f"n-{i:05d}.pem" for i in range(n)]
    for name in names:
        name.touch()  # a snapshot keeps only certificates that exist
        idx.record(name, entry)
    idx.save()
    return state, entry, names


async def test_a_one_certificate_save_writes_one_line_not_the_index(setup, tmp_path):
    """
    A daemon batch of one certificate appends one journal line; index.json is untouched.

    It used to rewrite and fsync the whole index (about 6 MB at 10,000
    certificates) for every batch (issue 10, item 4).
    """
    state, _, names = await _recorded(setup, tmp_path, 3000)
    snapshot = state / index.INDEX_NAME
    before = index.fingerprint(snapshot)
    journal = state / "index.journal"
    size = journal.stat().st_size if journal.exists() else 0
    idx = index.Index.load(state)
    idx.forget(names[5])
    idx.mark_revoked(names[6], 77)
    idx.save()
    assert index.fingerprint(snapshot) == before
    assert 0 < journal.stat().st_size - size < 1000  # one small line per change (two here)
    again = index.Index.load(state)
    assert len(again) == len(names)  # 3000 copies + the real one - one forgotten
    assert again.is_revoked(names[6], 77)
    assert str(names[5]) not in again._entries


async def test_a_kept_index_catches_up_with_other_writers(setup, tmp_path, monkeypatch):
    """``sync`` replays what another process appended, and re-reads after it rewrote the index."""
    state, _, names = await _recorded(setup, tmp_path, 10)
    kept, other = index.Index.load(state), index.Index.load(state)
    other.mark_revoked(names[0], 1)
    other.forget(names[1])
    other.save()
    kept.sync()
    assert kept.is_revoked(names[0], 1)
    assert str(names[1]) not in kept._entries
    monkeypatch.setattr(index, "_MIN_JOURNAL", 2)  # the next save rewrites the snapshot
    other.clear_revoked(names[0])
    other.forget(names[2])
    other.forget(names[3])
    other.save()
    assert not (state / index.JOURNAL_NAME).exists()
    kept.sync()
    assert not kept.is_revoked(names[0], 1)
    assert len(kept) == len(other) == 8  # 10 copies + the real one - three forgotten


async def test_a_torn_journal_line_is_ignored_then_rewritten(setup, tmp_path):
    """A line cut short by a crash is not replayed, nor appended after: the next save rewrites."""
    state, _, names = await _recorded(setup, tmp_path, 3)
    idx = index.Index.load(state)
    idx.mark_revoked(names[0], 5)
    idx.save()
    journal = state / index.JOURNAL_NAME
    with journal.open("ab") as f:
        f.write(b'{"cert": "/x.pem", "revoked": 9')  # no end: the crash came here
    torn = index.Index.load(state)
    assert torn.is_revoked(names[0], 5)
    assert not torn.is_revoked(Path("/x.pem"), 9)
    torn.mark_revoked(names[1], 6)
    torn.save()
    assert not journal.exists()  # the whole index was written again instead
    final = index.Index.load(state)
    assert final.is_revoked(names[0], 5)
    assert final.is_revoked(names[1], 6)


async def test_a_journal_left_from_before_a_rewrite_is_not_replayed(setup, tmp_path, monkeypatch):
    """
    A crash between writing a new index.json and removing the old journal loses nothing.

    The old journal names the snapshot it followed; replayed over the new one
    it would bring back a forgotten entry or undo a revoked mark.
    """
    state, _, names = await _recorded(setup, tmp_path, 3)
    idx = index.Index.load(state)
    idx.clear_revoked(names[0])
    idx.mark_revoked(names[0], 5)
    idx.save()
    journal = state / index.JOURNAL_NAME
    old_journal = journal.read_bytes()  # says: names[0] revoked with serial 5
    monkeypatch.setattr(index, "_MIN_JOURNAL", 0)
    idx.clear_revoked(names[0])
    idx.forget(names[1])
    idx.save()
    assert not journal.exists()
    journal.write_bytes(old_journal)  # as if the crash came before the unlink
    again = index.Index.load(state)
    assert not again.is_revoked(names[0], 5)
    assert str(names[1]) not in again._entries


async def test_a_snapshot_drops_certificates_that_no_longer_exist(setup, tmp_path, monkeypatch):
    """
    Removed certificates leave the index at its next snapshot; their revoked marks stay.

    A platform that adds and removes certificates every day would otherwise
    carry each removed one in index.json, and in every run's memory, for ever.
    """
    state, entry, names = await _recorded(setup, tmp_path, 4)
    idx = index.Index.load(state)
    idx.mark_revoked(names[1], 99)
    names[0].unlink()
    names[1].unlink()
    monkeypatch.setattr(index, "_MIN_JOURNAL", 0)  # more changes than half: a snapshot
    added = [tmp_path / f"new-{i}.pem" for i in range(4)]
    for name in added:
        name.touch()
        idx.record(name, entry)
    idx.save()
    assert not (state / index.JOURNAL_NAME).exists()
    assert str(names[0]) not in idx._entries  # the daemon's resident index too
    again = index.Index.load(state)
    assert set(again._entries) == {str(setup[0]), *map(str, names[2:] + added)}
    assert again.is_revoked(names[1], 99)  # it may come back with the same serial
