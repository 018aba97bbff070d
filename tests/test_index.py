"""index.py and its use by the pipeline: a warm run trusts only unchanged files."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from hastaple import index, store
from hastaple.discover import CertEntry
from hastaple.fetch import Fetcher
from hastaple.model import Action
from hastaple.pipeline import Options, run
from pki import now
from responders import Serve


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
        (row,) = await run([CertEntry(path)], options, fetcher=fetcher, now=when or now())
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

    HAProxy and hastaple take the issuer from the chain first (HAPROXY.md §3a),
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
    names = [tmp_path / f"copy-{i:04d}.pem" for i in range(400)]
    for name in names:
        first.record(name, entry)
    first.mark_revoked(names[7], 1234)
    first.save()
    assert (state / index.INDEX_NAME).stat().st_size > 2 * index._PIECE
    again = index.Index.load(state)
    assert len(again) == len(first) == len(names) + 1
    assert all(again._entries[str(n)] == entry for n in names)
    assert again.is_revoked(names[7], 1234)


def test_signer_window_is_the_tightest(pki):
    """valid_until is the earlier of nextUpdate and the delegated signer's notAfter."""
    leaf = pki.leaf("w.example.test")
    this = now() - dt.timedelta(minutes=1)
    far = pki.responder.cert.not_valid_after_utc + dt.timedelta(days=30)
    der = pki.response(leaf.cert, this_update=this, next_update=far)
    from hastaple.ocsp.validate import validate  # noqa: PLC0415

    verdict = validate(der, cert=leaf.cert, issuer=pki.intermediate.cert, now=now())
    start, end = index.signer_window(der, verdict)
    assert end == pki.responder.cert.not_valid_after_utc
    assert start <= now()


def test_fingerprint_if_only_for_our_bytes(tmp_path):
    """The identity is taken only when the file holds what we wrote (another writer raced us)."""
    from hastaple.index import fingerprint, fingerprint_if  # noqa: PLC0415

    path = tmp_path / "site.pem.ocsp"
    path.write_bytes(b"ours")
    assert fingerprint_if(path, b"ours") == fingerprint(path)
    path.write_bytes(b"someone else's")
    assert fingerprint_if(path, b"ours") is None
    assert fingerprint_if(tmp_path / "missing", b"ours") is None
