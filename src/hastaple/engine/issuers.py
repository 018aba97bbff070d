"""
A certificate's issuer, found as HAProxy finds it, then from AIA.

The PEM chain first (for a PEM without one, the chain ``issuers-chain-path``
gives it), then ``<crt>.issuer`` (HAProxy looks there, never further:
docs/haproxy.md), then the AIA caIssuers URLs, downloaded through
the fetcher and cached in the state directory's ``issuers/`` for a while.
The choice among candidates is ``hastaple.core.issuer``'s (pure); this module
does the file reads, downloads and cache. Used by the pipeline, ``check``,
``verify`` and ``doctor``. Must not write staples or talk to HAProxy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hastaple import config
from hastaple.core import issuer as issuers
from hastaple.engine.fetch import Fetcher
from hastaple.errors import CertificateError, FetchError, StoreError
from hastaple.sources import issuerchains, pem
from hastaple.stores import store

logger = logging.getLogger(__name__)

# How long an issuer downloaded from AIA is used before its URL is asked again.
AIA_MAX_AGE = dt.timedelta(days=7)


async def resolve_issuer(
    path: Path,
    bundle: pem.Bundle,
    fetcher: Fetcher,
    state_dir: Path | None,
    *,
    now: dt.datetime | None = None,
    base: Path | None = None,
    chains: Path | None = None,
) -> tuple[x509.Certificate, bytes | None]:
    """
    Find the issuer of ``bundle.leaf``: the chain, ``<crt>.issuer``, then AIA.

    Returns the issuer and, when HAProxy cannot find it in the PEM chain, its
    PEM to send as ``<crt>.issuer`` in the commit (docs/haproxy.md, "Loading a
    staple without a reload").

    Raises:
        CertificateError: no local source holds the issuer and there is no AIA URL.
        FetchError: the AIA URLs did not give it.
    """
    if (local := local_issuer(path, bundle, base=base, chains=chains)) is not None:
        return local
    urls = issuers.ca_issuers_urls(bundle.leaf)
    when = now or dt.datetime.now(dt.UTC)
    for url in urls:
        found = await _aia_issuer(url, bundle.leaf, fetcher, state_dir, when)
        if found is not None:
            return found, found.public_bytes(serialization.Encoding.PEM)
    if urls:
        raise FetchError(urls[0], f"gave no certificate that issued {path}")
    in_dir = "" if chains is None else f", issuers-chain-path {chains} holds none of its issuers"
    raise CertificateError(
        path,
        f"issuer not found: the file has no chain{in_dir}, there is no "
        f"{store.issuer_path(base or path).name}, and no AIA caIssuers URL",
    )


def local_issuer(
    path: Path, bundle: pem.Bundle, *, base: Path | None = None, chains: Path | None = None
) -> tuple[x509.Certificate, bytes | None] | None:
    """
    The issuer from the PEM chain, else from ``<base>.issuer``, as HAProxy looks.

    A PEM without a chain takes the one the ``issuers-chain-path`` directory
    ``chains`` gives it, as HAProxy does when it loads the file; HAProxy then
    finds the issuer itself, so no ``.issuer`` needs sending.

    docs/haproxy.md, "Where the issuer and CertID come from".

    ``base`` is what HAProxy appends ``.issuer`` to (default ``path``).

    Returns None when neither has it; the PEM to send is set only for ``.issuer``.

    Raises:
        CertificateError: ``<crt>.issuer`` exists but holds another certificate.
    """
    chain = bundle.chain
    if not chain and chains is not None:
        chain = tuple(issuerchains.load(chains).chain_for(bundle.leaf))
    in_chain = issuers.choose_local(bundle.leaf, chain)
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
