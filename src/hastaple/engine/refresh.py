"""
One certificate: keep its staple, or fetch, validate and store a better one.

    load PEM -> OCSP URL -> issuer -> staple kept still fresh? -> fetch -> validate
             -> better than the kept one? -> store (StapleStore.put)

``prepare`` turns one ``CertEntry`` into a row and, when there is a staple to
deliver, the ``Staple`` with one ``DeployItem`` per name HAProxy knows the
file by. This is where a ``HastapleError`` becomes that certificate's row
(a bad file, a lying responder); any other exception is a bug, logged with
its traceback and reported as an "internal error" row. Owns: the decision
for one certificate (the invariants in docs/architecture.md). Must not
deliver to HAProxy or run several certificates (``pipeline`` does both).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from hastaple import config
from hastaple.core import issuer as issuers
from hastaple.core import schedule
from hastaple.core.model import Action, CertEntry, ResultRow, Status, Verdict
from hastaple.core.ocsp import request
from hastaple.core.ocsp.validate import MIN_REMAINING, signer_window, validate
from hastaple.engine.fetch import Fetcher, HostStalled
from hastaple.engine.issuers import resolve_issuer
from hastaple.errors import CertificateError, HastapleError
from hastaple.haproxy.deploy import DeployItem
from hastaple.sources import pem
from hastaple.stores import index, store
from hastaple.stores.base import StapleStore

if TYPE_CHECKING:  # the fleet (and redis-py) is imported only when configured
    from hastaple.stores.coordinator import Coordinator

logger = logging.getLogger(__name__)


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
    # ``path`` as the text discovery gave (the row's and the index's name): one
    # copy of it per certificate for the whole run, not a second one from ``path``.
    name: str
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
class Prepared:
    """One certificate's row, its staple to deliver if any, and the responder's hints."""

    row: ResultRow
    staple: Staple | None = None
    max_age: int | None = None
    elapsed: float | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What the certificates of one run share: where staples are kept, and the index."""

    staples: StapleStore
    index: index.Index
    fleet: Coordinator | None = None  # staples shared with other nodes; None: the CA alone


async def prepare(  # noqa: PLR0911 - one early return per kind of row
    entry: CertEntry, options: Options, fetcher: Fetcher, now: dt.datetime, ctx: Context
) -> Prepared:
    """Everything for one certificate but the delivery: its row, and the staple to deliver."""
    name = entry.file
    url: str | None = None
    must_staple = False
    try:
        if entry.managed:
            return Prepared(ResultRow(name, None, Status.MANAGED, Action.SKIPPED))
        path = entry.path  # one Path for the whole of this certificate's work
        base = entry.extra_base or path
        pem_fp = index.fingerprint(path)
        # The index knows only <crt>.ocsp: a crt-store's own staple file goes the long way.
        cached = not (options.force or options.adopt) and entry.ocsp_file is None
        if cached and (hit := _from_index(entry, path, base, pem_fp, options, now, ctx)):
            return hit
        bundle = pem.parse_file(path)
        must_staple = pem.is_must_staple(bundle.leaf)
        url = issuers.ocsp_url(bundle.leaf)
        if url is None:
            no_url = ResultRow(name, None, Status.NO_OCSP, Action.SKIPPED, must_staple=must_staple)
            return Prepared(no_url)
        state_dir = None if options.dry_run else options.state_dir  # dry-run writes nothing
        issuer, issuer_pem = await resolve_issuer(
            path, bundle, fetcher, state_dir, now=now, base=base, chains=entry.issuers_chain
        )
        cert = _Cert(
            path, name, bundle.leaf, issuer, issuer_pem, url, entry.haproxy_names, pem_fp,
            must_staple=must_staple, base=entry.extra_base, staple_file=entry.ocsp_file,
            issuer_file=entry.issuer_file,
        )  # fmt: skip
        done = await _refresh(cert, options, fetcher, now, ctx)
        return dataclasses.replace(done, row=dataclasses.replace(done.row, must_staple=must_staple))
    except HostStalled:
        raise  # set aside by the worker, not a result
    except CertificateError as exc:
        row = dataclasses.replace(_failed(name, url, str(exc)), bad_input=True)
        return Prepared(dataclasses.replace(row, must_staple=must_staple))
    except HastapleError as exc:
        return Prepared(dataclasses.replace(_failed(name, url, str(exc)), must_staple=must_staple))
    except Exception as exc:
        logger.exception("internal error while handling %s", name)
        return Prepared(_failed(name, url, f"internal error: {exc!r} (see the log)"))


def _from_index(  # noqa: PLR0917 - the certificate's facts, taken once by prepare
    entry: CertEntry,
    path: Path,
    base: Path,
    pem_fp: index.Fingerprint | None,
    options: Options,
    now: dt.datetime,
    ctx: Context,
) -> Prepared | None:
    """
    The FRESH row for a certificate whose files did not change since a full check.

    The same bytes passed every check before; only the clock is checked again
    (the response's and its signer's validity, the margin), so the hourly run
    over 10,000 unchanged certificates parses nothing (``index``).
    """
    hit = ctx.index.lookup(path, pem_fp, base=base)
    if hit is None or ctx.index.is_revoked(path, hit.verdict.serial):
        return None
    verdict = hit.verdict
    if not (
        hit.covers(now)
        and verdict.next_update - now >= options.margin
        and (not options.fetch or schedule.is_fresh(verdict.this_update, verdict.next_update, now))
    ):
        return None
    der = ctx.index.read_staple(base, hit) if options.sockets or options.below_admin else b""
    if der is None:
        return None
    staple = Staple.of(
        der, verdict, names=entry.haproxy_names, cert_id=hit.cert_id, issuer_pem=hit.issuer_pem
    )
    row = ResultRow.of(entry.file, hit.url, verdict, Action.FRESH, must_staple=hit.must_staple)
    return Prepared(row, staple)


