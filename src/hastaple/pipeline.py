"""
One certificate end to end, and a batch of them.

    load PEM -> OCSP URL -> issuer -> staple on disk fresh? -> fetch -> validate
             -> store <crt>.ocsp atomically -> deploy to every HAProxy (in rounds)

This is the one place a ``HastapleError`` becomes a result row: a bad file,
a lying responder or a dead socket fails that certificate, never the batch.
Any other exception is a bug; it is logged with its traceback and reported as
an "internal error" row. ``fetch``, the daemon, ``demo`` and the benchmark
all go through ``run``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hastaple import config, index, lock, pem, schedule, store
from hastaple import issuer as issuers
from hastaple.discover import CertEntry
from hastaple.errors import CertificateError, FetchError, HastapleError, StoreError
from hastaple.fetch import Fetcher, HostStalled, deferring
from hastaple.haproxy.deploy import DeployItem
from hastaple.model import Action, ResultRow, Status, Verdict
from hastaple.ocsp import request
from hastaple.ocsp.validate import MIN_REMAINING, validate
from hastaple.pusher import Pusher

if TYPE_CHECKING:  # the fleet (and redis-py) is imported only when configured
    from hastaple.stores.coordinator import Coordinator

logger = logging.getLogger(__name__)


# Certificates handled at once; far above any per-responder connection limit.
MAX_IN_FLIGHT = 256
# How long an issuer downloaded from AIA is used before its URL is asked again.
AIA_MAX_AGE = dt.timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Options:
    """What one run is asked to do (the ``fetch`` flags, or the daemon's config)."""

    sockets: tuple[str, ...] = ()
    # Sockets that cannot deploy (below level admin) and why: a row fails for
    # each, unless it reaches the process of a socket that can.
    below_admin: tuple[tuple[str, str], ...] = ()
    force: bool = False
    dry_run: bool = False
    state_dir: Path | None = None
    margin: dt.timedelta = MIN_REMAINING
    # False: ask no CA, deploy the valid staple already on disk (the daemon's
    # re-push after an HAProxy restart); certificates without one are skipped.
    fetch: bool = True
    # Seconds to wait for another run holding the state directory (``lock``).
    lock_wait: float = config.LOCK_WAIT
    # Another node announced these staples (``--fleet``): take the fleet's if
    # newer than the one held, even while that one is still fresh.
    adopt: bool = False


@dataclass(frozen=True, slots=True)
class Staple:
    """A validated response for one certificate, and what HAProxy needs to load it."""

    der: bytes
    verdict: Verdict
    cert_id: bytes  # DER; its hex is HAProxy's "OCSP Response Key"
    deploys: tuple[DeployItem, ...]  # one per name HAProxy loaded the file under

    @classmethod
    def of(
        cls,
        der: bytes,
        verdict: Verdict,
        *,
        names: Sequence[str],
        cert_id: bytes,
        issuer_pem: bytes | None,
    ) -> Staple:
        """The staple ``der`` and one DeployItem for each name HAProxy knows the file by."""
        items = tuple(
            DeployItem(name, der, cert_id, issuer_pem, verdict.this_update, verdict.next_update)
            for name in names
        )
        return cls(der, verdict, cert_id, items)


@dataclass(frozen=True, slots=True)
class _Cert:
    """The facts about one certificate that fetching and deploying need."""

    path: Path
    leaf: x509.Certificate
    issuer: x509.Certificate
    issuer_pem: bytes | None
    url: str
    names: tuple[str, ...]  # how HAProxy spells the file in runtime commands
    pem_fp: index.Fingerprint | None = None  # the PEM file as it was before parsing
    must_staple: bool = False
    base: Path | None = None  # what HAProxy appends .ocsp/.issuer to, if not ``path``

    @property
    def files_base(self) -> Path:
        return self.base or self.path

    staple_file: Path | None = None  # where HAProxy reads the staple, if not <crt>.ocsp
    issuer_file: Path | None = None  # with staple_file: the load line's 'issuer <file>'


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    A row plus what the daemon's scheduler and metrics need from the exchange.

    ``max_age`` (Cache-Control, seconds) and ``elapsed`` (seconds) are set
    only when a responder was asked.
    """

    row: ResultRow
    max_age: int | None = None
    elapsed: float | None = None


@dataclass(frozen=True, slots=True)
class _Prepared:
    row: ResultRow
    staple: Staple | None = None
    max_age: int | None = None
    elapsed: float | None = None


async def run(
    entries: Sequence[CertEntry],
    options: Options,
    *,
    fetcher: Fetcher,
    now: dt.datetime,
    progress: Callable[[], None] | None = None,
    fleet: Coordinator | None = None,
) -> list[ResultRow]:
    """
    Fetch, validate, store and deploy staples for ``entries``; one row each.

    Certificates are handled concurrently (the fetcher bounds each responder);
    each stored staple goes to every HAProxy socket in rounds of a few hundred
    on one connection per socket, while the rest are still being fetched
    (``pusher``). ``progress`` is
    called once per certificate when its staple is ready (a progress bar).
    ``fleet``: staples shared with other nodes (``stores.coordinator``),
    asked where the CA would be.
    """
    outcomes = await run_outcomes(
        entries, options, fetcher=fetcher, now=now, progress=progress, fleet=fleet
    )
    return [o.row for o in outcomes]


async def run_outcomes(
    entries: Sequence[CertEntry],
    options: Options,
    *,
    fetcher: Fetcher,
    now: dt.datetime,
    progress: Callable[[], None] | None = None,
    held: index.Index | None = None,
    fleet: Coordinator | None = None,
) -> list[Outcome]:
    """
    ``run``, with the responder's max-age and latency per certificate (the daemon).

    The whole run, from reading the index to the last push, holds the state
    directory's lock (``lock``): another run on it waits, or this one does.
    ``held`` is an index the caller keeps between runs (the daemon): it is
    brought up to date under the lock, not read whole again.

    Raises:
        StateBusy: another run held the state directory for ``options.lock_wait``.
    """
    state_dir = None if options.dry_run else options.state_dir  # dry-run writes nothing
    async with lock.hold(state_dir, wait=options.lock_wait):
        keep = held is not None and held.state_dir == state_dir
        idx = held if held is not None and keep else index.Index.open(state_dir)
        idx.sync()
        outcomes = await _run_locked(
            entries, options, fetcher=fetcher, now=now, progress=progress, idx=idx, fleet=fleet
        )
        idx.save()
    return outcomes


async def _run_locked(
    entries: Sequence[CertEntry],
    options: Options,
    *,
    fetcher: Fetcher,
    now: dt.datetime,
    progress: Callable[[], None] | None,
    idx: index.Index,
    fleet: Coordinator | None = None,
) -> list[Outcome]:
    ctx = _Context(_Writer(), idx, None if options.dry_run else fleet)
    results: list[_Prepared | None] = [None] * len(entries)
    pusher = None
    if (options.sockets or options.below_admin) and not options.dry_run:

        def deployed(i: int, row: ResultRow) -> None:
            # The staple is in HAProxy (or its row says why not): let it go.
            done = results[i]
            assert done is not None  # noqa: S101 - pushed only once prepared
            results[i] = dataclasses.replace(done, row=row, staple=None)

        pusher = Pusher(options.sockets, deployed, below_admin=dict(options.below_admin))

    async def one(i: int, entry: CertEntry) -> None:
        results[i] = prepared = _noted(entry, await _prepare(entry, options, fetcher, now, ctx))
        if progress is not None:
            progress()
        if pusher is not None and prepared.staple is not None:
            await pusher.add(i, prepared.row, prepared.staple.deploys)

    try:
        await _in_pool(entries, one)
        if pusher is not None:
            await pusher.finish()
    finally:
        if pusher is not None:
            await pusher.close()
    return [Outcome(p.row, p.max_age, p.elapsed) for p in results if p is not None]


async def _in_pool(
    entries: Sequence[CertEntry], handle: Callable[[int, CertEntry], Awaitable[None]]
) -> None:
    """
    ``handle(i, entry)`` for every entry, ``MAX_IN_FLIGHT`` at a time.

    A bounded pool, not one task per certificate: 10,000 live tasks hold
    10,000 parsed bundles and requests at once (about 100 MB more at 10k)
    while the fetcher lets only a few talk to each responder anyway.

    A certificate whose responder has stalled is set aside (its index only)
    until the rest are done: behind a host that answers nothing, a worker
    would wait for that host's requests to time out, and with enough of its
    certificates in a row every worker would, holding up every other host.
    """
    todo = iter(enumerate(entries))
    stalled: collections.deque[tuple[int, CertEntry]] = collections.deque()

    async def worker() -> None:
        with deferring():
            for i, entry in todo:
                try:
                    await handle(i, entry)
                except HostStalled:
                    stalled.append((i, entry))
        while stalled:  # nothing else is left: now wait for them
            await handle(*stalled.popleft())

    workers = [asyncio.create_task(worker()) for _ in range(min(MAX_IN_FLIGHT, len(entries)))]
    try:
        await asyncio.gather(*workers)
    finally:
        # After a bug in one worker, the others must not go on fetching and
        # writing behind the caller's back (the daemon's next batch).
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


class _Writer:
    """
    Group commit for staple files: each is written as soon as it is validated.

    Whatever arrives while one batch is being flushed (in a thread, so fetches
    go on) goes into the next one, so 10,000 staples cost a handful of
    ``syncfs`` calls instead of 10,000 ``fsync``s, and a single staple is not
    kept waiting for the others (``store.write_many``).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[store.Write, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, path: Path, data: bytes, *, owner_of: Path) -> None:
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


@dataclass(frozen=True, slots=True)
class _Context:
    """What the certificates of one run share: the staple writer and the index."""

    writer: _Writer
    index: index.Index
    fleet: Coordinator | None = None  # None: every staple comes from the CA


async def _prepare(  # noqa: PLR0911 - one early return per kind of row
    entry: CertEntry, options: Options, fetcher: Fetcher, now: dt.datetime, ctx: _Context
) -> _Prepared:
    name = str(entry.path)
    url: str | None = None
    must_staple = False
    try:
        if entry.managed:
            return _Prepared(ResultRow(name, None, Status.MANAGED, Action.SKIPPED))
        pem_fp = index.fingerprint(entry.path)
        # The index knows only <crt>.ocsp: a crt-store's own staple file goes the long way.
        cached = not (options.force or options.adopt) and entry.ocsp_file is None
        if cached and (hit := _from_index(entry, pem_fp, options, now, ctx)):
            return hit
        bundle = pem.parse_file(entry.path)
        must_staple = pem.is_must_staple(bundle.leaf)
        url = issuers.ocsp_url(bundle.leaf)
        if url is None:
            no_url = ResultRow(name, None, Status.NO_OCSP, Action.SKIPPED, must_staple=must_staple)
            return _Prepared(no_url)
        state_dir = None if options.dry_run else options.state_dir  # dry-run writes nothing
        issuer, issuer_pem = await resolve_issuer(
            entry.path, bundle, fetcher, state_dir, now=now, base=entry.files_base
        )
        cert = _Cert(
            entry.path, bundle.leaf, issuer, issuer_pem, url, entry.haproxy_names, pem_fp,
            must_staple=must_staple, base=entry.extra_base, staple_file=entry.ocsp_file,
            issuer_file=entry.issuer_file,
        )  # fmt: skip
        done = await _refresh(cert, options, fetcher, now, ctx)
        return dataclasses.replace(done, row=dataclasses.replace(done.row, must_staple=must_staple))
    except HostStalled:
        raise  # set aside by the worker, not a result
    except CertificateError as exc:
        row = dataclasses.replace(_failed(name, url, str(exc)), bad_input=True)
        return _Prepared(dataclasses.replace(row, must_staple=must_staple))
    except HastapleError as exc:
        return _Prepared(dataclasses.replace(_failed(name, url, str(exc)), must_staple=must_staple))
    except Exception as exc:
        logger.exception("internal error while handling %s", name)
        return _Prepared(_failed(name, url, f"internal error: {exc!r} (see the log)"))


def _from_index(
    entry: CertEntry,
    pem_fp: index.Fingerprint | None,
    options: Options,
    now: dt.datetime,
    ctx: _Context,
) -> _Prepared | None:
    """
    The FRESH row for a certificate whose files did not change since a full check.

    The same bytes passed every check before; only the clock is checked again
    (the response's and its signer's validity, the margin), so the hourly run
    over 10,000 unchanged certificates parses nothing (``index``).
    """
    hit = ctx.index.lookup(entry.path, pem_fp, base=entry.files_base)
    if hit is None or ctx.index.is_revoked(entry.path, hit.verdict.serial):
        return None
    verdict = hit.verdict
    if not (
        hit.valid_from <= now <= hit.valid_until
        and verdict.next_update - now >= options.margin
        and (not options.fetch or schedule.is_fresh(verdict.this_update, verdict.next_update, now))
    ):
        return None
    der = (
        ctx.index.read_staple(entry.files_base, hit)
        if options.sockets or options.below_admin
        else b""
    )
    if der is None:
        return None
    staple = Staple.of(
        der, verdict, names=entry.haproxy_names, cert_id=hit.cert_id, issuer_pem=hit.issuer_pem
    )
    row = ResultRow.of(str(entry.path), hit.url, verdict, Action.FRESH, must_staple=hit.must_staple)
    return _Prepared(row, staple)


def _remember(
    ctx: _Context, cert: _Cert, staple: Staple, ocsp_fp: index.Fingerprint | None
) -> None:
    """Record a staple that passed every check, with the files it was judged on."""
    if cert.pem_fp is None or ocsp_fp is None:
        return
    valid_from, valid_until = index.signer_window(staple.der, staple.verdict)
    ctx.index.record(
        cert.path,
        index.Entry(
            pem=cert.pem_fp,
            ocsp=ocsp_fp,
            # Only when the issuer is not in the chain does ``.issuer`` matter.
            issuer_file=index.issuer_fingerprint(cert.files_base) if cert.issuer_pem else None,
            url=cert.url,
            cert_id=staple.cert_id,
            issuer_pem=cert.issuer_pem,
            verdict=staple.verdict,
            valid_from=valid_from,
            valid_until=valid_until,
            must_staple=cert.must_staple,
        ),
    )


async def _refresh(
    cert: _Cert, options: Options, fetcher: Fetcher, now: dt.datetime, ctx: _Context
) -> _Prepared:
    """Keep the staple on disk while it is fresh; otherwise fetch, validate and store."""
    name, url, path = str(cert.path), cert.url, cert.path
    staple_path = cert.staple_file or store.staple_path(cert.files_base)
    ocsp_fp = index.fingerprint(staple_path)  # before reading: a later change is a miss
    # None: no file; size 0: HAProxy's "empty .ocsp" registration (§0.2). Nothing to read.
    has_bytes = ocsp_fp is not None and ocsp_fp[1] > 0
    current = _current_staple(staple_path, cert, now, options.margin) if has_bytes else None
    # After a signed "revoked", an older good staple is neither fresh nor pushed again.
    revoked = ctx.index.is_revoked(path, cert.leaf.serial_number)
    keep = current and not revoked and not options.force
    fresh = keep and current and (not options.fetch or schedule.is_fresh(*_times(current), now))
    if fresh and current and options.adopt and ctx.fleet is not None:
        return await _adopt(cert, current, options=options, now=now, ctx=ctx, fleet=ctx.fleet)
    if fresh and current:
        staple = _staple(cert, *current)
        _remember(ctx, cert, staple, ocsp_fp)
        return _Prepared(ResultRow.of(name, url, current[1], Action.FRESH), staple)
    ctx.index.forget(path)
    if not options.fetch:
        status, what = (Status.REVOKED, "the CA said REVOKED") if revoked else (Status.ERROR, "")
        error = f"no valid {staple_path.name} to deploy" + (f" ({what})" if what else "")
        return _Prepared(ResultRow(name, url, status, Action.SKIPPED, error=error))
    if cert.issuer_pem is not None and (problem := _issuer_unreachable(cert)):
        # Decided before asking the CA: no answer could be stored, so none is asked for.
        return _Prepared(_failed(name, url, problem))
    return await _fetch(cert, current, options=options, fetcher=fetcher, now=now, ctx=ctx)


async def _fetch(
    cert: _Cert,
    current: tuple[bytes, Verdict] | None,
    *,
    options: Options,
    fetcher: Fetcher,
    now: dt.datetime,
    ctx: _Context,
) -> _Prepared:
    """Ask the CA, validate, and store the answer if it is better than ``current``."""
    name, url, path = str(cert.path), cert.url, cert.path
    staple_path = cert.staple_file or store.staple_path(cert.files_base)
    req = request.build(cert.leaf, cert.issuer)
    cert_id = request.cert_id_of(req)  # one request built per certificate, not two
    check = functools.partial(
        validate, cert=cert.leaf, issuer=cert.issuer, now=now, margin=options.margin
    )
    if ctx.fleet is None:
        reply = await fetcher.ocsp(url, req)
        der, verdict = reply.der, check(reply.der)
        hints: dict[str, Any] = {"max_age": reply.max_age, "elapsed": reply.elapsed}
    else:  # the fleet's staple if one is fresh and valid, else the CA's (shared)
        got = await ctx.fleet.obtain(
            req, check=check, ask_ca=functools.partial(fetcher.ocsp, url, req), now=now,
            held=current[1] if current else None, force=options.force,
        )  # fmt: skip
        der, verdict = got.der, got.verdict
        hints = {"max_age": got.max_age, "elapsed": got.elapsed}
        ctx.fleet.fetched_by[name] = got.node
    if verdict.status is not Status.GOOD:
        if verdict.status is Status.REVOKED and not options.dry_run:
            ctx.index.mark_revoked(path, verdict.serial)
        error = _bad_status(verdict, staple_path, current)
        return _Prepared(ResultRow.of(name, url, verdict, Action.FAILED, error), None, **hints)
    if not options.dry_run:
        ctx.index.clear_revoked(path)
    if current and (
        current[1].this_update > verdict.this_update or current[1].next_update > verdict.next_update
    ):
        # A cache in front of the responder served an older answer, or one that
        # expires sooner than ours: never replace a staple with a worse one.
        staple = _staple(cert, *current, cert_id=cert_id)
        return _Prepared(ResultRow.of(name, url, current[1], Action.FRESH), staple, **hints)
    staple = _staple(cert, der, verdict, cert_id=cert_id)
    if not options.dry_run:
        await ctx.writer.write(staple_path, der, owner_of=path)
        _remember(ctx, cert, staple, index.fingerprint_if(staple_path, der))
    return _Prepared(ResultRow.of(name, url, verdict, Action.FETCHED), staple, **hints)


async def _adopt(
    cert: _Cert,
    current: tuple[bytes, Verdict],
    *,
    options: Options,
    now: dt.datetime,
    ctx: _Context,
    fleet: Coordinator,
) -> _Prepared:
    """The fleet's staple if newer than the fresh one held (validated as the CA's); else ours."""
    name, url, path = str(cert.path), cert.url, cert.path
    req = request.build(cert.leaf, cert.issuer)
    cert_id = request.cert_id_of(req)
    check = functools.partial(
        validate, cert=cert.leaf, issuer=cert.issuer, now=now, margin=options.margin
    )
    got = await fleet.adopt(req, check=check, held=current[1])
    if got is None or got.verdict.status is not Status.GOOD:
        return _Prepared(ResultRow.of(name, url, current[1], Action.FRESH), _staple(cert, *current))
    staple_path = cert.staple_file or store.staple_path(cert.files_base)
    staple = _staple(cert, got.der, got.verdict, cert_id=cert_id)
    fleet.fetched_by[name] = got.node
    await ctx.writer.write(staple_path, got.der, owner_of=path)
    _remember(ctx, cert, staple, index.fingerprint_if(staple_path, got.der))
    return _Prepared(ResultRow.of(name, url, got.verdict, Action.FETCHED), staple)


def _noted(entry: CertEntry, prepared: _Prepared) -> _Prepared:
    """Add to the row that HAProxy will not load this staple by itself when it restarts."""
    if entry.ocsp_at_start or entry.managed:
        return prepared
    note = (
        f"{entry.ocsp_source}: HAProxy reads no staple file for this certificate when it "
        "starts or reloads, so a staple lasts only until then unless hastaple run pushes it "
        f"again. For a crt-store certificate, add 'ocsp {store.staple_path(entry.path)}' to "
        "its load line (hastaple keeps that file fresh) and the staple survives on its own."
    )
    return dataclasses.replace(prepared, row=dataclasses.replace(prepared.row, note=note))


async def resolve_issuer(
    path: Path,
    bundle: pem.Bundle,
    fetcher: Fetcher,
    state_dir: Path | None,
    *,
    now: dt.datetime | None = None,
    base: Path | None = None,
) -> tuple[x509.Certificate, bytes | None]:
    """
    Find the issuer of ``bundle.leaf``: the chain, ``<crt>.issuer``, then AIA.

    Returns the issuer and, when HAProxy cannot find it in the PEM chain, its
    PEM to send as ``<crt>.issuer`` in the commit (docs/haproxy.md, D3).

    Raises:
        CertificateError: no local source holds the issuer and there is no AIA URL.
        FetchError: the AIA URLs did not give it.
    """
    if (local := local_issuer(path, bundle, base=base)) is not None:
        return local
    urls = issuers.ca_issuers_urls(bundle.leaf)
    when = now or dt.datetime.now(dt.UTC)
    for url in urls:
        found = await _aia_issuer(url, bundle.leaf, fetcher, state_dir, when)
        if found is not None:
            return found, found.public_bytes(serialization.Encoding.PEM)
    if urls:
        raise FetchError(urls[0], f"gave no certificate that issued {path}")
    raise CertificateError(
        path,
        "issuer not found: the file has no chain, there is no "
        f"{store.issuer_path(base or path).name}, and no AIA caIssuers URL",
    )


def local_issuer(
    path: Path, bundle: pem.Bundle, *, base: Path | None = None
) -> tuple[x509.Certificate, bytes | None] | None:
    """
    The issuer from the PEM chain, else from ``<base>.issuer``, as HAProxy looks (§3a).

    ``base`` is what HAProxy appends ``.issuer`` to (default ``path``).

    Returns None when neither has it; the PEM to send is set only for ``.issuer``.

    Raises:
        CertificateError: ``<crt>.issuer`` exists but holds another certificate.
    """
    in_chain = issuers.choose_local(bundle.leaf, bundle.chain)
    if in_chain is not None:
        return in_chain, None
    issuer_file = store.issuer_path(base or path)
    if not issuer_file.exists():
        return None
    found = issuers.choose_local(bundle.leaf, issuers.parse_certificates(pem.read(issuer_file)))
    if found is None:
        raise CertificateError(issuer_file, f"does not hold the issuer of {path.name}")
    return found, found.public_bytes(serialization.Encoding.PEM)


async def _aia_issuer(
    url: str, leaf: x509.Certificate, fetcher: Fetcher, state_dir: Path | None, now: dt.datetime
) -> x509.Certificate | None:
    """
    The issuer of ``leaf`` from caIssuers ``url``: cached in the state directory, for a while.

    A cached certificate is used while it is younger than ``AIA_MAX_AGE``, is
    within its own validity, and signed ``leaf``. Otherwise ``url`` is asked
    again: a CA that re-issued its intermediate (a new key signs new leaves,
    or the old one expired) is noticed at once, not never. If asking fails, an
    older cached issuer that still signed ``leaf`` and is valid is used (with a
    warning) rather than failing the certificate.
    """
    cache = None if state_dir is None else state_dir / "issuers" / _aia_cache_name(url)
    stale = None
    if cache is not None and (held := _read_aia_cache(cache)) is not None:
        certs, mtime = held
        found = issuers.choose(leaf, certs)
        if found is not None and _within_validity(found, now):
            if now - mtime < AIA_MAX_AGE:
                return found
            stale = found
    try:
        data = await fetcher.get(url)
    except FetchError as exc:
        if stale is None:
            raise
        logger.warning("using the issuer cached from %s: asking again failed: %s", url, exc)
        return stale
    certs = issuers.parse_certificates(data)
    if certs and cache is not None:
        _write_aia_cache(cache, data, url)
    return issuers.choose(leaf, certs)


def _aia_cache_name(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest() + ".der"


def _read_aia_cache(cache: Path) -> tuple[list[x509.Certificate], dt.datetime] | None:
    """The certificates cached at ``cache`` and when they were downloaded, or None."""
    try:
        data, st = store.read_file(cache)
    except OSError:
        return None
    return issuers.parse_certificates(data), dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)


def _write_aia_cache(cache: Path, data: bytes, url: str) -> None:
    """Cache a download; failing to write it never fails the certificate."""
    try:
        # mkdir(parents=True) gives the parents the default mode (0755):
        # make the state directory itself private first.
        config.ensure_private_dir(cache.parent.parent)
        config.ensure_private_dir(cache.parent)
        store.write_atomic(cache, data)
    except (OSError, StoreError) as exc:
        logger.warning("could not cache the issuer from %s: %s", url, exc)


def _within_validity(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _haproxy_can_find_issuer(path: Path) -> bool:
    """
    Whether HAProxy will find the issuer when it loads ``<crt>.ocsp`` at start-up.

    A chainless PEM with a ``.ocsp`` and no ``.issuer`` makes HAProxy refuse to
    start (docs/haproxy.md), so a staple whose issuer came from AIA must not be
    written next to it.
    """
    return store.issuer_path(path).exists()


def _issuer_unreachable(cert: _Cert) -> str | None:
    """Why HAProxy could not compute the CertID of a chainless PEM's staple at start-up."""
    if cert.staple_file is None:
        if _haproxy_can_find_issuer(cert.files_base):
            return None
        return _no_issuer_on_disk(cert.path, cert.files_base)
    if cert.issuer_file is not None:
        return None
    # A crt-store load line: HAProxy 3 reads only its 'issuer <file>', never <crt>.issuer,
    # and refuses to start when it cannot tie the 'ocsp' file, even an empty one, to an
    # issuer (measured on 3.0.11).
    return (
        f"{cert.path}: the file has no chain and its crt-store load line names no "
        f"'issuer <file>', so HAProxy cannot use {cert.staple_file} and refuses to start "
        "with that line; nothing was stored (append the issuer to the PEM or add "
        "'issuer <file>' to the load line)"
    )


def _no_issuer_on_disk(path: Path, base: Path) -> str:
    return (
        f"{path}: the file has no chain and there is no {base.name}.issuer; writing "
        f"{base.name}.ocsp would stop HAProxy from starting, so nothing was stored "
        "(append the issuer to the PEM or create the .issuer file)"
    )


def _current_staple(
    staple_path: Path, cert: _Cert, now: dt.datetime, margin: dt.timedelta
) -> tuple[bytes, Verdict] | None:
    """The staple on disk if it is still a valid, good response for this certificate."""
    der = store.read(staple_path)
    if not der:
        return None
    try:
        verdict = validate(der, cert=cert.leaf, issuer=cert.issuer, now=now, margin=margin)
    except HastapleError:
        return None
    return (der, verdict) if verdict.status is Status.GOOD else None


def _staple(cert: _Cert, der: bytes, verdict: Verdict, *, cert_id: bytes | None = None) -> Staple:
    return Staple.of(
        der,
        verdict,
        names=cert.names,
        cert_id=cert_id or request.cert_id(cert.leaf, cert.issuer),
        issuer_pem=cert.issuer_pem,
    )


def _times(current: tuple[bytes, Verdict]) -> tuple[dt.datetime, dt.datetime]:
    return current[1].this_update, current[1].next_update


def _bad_status(verdict: Verdict, staple_path: Path, current: tuple[bytes, Verdict] | None) -> str:
    kept = f"; kept the existing {staple_path.name}" if current else ""
    if verdict.status is Status.REVOKED:
        return f"the CA says this certificate is {verdict.revocation()}; not deployed{kept}"
    return f"the CA says this certificate's status is unknown; not deployed{kept}"


def _failed(name: str, url: str | None, error: str) -> ResultRow:
    return ResultRow(name, url, Status.ERROR, Action.FAILED, error=error)