def _remember(ctx: Context, cert: _Cert, staple: Staple, ocsp_fp: index.Fingerprint | None) -> None:
    """Record a staple that passed every check, with the files it was judged on."""
    if cert.pem_fp is None or ocsp_fp is None:
        return
    valid_from, valid_until = signer_window(staple.der, staple.verdict)
    ctx.index.record(
        cert.name,
        index.Entry.of(
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
    cert: _Cert, options: Options, fetcher: Fetcher, now: dt.datetime, ctx: Context
) -> Prepared:
    """Keep the staple on disk while it is fresh; otherwise fetch, validate and store."""
    name, url, path = cert.name, cert.url, cert.path
    staple_path = cert.staple_file or store.staple_path(cert.files_base)
    ocsp_fp = index.fingerprint(staple_path)  # before reading: a later change is a miss
    # No file, or an empty one (HAProxy's "empty .ocsp" registration, docs/haproxy.md):
    # the store has nothing to give.
    current = _current_staple(ctx.staples, staple_path, cert, now, options.margin)
    # After a signed "revoked", an older good staple is neither fresh nor pushed again.
    revoked = ctx.index.is_revoked(path, cert.leaf.serial_number)
    keep = current and not revoked and not options.force
    fresh = keep and current and (not options.fetch or schedule.is_fresh(*_times(current), now))
    if fresh and current and options.adopt and ctx.fleet is not None:
        return await _adopt(cert, current, options=options, now=now, ctx=ctx, fleet=ctx.fleet)
    if fresh and current:
        staple = _staple(cert, *current)
        _remember(ctx, cert, staple, ocsp_fp)
        return Prepared(ResultRow.of(name, url, current[1], Action.FRESH), staple)
    ctx.index.forget(path)
    if not options.fetch:
        status, what = (Status.REVOKED, "the CA said REVOKED") if revoked else (Status.ERROR, "")
        error = f"no valid {staple_path.name} to deploy" + (f" ({what})" if what else "")
        return Prepared(ResultRow(name, url, status, Action.SKIPPED, error=error))
    if cert.issuer_pem is not None and (problem := _issuer_unreachable(cert)):
        # Decided before asking the CA: no answer could be stored, so none is asked for.
        return Prepared(_failed(name, url, problem))
    return await _fetch(cert, current, options=options, fetcher=fetcher, now=now, ctx=ctx)


async def _fetch(
    cert: _Cert,
    current: tuple[bytes, Verdict] | None,
    *,
    options: Options,
    fetcher: Fetcher,
    now: dt.datetime,
    ctx: Context,
) -> Prepared:
    """Ask the CA, validate, and store the answer if it is better than ``current``."""
    name, url, path = cert.name, cert.url, cert.path
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
        return Prepared(ResultRow.of(name, url, verdict, Action.FAILED, error), None, **hints)
    if not options.dry_run:
        ctx.index.clear_revoked(path)
    if current and (
        current[1].this_update > verdict.this_update or current[1].next_update > verdict.next_update
    ):
        # A cache in front of the responder served an older answer, or one that
        # expires sooner than ours: never replace a staple with a worse one.
        staple = _staple(cert, *current, cert_id=cert_id)
        return Prepared(ResultRow.of(name, url, current[1], Action.FRESH), staple, **hints)
    staple = _staple(cert, der, verdict, cert_id=cert_id)
    if not options.dry_run:
        await ctx.staples.put(staple_path, der, owner_of=path)
        _remember(ctx, cert, staple, index.fingerprint_if(staple_path, der))
    return Prepared(ResultRow.of(name, url, verdict, Action.FETCHED), staple, **hints)


async def _adopt(
    cert: _Cert,
    current: tuple[bytes, Verdict],
    *,
    options: Options,
    now: dt.datetime,
    ctx: Context,
    fleet: Coordinator,
) -> Prepared:
    """The fleet's staple if newer than the fresh one held (validated as the CA's); else ours."""
    name, url, path = cert.name, cert.url, cert.path
    req = request.build(cert.leaf, cert.issuer)
    cert_id = request.cert_id_of(req)
    check = functools.partial(
        validate, cert=cert.leaf, issuer=cert.issuer, now=now, margin=options.margin
    )
    got = await fleet.adopt(req, check=check, held=current[1])
    if got is None or got.verdict.status is not Status.GOOD:
        return Prepared(ResultRow.of(name, url, current[1], Action.FRESH), _staple(cert, *current))
    staple_path = cert.staple_file or store.staple_path(cert.files_base)
    staple = _staple(cert, got.der, got.verdict, cert_id=cert_id)
    fleet.fetched_by[name] = got.node
    await ctx.staples.put(staple_path, got.der, owner_of=path)
    _remember(ctx, cert, staple, index.fingerprint_if(staple_path, got.der))
    return Prepared(ResultRow.of(name, url, got.verdict, Action.FETCHED), staple)


def noted(entry: CertEntry, prepared: Prepared) -> Prepared:
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
    staples: StapleStore, staple_path: Path, cert: _Cert, now: dt.datetime, margin: dt.timedelta
) -> tuple[bytes, Verdict] | None:
    """The staple kept if it is still a valid, good response for this certificate."""
    der = staples.get(staple_path)
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
